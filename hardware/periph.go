package hardware

import (
	"fmt"
	"sync"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpioreg"
	"periph.io/x/conn/v3/i2c"
	"periph.io/x/conn/v3/i2c/i2creg"
	"periph.io/x/host/v3"
)

var _ Board = (*PeriphBoard)(nil)

// PeriphBoard is real hardware through periph.io/x/host: pins from gpioreg
// by their configured line, the I²C bus from i2creg. It is safe for
// concurrent use; Close closes the I²C bus.
type PeriphBoard struct {
	cfg BoardConfig

	mu  sync.Mutex
	bus i2c.BusCloser
}

// NewPeriphBoard initializes periph.io's host drivers (host.Init, which is
// idempotent) and returns the board.
func NewPeriphBoard(cfg BoardConfig) (*PeriphBoard, error) {
	if _, err := host.Init(); err != nil {
		return nil, fmt.Errorf("board %q: periph host init: %w", cfg.Name, err)
	}
	return &PeriphBoard{cfg: cfg}, nil
}

// Pin returns the gpioreg pin named p.Line.
func (b *PeriphBoard) Pin(p PinConfig) (gpio.PinIO, error) {
	pin := gpioreg.ByName(p.Line)
	if pin == nil {
		return nil, fmt.Errorf("board %q: pin %q: no GPIO line %q on this host", b.cfg.Name, p.Name, p.Line)
	}
	return pin, nil
}

// I2C opens the configured bus on first use.
func (b *PeriphBoard) I2C() (i2c.Bus, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bus != nil {
		return b.bus, nil
	}
	bus, err := i2creg.Open(b.cfg.I2CBus)
	if err != nil {
		return nil, fmt.Errorf("board %q: open I²C bus %q: %w", b.cfg.Name, b.cfg.I2CBus, err)
	}
	b.bus = bus
	return bus, nil
}

// Close closes the I²C bus if it was opened.
func (b *PeriphBoard) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.bus == nil {
		return nil
	}
	err := b.bus.Close()
	b.bus = nil
	return err
}
