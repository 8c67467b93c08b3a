package hardware_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/fault"
	"periph.io/x/conn/v3/gpio"
)

// simDevice opens the built-in sim board without simulated motion, so tests
// drive its inputs themselves.
func simDevice(t *testing.T) (*hardware.Device, *hardware.SimBoard) {
	t.Helper()
	cfg := hardware.SimBoardConfig()
	cfg.SimMotionEvery = 0
	b := hardware.NewSimBoard(cfg)
	d, err := hardware.NewDevice(cfg, b)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d, b
}

func TestDevicePins(t *testing.T) {
	d, b := simDevice(t)
	st, err := d.Write("aux", 1)
	if err != nil || st.Level != 1 || st.Mode != hardware.ModeOut || st.Number != 5 {
		t.Fatalf("write: got %+v, %v; want aux=5 out level 1", st, err)
	}
	if st, err := d.Read("5"); err != nil || st.Name != "aux" || st.Level != 1 {
		t.Fatalf("read by number: got %+v, %v; want aux level 1", st, err)
	}
	if st, err := d.PWM("aux", 0.25, 0); err != nil || st.Duty != 0.25 || st.Hz != 1000 {
		t.Fatalf("pwm: got %+v, %v; want duty 0.25 at 1000 Hz", st, err)
	}
	if st, err := d.SetMode("aux", hardware.ModeIn, hardware.PullUp); err != nil || st.Mode != hardware.ModeIn || st.Pull != hardware.PullUp || st.Duty != 0 {
		t.Fatalf("mode: got %+v, %v; want an input pulled up, no PWM", st, err)
	}
	if err := b.SetInput("button", gpio.Low); err != nil {
		t.Fatal(err)
	}
	if st, err := d.Read("button"); err != nil || st.Level != 0 {
		t.Fatalf("button: got %+v, %v; want level 0", st, err)
	}
}

