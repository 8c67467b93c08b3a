package engine_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/loki/engine"
)

// FuzzDecodeArgs checks that DecodeArgs never panics, fails only with
// INVALID_ARGUMENT, and that what it accepts re-encodes into values that
// still fit their params.
func FuzzDecodeArgs(f *testing.F) {
	for _, s := range []string{
		``, `null`, `{}`, `{"a":1}`, `{"a":1,"n":2,"s":"x","b":true,"o":{"k":[1,{}]},"l":[[]],"x":null}`,
		`[1]`, `{"a":"1"}`, `{"a":1e400}`, `{"a":1,"x":[[[[[[]]]]]]}`, `{"a":1,"s":"\u00e9\ud800"}`, `{"a":1,"zz":0}`,
	} {
		f.Add([]byte(s))
	}
	reused := map[string]any{"stale": true}
	f.Fuzz(func(t *testing.T, body []byte) {
		args, err := engine.DecodeArgs(decodeParams, body)
		clear(reused)
		into, intoErr := engine.DecodeArgsInto(reused, decodeParams, body)
		if fmt.Sprint(err) != fmt.Sprint(intoErr) || !reflect.DeepEqual(args, into) {
			t.Fatalf("DecodeArgsInto: got %v, %v; DecodeArgs: %v, %v", into, intoErr, args, err)
		}
		if err != nil {
			if fault.CodeOf(err) != fault.InvalidArgument {
				t.Fatalf("got %v, want INVALID_ARGUMENT", err)
			}
			return
		}
		for _, p := range decodeParams {
			v, ok := args[p.Name]
			if !ok {
				if p.Required {
					t.Fatalf("required param %q absent without error", p.Name)
				}
				continue
			}
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("param %q: re-encoding %v: %v", p.Name, v, err)
			}
			var back any
			if err := json.Unmarshal(b, &back); err != nil {
				t.Fatalf("param %q: decoding %s: %v", p.Name, b, err)
			}
			if err := engine.CheckValue(p.Type, back); err != nil {
				t.Fatalf("param %q: %s no longer fits %s: %v", p.Name, b, p.Type, err)
			}
		}
	})
}

// FuzzGsub runs string.gsub, find, match and gmatch with arbitrary subject,
// pattern and replacement under a short deadline. They must never panic
// (a recovered Go panic surfaces as INTERNAL), never run past the deadline,
// and agree with strings.ReplaceAll for patterns without magic characters.
func FuzzGsub(f *testing.F) {
	for _, c := range [][3]string{
		{"hello world", "(%w+)", "%1 %1"}, {"abc", "", "-"}, {"abc", "%w*", "%0"}, {"f(a(b)c)", "%b()", "[]"},
		{"THE (quick) fox", "%f[%a]%a+", "W"}, {"xaay", "(%w)%1", "<%1>"}, {"aaa", "^a", "b"}, {"abc", "()b", "%1"},
		{strings.Repeat("a", 500), "(.-)(.-)(.-)b", "x"}, {"a.b", "[%.-]", "%%"}, {"abc", "[^", "x"}, {"a", "%", ""},
		{"aaa", "a", "%2"}, {"x", "(()", "%1"}, {"ab", "[a-]", "z"}, {"a]b", "[]]", "!"},
	} {
		f.Add(c[0], c[1], c[2])
	}
	en := engine.New(engine.Config{Limits: engine.Limits{MaxStringBytes: 1 << 16}}, nil)
	prog, err := engine.Compile("fuzz", `
local r, n = string.gsub(s, p, repl)
local f = {string.find(s, p)}
local m = {string.match(s, p)}
local k = 0
for a in string.gmatch(s, p) do k = k + 1 if k > 1000 then break end end
return {r, n}`)
	if err != nil {
		f.Fatal(err)
	}
	params := []engine.Param{{Name: "s", Type: engine.String}, {Name: "p", Type: engine.String}, {Name: "repl", Type: engine.String}}
	// Short, so that slow inputs (which the fuzzer minimizes) stay cheap.
	const timeout = 10 * time.Millisecond
	f.Fuzz(func(t *testing.T, s, p, repl string) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		start := time.Now()
		out, err := en.Run(ctx, engine.Exec{Tool: "fuzz", Program: prog, Params: params,
			Args: map[string]any{"s": s, "p": p, "repl": repl}})
		if d := time.Since(start); d > timeout+time.Second {
			t.Fatalf("ran %v, past the %v deadline", d, timeout)
		}
		var fe *fault.Error
		if err != nil && (!errors.As(err, &fe) || fe.Code == fault.Internal) {
			t.Fatalf("got %v, want a script, resource or deadline error", err)
		}
		if err != nil || p == "" || strings.ContainsAny(p, "^$*+?.([%-") || strings.Contains(repl, "%") {
			return
		}
		var got []any
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatal(err)
		}
		wantStr, wantN := strings.ReplaceAll(s, p, repl), strings.Count(s, p)
		if utf8.ValidString(s) && utf8.ValidString(p) && utf8.ValidString(repl) && (got[0] != wantStr || got[1] != float64(wantN)) {
			t.Fatalf("gsub(%q, %q, %q): got %q, %v, want %q, %d", s, p, repl, got[0], got[1], wantStr, wantN)
		}
	})
}

// FuzzFormat runs string.format with an arbitrary format string and
// arguments: it must never panic and never build more than the string cap.
func FuzzFormat(f *testing.F) {
	for _, s := range []string{"%d", "%5.2f", "%-+ #0x", "%99.99g", "%q", "%c%c", "%s %s", "%%", "%", "%100d", "%.3s", "%i%u%o%X%e%E%G"} {
		f.Add(s, 3.5, "ab\x00c")
	}
	en := engine.New(engine.Config{Limits: engine.Limits{MaxStringBytes: 1 << 16}}, nil)
	prog, err := engine.Compile("fuzz", `return string.format(f, n, s, n, s, n, s, n, s)`)
	if err != nil {
		f.Fatal(err)
	}
	params := []engine.Param{{Name: "f", Type: engine.String}, {Name: "n", Type: engine.Number}, {Name: "s", Type: engine.String}}
	f.Fuzz(func(t *testing.T, format string, n float64, s string) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		out, err := en.Run(ctx, engine.Exec{Tool: "fuzz", Program: prog, Params: params,
			Args: map[string]any{"f": format, "n": n, "s": s}})
		var fe *fault.Error
		if err != nil && (!errors.As(err, &fe) || fe.Code == fault.Internal) {
			t.Fatalf("got %v, want a script or resource error", err)
		}
		if len(out) > 6*(1<<16)+2 { // JSON escaping may grow each byte to \u00XX
			t.Fatalf("got %d bytes, want at most the string cap", len(out))
		}
	})
}
