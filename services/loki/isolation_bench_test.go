package loki_test

import (
	"context"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/isolate"
)

// BenchmarkIsolation calls a trivial tool (`return a + b`) over NATS, in
// process (add_local) and in an isolated worker (add_iso, memory = "64MiB"),
// one caller at a time (seq) and from 32 callers (par), on one server and
// replica with the default number of workers (one per core). Each reports
// calls/s and the median latency (p50-µs). Run with
//
//	go test -run '^$' -bench 'Isolation|WorkerReplacement' -benchtime 3s ./services/loki
func BenchmarkIsolation(b *testing.B) {
	// No Observer.Call: the tests' one reads /proc on every call.
	_, c := setupIsolated(b, 0, func(c *loki.Config) { c.Isolation.Observer.Call = nil })
	body := []byte(`{"a":1,"b":2}`)
	for _, tool := range []string{"add_local", "add_iso"} {
		// Start the workers before timing.
		if _, err := c.Call(context.Background(), tool, body); err != nil {
			b.Fatal(err)
		}
		name := map[string]string{"add_local": "in-process", "add_iso": "worker"}[tool]
		b.Run(name+"/seq", func(b *testing.B) {
			lat := make([]time.Duration, 0, b.N)
			start := time.Now()
			for b.Loop() {
				t0 := time.Now()
				if _, err := c.Call(context.Background(), tool, body); err != nil {
					b.Fatal(err)
				}
				lat = append(lat, time.Since(t0))
			}
			report(b, lat, time.Since(start))
		})
		b.Run(name+"/par", func(b *testing.B) {
			var mu sync.Mutex
			var lat []time.Duration
			b.SetParallelism(16) // 32 callers on 2 cores
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				var mine []time.Duration
				for pb.Next() {
					t0 := time.Now()
					if _, err := c.Call(context.Background(), tool, body); err != nil {
						b.Error(err)
						return
					}
					mine = append(mine, time.Since(t0))
				}
				mu.Lock()
				lat = append(lat, mine...)
				mu.Unlock()
			})
			report(b, lat, time.Since(start))
		})
	}
}

func report(b *testing.B, lat []time.Duration, took time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(len(lat))/took.Seconds(), "calls/s")
}

// BenchmarkWorkerReplacement kills an idle worker with SIGKILL and waits for
// its replacement to be ready: ns/op is the replacement time. It also
// reports the resident memory of a worker that has served a call.
func BenchmarkWorkerReplacement(b *testing.B) {
	w, c := setupIsolated(b, 1, func(c *loki.Config) { c.Isolation.Observer.Call = nil })
	if _, err := c.Call(context.Background(), "add_iso", []byte(`{"a":1,"b":2}`)); err != nil {
		b.Fatal(err)
	}
	pid := <-w.ready
	_, rss := isolate.PeakRSS(pid)
	defer func() { b.ReportMetric(float64(rss)/(1<<20), "MiB-RSS/worker") }()
	for b.Loop() {
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			b.Fatal(err)
		}
		select {
		case pid = <-w.ready:
		case <-time.After(30 * time.Second):
			b.Fatal("no replacement within 30s")
		}
	}
}