func TestDeviceRefuses(t *testing.T) {
	d, _ := simDevice(t)
	ctx := context.Background()
	tests := []struct {
		name string
		op   func() error
		code fault.Code
		want string
	}{
		{"unknown pin", func() error { _, err := d.Read("nope"); return err }, fault.NotFound, `no pin "nope"`},
		{"unknown pin number", func() error { _, err := d.Read("99"); return err }, fault.NotFound, "no pin number 99"},
		{"no pin", func() error { _, err := d.Read(""); return err }, fault.InvalidArgument, "pin is required"},
		{"level 2", func() error { _, err := d.Write("aux", 2); return err }, fault.InvalidArgument, "level must be 0 or 1"},
		{"write an input", func() error { _, err := d.Write("button", 1); return err }, fault.FailedPrecondition, "is an input"},
		{"write an actuator's pin", func() error { _, err := d.Write("led_pin", 1); return err }, fault.FailedPrecondition, `wired to "led"`},
		{"bad mode", func() error { _, err := d.SetMode("aux", "sideways", ""); return err }, fault.InvalidArgument, `mode "sideways"`},
		{"pull on an output", func() error { _, err := d.SetMode("aux", hardware.ModeOut, hardware.PullUp); return err }, fault.InvalidArgument, "takes no pull"},
		{"NaN duty", func() error { _, err := d.PWM("aux", math.NaN(), 0); return err }, fault.InvalidArgument, "duty must be"},
		{"hz too high", func() error { _, err := d.PWM("aux", 0.5, 2e6); return err }, fault.InvalidArgument, "hz 2e+06"},
		{"wait bad edge", func() error { _, err := d.WaitEdge(ctx, "button", "up", time.Second); return err }, fault.InvalidArgument, `edge "up"`},
		{"wait on an output", func() error { _, err := d.WaitEdge(ctx, "aux", "", time.Second); return err }, fault.FailedPrecondition, "is an output"},
		{"unknown sensor", func() error { _, err := d.ReadSensor("co2"); return err }, fault.NotFound, `no sensor "co2"`},
		{"unknown actuator", func() error { _, err := d.SetActuator("door", "on"); return err }, fault.NotFound, `no actuator "door"`},
		{"no value", func() error { _, err := d.SetActuator("led", nil); return err }, fault.InvalidArgument, "value is required"},
		{"relay half on", func() error { _, err := d.SetActuator("relay", 0.5); return err }, fault.InvalidArgument, "a relay is 0"},
		{"motor unknown field", func() error { _, err := d.SetActuator("fan", map[string]any{"rpm": 9.0}); return err }, fault.InvalidArgument, `unknown field "rpm"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op()
			if fault.CodeOf(err) != tc.code || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %s mentioning %q", err, tc.code, tc.want)
			}
		})
	}
}

func TestDeviceWaitEdge(t *testing.T) {
	d, b := simDevice(t)
	ctx := context.Background()
	// A timeout is an answer, not an error.
	if e, err := d.WaitEdge(ctx, "button", hardware.EdgeFalling, 10*time.Millisecond); err != nil || e.Edge {
		t.Fatalf("got %+v, %v; want no edge", e, err)
	}
	done := make(chan hardware.Edge, 1)
	go func() {
		e, err := d.WaitEdge(ctx, "button", hardware.EdgeRising, 15*time.Second)
		if err != nil {
			t.Error(err)
		}
		done <- e
	}()
	// Toggle until the waiter, which may not be waiting yet, sees a rising edge.
	for l := gpio.High; ; l = !l {
		if err := b.SetInput("button", l); err != nil {
			t.Fatal(err)
		}
		select {
		case e := <-done:
			if !e.Edge || e.Level != 1 || e.Pin != "button" {
				t.Fatalf("got %+v, want a rising edge on button", e)
			}
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestDeviceSensorsAndActuators(t *testing.T) {
	d, b := simDevice(t)
	r, err := d.ReadSensor("temperature")
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := r.Value.(float64); !ok || v < 20 || v > 28 || r.Unit != "°C" {
		t.Fatalf("temperature: got %+v, want about 23.7 °C", r)
	}
	if r, err := d.ReadSensor("motion"); err != nil || r.Value != false {
		t.Fatalf("motion: got %+v, %v; want false", r, err)
	}
	if err := b.SetInput("pir_pin", gpio.High); err != nil {
		t.Fatal(err)
	}
	if r, err := d.ReadSensor("motion"); err != nil || r.Value != true {
		t.Fatalf("motion: got %+v, %v; want true", r, err)
	}

	if st, err := d.SetActuator("led", 0.5); err != nil || !st.On || st.Level != 0.5 {
		t.Fatalf("led: got %+v, %v; want on at 0.5", st, err)
	}
	if st, err := d.SetActuator("relay", "toggle"); err != nil || !st.On {
		t.Fatalf("relay: got %+v, %v; want on", st, err)
	}
	if st, err := d.SetActuator("fan", -0.75); err != nil || st.Level != 0.75 || st.Direction != "reverse" {
		t.Fatalf("fan: got %+v, %v; want 0.75 in reverse", st, err)
	}
	// Stopping keeps the direction.
	if st, err := d.SetActuator("fan", "off"); err != nil || st.On || st.Direction != "reverse" {
		t.Fatalf("fan off: got %+v, %v; want off, still reverse", st, err)
	}

	info := d.Info()
	cfg := d.Config()
	if info.Name != "sim" || info.Backend != hardware.BackendSim || len(info.Pins) != len(cfg.Pins) ||
		len(info.Sensors) != len(cfg.Sensors) || len(info.Actuators) != len(cfg.Actuators) {
		t.Fatalf("info: got %+v", info)
	}
	if info.Actuators[0].Name != "led" || info.Actuators[0].Level != 0.5 {
		t.Fatalf("info lists led as %+v, want level 0.5", info.Actuators[0])
	}
}

func TestNewDeviceRefusesBadConfig(t *testing.T) {
	cfg := hardware.SimBoardConfig()
	cfg.Actuators[0].Pin = "nowhere"
	b := hardware.NewSimBoard(cfg)
	defer func() { _ = b.Close() }()
	_, err := hardware.NewDevice(cfg, b)
	if !errors.Is(err, hardware.ErrConfig) || !strings.Contains(err.Error(), `pin "nowhere"`) {
		t.Fatalf("got %v, want ErrConfig naming the pin", err)
	}
}

// TestNewDeviceDefaults: a board built in Go, not parsed, gets the same
// defaults as one parsed from TOML.
func TestNewDeviceDefaults(t *testing.T) {
	cfg := hardware.BoardConfig{Name: "b", Backend: hardware.BackendSim, Pins: []hardware.PinConfig{{Name: "p", Number: 3}}}
	d, err := hardware.NewDevice(cfg, hardware.NewSimBoard(cfg))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = d.Close() }()
	if p := d.Config().Pins[0]; p.Line != "GPIO3" || p.Mode != hardware.ModeIn || p.Pull != hardware.PullNone {
		t.Fatalf("got %+v, want line GPIO3, input, no pull", p)
	}
}
