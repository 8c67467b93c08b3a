package engine

import lua "github.com/yuin/gopher-lua"

// ModuleFunc is a module function that needs the execution it serves.
type ModuleFunc func(L *lua.LState, c *Call) int

// FuncTable returns a Lua table of fns bound to c: what a Module's Open
// builds for each of its areas (hel.kv, fenrir.gpio, ...).
func FuncTable(L *lua.LState, c *Call, fns map[string]ModuleFunc) *lua.LTable {
	t := L.CreateTable(0, len(fns))
	for name, f := range fns {
		t.RawSetString(name, L.NewFunction(func(L *lua.LState) int { return f(L, c) }))
	}
	return t
}
