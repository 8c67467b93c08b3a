package jormungandr_test

import (
	"testing"

	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/jormungandr"
	"github.com/loki-iot/loki/services/loki"
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
	lokitest.Register(t, srv, lokitest.Parse(t, tools))
	return &lokiEnv{env: e, loki: lokitest.Start(t, srv, jormungandr.NewModule)}
}

// call calls a tool and decodes its JSON result.
func (e *lokiEnv) call(t testing.TB, tool, args string) (any, error) {
	t.Helper()
	return lokitest.Call(t, e.loki, tool, args)
}
