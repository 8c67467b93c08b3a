package fenrir

import (
	"encoding/json"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	lua "github.com/yuin/gopher-lua"
)

// Grant module and areas: fenrir:<board> covers a whole board,
// fenrir:<board>/<pin-or-name> one pin, sensor or actuator; an area
// narrows a grant to one kind of call (fenrir.sensor:<board>).
const (
	grantModule  = "fenrir"
	areaGPIO     = "gpio"
	areaSensor   = "sensor"
	areaActuator = "actuator"
	areaBoard    = "board"
)

// trunc shortens s for error messages.
func trunc(s string) string {
	if len(s) <= 64 {
		return s
	}
	return s[:64] + "..."
}

// maxActuatorValueBytes caps the JSON of an actuator value from a script.
const maxActuatorValueBytes = 1 << 10

// module is the Lua module "fenrir": a client of Fenrir over NATS.
type module struct {
	c *Client
}

var _ engine.Module = (*module)(nil)

// NewModule returns the Lua module "fenrir" for the Loki engine. Every call
// is one NATS request to the instance serving the board, carrying the
// script's remaining deadline; the tool's grants are checked before
// anything is sent. Failures raise Lua errors starting with the code, e.g.
// "PERMISSION_DENIED: ...". nc is owned by the caller.
func NewModule(nc *nats.Conn) engine.Module { return &module{c: NewClient(nc)} }

// Name is the global the module is bound to in scripts.
func (m *module) Name() string { return "fenrir" }

// Open builds the module table for one execution.
func (m *module) Open(L *lua.LState, c *engine.Call) lua.LValue {
	t := L.CreateTable(0, 4)
	t.RawSetString("gpio", engine.FuncTable(L, c, map[string]engine.ModuleFunc{
		"read": m.gpioRead, "write": m.gpioWrite, "mode": m.gpioMode, "pwm": m.gpioPWM, "wait": m.gpioWait,
	}))
	t.RawSetString("sensor", engine.FuncTable(L, c, map[string]engine.ModuleFunc{"read": m.sensorRead}))
	t.RawSetString("actuator", engine.FuncTable(L, c, map[string]engine.ModuleFunc{"set": m.actuatorSet}))
	t.RawSetString("board", engine.FuncTable(L, c, map[string]engine.ModuleFunc{"list": m.boardList}))
	return t
}

// fail raises err in L; it does not return.
var fail = engine.RaiseError

func badArg(L *lua.LState, fn string, n int, format string, args ...any) int {
	return engine.ArgError(L, "fenrir", fn, n, format, args...)
}

// boardArg returns argument n, a board name.
func boardArg(L *lua.LState, fn string, n int) string {
	s, ok := L.Get(n).(lua.LString)
	if !ok {
		badArg(L, fn, n, "board must be a string, got %s", L.Get(n).Type())
	}
	if err := subjects.ValidFenrirName(string(s)); err != nil {
		badArg(L, fn, n, "board %q must be 1 to 64 of [A-Za-z0-9_-]", trunc(string(s)))
	}
	return string(s)
}

// nameArg returns argument n, the name of a sensor or actuator.
func nameArg(L *lua.LState, fn string, n int, what string) string {
	s, ok := L.Get(n).(lua.LString)
	if !ok {
		badArg(L, fn, n, "%s must be a string, got %s", what, L.Get(n).Type())
	}
	if err := subjects.ValidFenrirName(string(s)); err != nil {
		badArg(L, fn, n, "%s %q must be 1 to 64 of [A-Za-z0-9_-]", what, trunc(string(s)))
	}
	return string(s)
}

// pinArg returns argument n, a pin name or a non-negative integer number,
// as the string the protocol carries.
func pinArg(L *lua.LState, fn string, n int) string {
	switch v := L.Get(n).(type) {
	case lua.LNumber:
		f := float64(v)
		if f != math.Trunc(f) || f < 0 || f > 4095 {
			badArg(L, fn, n, "pin number %v must be an integer from 0 to 4095", f)
		}
		return strconv.Itoa(int(f))
	case lua.LString:
		if err := subjects.ValidFenrirName(string(v)); err != nil {
			badArg(L, fn, n, "pin %q must be a pin name or number", trunc(string(v)))
		}
		return string(v)
	default:
		badArg(L, fn, n, "pin must be a name or a number, got %s", v.Type())
	}
	return ""
}

