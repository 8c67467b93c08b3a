// Package hardware is one implementation of a board: its configuration
// (LoadBoards, ParseBoards, SimBoardConfig), where its pins and I²C bus come
// from (Board: PeriphBoard for real hardware through periph.io, SimBoard
// built from periph.io's fakes) and the runtime that drives them (Device:
// pins, PWM, edge waits, BME280/BMP280 and PIR sensors, LEDs, relays and
// motors). Fenrir serves a Device over NATS; the Jotunheim device agent
// serves one over MQTT. The package imports no NATS and no Lua, so it can
// run on a device (a test checks its dependencies).
//
// Errors of a Device operation are *fault.Error values: INVALID_ARGUMENT for
// a bad argument, NOT_FOUND for an unknown pin, sensor or actuator,
// FAILED_PRECONDITION for an operation the pin's state forbids, UNAVAILABLE
// when the hardware itself fails.
package hardware

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
