// Package natstest starts a real in-process nats-server with JetStream for
// tests, on a random loopback port, cleaned up with t.Cleanup.
package natstest

import (
	"context"
	"sync"
	"testing"
	"time"

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

// Service is what Loki's services have in common: Run blocks until its
// context ends; Ready is closed once it serves.
type Service interface {
	Run(ctx context.Context) error
	Ready() <-chan struct{}
}

// RunService runs svc until stop is called or the test ends, and waits until
// it is ready. The test fails if svc is not ready within 20s or Run returns
// an error. stop may be called more than once.
func RunService(t testing.TB, svc Service) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%T.Run: %v", svc, err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-svc.Ready():
	case err := <-done:
		done <- err
		t.Fatalf("%T.Run ended before it was ready: %v", svc, err)
	case <-time.After(20 * time.Second):
		t.Fatalf("%T not ready after 20s", svc)
	}
	return stop
}
