package loki_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/natstest"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
)

// BenchmarkRegistryPropagation measures how long a tool registered through
// the API takes to be callable on every replica: from sending Register to
// both replicas' registries holding the new revision, compiled (the KV put,
// the watch delivering it, the compile). The spine's target is 100 ms;
// ns/op is the mean, worst-µs the slowest.
func BenchmarkRegistryPropagation(b *testing.B) {
	srv := natstest.Start(b)
	c := loki.NewClient(natstest.Connect(b, srv))
	var replicas []*loki.Service
	for range 2 {
		nc := natstest.Connect(b, srv)
		svc, err := loki.New(loki.Config{}, nc, quietLog())
		if err != nil {
			b.Fatal(err)
		}
		natstest.RunService(b, svc)
		replicas = append(replicas, svc)
	}
	ctx := context.Background()
	var worst time.Duration
	for b.Loop() {
		sent := time.Now()
		stored, err := c.Register(ctx, &lokiv1.Tool{Name: "hot", Returns: "number", Source: "return 1"})
		if err != nil {
			b.Fatal(err)
		}
		for _, r := range replicas {
			for {
				if t, ok := r.Registry().Get("hot"); ok && t.Def.GetRevision() >= stored.GetRevision() {
					break
				}
				if time.Since(sent) > 10*time.Second {
					b.Fatal("revision not seen by every replica after 10s")
				}
				runtime.Gosched()
			}
		}
		worst = max(worst, time.Since(sent))
	}
	b.ReportMetric(float64(worst.Microseconds()), "worst-µs")
}
