package subjects

import (
	"fmt"
	"regexp"
)

// Fenrir service subjects. Every subject carries the board name,
// fenrir.<board>.<area>.<op>, because a board's pins are wired to one host:
// the Fenrir instance on that host is the only one that can serve them, so
// many instances (one per host) share the bus without sharing work. The
// request and reply bodies are JSON; see docs/FENRIR.md.
const (
	// FenrirService is the NATS micro service name of the hardware service.
	FenrirService = "fenrir"
	// FenrirQueueGroup is the queue group of every Fenrir endpoint. Subjects
	// are per board, so it only groups instances serving the same board name
	// (a misconfiguration): each request is then acted on once, not twice.
	FenrirQueueGroup = "fenrir"
	// FenrirPrefix prefixes every Fenrir subject.
	FenrirPrefix = "fenrir"
	// FenrirAll matches every Fenrir subject.
	FenrirAll = FenrirPrefix + ".>"
)

// Fenrir operations: the tokens after fenrir.<board>.
const (
	// FenrirGPIORead reads a pin's level.
	FenrirGPIORead = "gpio.read"
	// FenrirGPIOWrite drives an output pin high or low.
	FenrirGPIOWrite = "gpio.write"
	// FenrirGPIOMode sets a pin's direction and pull.
	FenrirGPIOMode = "gpio.mode"
	// FenrirGPIOPWM sets a pin's PWM duty and frequency.
	FenrirGPIOPWM = "gpio.pwm"
	// FenrirGPIOWait waits for an edge on an input pin, with a timeout.
	FenrirGPIOWait = "gpio.wait"
	// FenrirSensorRead reads a named sensor.
	FenrirSensorRead = "sensor.read"
	// FenrirActuatorSet drives a named actuator (LED, relay, motor).
	FenrirActuatorSet = "actuator.set"
	// FenrirBoardList describes the board's pins, sensors and actuators.
	FenrirBoardList = "board.list"
)

// FenrirOps lists every Fenrir operation.
var FenrirOps = []string{
	FenrirGPIORead, FenrirGPIOWrite, FenrirGPIOMode, FenrirGPIOPWM, FenrirGPIOWait,
	FenrirSensorRead, FenrirActuatorSet, FenrirBoardList,
}

// fenrirName is the shape of board, pin, sensor and actuator names: a NATS
// token and a grant scope segment.
var fenrirName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidFenrirName returns an error unless name can name a Fenrir board, pin,
// sensor or actuator: 1 to 64 of [A-Za-z0-9_-].
func ValidFenrirName(name string) error {
	if !fenrirName.MatchString(name) {
		return fmt.Errorf("%w: name %q must be 1 to 64 of [A-Za-z0-9_-]", ErrInvalidToken, name)
	}
	return nil
}

// FenrirOp returns the subject of operation op (one of FenrirOps) on board:
// fenrir.<board>.<op>.
func FenrirOp(board, op string) (string, error) {
	if err := ValidFenrirName(board); err != nil {
		return "", err
	}
	for _, o := range FenrirOps {
		if o == op {
			return FenrirPrefix + "." + board + "." + op, nil
		}
	}
	return "", fmt.Errorf("%w: unknown fenrir operation %q", ErrInvalidToken, op)
}
