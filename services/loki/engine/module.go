package engine

import (
	"encoding/json"

	"github.com/loki-iot/loki/internal/fault"
	lua "github.com/yuin/gopher-lua"
)

// ToLua converts a JSON-shaped Go value (nil, bool, float64, string, []any,
// map[string]any) to a Lua value, for modules returning data to scripts.
// Nesting deeper than MaxDepth is an INVALID_ARGUMENT error.
func ToLua(L *lua.LState, v any) (lua.LValue, error) {
	return toLua(L, v, 0)
}

// MarshalLua encodes a Lua value as JSON by the rules tool results follow:
// tables with keys 1..n are arrays, tables with string keys objects, {} an
// empty object; NaN, infinities, functions, mixed or sparse tables, cycles
// and nesting beyond MaxDepth are SCRIPT_ERROR, output over maxBytes
// RESOURCE_EXHAUSTED. Modules use it for values scripts pass in.
func MarshalLua(v lua.LValue, maxBytes int) ([]byte, error) {
	e := encoder{max: maxBytes}
	return e.encode(v, Any, "value")
}

// FromLua converts a Lua value to a JSON-shaped Go value, by MarshalLua's
// rules, with a 16 MiB cap.
func FromLua(v lua.LValue) (any, error) {
	b, err := MarshalLua(v, 16<<20)
	if err != nil {
		return nil, err
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, fault.Wrap(fault.Internal, err, "decode converted value: %v", err)
	}
	return out, nil
}
