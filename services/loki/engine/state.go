package engine

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	lua "github.com/yuin/gopher-lua"
)

// The sandbox.
//
// Each pooled *lua.LState is opened with only the base, table, string, math
// and os libraries, from which the sandbox picks what scripts may use. The
// state's own global table is never shown to a script. Instead every
// execution runs in a fresh, empty environment table:
//
//	env (per execution: whatever the script assigns)
//	  └─ __index → args (per state, unreachable: this execution's params)
//	                 └─ __index → base (per state, unreachable: safe base functions, print, emit)
//	                                └─ __index → resolve (Go function, per state)
//
// Params are looked up in args rather than bound as globals of env, because
// filling a fresh table cost more than the rest of a small script's run.
// args is emptied when the execution ends. env's metatable also has
// __newindex = assign. The first time a script assigns to a param's name, or
// takes _G (the only way to reach env as a value: rawget, rawset, pairs,
// next), the params are copied into env and env's metatable becomes one
// without args or __newindex, so from then on env is exactly what it would be
// had the params been bound as globals from the start; before that no script
// can tell the difference.
//
// resolve creates, on first use within an execution, the per-execution values
// and caches them in env: _G (env itself), params, the library tables and the
// modules. Library tables are per-execution empty proxies whose metatable
// (per state, shared) has __index = the real library table and
// __metatable = false, so `string.upper = nil` or `rawset(string, ...)`
// only touches this execution's proxy, and getmetatable cannot reach the
// real tables. The string metatable is likewise protected, and setmetatable
// only accepts tables, so no script can change the metatable of a builtin
// type. Nothing a script does is visible to the next execution on the state.
//
// Quirks of the proxies, by design: pairs(string) (and pairs over the other
// libraries) iterates nothing, rawget(_G, "pairs") is nil, and assigning nil
// to a built-in global name (`string = nil`) makes it resolve to the built-in
// again instead of staying nil.
//
// Removed from the base library: load, loadstring, loadfile, dofile, require,
// module, collectgarbage, getfenv, setfenv, newproxy, _printregs,
// _GOPHER_LUA_VERSION; io, debug, package, coroutine and channel are never
// opened; os keeps only time, clock and date. print is kept and behaves like
// log.info.

// sandboxGlobals are the global names the sandbox provides.
var sandboxGlobals = map[string]bool{
	"_G": true, "_VERSION": true, "params": true, "emit": true, "print": true, "log": true,
	"string": true, "table": true, "math": true, "os": true,
	"assert": true, "error": true, "getmetatable": true, "ipairs": true, "next": true, "pairs": true,
	"pcall": true, "rawequal": true, "rawget": true, "rawset": true, "select": true,
	"setmetatable": true, "tonumber": true, "tostring": true, "type": true, "unpack": true, "xpcall": true,
}

// baseFuncs are taken unchanged from gopher-lua's base library.
var baseFuncs = []string{
	"assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall", "rawequal",
	"rawget", "rawset", "select", "tonumber", "tostring", "type", "unpack", "xpcall", "_VERSION",
}

const (
	libString = iota
	libTable
	libMath
	libOS
	libLog
	numLibs
)

// state is a pooled Lua state plus the execution it currently serves. It is
// used by one goroutine at a time.
type state struct {
	L      *lua.LState
	en     *Engine
	lim    *Limits
	base   *lua.LTable
	envMT  *lua.LTable // env's metatable once params are bound in env
	lazyMT *lua.LTable // env's metatable while params are looked up in argTab
	argTab *lua.LTable
	// argNames are the param names argTab has held. gopher-lua keeps a key
	// in a table's iteration index after it is deleted, so argTab is
	// replaced once it has seen too many distinct names.
	argNames map[string]struct{}
	libs     [numLibs]*lua.LTable
	libMTs   [numLibs]*lua.LTable
	// concatUV holds the capped `..` the tool's code reaches as its only
	// upvalue (concat.go).
	concatUV *lua.Upvalue

	// The current execution; reset by end.
	ctx     context.Context
	start   time.Time
	timeout time.Duration // Exec.Timeout
	tool    string
	execID  string
	chunk   string
	returns Type
	params  []Param
	args    map[string]any
	grants  Grants
	emitFn  func([]byte) error
	argVals []lua.LValue
	env     *lua.LTable
	call    *Call
	emits   int
}

