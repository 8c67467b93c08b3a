package hardware

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/physic"
)

var _ Board = (*SimBoard)(nil)

// SimBoard is a simulated board built from periph.io's own fakes: each pin
// is a gpiotest.Pin held by the board, and the I²C bus is a SimBME280
// register map, so the same driver code (bmxx80.NewI2C) runs as on real
// hardware. PIR pins see motion every cfg.SimMotionEvery. It is safe for
// concurrent use; Close stops the motion simulation.
type SimBoard struct {
	cfg  BoardConfig
	bus  *SimBME280
	stop chan struct{}
	wg   sync.WaitGroup

	mu     sync.Mutex
	pins   map[string]*gpiotest.Pin
	closed bool
}

// NewSimBoard returns a simulated board for cfg.
func NewSimBoard(cfg BoardConfig) *SimBoard {
	return &SimBoard{cfg: cfg, bus: NewSimBME280(), stop: make(chan struct{}), pins: map[string]*gpiotest.Pin{}}
}

// Pin returns the fake pin of p, creating it on first use.
func (b *SimBoard) Pin(p PinConfig) (gpio.PinIO, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil, errors.New("sim board closed")
	}
	if pin, ok := b.pins[p.Name]; ok {
		return pin, nil
	}
	// A clock set here, not lazily by WaitForEdge, keeps the fake race-free.
	pin := &gpiotest.Pin{N: p.Name, Num: p.Number, Fn: "GPIO", Clock: clockwork.NewRealClock(), EdgesChan: make(chan gpio.Level, 4)}
	b.pins[p.Name] = pin
	if b.cfg.SimMotionEvery > 0 && b.isPIR(p.Name) {
		b.wg.Add(1)
		go b.motion(pin, b.cfg.SimMotionEvery)
	}
	return pin, nil
}

func (b *SimBoard) isPIR(pin string) bool {
	for _, s := range b.cfg.Sensors {
		if s.Kind == KindMotion && s.Pin == pin {
			return true
		}
	}
	return false
}

// motion raises pin every period and lowers it half a period later (at
// most 2s), as a PIR sensor's output does.
func (b *SimBoard) motion(pin *gpiotest.Pin, every time.Duration) {
	defer b.wg.Done()
	hold := min(every/2, 2*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	edge := func(l gpio.Level) { signal(pin, l) }
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
		}
		edge(gpio.High)
		select {
		case <-b.stop:
			return
		case <-time.After(hold):
		}
		edge(gpio.Low)
	}
}

// signal sets an input's level from outside, as wiring would, and reports
// the edge to a waiter if the level changed.
func signal(pin *gpiotest.Pin, l gpio.Level) {
	pin.Lock()
	changed := pin.L != l
	pin.L = l
	pin.Unlock()
	if !changed {
		return
	}
	select {
	case pin.EdgesChan <- l:
	default: // the edge buffer is full: the edge is lost, as on a real pin
	}
}

// SetInput drives the named input pin from outside the board — a button
// pressed, a sensor's output changing — and raises an edge if the level
// changed. It is how tests and demos stimulate a simulated board.
func (b *SimBoard) SetInput(name string, l gpio.Level) error {
	var pc *PinConfig
	for i := range b.cfg.Pins {
		if b.cfg.Pins[i].Name == name {
			pc = &b.cfg.Pins[i]
		}
	}
	if pc == nil {
		return fmt.Errorf("sim board %q: no pin %q", b.cfg.Name, name)
	}
	p, err := b.Pin(*pc)
	if err != nil {
		return err
	}
	signal(p.(*gpiotest.Pin), l)
	return nil
}

// I2C returns the simulated BME280 bus.
func (b *SimBoard) I2C() (i2c.Bus, error) { return b.bus, nil }

// Close stops the motion simulation and waits for it.
func (b *SimBoard) Close() error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.closed = true
	b.mu.Unlock()
	close(b.stop)
	b.wg.Wait()
	return nil
}

