package engine_test

import (
	"encoding/json"
	"fmt"
	"testing"

	"github.com/loki-iot/loki/services/loki/engine"
)

// TestParamsAsGlobals checks that params behave as globals of the script's
// environment in every way a script can observe.
func TestParamsAsGlobals(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	params := []engine.Param{
		{Name: "a", Type: engine.Number}, {Name: "b", Type: engine.Number}, {Name: "c", Type: engine.Number},
	}
	args := map[string]any{"a": 1.0, "b": 2.0} // c is absent
	tests := []struct {
		name, src, want string
	}{
		{"by name", "return a + b", "3"},
		{"via params", "return params.a + params.b", "3"},
		{"via _G", "return _G.a + _G.b", "3"},
		{"absent is nil", "return c == nil and params.c == nil", "true"},
		{"local shadows", "local a = 10 return a + b", "12"},
		{"local in a block leaves the global", "do local a = 10 end return a", "1"},
		{"assign", "a = 5 return a + b", "7"},
		{"assign keeps params", "a = 5 return params.a", "1"},
		{"assign nil", "a = nil return a == nil and b == 2", "true"},
		{"assign nil keeps params", "a = nil return params.a", "1"},
		{"assign an absent param", "c = 3 return a + b + c", "6"},
		{"assign in a function", "local function inc() a = a + 1 end inc() inc() return a", "3"},
		{"assign via _G", "_G.a = 7 return a", "7"},
		{"other globals", "x = 1 function f() return a + x end return f()", "2"},
		{"other global, then _G", "x = 1 return rawget(_G, 'b') + x", "3"},
		{"rawget on _G", "return rawget(_G, 'a')", "1"},
		{"rawset nil on _G", "rawset(_G, 'a', nil) return a == nil", "true"},
		{"rawset on _G", "rawset(_G, 'a', 9) return a", "9"},
		{"pairs over _G", "local n = 0 for k, v in pairs(_G) do if k == 'a' or k == 'b' then n = n + v end end return n", "3"},
		{"next on _G", "local n = 0 local k, v = next(_G) while k do if k == 'a' or k == 'b' then n = n + v end k, v = next(_G, k) end return n", "3"},
		{"after assigning, _G holds them", "a = 4 local g = _G return rawget(g, 'a') + rawget(g, 'b')", "6"},
		{"env metatable still hidden", "return getmetatable(_G)", "false"},
		{"built-ins still resolve", "return string.format('%d', a + b)", `"3"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := run(t, en, tc.src, runOpts{params: params, args: args})
			if err != nil {
				t.Fatalf("got error %v, want %s", err, tc.want)
			}
			if string(out) != tc.want {
				t.Fatalf("got %s, want %s", out, tc.want)
			}
		})
	}
	t.Run("setmetatable on _G", func(t *testing.T) {
		_, err := run(t, en, "setmetatable(_G, {})", runOpts{params: params, args: args})
		if err == nil {
			t.Fatal("got no error, want protected metatable")
		}
	})
}

// TestParamsIsolation runs, on the same pooled state, a call with params and
// then calls that must not see them.
func TestParamsIsolation(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	check := func(t *testing.T, src string, o runOpts) string {
		t.Helper()
		out, err := run(t, en, "return {ok = (function() "+src+" end)(), state = tostring(type)}", o)
		if err != nil {
			t.Fatalf("check %q: got error %v, want none", src, err)
		}
		var got struct {
			OK    bool
			State string
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		if !got.OK {
			t.Fatalf("%q: got false, want true", src)
		}
		return got.State
	}
	ab := []engine.Param{{Name: "a", Type: engine.Number}, {Name: "b", Type: engine.Number}}
	tests := []struct {
		name, dirty string
	}{
		{"read", "return a + b"},
		{"assign", "a = 5 x = a"},
		{"via _G", "_G.b = 3 return rawget(_G, 'a')"},
		{"error mid-way", "a = 2 error('stop')"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := check(t, "return true", runOpts{})
			_, _ = run(t, en, tc.dirty, runOpts{params: ab, args: map[string]any{"a": 1.0, "b": 2.0}})
			if got := check(t, "return a == nil and b == nil and x == nil", runOpts{}); got != before {
				t.Fatalf("got state %s, want the same pooled state %s", got, before)
			}
			check(t, "return a == nil and b == 7", runOpts{params: ab, args: map[string]any{"b": 7.0}})
		})
	}
	t.Run("many distinct names", func(t *testing.T) {
		before := check(t, "return true", runOpts{})
		for i := range 1500 {
			name := fmt.Sprintf("p%d", i)
			prev := "q"
			if i > 0 {
				prev = fmt.Sprintf("p%d", i-1)
			}
			src := fmt.Sprintf("return %s == %d and %s == nil", name, i, prev)
			got := check(t, src, runOpts{params: []engine.Param{{Name: name, Type: engine.Number}}, args: map[string]any{name: float64(i)}})
			if got != before {
				t.Fatalf("got state %s, want the same pooled state %s", got, before)
			}
		}
		check(t, "return p0 == nil and p1499 == nil", runOpts{})
	})
}
