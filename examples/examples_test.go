package examples_test

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
	"log/slog"
	"reflect"
	"testing"
	"time"

	"github.com/loki-iot/loki/examples"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/loki"
)

// TestExampleTools registers the shipped examples and calls each one over NATS.
func TestExampleTools(t *testing.T) {
	data, err := fs.ReadFile(examples.FS, examples.ToolsFile)
	if err != nil {
		t.Fatal(err)
	}
	tools, err := loki.ParseTools(examples.ToolsFile, data, examples.FS)
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reg, err := loki.OpenRegistry(ctx, nc, log)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(ctx, tools...); err != nil {
		t.Fatal(err)
	}
	svc, err := loki.New(loki.Config{}, natstest.Connect(t, srv), log)
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)
	c := loki.NewClient(nc)

	tests := []struct {
		tool, args string
		want       any
		wantCode   fault.Code
	}{
		{tool: "add", args: `{"a":1,"b":2}`, want: 3.0},
		{tool: "add", args: `{"a":40}`, want: 40.0},
		{tool: "slugify", args: `{"text":"Hello, World!"}`, want: "hello-world"},
		{tool: "slugify", args: `{"text":"  Loki -- IoT tools ", "sep":"_"}`, want: "loki_iot_tools"},
		{tool: "format_reading", args: `{"name":"kitchen","value":21.456,"unit":"°C"}`, want: "kitchen: 21.5 °C"},
		{tool: "format_reading", args: `{"name":"door","value":1,"precision":0}`, want: "door: 1 "},
		{tool: "summarize", args: `{"readings":[{"sensor":"t1","value":20},{"sensor":"t1","value":22},{"sensor":"h","value":50}]}`,
			want: map[string]any{
				"t1": map[string]any{"count": 2.0, "min": 20.0, "max": 22.0, "mean": 21.0},
				"h":  map[string]any{"count": 1.0, "min": 50.0, "max": 50.0, "mean": 50.0},
			}},
		{tool: "summarize", args: `{"readings":[]}`, want: map[string]any{}},
		{tool: "summarize", args: `{"readings":[{"sensor":1}]}`, wantCode: fault.ScriptError},
		{tool: "countdown", args: `{"n":2}`, want: "liftoff"},
		{tool: "countdown", args: `{"n":5000}`, wantCode: fault.ScriptError},
	}
	for _, tc := range tests {
		t.Run(tc.tool, func(t *testing.T) {
			res, err := c.Call(ctx, tc.tool, []byte(tc.args))
			if fault.CodeOf(err) != tc.wantCode {
				t.Fatalf("got %v, want code %q", err, tc.wantCode)
			}
			if err != nil {
				return
			}
			var got any
			if err := json.Unmarshal(res.JSON, &got); err != nil {
				t.Fatalf("result %s: %v", res.JSON, err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v, want %#v", got, tc.want)
			}
		})
	}

	var chunks []string
	res, err := c.Stream(ctx, "countdown", []byte(`{"n":3}`), func(c loki.Chunk) error {
		chunks = append(chunks, string(c.JSON))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`{"remaining":3}`, `{"remaining":2}`, `{"remaining":1}`}
	if !reflect.DeepEqual(chunks, want) || string(res.JSON) != `"liftoff"` {
		t.Fatalf("countdown stream: got %v then %s, want %v then \"liftoff\"", chunks, res.JSON, want)
	}
}
