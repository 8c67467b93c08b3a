package hardware_test

import (
	"testing"

	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/fault"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2ctest"
)

// playbackBoard is a board whose I²C bus is periph's i2ctest.Playback: the
// exact byte sequence the BME280 driver must send and the answers a real
// BME280 gave (the sequence of periph.io's own bmxx80 tests, with the
// package's 1x oversampling).
type playbackBoard struct{ bus *i2ctest.Playback }

func (b *playbackBoard) Pin(p hardware.PinConfig) (gpio.PinIO, error) { panic("no pins") }
func (b *playbackBoard) I2C() (i2c.Bus, error)                        { return b.bus, nil }
func (b *playbackBoard) Close() error                                 { return nil }

func TestBME280ByteSequence(t *testing.T) {
	measure := []i2ctest.IO{
		// Forced mode: ctrl_meas with 1x temperature and pressure.
		{Addr: 0x76, W: []byte{0xf4, 0x25}},
		// Status: busy, then idle.
		{Addr: 0x76, W: []byte{0xf3}, R: []byte{0x08}},
		{Addr: 0x76, W: []byte{0xf3}, R: []byte{0x00}},
		// The measurement: pressure, temperature, humidity.
		{Addr: 0x76, W: []byte{0xf7}, R: []byte{0x4a, 0x52, 0xc0, 0x80, 0x96, 0xc0, 0x7a, 0x76}},
	}
	ops := []i2ctest.IO{
		// Chip id: a BME280.
		{Addr: 0x76, W: []byte{0xd0}, R: []byte{0x60}},
		// Calibration.
		{Addr: 0x76, W: []byte{0x88}, R: []byte{0x10, 0x6e, 0x6c, 0x66, 0x32, 0x0, 0x5d, 0x95, 0xb8, 0xd5, 0xd0, 0xb, 0x77, 0x1e, 0x9d, 0xff, 0xf9, 0xff, 0xac, 0x26, 0xa, 0xd8, 0xbd, 0x10, 0x0, 0x4b}},
		{Addr: 0x76, W: []byte{0xe1}, R: []byte{0x6e, 0x1, 0x0, 0x13, 0x5, 0x0, 0x1e}},
		// Configuration: sleep, ctrl_hum 1x, config (1s standby, no filter), ctrl_meas last.
		{Addr: 0x76, W: []byte{0xf4, 0x24, 0xf2, 0x01, 0xf5, 0xa0, 0xf4, 0x24}},
	}
	ops = append(ops, measure...) // temperature
	ops = append(ops, measure...) // humidity, same driver, no new setup
	ops = append(ops, measure...) // pressure
	bus := &i2ctest.Playback{Ops: ops, DontPanic: true}

	cfg := hardware.BoardConfig{
		Name: "bench", Backend: hardware.BackendPeriph,
		Sensors: []hardware.SensorConfig{
			{Name: "t", Kind: hardware.KindTemperature, Driver: hardware.DriverBME280},
			{Name: "h", Kind: hardware.KindHumidity, Driver: hardware.DriverBME280},
			{Name: "p", Kind: hardware.KindPressure, Driver: hardware.DriverBME280},
		},
	}
	d, err := hardware.NewDevice(cfg, &playbackBoard{bus: bus})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()

	for _, tc := range []struct {
		name, unit string
		want       float64
	}{{"t", "°C", 23.72}, {"h", "%RH", 65.31}, {"p", "hPa", 1009.43}} {
		r, err := d.ReadSensor(tc.name)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if r.Value != tc.want || r.Unit != tc.unit {
			t.Fatalf("%s: got %v %s, want %v %s", tc.name, r.Value, r.Unit, tc.want, tc.unit)
		}
	}
	if err := bus.Close(); err != nil {
		t.Fatalf("the driver did not send the whole sequence: %v", err)
	}
	// A bus that stops answering is an UNAVAILABLE sensor, not a crash.
	if _, err := d.ReadSensor("t"); fault.CodeOf(err) != fault.Unavailable {
		t.Fatalf("got %v, want UNAVAILABLE", err)
	}
}
