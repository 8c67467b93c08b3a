package hardware

import "time"

// The result types below are also Fenrir's JSON wire format (the messages
// of proto/loki/v1/fenrir.proto): their JSON tags must not change.

// PinState is a pin as Device.Read, Write, SetMode and PWM answer it (Fenrir's
// gpio.read, gpio.write, gpio.mode and gpio.pwm), and as Device.Info lists it.
type PinState struct {
	// Name and Number are the pin's configured name and number.
	Name   string `json:"name"`
	Number int    `json:"number"`
	// Mode is ModeIn or ModeOut; Pull is PullUp, PullDown or PullNone.
	Mode string `json:"mode"`
	Pull string `json:"pull"`
	// Level is the line's level, 0 or 1.
	Level int `json:"level"`
	// Duty and Hz are set while the pin outputs PWM.
	Duty float64 `json:"duty,omitempty"`
	Hz   float64 `json:"hz,omitempty"`
	// WiredTo names the sensor or actuator on the pin, if any.
	WiredTo string `json:"wired_to,omitempty"`
}

// Edge is the answer of Device.WaitEdge (Fenrir's gpio.wait). On timeout
// Edge is false and Level is the pin's level then: a timeout is a result,
// not an error. At is Unix time in seconds.
type Edge struct {
	Pin   string  `json:"pin"`
	Edge  bool    `json:"edge"`
	Level int     `json:"level"`
	At    float64 `json:"at"`
}

// Reading is a sensor value (Device.ReadSensor): Value is a float64 (°C,
// %RH, hPa, rounded to 2 decimals) or, for motion, a bool; Unit is "" for
// motion; At is Unix time in seconds.
type Reading struct {
	Sensor string  `json:"sensor"`
	Kind   string  `json:"kind"`
	Value  any     `json:"value"`
	Unit   string  `json:"unit"`
	At     float64 `json:"at"`
}

// ActuatorState is an actuator's state after Device.SetActuator, and as
// Device.Info lists it. Level is 0..1: brightness of an LED, 0 or 1 for a
// relay, speed of a motor (Direction "forward" or "reverse"; "" for other
// kinds).
type ActuatorState struct {
	Name      string  `json:"name"`
	Kind      string  `json:"kind"`
	On        bool    `json:"on"`
	Level     float64 `json:"level"`
	Direction string  `json:"direction,omitempty"`
}

// SensorInfo describes a configured sensor in BoardInfo.
type SensorInfo struct {
	Name   string `json:"name"`
	Kind   string `json:"kind"`
	Driver string `json:"driver"`
	Unit   string `json:"unit"`
	Pin    string `json:"pin,omitempty"`
}

// BoardInfo describes a whole board (Device.Info, Fenrir's board.list): its
// pins, sensors and actuators in config order, with their current state.
// The slices are never nil, so they encode as [] rather than null.
type BoardInfo struct {
	Name      string          `json:"name"`
	Backend   string          `json:"backend"`
	Pins      []PinState      `json:"pins"`
	Sensors   []SensorInfo    `json:"sensors"`
	Actuators []ActuatorState `json:"actuators"`
}

func unixSeconds(t time.Time) float64 { return float64(t.UnixNano()) / 1e9 }
