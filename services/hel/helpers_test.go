package hel_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/hel"
	"github.com/nats-io/nats.go"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testConfig is the default config with files under dir and small chunks,
// so that multi-chunk objects stay small.
func testConfig(dir string) hel.Config {
	cfg := hel.DefaultConfig(dir)
	cfg.Workers, cfg.Queue = 8, 64
	cfg.DrainTimeout = 5 * time.Second
	cfg.Objects.ChunkSize = 16 << 10
	cfg.Objects.Window = 4
	return cfg
}

// startHel runs a Hel replica on its own connection to srv until the test ends.
func startHel(t testing.TB, srv *natsrv.Server, cfg hel.Config) {
	t.Helper()
	stop := runHel(t, srv, cfg)
	t.Cleanup(stop)
}

// runHel starts a replica and returns a function that stops it and checks
// Run's error.
func runHel(t testing.TB, srv *natsrv.Server, cfg hel.Config) func() {
	t.Helper()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	svc, err := hel.New(cfg, nc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	stop := natstest.RunService(t, svc)
	// Closing the connection too lets restart tests bring up a new server
	// without this one reconnecting to it.
	return func() { stop(); nc.Close() }
}

type env struct {
	srv *natsrv.Server
	nc  *nats.Conn
	c   *hel.Client
	cfg hel.Config
}

// setup starts a server and one Hel replica with testConfig changed by opts.
func setup(t testing.TB, opts ...func(*hel.Config)) *env {
	t.Helper()
	srv := natstest.Start(t)
	cfg := testConfig(filepath.Join(t.TempDir(), "data"))
	for _, o := range opts {
		o(&cfg)
	}
	startHel(t, srv, cfg)
	nc := natstest.Connect(t, srv)
	return &env{srv: srv, nc: nc, c: hel.NewClient(nc), cfg: cfg}
}

// Shared with the other services' tests.
var (
	ctxT     = lokitest.Context
	wantCode = lokitest.WantCode
)

// eventually polls cond until it holds or 30s pass.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: still not true after 30s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }
