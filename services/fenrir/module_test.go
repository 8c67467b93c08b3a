package fenrir_test

import (
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/services/fenrir"
	"github.com/loki-iot/loki/services/loki"
	"periph.io/x/conn/v3/gpio"
)

// lokiEnv is Fenrir with the sim board and a Loki replica with the fenrir
// module, on one server.
type lokiEnv struct {
	*env
	loki *loki.Client
}

func setupLoki(t testing.TB, tools []*loki.Compiled) *lokiEnv {
	t.Helper()
	e := setup(t)
	lokitest.Register(t, e.srv, tools)
	return &lokiEnv{env: e, loki: lokitest.Start(t, e.srv, fenrir.NewModule)}
}

func (e *lokiEnv) call(t testing.TB, tool, args string) (any, error) {
	t.Helper()
	return lokitest.Call(t, e.loki, tool, args)
}

// tool is a TOML tool that runs script with grants and takes optional
// params board, pin, name and value of any type.
func tool(name, grants, script string) string {
	return `
[[tools]]
name = "` + name + `"
returns = "any"
grants = [` + grants + `]
script = '''` + script + `'''
  [[tools.params]]
  name = "pin"
  type = "any"
  [[tools.params]]
  name = "value"
  type = "any"
  [[tools.params]]
  name = "board"
  type = "string"
  default = "sim"
`
}

func TestModule(t *testing.T) {
	src := tool("write_read", `"fenrir:sim"`, `
fenrir.gpio.write(board, pin, value)
return fenrir.gpio.read(board, pin)`) +
		tool("pwm", `"fenrir:sim"`, `return fenrir.gpio.pwm(board, pin, value, 500)`) +
		tool("mode", `"fenrir:sim"`, `return fenrir.gpio.mode(board, pin, value, "down")`) +
		tool("wait", `"fenrir:sim"`, `local edge, level = fenrir.gpio.wait(board, pin, "both", value) return {edge = edge, level = level}`) +
		tool("sensor", `"fenrir.sensor:sim"`, `return fenrir.sensor.read(board, value)`) +
		tool("actuate", `"fenrir.actuator:sim"`, `return fenrir.actuator.set(board, pin, value)`) +
		tool("list", `"fenrir.board:sim"`, `local b = fenrir.board.list(board) return {name = b.name, pins = #b.pins}`) +
		tool("aux_only", `"fenrir.gpio:sim/aux"`, `return fenrir.gpio.write(board, pin, 1).level`) +
		tool("no_grant", ``, `return fenrir.gpio.read(board, pin)`) +
		tool("sensor_only", `"fenrir.sensor:sim"`, `return fenrir.actuator.set(board, "led", "on")`) +
		tool("any_board", `"fenrir:*"`, `return fenrir.gpio.read(board, pin)`) +
		tool("caught", `"fenrir:sim"`, `local ok, err = pcall(fenrir.gpio.write, board, pin, 1) return {ok = ok, err = err}`)
	e := setupLoki(t, lokitest.Parse(t, src))

	tests := []struct {
		name, tool, args string
		want             any
		wantCode         fault.Code
		wantMsg          string
	}{
		{name: "write and read by name", tool: "write_read", args: `{"pin":"aux","value":1}`, want: 1.0},
		{name: "write false by number", tool: "write_read", args: `{"pin":5,"value":false}`, want: 0.0},
		{name: "write true", tool: "write_read", args: `{"pin":"aux","value":true}`, want: 1.0},
		{name: "level 2", tool: "write_read", args: `{"pin":"aux","value":2}`, wantCode: fault.ScriptError, wantMsg: "fenrir.gpio.write: argument #3"},
		{name: "fractional pin", tool: "write_read", args: `{"pin":1.5,"value":1}`, wantCode: fault.ScriptError, wantMsg: "pin number 1.5"},
		{name: "table as pin", tool: "write_read", args: `{"pin":{},"value":1}`, wantCode: fault.ScriptError, wantMsg: "pin must be a name or a number"},
		{name: "unknown pin", tool: "write_read", args: `{"pin":"nope","value":1}`, wantCode: fault.NotFound, wantMsg: `no pin "nope"`},
		{name: "input pin", tool: "write_read", args: `{"pin":"button","value":1}`, wantCode: fault.FailedPrecondition},
		{name: "unserved board", tool: "any_board", args: `{"board":"attic","pin":1}`, wantCode: fault.Unavailable, wantMsg: `board "attic"`},
		// level is the pin's last steady level, from "write true".
		{name: "pwm", tool: "pwm", args: `{"pin":"aux","value":0.5}`, want: map[string]any{"name": "aux", "number": 5.0, "mode": "out", "pull": "none", "level": 1.0, "duty": 0.5, "hz": 500.0}},
		{name: "pwm duty over 1", tool: "pwm", args: `{"pin":"aux","value":3}`, wantCode: fault.ScriptError, wantMsg: "duty must be"},
		{name: "mode", tool: "mode", args: `{"pin":"button","value":"in"}`, want: map[string]any{"name": "button", "number": 23.0, "mode": "in", "pull": "down", "level": 0.0}},
		{name: "bad mode", tool: "mode", args: `{"pin":"button","value":"up"}`, wantCode: fault.ScriptError, wantMsg: `mode "up"`},
		{name: "wait times out", tool: "wait", args: `{"pin":"button","value":0.05}`, want: map[string]any{"edge": false, "level": 0.0}}, // pulled down
		{name: "wait zero", tool: "wait", args: `{"pin":"button","value":0}`, wantCode: fault.ScriptError, wantMsg: "timeout_seconds"},
		{name: "sensor", tool: "sensor", args: `{"value":"motion"}`, want: map[string]any{"sensor": "motion", "kind": "motion", "value": false, "unit": ""}},
		{name: "unknown sensor", tool: "sensor", args: `{"value":"co2"}`, wantCode: fault.NotFound},
		{name: "actuator", tool: "actuate", args: `{"pin":"fan","value":{"speed":0.5,"direction":"reverse"}}`, want: map[string]any{"name": "fan", "kind": "motor", "on": true, "level": 0.5, "direction": "reverse"}},
		{name: "actuator bad value", tool: "actuate", args: `{"pin":"led","value":"bright"}`, wantCode: fault.ScriptError},
		{name: "list", tool: "list", args: `{}`, want: map[string]any{"name": "sim", "pins": float64(len(hardware.SimBoardConfig().Pins))}},
		{name: "pin grant by name", tool: "aux_only", args: `{"pin":"aux"}`, want: 1.0},
		{name: "pin grant by number", tool: "aux_only", args: `{"pin":5}`, want: 1.0},
		{name: "pin grant other pin", tool: "aux_only", args: `{"pin":"button"}`, wantCode: fault.PermissionDenied, wantMsg: "fenrir.gpio:sim/button"},
		{name: "pin grant other number", tool: "aux_only", args: `{"pin":23}`, wantCode: fault.PermissionDenied},
		{name: "no grant", tool: "no_grant", args: `{"pin":"aux"}`, wantCode: fault.PermissionDenied, wantMsg: "fenrir.gpio:sim/aux"},
		{name: "other area", tool: "sensor_only", args: `{}`, wantCode: fault.PermissionDenied, wantMsg: "fenrir.actuator:sim/led"},
		{name: "pcall catches", tool: "caught", args: `{"pin":"button"}`, want: map[string]any{"ok": false, "err": "FAILED_PRECONDITION: board \"sim\": pin \"button\" is an input: set its mode to \"out\" first"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.call(t, tc.tool, tc.args)
			wantCode(t, err, tc.wantCode)
			if err != nil {
				if !strings.Contains(err.Error(), tc.wantMsg) {
					t.Fatalf("got %q, want it to mention %q", err, tc.wantMsg)
				}
				return
			}
			if m, ok := got.(map[string]any); ok {
				delete(m, "at") // a timestamp
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v, want %#v", got, tc.want)
			}
		})
	}
}

