package engine_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/loki/engine"
	lua "github.com/yuin/gopher-lua"
)

// testTimeout bounds every execution in these tests: a built-in that is not
// capped shows up as DEADLINE_EXCEEDED instead of a hung test.
const testTimeout = 5 * time.Second

type runOpts struct {
	params  []engine.Param
	args    map[string]any
	returns engine.Type
	grants  engine.Grants
	emit    func([]byte) error
	timeout time.Duration
}

// run compiles src as tool "t" and runs it once on en.
func run(t testing.TB, en *engine.Engine, src string, o runOpts) ([]byte, error) {
	t.Helper()
	p, err := engine.Compile("t", src)
	if err != nil {
		t.Fatalf("Compile(%q): %v", src, err)
	}
	if o.timeout == 0 {
		o.timeout = testTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	return en.Run(ctx, engine.Exec{
		Tool: "t", ExecID: "x1", Program: p, Params: o.params, Returns: o.returns,
		Args: o.args, Grants: o.grants, Emit: o.emit, Timeout: o.timeout,
	})
}

// mustRun runs src and fails the test on error.
func mustRun(t testing.TB, en *engine.Engine, src string) string {
	t.Helper()
	out, err := run(t, en, src, runOpts{})
	if err != nil {
		t.Fatalf("run(%q): got error %v, want none", src, err)
	}
	return string(out)
}

// wantCode fails unless err carries code (and, if msg != "", contains msg).
func wantCode(t testing.TB, err error, code fault.Code, msg string) {
	t.Helper()
	if !errors.Is(err, &fault.Error{Code: code}) {
		t.Fatalf("got error %v (code %q), want code %s", err, fault.CodeOf(err), code)
	}
	var fe *fault.Error
	if !errors.As(err, &fe) {
		t.Fatalf("got %T, want *fault.Error", err)
	}
	if msg != "" && !strings.Contains(err.Error(), msg) {
		t.Fatalf("got error %q, want it to contain %q", err, msg)
	}
	if strings.Contains(err.Error(), "stack traceback") {
		t.Fatalf("got error %q, want no traceback", err)
	}
}

func TestParams(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	all := []engine.Param{
		{Name: "s", Type: engine.String}, {Name: "n", Type: engine.Number},
		{Name: "i", Type: engine.Integer}, {Name: "b", Type: engine.Boolean},
		{Name: "o", Type: engine.Object}, {Name: "a", Type: engine.Array},
		{Name: "x", Type: engine.Any},
		{Name: "d", Type: engine.Number, Default: 42.0},
	}
	tests := []struct {
		name    string
		params  []engine.Param
		body    string
		src     string
		returns engine.Type
		want    string
	}{
		{name: "by name", params: addParams, body: `{"a":1,"b":2}`, src: "return a + b", returns: engine.Number, want: "3"},
		{name: "via params", params: addParams, body: `{"a":1,"b":2}`, src: "return params.a * 10 + params.b", returns: engine.Number, want: "12"},
		{name: "params keeps argument after reassignment", params: addParams, body: `{"a":1,"b":2}`, src: "a = 5 return params.a + a", want: "6"},
		{name: "default applied", params: all, body: `{}`, src: "return d", returns: engine.Number, want: "42"},
		{name: "default overridden", params: all, body: `{"d":1}`, src: "return d", want: "1"},
		{name: "absent is nil", params: all, body: `{}`, src: "return s == nil and params.s == nil", returns: engine.Boolean, want: "true"},
		{name: "null is absent", params: all, body: `{"s":null}`, src: "return s == nil", want: "true"},
		{name: "string", params: all, body: `{"s":"héllo"}`, src: "return s .. '!'", returns: engine.String, want: `"héllo!"`},
		{name: "boolean", params: all, body: `{"b":false}`, src: "return not b", returns: engine.Boolean, want: "true"},
		{name: "integer", params: all, body: `{"i":7}`, src: "return i * 3", returns: engine.Integer, want: "21"},
		{name: "integer result from float", params: all, body: `{"n":2.5}`, src: "return n * 2", returns: engine.Integer, want: "5"},
		{name: "number accepts integer", params: all, body: `{"i":2}`, src: "return i", returns: engine.Number, want: "2"},
		{name: "fraction", params: all, body: `{"n":0.1}`, src: "return n", returns: engine.Number, want: "0.1"},
		{name: "big number", params: all, body: `{"n":1e300}`, src: "return n", want: "1e+300"},
		{name: "object round trip", params: all, body: `{"o":{"k":"v","n":[1,2,{"deep":true}],"e":{}}}`, src: "return o", returns: engine.Object, want: `{"e":{},"k":"v","n":[1,2,{"deep":true}]}`},
		{name: "array round trip", params: all, body: `{"a":[1,"two",[3],{"four":4}]}`, src: "return a", returns: engine.Array, want: `[1,"two",[3],{"four":4}]`},
		{name: "array is 1-based", params: all, body: `{"a":["x","y"]}`, src: "return a[1] .. a[2] .. #a", want: `"xy2"`},
		{name: "any", params: all, body: `{"x":[true]}`, src: "return x", want: `[true]`},
		{name: "empty table as array", src: "return {}", returns: engine.Array, want: "[]"},
		{name: "empty table as object", src: "return {}", returns: engine.Object, want: "{}"},
		{name: "empty table as any", src: "return {}", want: "{}"},
		{name: "nested empty table", src: "return {list = {}}", returns: engine.Object, want: `{"list":{}}`},
		{name: "nil as any", src: "return nil", want: "null"},
		{name: "no return", src: "local x = 1", want: "null"},
		{name: "string escaping", src: `return "a\"b\\c\n\0\127é\255"`, want: `"a\"b\\c\n\u0000` + "\x7f" + `é\ufffd"`},
		{name: "multiple returns keep the first", src: "return 1, 2", want: "1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args, err := engine.DecodeArgs(tc.params, []byte(tc.body))
			if err != nil {
				t.Fatalf("DecodeArgs: got %v, want no error", err)
			}
			out, err := run(t, en, tc.src, runOpts{params: tc.params, args: args, returns: tc.returns})
			if err != nil {
				t.Fatalf("got error %v, want %s", err, tc.want)
			}
			if string(out) != tc.want {
				t.Fatalf("got %s, want %s", out, tc.want)
			}
		})
	}
}

