package fenrir

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"

	"github.com/loki-iot/loki/internal/fault"
)

// HeaderTimeout carries the caller's remaining deadline as a Go duration
// ("1.5s"); the service bounds the request by it (capped at
// Config.MaxRequestTimeout).
const HeaderTimeout = "Fenrir-Timeout"

// MaxRequestBytes caps a request body.
const MaxRequestBytes = 4 << 10

// Request is the JSON body of every Fenrir request; each operation reads the
// fields it needs (see docs/FENRIR.md) and refuses unknown ones.
type Request struct {
	// Pin is a pin's name or its number in decimal ("led_pin", "17").
	Pin string `json:"pin,omitempty"`
	// Level is 0 or 1 (gpio.write).
	Level *int `json:"level,omitempty"`
	// Mode and Pull (gpio.mode).
	Mode string `json:"mode,omitempty"`
	Pull string `json:"pull,omitempty"`
	// Duty (0..1) and Hz (gpio.pwm; Hz 0 keeps 1000).
	Duty *float64 `json:"duty,omitempty"`
	Hz   float64  `json:"hz,omitempty"`
	// Edge and Timeout, a Go duration (gpio.wait).
	Edge    string `json:"edge,omitempty"`
	Timeout string `json:"timeout,omitempty"`
	// Name of a sensor or actuator (sensor.read, actuator.set).
	Name string `json:"name,omitempty"`
	// Value for actuator.set: "on", "off", "toggle", a boolean, a number
	// (LED brightness 0..1, motor speed -1..1) or {"speed":, "direction":}.
	Value any `json:"value,omitempty"`
}

// DecodeRequest decodes a request body, refusing unknown fields, trailing
// data and bodies over MaxRequestBytes with INVALID_ARGUMENT. An empty body
// is an empty request. A pin may be written as a name or a number
// ({"pin": "aux"}, {"pin": 5}).
func DecodeRequest(data []byte) (Request, error) {
	if len(data) == 0 {
		return Request{}, nil
	}
	if len(data) > MaxRequestBytes {
		return Request{}, fault.New(fault.InvalidArgument, "request is %d bytes: at most %d", len(data), MaxRequestBytes)
	}
	// The outer Pin shadows Request.Pin, so a number is accepted too.
	var w struct {
		Request
		Pin json.RawMessage `json:"pin,omitempty"`
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return Request{}, fault.New(fault.InvalidArgument, "request body: field %q: want %s, got a JSON %s", strings.TrimPrefix(te.Field, "Request."), jsonKind(te.Type.Kind().String()), te.Value)
		}
		return Request{}, fault.New(fault.InvalidArgument, "request body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return Request{}, fault.New(fault.InvalidArgument, "request body: trailing data after the JSON object")
	}
	r := w.Request
	pin, err := pinRef(w.Pin)
	if err != nil {
		return Request{}, err
	}
	r.Pin = pin
	return r, nil
}

// pinRef reads a pin written as a JSON string or a whole number.
func pinRef(raw json.RawMessage) (string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	if raw[0] == '"' {
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return "", fault.New(fault.InvalidArgument, "request body: field \"pin\": %v", err)
		}
		return s, nil
	}
	n, err := strconv.ParseFloat(string(raw), 64)
	if err != nil || n != math.Trunc(n) || n < 0 || n > 4095 {
		return "", fault.New(fault.InvalidArgument, "request body: field \"pin\": want a pin name or a number from 0 to 4095, got %.20s", raw)
	}
	return strconv.Itoa(int(n)), nil
}

// jsonKind names a Go kind as the JSON a user should have written.
func jsonKind(kind string) string {
	switch kind {
	case "string":
		return "a string"
	case "int", "int64":
		return "a whole number"
	case "float64":
		return "a number"
	case "bool":
		return "a boolean"
	}
	return "a " + kind
}