// number returns argument n, a finite number (def when nil and optional).
func number(L *lua.LState, fn string, n int, what string, optional bool, def float64) float64 {
	switch v := L.Get(n).(type) {
	case lua.LNumber:
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) {
			badArg(L, fn, n, "%s must be a finite number, got %v", what, f)
		}
		return f
	case *lua.LNilType:
		if optional {
			return def
		}
	}
	badArg(L, fn, n, "%s must be a number, got %s", what, L.Get(n).Type())
	return 0
}

// optString returns argument n, a string, or def when nil.
func optString(L *lua.LState, fn string, n int, what, def string) string {
	switch v := L.Get(n).(type) {
	case lua.LString:
		return string(v)
	case *lua.LNilType:
		return def
	}
	badArg(L, fn, n, "%s must be a string, got %s", what, L.Get(n).Type())
	return ""
}

// check raises PERMISSION_DENIED unless the tool may use area on the
// thing ref of board (or on the whole board when ref is ""). A pin granted
// by name may be used by number and the other way round: when the grant
// does not cover ref as written, the board's layout resolves the alias.
func (m *module) check(L *lua.LState, c *engine.Call, area, board, ref string) {
	scope := board
	if ref != "" {
		scope = board + "/" + ref
	}
	if c.Grants.Allows(grantModule, area, scope) {
		return
	}
	if ref != "" && area == areaGPIO && m.hasPinGrants(c, board) {
		info, err := m.c.List(c.Ctx, board)
		if err != nil {
			fail(L, err)
		}
		for _, p := range info.Pins {
			if ref == p.Name || ref == strconv.Itoa(p.Number) {
				for _, alias := range []string{p.Name, strconv.Itoa(p.Number)} {
					if c.Grants.Allows(grantModule, area, board+"/"+alias) {
						return
					}
				}
			}
		}
	}
	fail(L, c.Grants.Check(grantModule, area, scope))
}

// hasPinGrants reports whether some grant names one thing of board, so an
// alias lookup can matter.
func (m *module) hasPinGrants(c *engine.Call, board string) bool {
	for _, g := range c.Grants {
		if g.Module == grantModule && (g.Area == "" || g.Area == areaGPIO) && strings.HasPrefix(g.Scope, board+"/") {
			return true
		}
	}
	return false
}

// push converts a JSON answer to Lua and pushes it.
func push(L *lua.LState, op string, data []byte) {
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		fail(L, fault.Wrap(fault.Internal, err, "decode fenrir %s reply: %v", op, err))
	}
	lv, err := engine.ToLua(L, v)
	if err != nil {
		fail(L, err)
	}
	L.Push(lv)
}

func (m *module) do(L *lua.LState, c *engine.Call, board, op string, req Request) []byte {
	data, err := m.c.Do(c.Ctx, board, op, req)
	if err != nil {
		fail(L, err)
	}
	return data
}

// gpio.read(board, pin) → level (0 or 1)
func (m *module) gpioRead(L *lua.LState, c *engine.Call) int {
	board, pin := boardArg(L, "gpio.read", 1), pinArg(L, "gpio.read", 2)
	m.check(L, c, areaGPIO, board, pin)
	var st hardware.PinState
	if err := json.Unmarshal(m.do(L, c, board, subjects.FenrirGPIORead, Request{Pin: pin}), &st); err != nil {
		return fail(L, fault.Wrap(fault.Internal, err, "decode fenrir gpio.read reply: %v", err))
	}
	L.Push(lua.LNumber(st.Level))
	return 1
}

// gpio.write(board, pin, level) with level 0, 1, true or false → pin state
func (m *module) gpioWrite(L *lua.LState, c *engine.Call) int {
	board, pin := boardArg(L, "gpio.write", 1), pinArg(L, "gpio.write", 2)
	var level int
	switch v := L.Get(3).(type) {
	case lua.LBool:
		if v {
			level = 1
		}
	case lua.LNumber:
		if v != 0 && v != 1 {
			return badArg(L, "gpio.write", 3, "level must be 0, 1, true or false, got %v", float64(v))
		}
		level = int(v)
	default:
		return badArg(L, "gpio.write", 3, "level must be 0, 1, true or false, got %s", v.Type())
	}
	m.check(L, c, areaGPIO, board, pin)
	push(L, subjects.FenrirGPIOWrite, m.do(L, c, board, subjects.FenrirGPIOWrite, Request{Pin: pin, Level: &level}))
	return 1
}