func TestSandboxRemoved(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	for _, name := range []string{
		"load", "loadstring", "dofile", "loadfile", "require", "module", "collectgarbage",
		"getfenv", "setfenv", "newproxy", "_printregs", "_GOPHER_LUA_VERSION", "gcinfo",
		"io", "debug", "package", "coroutine", "channel",
		"os.execute", "os.exit", "os.getenv", "os.remove", "os.rename", "os.tmpname", "os.setlocale", "os.difftime",
		"string.dump", "string.gfind",
	} {
		t.Run(name, func(t *testing.T) {
			if got := mustRun(t, en, "return "+name+" == nil"); got != "true" {
				t.Fatalf("%s == nil: got %s, want true", name, got)
			}
		})
	}
	for _, name := range []string{
		"os.time", "os.clock", "os.date", "print", "emit", "log.info", "log.warn", "log.error", "log.debug",
		"string.format", "string.gsub", "table.insert", "table.sort", "math.floor", "pcall", "setmetatable", "unpack",
	} {
		t.Run(name, func(t *testing.T) {
			if got := mustRun(t, en, "return type("+name+")"); got != `"function"` {
				t.Fatalf("type(%s): got %s, want \"function\"", name, got)
			}
		})
	}
}

func TestSandboxBehaviour(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	tests := []struct {
		name, src, want string
	}{
		{"string metatable hidden", `return getmetatable("")`, "false"},
		{"string methods work", `return ("abc"):upper() .. #("abc")`, `"ABC3"`},
		{"_G is the env", `x = 5 return _G.x + _G._G.x`, "10"},
		{"env metatable hidden", `return getmetatable(_G)`, "false"},
		{"library metatable hidden", `return getmetatable(string)`, "false"},
		{"os.date works", `return #os.date("%Y") == 4`, "true"},
		{"os.time of table", `return os.time({year=2020, month=1, day=1, hour=12}) > 0`, "true"},
		{"math.random in range", `local r = math.random(3) return r >= 1 and r <= 3`, "true"},
		{"math.random float", `local r = math.random() return r >= 0 and r < 1`, "true"},
		{"math.randomseed is harmless", `math.randomseed(1) return true`, "true"},
		{"tostring metamethod", `return tostring(setmetatable({}, {__tostring = function() return "obj" end}))`, `"obj"`},
		{"pcall catches errors", `local ok, err = pcall(error, "x", 0) return {ok, err}`, `[false,"x"]`},
		{"upper is ASCII only", `return string.upper("aé")`, `"Aé"`},
		{"select", `return select("#", 1, 2, 3)`, "3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := mustRun(t, en, tc.src); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
	errs := []struct {
		name, src, msg string
	}{
		{"setmetatable on a number", `setmetatable(1, {})`, "table expected"},
		{"setmetatable on _G", `setmetatable(_G, {})`, "protected metatable"},
		{"setmetatable on a library", `setmetatable(string, {})`, "protected metatable"},
		{"string metatable not indexable", `getmetatable("").__index = {}`, "boolean"},
		{"math.random empty interval", `return math.random(0)`, "interval is empty"},
		{"os.date long format", `return os.date(string.rep("%c", 200))`, "format longer"},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(t, en, tc.src, runOpts{})
			wantCode(t, err, fault.ScriptError, tc.msg)
		})
	}
}

