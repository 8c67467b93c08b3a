package fenrir

import (
	"fmt"

	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/i2c"
)

// Board is where a board's pins and I²C bus come from: real hardware
// (PeriphBoard) or periph.io's fakes (SimBoard). Everything above it — pin
// state, edge waits, the BME280 driver, actuators — is the same code for
// both.
type Board interface {
	// Pin returns the GPIO line of p.
	Pin(p PinConfig) (gpio.PinIO, error)
	// I2C returns the board's I²C bus, for its BME280/BMP280 sensors.
	I2C() (i2c.Bus, error)
	// Close releases the board's resources.
	Close() error
}

// OpenBoard returns the Board for cfg's backend.
func OpenBoard(cfg BoardConfig) (Board, error) {
	switch cfg.Backend {
	case BackendSim:
		return NewSimBoard(cfg), nil
	case BackendPeriph:
		return NewPeriphBoard(cfg)
	}
	return nil, fmt.Errorf("%w: board %q: backend %q: must be %q or %q", ErrConfig, cfg.Name, cfg.Backend, BackendSim, BackendPeriph)
}