// gpio.mode(board, pin, mode [, pull]) → pin state
func (m *module) gpioMode(L *lua.LState, c *engine.Call) int {
	board, pin := boardArg(L, "gpio.mode", 1), pinArg(L, "gpio.mode", 2)
	mode := optString(L, "gpio.mode", 3, "mode", "")
	pull := optString(L, "gpio.mode", 4, "pull", "")
	m.check(L, c, areaGPIO, board, pin)
	push(L, subjects.FenrirGPIOMode, m.do(L, c, board, subjects.FenrirGPIOMode, Request{Pin: pin, Mode: mode, Pull: pull}))
	return 1
}

// gpio.pwm(board, pin, duty [, hz]) → pin state
func (m *module) gpioPWM(L *lua.LState, c *engine.Call) int {
	board, pin := boardArg(L, "gpio.pwm", 1), pinArg(L, "gpio.pwm", 2)
	duty := number(L, "gpio.pwm", 3, "duty", false, 0)
	hz := number(L, "gpio.pwm", 4, "hz", true, 0)
	m.check(L, c, areaGPIO, board, pin)
	push(L, subjects.FenrirGPIOPWM, m.do(L, c, board, subjects.FenrirGPIOPWM, Request{Pin: pin, Duty: &duty, Hz: hz}))
	return 1
}

// gpio.wait(board, pin [, edge [, timeout_seconds]]) → edge seen (boolean), level
func (m *module) gpioWait(L *lua.LState, c *engine.Call) int {
	board, pin := boardArg(L, "gpio.wait", 1), pinArg(L, "gpio.wait", 2)
	edge := optString(L, "gpio.wait", 3, "edge", hardware.EdgeBoth)
	secs := number(L, "gpio.wait", 4, "timeout_seconds", true, 1)
	if secs <= 0 || secs > float64(math.MaxInt64/int64(time.Second)) {
		return badArg(L, "gpio.wait", 4, "timeout_seconds must be above 0, got %v", secs)
	}
	timeout := time.Duration(secs * float64(time.Second))
	if dl, ok := c.Ctx.Deadline(); ok {
		timeout = max(min(timeout, time.Until(dl)), time.Millisecond)
	}
	m.check(L, c, areaGPIO, board, pin)
	var e hardware.Edge
	data := m.do(L, c, board, subjects.FenrirGPIOWait, Request{Pin: pin, Edge: edge, Timeout: timeout.String()})
	if err := json.Unmarshal(data, &e); err != nil {
		return fail(L, fault.Wrap(fault.Internal, err, "decode fenrir gpio.wait reply: %v", err))
	}
	L.Push(lua.LBool(e.Edge))
	L.Push(lua.LNumber(e.Level))
	return 2
}

// sensor.read(board, name) → {value=, unit=, at=, kind=, sensor=}
func (m *module) sensorRead(L *lua.LState, c *engine.Call) int {
	board, name := boardArg(L, "sensor.read", 1), nameArg(L, "sensor.read", 2, "sensor")
	m.check(L, c, areaSensor, board, name)
	push(L, subjects.FenrirSensorRead, m.do(L, c, board, subjects.FenrirSensorRead, Request{Name: name}))
	return 1
}

// actuator.set(board, name, value) → actuator state
func (m *module) actuatorSet(L *lua.LState, c *engine.Call) int {
	board, name := boardArg(L, "actuator.set", 1), nameArg(L, "actuator.set", 2, "actuator")
	lv := L.Get(3)
	if lv == lua.LNil {
		return badArg(L, "actuator.set", 3, "value is required (\"on\", \"off\", \"toggle\", a boolean, a number or {speed=, direction=})")
	}
	b, err := engine.MarshalLua(lv, maxActuatorValueBytes)
	if err != nil {
		return badArg(L, "actuator.set", 3, "value: %s", fault.MessageOf(err))
	}
	var value any
	if err := json.Unmarshal(b, &value); err != nil {
		return badArg(L, "actuator.set", 3, "value: %v", err)
	}
	m.check(L, c, areaActuator, board, name)
	push(L, subjects.FenrirActuatorSet, m.do(L, c, board, subjects.FenrirActuatorSet, Request{Name: name, Value: value}))
	return 1
}

// board.list(board) → {name=, backend=, pins=, sensors=, actuators=}
func (m *module) boardList(L *lua.LState, c *engine.Call) int {
	board := boardArg(L, "board.list", 1)
	m.check(L, c, areaBoard, board, "")
	push(L, subjects.FenrirBoardList, m.do(L, c, board, subjects.FenrirBoardList, Request{}))
	return 1
}