// Calibration and a measurement of a real BME280, the ones periph.io's own
// bmxx80 tests use: 23.72 °C, 1009.43 hPa, 65.31 %RH.
var (
	simCalib   = []byte{0x10, 0x6e, 0x6c, 0x66, 0x32, 0x0, 0x5d, 0x95, 0xb8, 0xd5, 0xd0, 0xb, 0x77, 0x1e, 0x9d, 0xff, 0xf9, 0xff, 0xac, 0x26, 0xa, 0xd8, 0xbd, 0x10, 0x0, 0x4b}
	simCalibH  = []byte{0x6e, 0x1, 0x0, 0x13, 0x5, 0x0, 0x1e}
	simMeasure = []byte{0x4a, 0x52, 0xc0, 0x80, 0x96, 0xc0, 0x7a, 0x76}
)

// SimBME280 is an i2c.Bus with one BME280 answering at 0x76 and 0x77 from a
// register map: chip id 0x60 at 0xD0, calibration at 0x88 and 0xE1, status
// at 0xF3 (always idle) and a measurement at 0xF7..0xFE that drifts slowly
// (a few tenths of a degree, percent and hectopascal over minutes). It is
// safe for concurrent use.
type SimBME280 struct {
	mu    sync.Mutex
	regs  [256]byte
	start time.Time
	// Now returns the time drift is computed at; nil means time.Now. Set it
	// before first use.
	Now func() time.Time
}

// NewSimBME280 returns a fake BME280 bus at power-on state.
func NewSimBME280() *SimBME280 {
	s := &SimBME280{start: time.Now()}
	s.regs[0xD0] = 0x60
	copy(s.regs[0x88:], simCalib)
	copy(s.regs[0xE1:], simCalibH)
	copy(s.regs[0xF7:], simMeasure)
	return s
}

// String names the bus.
func (s *SimBME280) String() string { return "sim-bme280" }

// SetSpeed accepts any speed.
func (s *SimBME280) SetSpeed(physic.Frequency) error { return nil }

// Tx writes register/value pairs (w of even length and no r), or reads len(r)
// registers from w[0] on, as a BME280 does over I²C.
func (s *SimBME280) Tx(addr uint16, w, r []byte) error {
	if addr != 0x76 && addr != 0x77 {
		return fmt.Errorf("sim-bme280: no device at address 0x%x", addr)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(r) > 0 {
		if len(w) != 1 {
			return fmt.Errorf("sim-bme280: a read writes 1 register address, got %d bytes", len(w))
		}
		s.measure()
		reg := int(w[0])
		if reg+len(r) > len(s.regs) {
			return fmt.Errorf("sim-bme280: read of %d bytes at 0x%x past the register map", len(r), reg)
		}
		copy(r, s.regs[reg:])
		return nil
	}
	if len(w)%2 != 0 {
		return fmt.Errorf("sim-bme280: a write is register/value pairs, got %d bytes", len(w))
	}
	for i := 0; i < len(w); i += 2 {
		switch w[i] {
		case 0xF2, 0xF4, 0xF5, 0xE0: // ctrl_hum, ctrl_meas, config, reset
			s.regs[w[i]] = w[i+1]
		default:
			return fmt.Errorf("sim-bme280: register 0x%x is read-only", w[i])
		}
	}
	return nil
}

// measure refreshes the measurement registers with drifting raw values.
func (s *SimBME280) measure() {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	t := now().Sub(s.start).Seconds()
	raw := func(i, n int) int {
		v := 0
		for k := range n {
			v = v<<8 | int(simMeasure[i+k])
		}
		return v
	}
	put := func(i, n, v int) {
		for k := n - 1; k >= 0; k-- {
			s.regs[0xF7+i+k] = byte(v)
			v >>= 8
		}
	}
	// 20-bit pressure and temperature sit in the top bits of 3 bytes.
	p := raw(0, 3) + int(2000*math.Sin(2*math.Pi*t/600))
	tt := raw(3, 3) + int(4000*math.Sin(2*math.Pi*t/300))
	h := raw(6, 2) + int(300*math.Sin(2*math.Pi*t/420))
	put(0, 3, p)
	put(3, 3, tt)
	put(6, 2, h)
}
