package engine_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/loki/engine"
	lua "github.com/yuin/gopher-lua"
)

// TestConcatSemantics checks that the capped `..` behaves as Lua 5.1's.
func TestConcatSemantics(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	tests := []struct {
		name string
		src  string
		code fault.Code // "" = success
		want string     // result, or error substring
	}{
		{"strings", `return "a" .. "b"`, "", `"ab"`},
		{"chain", `local x = "b" return "a" .. x .. "c" .. "d"`, "", `"abcd"`},
		{"numbers", `return 1 .. 2 .. 0.5 .. -3`, "", `"120.5-3"`},
		{"number format", `return 1e100 .. "|" .. 2^53 .. "|" .. 1/3`, "", `"1e+100|9007199254740992|0.3333333333333333"`},
		{"parenthesised left", `local a, b, c = "a", "b", "c" return (a .. b) .. c`, "", `"abc"`},
		{"parenthesised right", `local a, b, c = "a", "b", "c" return a .. (b .. c)`, "", `"abc"`},
		{"call truncated", `local function f() return "x", "y" end return "a" .. f()`, "", `"ax"`},
		{"call truncated in select", `local function f() return "x", "y" end return select("#", "a" .. f())`, "", `1`},
		{"vararg truncated", `local function f(...) return "a" .. ... end return f("x", "y")`, "", `"ax"`},
		{"vararg chunk", `return select("#", ...)`, "", `0`},
		{"in nested function", `local function f(a) return function(b) return a .. b end end return f("x")("y")`, "", `"xy"`},
		{"in table constructor", `return {k = "a" .. 1, "b" .. 2}`, fault.ScriptError, "mixes"},
		{"in condition", `if "a" .. "b" == "ab" then return true end return false`, "", `true`},
		{"in loop", `local s = "" for i = 1, 5 do s = s .. i end return s`, "", `"12345"`},
		{"in method def", `local o = {p = "x"} function o:m(s) return self.p .. s end return o:m("y")`, "", `"xy"`},
		{"nil operand", `local x return "a" .. x`, fault.ScriptError, "cannot perform concat operation between string and nil"},
		{"table operand line", "local t = {}\n\nreturn \"a\" .. t", fault.ScriptError, "line 3: cannot perform concat operation between string and table"},
		{"__concat left", `local t = setmetatable({}, {__concat = function(a, b) return "T" end}) return t .. "x"`, "", `"T"`},
		{"__concat right", `local t = setmetatable({}, {__concat = function(a, b) return a .. "T" end}) return "x" .. t`, "", `"xT"`},
		{"__concat chain right to left", `local t = setmetatable({}, {__concat = function(a, b) return type(a) == "table" and "L" .. b or a .. "R" end}) return "a" .. "b" .. t .. "c" .. "d"`, "", `"abLcd"`},
		{"__concat result non-string", `local t = setmetatable({}, {__concat = function() return 7 end}) return "a" .. (t .. "b")`, "", `"a7"`},
		{"pcall catches", `local ok, err = pcall(function() return {} .. "" end) return ok`, "", `false`},
		{"global named like the helper", `concat = 1 _G["(concat)"] = error return "a" .. "b"`, "", `"ab"`},
		{"rawset the helper name", `rawset(_G, "(concat)", function() return "pwned" end) return "a" .. "b"`, "", `"ab"`},
		{"local shadowing is impossible", `local concat = error return "a" .. "b"`, "", `"ab"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(t, en, tc.src, runOpts{})
			if tc.code == "" {
				if err != nil || string(out) != tc.want {
					t.Fatalf("got %s, %v, want %s", out, err, tc.want)
				}
				return
			}
			wantCode(t, err, tc.code, tc.want)
		})
	}
}

// TestConcatCap checks that `..` refuses a result over MaxStringBytes
// before building it.
func TestConcatCap(t *testing.T) {
	en := engine.New(engine.Config{Limits: engine.Limits{MaxStringBytes: 1 << 20}}, nil)
	tests := []struct {
		name string
		src  string
		code fault.Code
		want string
	}{
		{"at cap", `local s = string.rep("x", 512 * 1024) return #(s .. s)`, "", "1048576"},
		{"over cap", `local s = string.rep("x", 512 * 1024) return #(s .. s .. "y")`, fault.ResourceExhausted, "'..': result of 1048577 bytes or more exceeds the 1048576-byte string limit"},
		{"doubling", `local s = "x" while true do s = s .. s end`, fault.ResourceExhausted, "string limit"},
		{"number operand", `local s = string.rep("x", 1024 * 1024) return s .. 1`, fault.ResourceExhausted, "string limit"},
		{"after __concat", `local t = setmetatable({}, {__concat = function() return string.rep("x", 1024 * 1024) end}) return "y" .. (t .. "")`, fault.ResourceExhausted, "string limit"},
		{"caught by pcall", `local s = string.rep("x", 1024 * 1024) local ok, err = pcall(function() return s .. s end) return ok`, "", "false"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(t, en, tc.src, runOpts{})
			if tc.code == "" {
				if err != nil || string(out) != tc.want {
					t.Fatalf("got %s, %v, want %s", out, err, tc.want)
				}
				return
			}
			wantCode(t, err, tc.code, tc.want)
		})
	}
}

