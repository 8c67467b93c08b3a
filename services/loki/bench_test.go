package loki_test

import (
	"context"
	"testing"

	"github.com/loki-iot/loki/internal/metrics"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// BenchmarkExecParallel calls a trivial tool over real NATS (TCP loopback)
// from many goroutines; BenchmarkEchoParallel is the raw request/reply
// baseline on the same server. `loki bench` reports the same comparison.
func BenchmarkExecParallel(b *testing.B) { benchmarkExecParallel(b, loki.Config{}) }

// BenchmarkExecParallelMetrics is BenchmarkExecParallel with metrics on:
// the difference is what the per-call counters and histograms cost.
func BenchmarkExecParallelMetrics(b *testing.B) {
	benchmarkExecParallel(b, loki.Config{Metrics: metrics.New()})
}

func benchmarkExecParallel(b *testing.B, cfg loki.Config) {
	srv := natstest.Start(b)
	nc := natstest.Connect(b, srv)
	registerToolsB(b, nc)
	startLokiB(b, srv, cfg)
	c := loki.NewClient(nc)
	body := []byte(`{"a":1,"b":2}`)
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Call(context.Background(), "add", body); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkEchoParallel(b *testing.B) {
	srv := natstest.Start(b)
	nc := natstest.Connect(b, srv)
	svcConn, err := srv.Connect("echo")
	if err != nil {
		b.Fatal(err)
	}
	defer svcConn.Close()
	if _, err := svcConn.Subscribe(subjects.BenchEcho, func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		b.Fatal(err)
	}
	if err := svcConn.Flush(); err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"a":1,"b":2}`)
	b.SetParallelism(16)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := nc.RequestWithContext(context.Background(), subjects.BenchEcho, body); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func registerToolsB(b *testing.B, nc *nats.Conn) {
	tools, err := loki.ParseTools("bench.toml", []byte(testTools), nil)
	if err != nil {
		b.Fatal(err)
	}
	reg, err := loki.OpenRegistry(context.Background(), nc, quietLog())
	if err != nil {
		b.Fatal(err)
	}
	if err := reg.Put(context.Background(), tools...); err != nil {
		b.Fatal(err)
	}
}

func startLokiB(b *testing.B, srv interface {
	Connect(string, ...nats.Option) (*nats.Conn, error)
}, cfg loki.Config) {
	nc, err := srv.Connect("loki")
	if err != nil {
		b.Fatal(err)
	}
	svc, err := loki.New(cfg, nc, quietLog())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	natstest.RunService(b, svc)
}