// TestExampleTools runs examples/fenrir_tools.toml against the sim board.
func TestExampleTools(t *testing.T) {
	tools, err := loki.LoadTools(filepath.Join("..", "..", "examples", "fenrir_tools.toml"))
	if err != nil {
		t.Fatal(err)
	}
	e := setupLoki(t, tools)

	t.Run("blink", func(t *testing.T) {
		got, err := e.call(t, "blink", `{"times":2,"interval_ms":10}`)
		want := map[string]any{"blinks": 2.0, "stopped_by_button": false}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("got %#v %v, want %#v", got, err, want)
		}
		if l := e.sim.fake(t, "led_pin").Read(); l != gpio.Low {
			t.Fatalf("led after blinking: %v, want Low", l)
		}
		// A press ends a long blink at once.
		e.sim.setInput(t, "button", gpio.Low)
		got, err = e.call(t, "blink", `{"times":100,"interval_ms":60000}`)
		want = map[string]any{"blinks": 1.0, "stopped_by_button": true}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("blink with the button pressed: got %#v %v, want %#v", got, err, want)
		}
	})
	t.Run("climate", func(t *testing.T) {
		got, err := e.call(t, "climate", `{}`)
		if err != nil {
			t.Fatal(err)
		}
		m := got.(map[string]any)
		temp, _ := m["temperature"].(float64)
		hum, _ := m["humidity"].(float64)
		units, _ := m["units"].(map[string]any)
		if temp < 20 || temp > 27 || hum < 60 || hum > 70 || units["temperature"] != "°C" || units["pressure"] != "hPa" {
			t.Fatalf("got %#v, want room temperature and humidity with units", m)
		}
	})
	t.Run("motion_light", func(t *testing.T) {
		got, err := e.call(t, "motion_light", `{"wait_seconds":0.05}`)
		want := map[string]any{"motion": false, "light": false}
		if err != nil || !reflect.DeepEqual(got, want) {
			t.Fatalf("no motion: got %#v %v, want %#v", got, err, want)
		}
		done := make(chan error, 1)
		go func() {
			got, err := e.call(t, "motion_light", `{"wait_seconds":15}`)
			if err == nil && !reflect.DeepEqual(got, map[string]any{"motion": true, "light": true}) {
				t.Errorf("motion: got %#v, want motion and light", got)
			}
			done <- err
		}()
		e.sim.setInput(t, "pir_pin", gpio.High)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if l := e.sim.fake(t, "relay_pin").Read(); l != gpio.High {
			t.Fatalf("relay after motion: %v, want High", l)
		}
	})
}