// TestIsolation runs, on one engine and sequentially (so on the same pooled
// state, which the test asserts), a script that tries to leave something
// behind, then a script that checks nothing was left.
func TestIsolation(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	stateID := func() string {
		var id string
		if err := json.Unmarshal([]byte(mustRun(t, en, "return tostring(type)")), &id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	tests := []struct {
		name, dirty, check string
	}{
		{"global", "x = 1", "return x == nil"},
		{"rawset _G", `rawset(_G, "y", 2)`, "return y == nil"},
		{"string.upper = nil", "string.upper = nil", `return string.upper("a") == "A"`},
		{"string method via metatable", "string.upper = nil", `return ("a"):upper() == "A"`},
		{"string.len replaced", "string.len = function() return 0 end", `return #"abc" == 3 and string.len("abc") == 3`},
		{"rawset on string", `rawset(string, "format", nil)`, `return string.format("%d", 1) == "1"`},
		{"string = nil", "string = nil", `return string.rep("a", 2) == "aa"`},
		{"table.insert = nil", "table.insert = nil", "local t = {} table.insert(t, 1) return #t == 1"},
		{"math.pi = 1", "math.pi = 1", "return math.pi > 3"},
		{"math.floor replaced", "math.floor = function() return 0 end", "return math.floor(2.5) == 2"},
		{"os.time replaced", "os.time = nil", "return os.time() > 0"},
		{"log replaced", "log.info = nil", "log.info('x') return true"},
		{"_G replaced", "_G = nil", "return _G ~= nil and _G.pairs == pairs"},
		{"pairs replaced", "pairs = nil", "return pairs ~= nil"},
		{"print replaced", "print = error", "print('x') return true"},
		{"setmetatable on _G", `setmetatable(_G, {__index = function() return 1 end})`, "return undefined_thing == nil"},
		{"string metatable", `getmetatable("").__index = {upper = function() return "pwned" end}`, `return ("a"):upper() == "A"`},
		{"number metatable", `setmetatable(1, {__index = function() return "pwned" end})`, `return getmetatable(1) == nil`},
		{"function metatable", `setmetatable(print, {__call = 1})`, `return getmetatable(print) == nil`},
		{"params table", `params.a = 99`, `return params.a == nil`},
		{"error mid-way", `x = 1 error("stop")`, "return x == nil"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := stateID()
			run(t, en, tc.dirty, runOpts{}) // may fail; what matters is what it leaves
			out, err := run(t, en, "return {ok = (function() "+tc.check+" end)(), state = tostring(type)}", runOpts{})
			if err != nil {
				t.Fatalf("check: got error %v, want none", err)
			}
			var got struct {
				OK    bool
				State string
			}
			if err := json.Unmarshal(out, &got); err != nil {
				t.Fatal(err)
			}
			if got.State != before {
				t.Fatalf("got state %s, want the same pooled state %s", got.State, before)
			}
			if !got.OK {
				t.Fatalf("after %q: got %q false, want true", tc.dirty, tc.check)
			}
		})
	}
}

func TestTimeout(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	tests := []struct {
		name, src string
	}{
		{"busy loop", "while true do end"},
		{"pcall cannot swallow the deadline", "while true do pcall(function() while true do end end) end"},
		{"error handler loops", "xpcall(error, function() while true do end end)"},
		{"recursion in a loop", "local function f(n) if n == 0 then return 0 end return f(n-1) end while true do f(100) end"},
		{"sort comparator loops", "local t = {} for i = 1, 100 do t[i] = i end table.sort(t, function(a, b) while true do end end)"},
		{"gsub callback loops", `string.gsub("abc", "%w", function() while true do end end)`},
		{"catastrophic pattern", `return string.find(string.rep("a", 3000), "(.-)(.-)(.-)(.-)(.-)b")`},
		{"catastrophic gsub", `return string.gsub(string.rep("a", 3000), "a-a-a-a-a-b", "")`},
		{"catastrophic gmatch", `for x in string.gmatch(string.rep("a", 3000), "a*a*a*a*b") do end`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(t, en, tc.src, runOpts{timeout: 50 * time.Millisecond})
			wantCode(t, err, fault.DeadlineExceeded, `tool "t" exceeded its 50ms timeout`)
		})
	}
	t.Run("canceled", func(t *testing.T) {
		p, _ := engine.Compile("t", "while true do end")
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		_, err := en.Run(ctx, engine.Exec{Tool: "t", Program: p})
		wantCode(t, err, fault.DeadlineExceeded, "canceled")
	})
	t.Run("already expired", func(t *testing.T) {
		p, _ := engine.Compile("t", "return 1")
		ctx, cancel := context.WithTimeout(context.Background(), -time.Second)
		defer cancel()
		_, err := en.Run(ctx, engine.Exec{Tool: "t", Program: p})
		wantCode(t, err, fault.DeadlineExceeded, "")
	})
	t.Run("others run meanwhile", func(t *testing.T) {
		done := make(chan error)
		go func() {
			_, err := run(t, en, "while true do end", runOpts{timeout: 3 * time.Second})
			done <- err
		}()
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				for range 100 {
					out, err := run(t, en, "return a + b", runOpts{params: addParams, args: map[string]any{"a": 1.0, "b": 2.0}})
					if err != nil || string(out) != "3" {
						t.Errorf("got %s, %v, want 3", out, err)
						return
					}
				}
			})
		}
		wg.Wait()
		select {
		case err := <-done:
			t.Fatalf("busy loop ended (%v) before the other calls were checked; want it still running", err)
		default:
		}
		wantCode(t, <-done, fault.DeadlineExceeded, "3s timeout")
	})
}