// TestConcatMatchesGopherLua runs the same concatenations through the
// capped `..` and through gopher-lua's own OP_CONCAT, and wants the same
// results and the same error messages.
func TestConcatMatchesGopherLua(t *testing.T) {
	const prelude = `local mt = {__concat = function(a, b)
  local function s(v) if type(v) == "table" then return "T" end return tostring(v) end
  return "<" .. s(a) .. "|" .. s(b) .. ">" end}
local t = setmetatable({}, mt) local u = setmetatable({}, mt) local plain = {}
local function two() return "x", "y" end
`
	exprs := []string{
		`"a" .. "b"`, `"a" .. 1`, `1 .. 2`, `1.5 .. -0.25`, `2^53 .. ""`, `1e300 .. 1e-300`, `0/0 .. ""`, `1/0 .. -1/0`,
		`"a" .. "b" .. "c" .. "d" .. "e" .. "f" .. "g" .. "h" .. "i" .. "j"`,
		`t .. "x"`, `"x" .. t`, `t .. u`, `"a" .. "b" .. t .. "c" .. "d"`, `t .. "a" .. "b"`, `"a" .. t .. "b" .. u .. "c"`,
		`1 .. t`, `two() .. two()`, `(two()) .. "z"`, `"" .. ""`,
		`"a" .. plain`, `plain .. "a"`, `"a" .. nil`, `true .. "a"`, `"a" .. "b" .. {}`, `print .. "x"`,
	}
	en := engine.New(engine.Config{}, nil)
	for _, expr := range exprs {
		t.Run(expr, func(t *testing.T) {
			src := prelude + "return " + expr
			L := lua.NewState()
			defer L.Close()
			want, wantErr := "", ""
			if err := L.DoString(src); err != nil {
				var ae *lua.ApiError
				if !errors.As(err, &ae) {
					t.Fatalf("gopher-lua: %v", err)
				}
				wantErr = ae.Object.String()
				if i := strings.Index(wantErr, ": "); i >= 0 && strings.HasPrefix(wantErr, "<string>:") {
					wantErr = wantErr[i+2:]
				}
			} else {
				want = L.Get(-1).String()
			}
			out, err := run(t, en, src, runOpts{})
			if wantErr != "" {
				if err == nil || !strings.HasSuffix(fault.MessageOf(err), wantErr) {
					t.Fatalf("got %s, %v, want the error %q", out, err, wantErr)
				}
				return
			}
			var got string
			if err != nil || json.Unmarshal(out, &got) != nil || got != want {
				t.Fatalf("got %s, %v, want %q", out, err, want)
			}
		})
	}
}
