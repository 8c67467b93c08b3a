package jotunheim

import (
	"encoding/json"

	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	lua "github.com/yuin/gopher-lua"
	"google.golang.org/protobuf/types/known/structpb"
)

// grantModule is the grant module of devices: jotunheim:<device> covers
// one device, jotunheim (or jotunheim:*) every device.
const grantModule = "jotunheim"

// maxArgsBytes caps the JSON of a value or args table from a script.
const maxArgsBytes = 16 << 10

// module is the Lua module "jotunheim": a client of the device service.
type module struct {
	c *Client
}

var _ engine.Module = (*module)(nil)

// NewModule returns the Lua module "jotunheim" for the Loki engine:
// jotunheim.read(device, sensor), jotunheim.set(device, actuator, value)
// and jotunheim.command(device, name [, args]). Each is one devices.cmd
// request carrying the script's remaining deadline, sent after the tool's
// grants are checked (jotunheim:<device>, or jotunheim for every device).
// jotunheim.stream_read(device, source [, opts]) reads a device stream
// directly (module_streams.go), under the same grants.
// Failures raise Lua errors starting with the code, e.g. "UNAVAILABLE:
// device demo is offline ...". nc is owned by the caller.
func NewModule(nc *nats.Conn) engine.Module { return &module{c: NewClient(nc)} }

// Name is the global the module is bound to in scripts.
func (m *module) Name() string { return grantModule }

// Open builds the module table for one execution.
func (m *module) Open(L *lua.LState, c *engine.Call) lua.LValue {
	return engine.FuncTable(L, c, map[string]engine.ModuleFunc{
		"read": m.read, "set": m.set, "command": m.command, "stream_read": m.streamRead,
	})
}

func badArg(L *lua.LState, fn string, n int, format string, args ...any) int {
	return engine.ArgError(L, grantModule, fn, n, format, args...)
}

// deviceArg returns argument n, a device id.
func deviceArg(L *lua.LState, fn string, n int) string {
	s, ok := L.Get(n).(lua.LString)
	if !ok {
		badArg(L, fn, n, "device must be a string, got %s", L.Get(n).Type())
	}
	if err := subjects.ValidDeviceID(string(s)); err != nil {
		badArg(L, fn, n, "device %q must be 1 to 64 of [A-Za-z0-9_-]", trunc(string(s)))
	}
	return string(s)
}

// stringArg returns argument n, a string of 1 to 64 of [A-Za-z0-9_-] (an
// entity), or of 1 to 64 bytes (a command name).
func stringArg(L *lua.LState, fn string, n int, what string, entity bool) string {
	s, ok := L.Get(n).(lua.LString)
	if !ok {
		badArg(L, fn, n, "%s must be a string, got %s", what, L.Get(n).Type())
	}
	if entity {
		if err := subjects.ValidEntity(string(s)); err != nil {
			badArg(L, fn, n, "%s %q must be 1 to 64 of [A-Za-z0-9_-]", what, trunc(string(s)))
		}
	} else if len(s) == 0 || len(s) > 64 {
		badArg(L, fn, n, "%s must be 1 to 64 bytes, got %d", what, len(s))
	}
	return string(s)
}

// toJSONValue converts a script's value to a JSON-shaped Go value.
func toJSONValue(L *lua.LState, fn string, n int, what string, lv lua.LValue) any {
	b, err := engine.MarshalLua(lv, maxArgsBytes)
	if err != nil {
		badArg(L, fn, n, "%s: %s", what, fault.MessageOf(err))
	}
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		badArg(L, fn, n, "%s: %v", what, err)
	}
	return v
}

// do checks the grant for device and sends cmd, pushing the result's data.
func (m *module) do(L *lua.LState, c *engine.Call, device string, cmd *jv1.Command) int {
	if err := c.Grants.Check(grantModule, "", device); err != nil {
		return engine.RaiseError(L, err)
	}
	data, err := m.c.Command(c.Ctx, device, cmd)
	if err != nil {
		return engine.RaiseError(L, err)
	}
	var v any
	if err := json.Unmarshal(data, &v); err != nil {
		return engine.RaiseError(L, fault.Wrap(fault.Internal, err, "decode device %s result: %v", device, err))
	}
	lv, err := engine.ToLua(L, v)
	if err != nil {
		return engine.RaiseError(L, err)
	}
	L.Push(lv)
	return 1
}

// read(device, sensor) → the sensor's value
func (m *module) read(L *lua.LState, c *engine.Call) int {
	device, sensor := deviceArg(L, "read", 1), stringArg(L, "read", 2, "sensor", true)
	return m.do(L, c, device, &jv1.Command{Name: "read", Entity: sensor})
}

// set(device, actuator, value) → the actuator's state
func (m *module) set(L *lua.LState, c *engine.Call) int {
	device, actuator := deviceArg(L, "set", 1), stringArg(L, "set", 2, "actuator", true)
	if L.Get(3) == lua.LNil {
		return badArg(L, "set", 3, "value is required")
	}
	args, err := structpb.NewStruct(map[string]any{"value": toJSONValue(L, "set", 3, "value", L.Get(3))})
	if err != nil {
		return badArg(L, "set", 3, "value: %v", err)
	}
	return m.do(L, c, device, &jv1.Command{Name: "set", Entity: actuator, Args: args})
}

// command(device, name [, args]) → the result's data
func (m *module) command(L *lua.LState, c *engine.Call) int {
	device, name := deviceArg(L, "command", 1), stringArg(L, "command", 2, "name", false)
	cmd := &jv1.Command{Name: name}
	switch lv := L.Get(3).(type) {
	case *lua.LNilType:
	case *lua.LTable:
		obj, ok := toJSONValue(L, "command", 3, "args", lv).(map[string]any)
		if !ok {
			return badArg(L, "command", 3, "args must be a table with string keys, got a list")
		}
		args, err := structpb.NewStruct(obj)
		if err != nil {
			return badArg(L, "command", 3, "args: %v", err)
		}
		cmd.Args = args
	default:
		return badArg(L, "command", 3, "args must be a table or nil, got %s", lv.Type())
	}
	return m.do(L, c, device, cmd)
}

// trunc shortens s for an error message.
func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}
