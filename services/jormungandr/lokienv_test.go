package jormungandr_test

import (
	"context"
	"encoding/json"
	"testing"
	"testing/fstest"
	"time"

	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/jormungandr"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
)

// lokiEnv is a server with Jormungandr, Loki with the net module, and tools.
type lokiEnv struct {
	*env
	loki *loki.Client
}

// setupLokiOn registers tools (TOML) on srv and starts a replica and Loki.
func setupLokiOn(t testing.TB, srv *natsrv.Server, cfg jormungandr.Config, tools string) *lokiEnv {
	t.Helper()
	runService(t, srv, cfg)
	e := &env{srv: srv, c: jormungandr.NewClient(natstest.Connect(t, srv))}
	registerTools(t, e.srv, tools)
	nc := natstest.Connect(t, e.srv)
	svc, err := loki.New(loki.Config{Modules: []engine.Module{jormungandr.NewModule(nc)}}, nc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)
	return &lokiEnv{env: e, loki: loki.NewClient(natstest.Connect(t, e.srv))}
}

func registerTools(t testing.TB, srv *natsrv.Server, src string) {
	t.Helper()
	tools, err := loki.ParseTools("test.toml", []byte(src), fstest.MapFS{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := loki.OpenRegistry(context.Background(), natstest.Connect(t, srv), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(context.Background(), tools...); err != nil {
		t.Fatal(err)
	}
}

// call calls a tool and decodes its JSON result.
func (e *lokiEnv) call(t testing.TB, tool, args string) (any, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := e.loki.Call(ctx, tool, []byte(args))
	if err != nil {
		return nil, err
	}
	var v any
	if err := json.Unmarshal(res.JSON, &v); err != nil {
		t.Fatalf("result %s: %v", res.JSON, err)
	}
	return v, nil
}