func TestCappedBuiltins(t *testing.T) {
	en := engine.New(engine.Config{Limits: engine.Limits{MaxTableSort: 1000, MaxStringBytes: 1 << 20}}, nil)
	tests := []struct {
		name string
		src  string
		code fault.Code // "" = success
		want string     // result, or error substring
	}{
		{"string.rep bomb", `return string.rep("x", 1e10)`, fault.ResourceExhausted, "string.rep"},
		{"string.rep huge count", `return string.rep("x", 2^62)`, fault.ResourceExhausted, "string.rep"},
		{"string.rep over cap", `return #string.rep("ab", 600000)`, fault.ResourceExhausted, "limit"},
		{"string.rep at cap", `return #string.rep("ab", 512 * 1024)`, "", "1048576"},
		{"string.rep negative", `return string.rep("x", -5)`, "", `""`},
		{"string.rep empty huge", `return string.rep("", 1e300)`, "", `""`},
		{"string.rep sep", `return string.rep("ab", 3, ",")`, "", `"ab,ab,ab"`},
		{"string.rep caught by pcall", `local ok, err = pcall(string.rep, "x", 1e10) return ok`, "", "false"},
		{"gsub bomb completes", `local s = string.rep("a", 200000) local r, n = s:gsub("a", "bc") return {#r, n, r:sub(1, 6)}`, "", `[400000,200000,"bcbcbc"]`},
		{"gsub output over cap", `return (string.rep("a", 200000):gsub("a", string.rep("b", 100)))`, fault.ResourceExhausted, "string.gsub"},
		{"gsub function output over cap", `return (string.rep("a", 200000):gsub("a", function() return "bbbbbbbbbb" end))`, fault.ResourceExhausted, "string.gsub"},
		{"match .* over 1 MB", `return #string.rep("x", 1000000):match(".*")`, "", "1000000"},
		{"format width too long", `return string.format("%999999999d", 1)`, fault.ScriptError, "invalid format (width or precision too long)"},
		{"format width 3 digits", `return string.format("%100d", 1)`, fault.ScriptError, "too long"},
		{"format precision too long", `return string.format("%.100f", 1)`, fault.ScriptError, "too long"},
		{"format width 2 digits", `return #string.format("%99d", 1)`, "", "99"},
		{"format repeated flags", `return string.format("%------d", 1)`, fault.ScriptError, "repeated flags"},
		{"format output over cap", `local s = string.rep("x", 600000) return string.format("%s%s", s, s)`, fault.ResourceExhausted, "string.format"},
		{"table.sort over cap", `local t = {} for i = 1, 1001 do t[i] = i end table.sort(t)`, fault.ResourceExhausted, "table.sort"},
		{"table.sort at cap", `local t = {} for i = 1, 1000 do t[i] = -i end table.sort(t) return t[1]`, "", "-1000"},
		{"table.sort comparator", `local t = {3, 1, 2} table.sort(t, function(a, b) return a > b end) return t`, "", "[3,2,1]"},
		{"table.sort strings", `local t = {"b", "c", "a"} table.sort(t) return t`, "", `["a","b","c"]`},
		{"table.sort incomparable", `table.sort({1, "x"})`, fault.ScriptError, "attempt to compare"},
		{"table.concat over cap", `local t = {} for i = 1, 2000 do t[i] = string.rep("x", 1000) end return table.concat(t)`, fault.ResourceExhausted, "table.concat"},
		{"table.concat sep over cap", `return table.concat({1, 2, 3}, string.rep("x", 600000))`, fault.ResourceExhausted, "table.concat"},
		{"table.concat range", `return table.concat({1, 2, 3, 4}, "-", 2, 3)`, "", `"2-3"`},
		{"table.concat bad value", `return table.concat({1, {}, 3})`, fault.ScriptError, "invalid value (at index 2)"},
		{"table.concat huge range", `return table.concat({}, "", 1, 1e15)`, fault.ScriptError, "invalid value (at index 1)"},
		{"stack overflow", `local function f() return 1 + f() end return f()`, fault.ResourceExhausted, "stack overflow"},
		{"unpack too many", `local t = {} for i = 1, 100000 do t[i] = i end return select("#", unpack(t))`, fault.ResourceExhausted, "stack overflow"},
		{"pattern too complex", `return string.find(string.rep("a", 300), string.rep("a?", 300))`, fault.ScriptError, "pattern too complex"},
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

func TestGsubSemantics(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	tests := []struct {
		name, s, pat, repl string // repl is a Lua expression
		max                string // Lua expression or ""
		want               string
		n                  int
	}{
		{"capture twice", "hello world", "(%w+)", `"%1 %1"`, "", "hello hello world world", 2},
		{"max n", "hello world", "%w+", `"%0 %0"`, "1", "hello hello world", 1},
		{"swap", "hello world from Lua", "(%w+)%s*(%w+)", `"%2 %1"`, "", "world hello Lua from", 2},
		{"table", "$name-$version.tar.gz", "%$(%w+)", `{name = "lua", version = "5.1"}`, "", "lua-5.1.tar.gz", 2},
		{"table false keeps", "abc", "%w", `{a = false, b = "B"}`, "", "aBc", 3},
		{"table number value", "abc", "b", `{b = 7}`, "", "a7c", 1},
		{"function", "abc", "%w", `function(c) return c:upper() .. "." end`, "", "A.B.C.", 3},
		{"function nil keeps", "abc", "b", `function() return nil end`, "", "abc", 1},
		{"function captures", "k1=v1, k2=v2", "(%w+)=(%w+)", `function(k, v) return v .. "=" .. k end`, "", "v1=k1, v2=k2", 2},
		{"empty pattern", "abc", "", `"-"`, "", "-a-b-c-", 4},
		{"empty match after match", "abc", "%w*", `"-"`, "", "--", 2},
		{"anchored", "aaa", "^a", `"b"`, "", "baa", 1},
		{"anchored no match", "baa", "^a", `"b"`, "", "baa", 0},
		{"position capture", "abc", "()b", `"%1"`, "", "a2c", 1},
		{"max zero", "aaa", "a", `"b"`, "0", "aaa", 0},
		{"max negative", "aaa", "a", `"b"`, "-1", "aaa", 0},
		{"percent escape", "a", "a", `"%%"`, "", "%", 1},
		{"number replacement", "abc", "b", "5", "", "a5c", 1},
		{"frontier", "THE (quick) fox", "%f[%a]%a+", `"W"`, "", "W (W) W", 3},
		{"balanced", "f(a(b)c) g(x)", "%b()", `"[]"`, "", "f[] g[]", 2},
		{"back reference", "xaay bccz", "(%w)%1", `"<%1>"`, "", "x<a>y b<c>z", 2},
		{"escaped dot", "a.b.c", "%.", `"/"`, "", "a/b/c", 2},
		{"set", "a1b2c3", "[%d]", `"#"`, "", "a#b#c#", 3},
		{"negated set", "a1b2c3", "[^%d]", `"#"`, "", "#1#2#3", 3},
		{"range", "abcxyz", "[b-x]", `"."`, "", "a...yz", 3},
		{"lazy", "<a><b>", "<(.-)>", `"%1"`, "", "ab", 2},
		{"greedy", "<a><b>", "<(.*)>", `"%1"`, "", "a><b", 1},
		{"optional", "color colour", "colou?r", `"C"`, "", "C C", 2},
		{"plus", "aaa b", "a+", `"x"`, "", "x b", 1},
		{"end anchor", "aXa", "a$", `"!"`, "", "aX!", 1},
		{"dollar not at end", "a$b", "%$", `"!"`, "", "a!b", 1},
		{"whole match %0", "abc", "b", `"[%0]"`, "", "a[b]c", 1},
		{"%1 without captures is the match", "abc", "b", `"[%1]"`, "", "a[b]c", 1},
		{"classes", "a B\t9_!", "%s", `""`, "", "aB9_!", 2},
		{"upper class negates", "a1 b2", "%D", `""`, "", "12", 3},
		{"nul byte", "a\x00b", "%z", `"0"`, "", "a0b", 1},
		{"multibyte bytes", "héllo", "é", `"e"`, "", "hello", 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			maxArg := ""
			if tc.max != "" {
				maxArg = ", " + tc.max
			}
			src := "local r, n = string.gsub(s, pat, " + tc.repl + maxArg + ") return {r, n}"
			params := []engine.Param{{Name: "s", Type: engine.String}, {Name: "pat", Type: engine.String}}
			out, err := run(t, en, src, runOpts{params: params, args: map[string]any{"s": tc.s, "pat": tc.pat}})
			if err != nil {
				t.Fatalf("got error %v, want %q, %d", err, tc.want, tc.n)
			}
			var want bytes.Buffer
			enc := json.NewEncoder(&want)
			enc.SetEscapeHTML(false)
			enc.Encode([]any{tc.want, tc.n})
			if string(out) != strings.TrimSpace(want.String()) {
				t.Fatalf("got %s, want %s", out, want.String())
			}
		})
	}
	errs := []struct {
		name, src, msg string
	}{
		{"invalid capture index", `return string.gsub("abc", "(a)", "%2")`, "invalid capture index"},
		{"malformed set", `return string.gsub("abc", "[a", "")`, "missing ']'"},
		{"pattern ends with %", `return string.gsub("abc", "a%", "")`, "ends with '%'"},
		{"unfinished capture", `return string.find("abc", "(a")`, "unfinished capture"},
		{"invalid pattern capture", `return string.match("abc", "a)")`, "invalid pattern capture"},
		{"bad replacement type", `return string.gsub("abc", "a", true)`, "string/function/table expected"},
		{"bad replacement value", `return string.gsub("abc", "a", function() return {} end)`, "invalid replacement value (a table)"},
		{"trailing % in replacement", `return string.gsub("abc", "a", "%")`, "invalid use of '%'"},
		{"unbalanced %b", `return string.find("abc", "%b")`, "unbalanced pattern"},
		{"frontier without set", `return string.find("abc", "%fa")`, "missing '['"},
		{"back reference to open capture", `return string.find("aa", "(a%1)")`, "invalid capture index"},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(t, en, tc.src, runOpts{})
			wantCode(t, err, fault.ScriptError, tc.msg)
		})
	}
}

