// Package lokitest runs Loki in tests of the services whose Lua modules it
// hosts: register tools on a real in-process NATS server, start a replica
// with the modules under test, call tools and check error codes.
package lokitest

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"testing/fstest"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/nats-io/nats.go"
)

// CallTimeout bounds Call.
const CallTimeout = 30 * time.Second

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// Parse parses TOML tools (inline scripts only), failing the test on error.
func Parse(t testing.TB, src string) []*loki.Compiled {
	t.Helper()
	tools, err := loki.ParseTools("test.toml", []byte(src), fstest.MapFS{})
	if err != nil {
		t.Fatal(err)
	}
	return tools
}

// Register puts tools in the registry of srv.
func Register(t testing.TB, srv *natsrv.Server, tools []*loki.Compiled) {
	t.Helper()
	reg, err := loki.OpenRegistry(context.Background(), natstest.Connect(t, srv), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(context.Background(), tools...); err != nil {
		t.Fatal(err)
	}
}

// Start runs a Loki replica on its own connection to srv, with one module
// from each constructor, until the test ends, and returns a client.
func Start(t testing.TB, srv *natsrv.Server, modules ...func(*nats.Conn) engine.Module) *loki.Client {
	t.Helper()
	nc := natstest.Connect(t, srv)
	mods := make([]engine.Module, len(modules))
	for i, m := range modules {
		mods[i] = m(nc)
	}
	svc, err := loki.New(loki.Config{Modules: mods}, nc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)
	return loki.NewClient(natstest.Connect(t, srv))
}

// Call calls tool with args (a JSON object) and decodes its JSON result.
func Call(t testing.TB, c *loki.Client, tool, args string) (any, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	defer cancel()
	res, err := c.Call(ctx, tool, []byte(args))
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(res.JSON, &v); err != nil {
		t.Fatalf("tool %s: result %s: %v", tool, res.JSON, err)
	}
	return v, nil
}

// Context is a context for one test step, cancelled when the test ends.
func Context(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), CallTimeout)
	t.Cleanup(cancel)
	return ctx
}

// WantCode fails the test unless err has code want ("" for no error).
func WantCode(t testing.TB, err error, want fault.Code) {
	t.Helper()
	if got := fault.CodeOf(err); got != want {
		t.Fatalf("got %v, want code %q", err, want)
	}
}