func (en *Engine) newState() *state {
	L := lua.NewState(lua.Options{
		SkipOpenLibs:     true,
		CallStackSize:    en.lim.CallStackSize,
		RegistrySize:     lua.RegistrySize,
		RegistryMaxSize:  1 << 16,
		RegistryGrowStep: 1024,
	})
	for _, lib := range []struct {
		name string
		open lua.LGFunction
	}{
		{lua.BaseLibName, lua.OpenBase},
		{lua.TabLibName, lua.OpenTable},
		{lua.StringLibName, lua.OpenString},
		{lua.MathLibName, lua.OpenMath},
		{lua.OsLibName, lua.OpenOs},
	} {
		L.Push(L.NewFunction(lib.open))
		L.Push(lua.LString(lib.name))
		L.Call(1, 0)
	}
	g := L.G.Global
	s := &state{L: L, en: en, lim: &en.lim}
	protect := func(index lua.LValue) *lua.LTable {
		mt := L.CreateTable(0, 2)
		mt.RawSetString("__index", index)
		mt.RawSetString("__metatable", lua.LFalse)
		return mt
	}
	lib := func(name string) *lua.LTable { return g.RawGetString(name).(*lua.LTable) }
	fns := func(t *lua.LTable, m map[string]lua.LGFunction) {
		for name, f := range m {
			t.RawSetString(name, L.NewFunction(f))
		}
	}
	keep := func(from *lua.LTable, names ...string) *lua.LTable {
		t := L.CreateTable(0, 32)
		for _, n := range names {
			t.RawSetString(n, from.RawGetString(n))
		}
		return t
	}

	base := L.CreateTable(0, 32)
	for _, name := range baseFuncs {
		base.RawSetString(name, g.RawGetString(name))
	}
	fns(base, map[string]lua.LGFunction{
		"setmetatable": setMetatable,
		"print":        s.logFunc(slog.LevelInfo),
		"emit":         s.emit,
	})
	base.Metatable = protect(L.NewFunction(s.resolve))
	s.base = base
	s.envMT = protect(base)
	s.newArgTab()
	s.lazyMT = protect(s.argTab)
	s.lazyMT.RawSetString("__newindex", L.NewFunction(s.assign))

	str := keep(lib("string"), "byte", "char", "len", "reverse", "sub")
	fns(str, map[string]lua.LGFunction{
		"upper": strUpper, "lower": strLower, "rep": s.strRep, "format": s.strFormat,
		"find": s.strFind, "match": s.strMatch, "gmatch": s.strGmatch, "gsub": s.strGsub,
	})
	L.SetMetatable(lua.LString(""), protect(str))

	tab := keep(lib("table"), "insert", "remove", "getn", "maxn")
	fns(tab, map[string]lua.LGFunction{"concat": s.tabConcat, "sort": s.tabSort})

	math := L.CreateTable(0, 32)
	lib("math").ForEach(func(k, v lua.LValue) {
		if k.String() != "random" && k.String() != "randomseed" {
			math.RawSet(k, v)
		}
	})
	fns(math, map[string]lua.LGFunction{"random": mathRandom, "randomseed": mathRandomseed})

	os := keep(lib("os"), "time", "clock")
	osDate := lib("os").RawGetString("date").(*lua.LFunction).GFunction
	fns(os, map[string]lua.LGFunction{"date": func(L *lua.LState) int {
		if len(L.OptString(1, "")) > maxDateFormat {
			L.ArgError(1, "format longer than 256 bytes")
		}
		return osDate(L)
	}})

	log := L.CreateTable(0, 4)
	fns(log, map[string]lua.LGFunction{
		"debug": s.logFunc(slog.LevelDebug), "info": s.logFunc(slog.LevelInfo),
		"warn": s.logFunc(slog.LevelWarn), "error": s.logFunc(slog.LevelError),
	})

	s.concatUV = &lua.Upvalue{}
	s.concatUV.SetValue(L.NewFunction(s.concat))

	s.libs = [numLibs]*lua.LTable{str, tab, math, os, log}
	for i, t := range s.libs {
		s.libMTs[i] = protect(t)
	}
	return s
}

// maxArgNames bounds the distinct param names argTab accumulates.
const maxArgNames = 1024

func (s *state) newArgTab() {
	if s.argTab == nil {
		s.argTab = s.L.CreateTable(0, 8)
		s.argTab.Metatable = s.L.CreateTable(0, 1)
	} else {
		mt := s.argTab.Metatable
		s.argTab = s.L.CreateTable(0, 8)
		s.argTab.Metatable = mt
		if s.lazyMT != nil {
			s.lazyMT.RawSetString("__index", s.argTab)
		}
	}
	s.argTab.Metatable.(*lua.LTable).RawSetString("__index", s.base)
	s.argNames = make(map[string]struct{})
}

func (s *state) begin(ctx context.Context, e *Exec, start time.Time) {
	s.ctx, s.start, s.timeout = ctx, start, e.Timeout
	s.tool, s.execID, s.chunk = e.Tool, e.ExecID, e.Program.chunk
	s.returns, s.params, s.args, s.grants, s.emitFn = e.Returns, e.Params, e.Args, e.Grants, e.Emit
	s.emits = 0
}

