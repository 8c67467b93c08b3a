// Package natstest starts a real in-process nats-server with JetStream for
// tests, on a random loopback port, cleaned up with t.Cleanup.
package natstest

import (
	"testing"

	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/nats-io/nats.go"
)

// Start runs a server with JetStream in a temp dir. Options adjust the config
// (for example to enable MQTT or reuse a data dir).
func Start(t testing.TB, opts ...func(*natsrv.Config)) *natsrv.Server {
	t.Helper()
	cfg := natsrv.Config{Name: "test", DataDir: t.TempDir(), Port: -1}
	for _, o := range opts {
		o(&cfg)
	}
	s, err := natsrv.Start(cfg, nil)
	if err != nil {
		t.Fatalf("start nats-server: %v", err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// Connect opens a TCP client connection to s, closed at cleanup.
func Connect(t testing.TB, s *natsrv.Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}
