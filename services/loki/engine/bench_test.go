package engine_test

import (
	"context"
	"testing"

	"github.com/loki-iot/loki/services/loki/engine"
)

var addParams = []engine.Param{
	{Name: "a", Type: engine.Number, Required: true},
	{Name: "b", Type: engine.Number, Required: true},
}

func addExec(b testing.TB) engine.Exec {
	b.Helper()
	p, err := engine.Compile("add", "return a + b")
	if err != nil {
		b.Fatal(err)
	}
	return engine.Exec{
		Tool: "add", ExecID: "bench", Program: p, Params: addParams, Returns: engine.Number,
		Args: map[string]any{"a": 1.0, "b": 2.0},
	}
}

// BenchmarkRunAdd measures one pooled execution of a trivial tool.
func BenchmarkRunAdd(b *testing.B) {
	en := engine.New(engine.Config{}, nil)
	e := addExec(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ReportAllocs()
	for b.Loop() {
		out, err := en.Run(ctx, e)
		if err != nil || string(out) != "3" {
			b.Fatalf("got %s, %v, want 3", out, err)
		}
	}
}

// BenchmarkRunParallel measures pooled executions from many goroutines.
func BenchmarkRunParallel(b *testing.B) {
	en := engine.New(engine.Config{}, nil)
	e := addExec(b)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			out, err := en.Run(ctx, e)
			if err != nil || string(out) != "3" {
				b.Errorf("got %s, %v, want 3", out, err)
				return
			}
		}
	})
}

// BenchmarkCompile measures compiling a small tool.
func BenchmarkCompile(b *testing.B) {
	src := `
local total = 0
for i, v in ipairs(values) do
  if v > threshold then total = total + v end
end
log.info("sum", total)
return { total = total, count = #values }
`
	b.ReportAllocs()
	for b.Loop() {
		if _, err := engine.Compile("sum", src); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeArgs measures decoding a small argument object.
func BenchmarkDecodeArgs(b *testing.B) {
	params := []engine.Param{
		{Name: "a", Type: engine.Number, Required: true},
		{Name: "b", Type: engine.Integer},
		{Name: "name", Type: engine.String, Default: "x"},
		{Name: "tags", Type: engine.Array},
	}
	body := []byte(`{"a": 1.5, "b": 2, "tags": ["x", "y"]}`)
	b.Run("new map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := engine.DecodeArgs(params, body); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("reused map", func(b *testing.B) {
		m := map[string]any{}
		b.ReportAllocs()
		for b.Loop() {
			clear(m)
			if _, err := engine.DecodeArgsInto(m, params, body); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkRunConcat measures a concat-heavy tool: 100 `..` of short
// strings per execution, each a capped call (concat.go).
func BenchmarkRunConcat(b *testing.B) {
	en := engine.New(engine.Config{}, nil)
	p, err := engine.Compile("cat", `local s = "" for i = 1, 100 do s = name .. ":" .. i end return s`)
	if err != nil {
		b.Fatal(err)
	}
	e := engine.Exec{
		Tool: "cat", ExecID: "bench", Program: p, Returns: engine.String,
		Params: []engine.Param{{Name: "name", Type: engine.String}}, Args: map[string]any{"name": "n"},
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ReportAllocs()
	for b.Loop() {
		out, err := en.Run(ctx, e)
		if err != nil || string(out) != `"n:100"` {
			b.Fatalf("got %s, %v, want \"n:100\"", out, err)
		}
	}
}