// end drops every reference to the execution so the pooled state retains
// nothing of it.
func (s *state) end() {
	s.ctx = nil
	for i, v := range s.argVals {
		if v != lua.LNil {
			s.argTab.RawSetString(s.params[i].Name, lua.LNil)
		}
	}
	s.params, s.args, s.grants, s.emitFn = nil, nil, nil, nil
	s.env, s.call = nil, nil
	clear(s.argVals)
}

// resolve is the __index of base: it supplies the per-execution globals on
// first use and caches them in the execution's env.
func (s *state) resolve(L *lua.LState) int {
	name, ok := L.Get(2).(lua.LString)
	if !ok || s.env == nil {
		L.Push(lua.LNil)
		return 1
	}
	var v lua.LValue
	switch string(name) {
	case "_G":
		s.bindGlobals()
		v = s.env
	case "params":
		v = s.paramsTable(L)
	case "string":
		v = s.proxy(L, libString)
	case "table":
		v = s.proxy(L, libTable)
	case "math":
		v = s.proxy(L, libMath)
	case "os":
		v = s.proxy(L, libOS)
	case "log":
		v = s.proxy(L, libLog)
	default:
		i, ok := s.en.modIdx[string(name)]
		if !ok {
			L.Push(lua.LNil)
			return 1
		}
		v = s.en.mods[i].Open(L, s.callInfo())
	}
	if v == nil {
		v = lua.LNil
	}
	if v != lua.LNil {
		s.env.RawSetString(string(name), v)
	}
	L.Push(v)
	return 1
}

func (s *state) proxy(L *lua.LState, lib int) *lua.LTable {
	t := L.CreateTable(0, 0)
	t.Metatable = s.libMTs[lib]
	return t
}

func (s *state) paramsTable(L *lua.LState) *lua.LTable {
	t := L.CreateTable(0, len(s.params))
	for i, p := range s.params {
		if v := s.argVals[i]; v != lua.LNil {
			t.RawSetString(p.Name, v)
		}
	}
	return t
}

// convertParams converts the arguments for this execution's params and
// makes them visible to the script through argTab.
func (s *state) convertParams() error {
	s.argVals = s.argVals[:0]
	conv := luaConverter{L: s.L, stop: s}
	for _, p := range s.params {
		var lv lua.LValue = lua.LNil
		if v, ok := s.args[p.Name]; ok && v != nil {
			var err error
			if lv, err = conv.value(v, 0); err != nil {
				var fe *fault.Error
				if errors.As(err, &fe) && s.ctx.Err() != nil {
					return fe // the deadline, named by deadlineFault
				}
				return fault.New(fault.InvalidArgument, "param %q: %s", p.Name, err)
			}
		}
		s.argVals = append(s.argVals, lv)
	}
	for _, p := range s.params {
		if _, ok := s.argNames[p.Name]; !ok {
			if len(s.argNames) >= maxArgNames {
				s.newArgTab()
			}
			s.argNames[p.Name] = struct{}{}
		}
	}
	for i, v := range s.argVals {
		if v != lua.LNil {
			s.argTab.RawSetString(s.params[i].Name, v)
		}
	}
	return nil
}

// bindGlobals copies the params into env as globals and stops looking them
// up in argTab, once per execution.
func (s *state) bindGlobals() {
	if s.env.Metatable == s.envMT {
		return
	}
	for i, v := range s.argVals {
		if v != lua.LNil {
			s.env.RawSetString(s.params[i].Name, v)
		}
	}
	s.env.Metatable = s.envMT
}

// assign is env's __newindex while params live in argTab: it runs for a
// global name env does not hold yet. Assigning to a param's name binds the
// params first, so the assignment replaces (or, with nil, removes) the
// global as it would had the params been globals all along.
func (s *state) assign(L *lua.LState) int {
	t := L.CheckTable(1)
	k, v := L.Get(2), L.Get(3)
	if name, ok := k.(lua.LString); ok && t == s.env {
		for _, p := range s.params {
			if p.Name == string(name) {
				s.bindGlobals()
				break
			}
		}
	}
	t.RawSet(k, v)
	return 0
}

// callInfo returns what modules see of the execution, built once.
func (s *state) callInfo() *Call {
	if s.call == nil {
		s.call = &Call{
			Ctx:    s.ctx,
			Tool:   s.tool,
			ExecID: s.execID,
			Grants: s.grants,
			Log:    s.en.log.With(LogKeyTool, s.tool, LogKeyExecID, s.execID),
		}
	}
	return s.call
}
