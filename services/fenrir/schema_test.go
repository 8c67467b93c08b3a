package fenrir_test

import (
	"testing"

	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/schematest"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/fenrir"
)

// TestSchema: Fenrir's JSON bodies are the messages in proto/loki/v1/fenrir.proto.
func TestSchema(t *testing.T) {
	level, duty := 1, 0.5
	pin := hardware.PinState{Name: "aux", Number: 5, Mode: "out", Pull: "none", Level: 1, Duty: 0.25, Hz: 2000, WiredTo: "led"}
	act := hardware.ActuatorState{Name: "fan", Kind: "motor", On: true, Level: 0.5, Direction: "reverse"}
	schematest.Check(t, fenrir.Request{Pin: "aux", Level: &level, Mode: "in", Pull: "up", Duty: &duty, Hz: 100,
		Edge: "rising", Timeout: "1s", Name: "fan", Value: map[string]any{"speed": 0.5}}, &lokiv1.FenrirRequest{})
	schematest.Check(t, pin, &lokiv1.FenrirPinState{})
	schematest.Check(t, hardware.Edge{Pin: "button", Edge: true, Level: 1, At: 1.5}, &lokiv1.FenrirEdge{})
	schematest.Check(t, hardware.Reading{Sensor: "t", Kind: "temperature", Value: 21.5, Unit: "°C", At: 1.5}, &lokiv1.FenrirReading{})
	schematest.Check(t, act, &lokiv1.FenrirActuatorState{})
	schematest.Check(t, hardware.BoardInfo{Name: "sim", Backend: "sim", Pins: []hardware.PinState{pin},
		Sensors:   []hardware.SensorInfo{{Name: "motion", Kind: "motion", Driver: "pir", Unit: "x", Pin: "pir_pin"}},
		Actuators: []hardware.ActuatorState{act}}, &lokiv1.FenrirBoardInfo{})
}