func TestStringFunctions(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	tests := []struct {
		name, src, want string
	}{
		{"find pattern", `return {string.find("hello", "l+")}`, "[3,4]"},
		{"find captures", `return {string.find("key = val", "(%w+) = (%w+)")}`, `[1,9,"key","val"]`},
		{"find plain", `return {string.find("a.b", ".", 1, true)}`, "[2,2]"},
		{"find no specials", `return {string.find("hello", "ll")}`, "[3,4]"},
		{"find init", `return {string.find("abab", "b", 3)}`, "[4,4]"},
		{"find negative init", `return {string.find("abab", "a", -2)}`, "[3,3]"},
		{"find not found", `return string.find("abc", "x") == nil`, "true"},
		{"find empty", `return {string.find("abc", "")}`, "[1,0]"},
		{"find anchored", `return string.find("xab", "^a") == nil`, "true"},
		{"match", `return string.match("key = value", "(%w+)%s*=%s*(%w+)")`, `"key"`},
		{"match whole", `return string.match("hello 42", "%d+")`, `"42"`},
		{"match position", `return string.match("hello", "()ll()")`, "3"},
		{"match init", `return string.match("a1b2", "%d", 3)`, `"2"`},
		{"gmatch words", `local t = {} for w in string.gmatch("one two three", "%a+") do t[#t+1] = w end return t`, `["one","two","three"]`},
		{"gmatch pairs", `local t = {} for k, v in string.gmatch("a=1, b=2", "(%w+)=(%w+)") do t[k] = v end return t`, `{"a":"1","b":"2"}`},
		{"gmatch empty matches", `local n = 0 for _ in string.gmatch("abc", "x*") do n = n + 1 end return n`, "4"},
		{"format float", `return string.format("%5.2f", 3.14159)`, `" 3.14"`},
		{"format int truncates", `return string.format("%d", 3.7)`, `"3"`},
		{"format int from string", `return string.format("%d", "12")`, `"12"`},
		{"format hex", `return string.format("%x %X %#x %o", 255, 255, 255, 8)`, `"ff FF 0xff 10"`},
		{"format negative hex", `return string.format("%x", -1)`, `"ffffffffffffffff"`},
		{"format padded", `return string.format("%05d|%-5d|%+d", 42, 42, 42)`, `"00042|42   |+42"`},
		{"format q", `return string.format("%q", 'a"b\\c\n\r\0')`, `"\"a\\\"b\\\\c\\\n\\r\\000\""`},
		{"format s", `return string.format("[%5s][%-5s][%.2s]", "ab", "ab", "abc")`, `"[   ab][ab   ][ab]"`},
		{"format s tostring", `return string.format("%s %s %s", nil, true, 12)`, `"nil true 12"`},
		{"format s bytes", `return string.format("[%4s]", "é")`, `"[  é]"`},
		{"format g", `return string.format("%g %g %g %.3g", 1e20, 0.1, 1234567, 2/3)`, `"1e+20 0.1 1.23457e+06 0.667"`},
		{"format e", `return string.format("%e %.2E", 12345.678, 0.5)`, `"1.234568e+04 5.00E-01"`},
		{"format inf nan", `return string.format("%f %f %5.1f", 1/0, -1/0, 0/0)`, `"inf -inf   nan"`},
		{"format c", `return string.format("%c%c%c", 76, 117, 97)`, `"Lua"`},
		{"format percent", `return string.format("100%%")`, `"100%"`},
		{"format i", `return string.format("%i", 7)`, `"7"`},
		{"format u", `return string.format("%u", 7)`, `"7"`},
		{"format long s kept whole", `return #string.format("%5s", string.rep("x", 150))`, "150"},
		{"upper lower", `return string.upper("abcXYZ123") .. string.lower("ABCxyz")`, `"ABCXYZ123abcxyz"`},
		{"reverse", `return string.reverse("abc")`, `"cba"`},
		{"byte char", `return string.char(string.byte("ABC", 1, -1))`, `"ABC"`},
		{"sub", `return ("hello"):sub(2, -2)`, `"ell"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := mustRun(t, en, tc.src); got != tc.want {
				t.Fatalf("got %s, want %s", got, tc.want)
			}
		})
	}
	errs := []struct {
		name, src, msg string
	}{
		{"format missing arg", `return string.format("%d %d", 1)`, "bad argument #3"},
		{"format bad option", `return string.format("%y", 1)`, "invalid option '%y'"},
		{"format trailing %", `return string.format("50%")`, "invalid option"},
		{"format int of inf", `return string.format("%d", 1/0)`, "no integer representation"},
		{"format d of string", `return string.format("%d", "x")`, "number expected"},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(t, en, tc.src, runOpts{})
			wantCode(t, err, fault.ScriptError, tc.msg)
		})
	}
}

func TestResultErrors(t *testing.T) {
	en := engine.New(engine.Config{Limits: engine.Limits{MaxResultBytes: 1000}}, nil)
	tests := []struct {
		name    string
		src     string
		returns engine.Type
		code    fault.Code
		msg     string
	}{
		{"string for number", `return "1"`, engine.Number, fault.ScriptError, `tool "t" returned string, declared number`},
		{"number for string", `return 1`, engine.String, fault.ScriptError, "returned number, declared string"},
		{"nil for string", `return nil`, engine.String, fault.ScriptError, "returned nil, declared string"},
		{"fraction for integer", `return 1.5`, engine.Integer, fault.ScriptError, "returned number 1.5, declared integer"},
		{"huge for integer", `return 2^60`, engine.Integer, fault.ScriptError, "declared integer"},
		{"array for object", `return {1, 2}`, engine.Object, fault.ScriptError, "returned array, declared object"},
		{"object for array", `return {a = 1}`, engine.Array, fault.ScriptError, "returned object, declared array"},
		{"boolean for array", `return true`, engine.Array, fault.ScriptError, "returned boolean, declared array"},
		{"function", `return print`, engine.Any, fault.ScriptError, "result: cannot convert a function to JSON"},
		{"nested function", `return {a = {b = {print}}}`, engine.Any, fault.ScriptError, "result.a.b[1]: cannot convert a function to JSON"},
		{"NaN", `return 0/0`, engine.Number, fault.ScriptError, "NaN"},
		{"nested inf", `return {x = 1/0}`, engine.Any, fault.ScriptError, "result.x: cannot convert +Inf"},
		{"cycle", `local t = {} t.self = t return t`, engine.Any, fault.ScriptError, "cycle"},
		{"mixed table", `return {1, a = 2}`, engine.Any, fault.ScriptError, "mixes array indices and string keys"},
		{"sparse array", `return {1, nil, 3}`, engine.Any, fault.ScriptError, "holes"},
		{"float key", `return {[1.5] = 1}`, engine.Any, fault.ScriptError, "table key 1.5"},
		{"boolean key", `return {[true] = 1}`, engine.Any, fault.ScriptError, "key of type boolean"},
		{"too deep", `local t = {} local c = t for i = 1, 70 do c.x = {} c = c.x end return t`, engine.Any, fault.ScriptError, "nested deeper than 64"},
		{"over cap", `return string.rep("x", 2000)`, engine.String, fault.ResourceExhausted, "result exceeds the 1000-byte limit"},
		{"many elements over cap", `local t = {} for i = 1, 600 do t[i] = i end return t`, engine.Array, fault.ResourceExhausted, "limit"},
		{"many keys over cap", `local t = {} for i = 1, 300 do t["k" .. i] = i end return t`, engine.Object, fault.ResourceExhausted, "limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(t, en, tc.src, runOpts{returns: tc.returns})
			wantCode(t, err, tc.code, tc.msg)
		})
	}
	t.Run("shared subtable is not a cycle", func(t *testing.T) {
		out, err := run(t, en, `local s = {1} return {a = s, b = s}`, runOpts{})
		if err != nil || string(out) != `{"a":[1],"b":[1]}` {
			t.Fatalf("got %s, %v, want {\"a\":[1],\"b\":[1]}", out, err)
		}
	})
	t.Run("unknown return type", func(t *testing.T) {
		_, err := run(t, en, `return 1`, runOpts{returns: "float"})
		wantCode(t, err, fault.InvalidArgument, "float")
	})
	t.Run("no program", func(t *testing.T) {
		_, err := en.Run(context.Background(), engine.Exec{Tool: "t"})
		wantCode(t, err, fault.InvalidArgument, "no program")
	})
}

func TestLuaErrors(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	tests := []struct {
		name string
		src  string
		code fault.Code
		msg  string
	}{
		{"arithmetic on nil", "local x = 1\nlocal y = 2\nreturn x + c", fault.ScriptError, `tool "t": line 3: `},
		{"error string", "\nerror('boom')", fault.ScriptError, `tool "t": line 2: boom`},
		{"error level 0 gets the line from the traceback", "\nerror('boom', 0)", fault.ScriptError, `tool "t": line 2: boom`},
		{"error in function", "local function f()\n  error('deep')\nend\nf()", fault.ScriptError, "line 2: deep"},
		{"error table", "error({code = 42, why = 'x'})", fault.ScriptError, `error {"code":42,"why":"x"}`},
		{"error nil", "error(nil)", fault.ScriptError, "error object is nil"},
		{"error number", "error(42)", fault.ScriptError, "error 42"},
		{"call nil", "local t = {}\nt.f()", fault.ScriptError, "line 2:"},
		{"index nil", "local t\nreturn t.x", fault.ScriptError, "line 2:"},
		{"fault code passes through", "error('NOT_FOUND: no such thing', 0)", fault.NotFound, "no such thing"},
		{"fault code after position", "error('UNAVAILABLE: try later')", fault.Unavailable, "line 1: try later"},
		{"unknown code is a script error", "error('NOPE: x', 0)", fault.ScriptError, "NOPE: x"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(t, en, tc.src, runOpts{})
			wantCode(t, err, tc.code, tc.msg)
		})
	}
}

func TestCompile(t *testing.T) {
	tests := []struct {
		name string
		src  string
		line int
		msg  string
	}{
		{"incomplete expression", "local x = 1\nreturn x +", 2, "at end of source"},
		{"double equals", "x = = 1", 1, "near '='"},
		{"third line", "local a = 1\nlocal b = 2\nreturn a +* b", 3, "near '*'"},
		{"unterminated string", "return 'abc\n", 2, "unterminated string"},
		{"break outside loop", "break", 1, "no loop to break"},
		{"nested too deep", strings.Repeat("do ", 201) + strings.Repeat("end ", 201), 1, "nested deeper than 200"},
		{"brackets too deep", "return " + strings.Repeat("(", 300) + "1" + strings.Repeat(")", 300), 1, "nested deeper"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := engine.Compile("chunk", tc.src)
			var se *engine.SyntaxError
			if !errors.As(err, &se) {
				t.Fatalf("got %v (%T), want *engine.SyntaxError", err, err)
			}
			if se.Line != tc.line || se.Chunk != "chunk" || !strings.Contains(se.Msg, tc.msg) {
				t.Fatalf("got %+v, want line %d and a message containing %q", se, tc.line, tc.msg)
			}
			if want := "chunk:" + strconv.Itoa(tc.line) + ": "; !strings.HasPrefix(se.Error(), want) {
				t.Fatalf("got Error() %q, want prefix %q", se.Error(), want)
			}
		})
	}
	t.Run("ok at depth 200", func(t *testing.T) {
		src := strings.Repeat("do ", 100) + strings.Repeat("end ", 100) + "-- [[ ( ( (\nreturn '((((' .. [[\n(((]]"
		if _, err := engine.Compile("chunk", src); err != nil {
			t.Fatalf("got %v, want no error", err)
		}
	})
	t.Run("source too large", func(t *testing.T) {
		_, err := engine.Compile("chunk", "return '"+strings.Repeat("x", engine.MaxSourceBytes)+"'")
		wantCode(t, err, fault.InvalidArgument, "limit")
	})
}

func TestEmit(t *testing.T) {
	en := engine.New(engine.Config{Limits: engine.Limits{MaxEmits: 5, MaxEmitBytes: 100}}, nil)
	t.Run("in order", func(t *testing.T) {
		var got []string
		out, err := run(t, en, `emit(1) emit("two") emit({a = true}) emit() emit({}) return "done"`, runOpts{
			emit: func(b []byte) error { got = append(got, string(b)); return nil },
		})
		if err != nil || string(out) != `"done"` {
			t.Fatalf("got %s, %v, want \"done\"", out, err)
		}
		want := []string{"1", `"two"`, `{"a":true}`, "null", "{}"}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("got %q, want %q", got, want)
		}
	})
	tests := []struct {
		name string
		src  string
		emit func([]byte) error
		code fault.Code
		msg  string
	}{
		{"discarded but size-checked", `emit(string.rep("x", 200))`, nil, fault.ResourceExhausted, "emit value exceeds the 100-byte limit"},
		{"too many", `for i = 1, 6 do emit(i) end`, nil, fault.ResourceExhausted, "more than 5 times"},
		{"not JSON", `emit({f = print})`, nil, fault.ScriptError, "line 1: emit value.f: cannot convert a function"},
		{"consumer error aborts", `emit(1) return 2`, func([]byte) error { return fault.New(fault.Unavailable, "client gone") }, fault.Unavailable, "client gone"},
		{"consumer plain error", `emit(1) return 2`, func([]byte) error { return errors.New("io") }, fault.Internal, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := run(t, en, tc.src, runOpts{emit: tc.emit})
			wantCode(t, err, tc.code, tc.msg)
		})
	}
}

func TestLog(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	en := engine.New(engine.Config{Limits: engine.Limits{MaxLogBytes: 20}}, log)
	tests := []struct {
		name, src, level, msg string
	}{
		{"info", `log.info("hello", 42, nil, true)`, "INFO", "hello 42 nil true"},
		{"warn", `log.warn("careful")`, "WARN", "careful"},
		{"error", `log.error("bad")`, "ERROR", "bad"},
		{"debug", `log.debug("dbg")`, "DEBUG", "dbg"},
		{"print", `print("p", 1)`, "INFO", "p 1"},
		{"tostring", `log.info(setmetatable({}, {__tostring = function() return "obj" end}))`, "INFO", "obj"},
		{"truncated", `log.info(string.rep("x", 100))`, "INFO", strings.Repeat("x", 20) + " …(truncated)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			buf.Reset()
			if _, err := run(t, en, tc.src, runOpts{}); err != nil {
				t.Fatal(err)
			}
			var rec map[string]any
			if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
				t.Fatalf("log output %q: %v", buf.String(), err)
			}
			if rec["level"] != tc.level || rec["msg"] != tc.msg || rec["tool"] != "t" || rec["exec_id"] != "x1" {
				t.Fatalf("got %v, want level %s msg %q tool t exec_id x1", rec, tc.level, tc.msg)
			}
		})
	}
}

// testModule is a Lua module whose read(scope) needs grant testmod.area:<scope>.
type testModule struct {
	mu    sync.Mutex
	opens int
}

func (m *testModule) Name() string { return "testmod" }

func (m *testModule) Open(L *lua.LState, c *engine.Call) lua.LValue {
	m.mu.Lock()
	m.opens++
	m.mu.Unlock()
	t := L.NewTable()
	t.RawSetString("read", L.NewFunction(func(L *lua.LState) int {
		if err := c.Grants.Check("testmod", "area", L.CheckString(1)); err != nil {
			engine.RaiseError(L, err)
		}
		L.Push(lua.LString("value of " + L.CheckString(1) + " for " + c.Tool))
		return 1
	}))
	return t
}

func TestGrants(t *testing.T) {
	mod := &testModule{}
	en := engine.New(engine.Config{Modules: []engine.Module{mod}}, nil)
	grants := func(ss ...string) engine.Grants {
		gs, err := engine.ParseGrants(ss)
		if err != nil {
			t.Fatal(err)
		}
		return gs
	}
	tests := []struct {
		name   string
		grants engine.Grants
		src    string
		want   string
		code   fault.Code
		msg    string
	}{
		{name: "granted", grants: grants("testmod.area:board"), src: `return testmod.read("board")`, want: `"value of board for t"`},
		{name: "sub-scope granted", grants: grants("testmod:board"), src: `return testmod.read("board/led")`, want: `"value of board/led for t"`},
		{name: "denied is catchable", src: `local ok, err = pcall(testmod.read, "board") return {ok, err}`,
			want: `[false,"PERMISSION_DENIED: tool has no grant for testmod.area:board"]`},
		{name: "denied starts with code", src: `local ok, err = pcall(testmod.read, "board") return err:find("^PERMISSION_DENIED: ") ~= nil`, want: "true"},
		{name: "denied uncaught", src: "local x = 1\nreturn testmod.read('board')", code: fault.PermissionDenied, msg: `tool "t": line 2: tool has no grant for testmod.area:board`},
		{name: "other scope denied", grants: grants("testmod.area:other"), src: `return testmod.read("board")`, code: fault.PermissionDenied},
		{name: "dotted scope granted", grants: grants("testmod.area:api.example.com"), src: `return testmod.read("api.example.com")`, want: `"value of api.example.com for t"`},
		{name: "dotted scope covers no other host", grants: grants("testmod.area:example.com"), src: `return testmod.read("api.example.com")`, code: fault.PermissionDenied},
		{name: "module table is per execution", src: `testmod.read = nil return true`, want: "true"},
		{name: "module still there", grants: grants("testmod"), src: `return testmod.read("x")`, want: `"value of x for t"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(t, en, tc.src, runOpts{grants: tc.grants})
			if tc.code != "" {
				wantCode(t, err, tc.code, tc.msg)
				return
			}
			if err != nil || string(out) != tc.want {
				t.Fatalf("got %s, %v, want %s", out, err, tc.want)
			}
		})
	}
	t.Run("opened lazily", func(t *testing.T) {
		mod.mu.Lock()
		before := mod.opens
		mod.mu.Unlock()
		mustRun(t, en, "return 1")
		mustRun(t, en, "return testmod ~= nil and testmod ~= nil")
		mod.mu.Lock()
		defer mod.mu.Unlock()
		if got := mod.opens - before; got != 1 {
			t.Fatalf("got %d opens, want 1", got)
		}
	})
}

