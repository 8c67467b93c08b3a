package jormungandr_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/jormungandr"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testConfig is the default config with small pools and limits.
func testConfig() jormungandr.Config {
	cfg := jormungandr.DefaultConfig()
	cfg.Workers, cfg.Queue = 8, 64
	cfg.DrainTimeout = 5 * time.Second
	cfg.HTTP.MaxResponseBytes = 64 << 10
	cfg.HTTP.MaxRequestBytes = 64 << 10
	cfg.HTTP.MaxRedirects = 3
	cfg.Handles.ReconnectMin = 10 * time.Millisecond
	cfg.Handles.ReconnectMax = 100 * time.Millisecond
	return cfg
}

// allowURL lets cfg reach the host and port of a test server's URL.
func allowURL(t testing.TB, cfg *jormungandr.Config, rawURL string) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(u.Port())
	if err != nil {
		t.Fatal(err)
	}
	cfg.Policy.Allow(u.Hostname(), port)
}

// portOf returns the port of a URL or host:port.
func portOf(t testing.TB, s string) int {
	t.Helper()
	if u, err := url.Parse(s); err == nil && u.Port() != "" {
		s = u.Host
	}
	_, p, err := net.SplitHostPort(s)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// startNATS starts a server with JetStream and an MQTT listener.
func startNATS(t testing.TB) *natsrv.Server {
	t.Helper()
	return natstest.Start(t, func(c *natsrv.Config) { c.MQTTPort = -1 })
}

// runService starts a replica on its own connection and returns a function
// that stops it.
func runService(t testing.TB, srv *natsrv.Server, cfg jormungandr.Config) func() {
	t.Helper()
	nc := natstest.Connect(t, srv)
	svc, err := jormungandr.New(cfg, nc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	stop := natstest.RunService(t, svc)
	return func() { stop(); nc.Close() }
}

type env struct {
	srv *natsrv.Server
	c   *jormungandr.Client
}

// setup starts a server and one replica with cfg.
func setup(t testing.TB, cfg jormungandr.Config) *env {
	t.Helper()
	srv := startNATS(t)
	runService(t, srv, cfg)
	return &env{srv: srv, c: jormungandr.NewClient(natstest.Connect(t, srv))}
}

// Shared with the other services' tests.
var (
	ctxT     = lokitest.Context
	wantCode = lokitest.WantCode
)

// wsServer serves WebSocket connections on 127.0.0.1 with serve, which
// runs until the connection should end.
func wsServer(t testing.TB, serve func(ctx context.Context, c *websocket.Conn)) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := websocket.Accept(w, r, nil)
		if err != nil {
			return
		}
		defer c.CloseNow()
		serve(r.Context(), c)
	}))
	t.Cleanup(ts.Close)
	return ts
}

// echoWS serves a WebSocket echo: every message comes back with the same type.
func echoWS(t testing.TB) *httptest.Server {
	return wsServer(t, func(ctx context.Context, c *websocket.Conn) {
		for {
			typ, data, err := c.Read(ctx)
			if err != nil || c.Write(ctx, typ, data) != nil {
				return
			}
		}
	})
}

// wsURL turns an httptest URL into its ws:// form.
func wsURL(u string) string { return "ws" + u[len("http"):] }