func TestNewPanicsOnBadModules(t *testing.T) {
	for _, mods := range [][]engine.Module{
		{&testModule{}, &testModule{}},
		{namedModule("string")},
		{namedModule("Not-Lua")},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Fatalf("New with modules %v: got no panic, want one", mods)
				}
			}()
			engine.New(engine.Config{Modules: mods}, nil)
		}()
	}
}

type namedModule string

func (m namedModule) Name() string                                  { return string(m) }
func (m namedModule) Open(L *lua.LState, c *engine.Call) lua.LValue { return lua.LNil }

// TestConcurrent runs different tools from many goroutines; with -race it
// checks that programs and the engine are safe to share.
func TestConcurrent(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	srcs := []string{
		"return a + b",
		"local t = {} for i = 1, 100 do t[i] = a * i end table.sort(t, function(x, y) return x > y end) return t[1]",
		"return (string.gsub(string.rep('a', 100), 'a', 'b')):len() + b - 100",
		"x = a return x + b",
	}
	wants := []string{"3", "100", "2", "3"}
	progs := make([]*engine.Program, len(srcs))
	for i, s := range srcs {
		p, err := engine.Compile("t", s)
		if err != nil {
			t.Fatal(err)
		}
		progs[i] = p
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				k := (g + i) % len(progs)
				out, err := en.Run(context.Background(), engine.Exec{
					Tool: "t", Program: progs[k], Params: addParams, Args: map[string]any{"a": 1.0, "b": 2.0},
				})
				if err != nil || string(out) != wants[k] {
					t.Errorf("program %d: got %s, %v, want %s", k, out, err, wants[k])
					return
				}
			}
		})
	}
	wg.Wait()
}

// TestSparseIndexDoesNotAllocateTheGap: assigning a huge integer key (or
// table.insert at a huge position) is one VM instruction, which no
// deadline can interrupt; it must not allocate an array up to that index.
// With gopher-lua's own bound it allocated 1 GiB of nils for t[2^26-1].
func TestSparseIndexDoesNotAllocateTheGap(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	tests := []struct{ name, src string }{
		{"sparse assignment", "local t = {} t[67108863] = true return t[67108863]"},
		{"table.insert at a huge position", "local t = {} table.insert(t, 67108863, true) return t[67108863]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			if got := mustRun(t, en, tc.src); got != "true" {
				t.Fatalf("got %s, want true", got)
			}
			runtime.ReadMemStats(&after)
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 64<<20 {
				t.Fatalf("the call allocated %d MiB, want far less than the 1 GiB an array up to the index takes", grew>>20)
			}
		})
	}
}
