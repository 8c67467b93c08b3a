package clustertest_test

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/clustertest"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/services/hel"
	"github.com/loki-iot/loki/services/loki"
	"github.com/nats-io/nats.go"
)

// BenchmarkClusterExec calls a tiny tool through 1, 2 and 3 Loki replicas,
// one per node of a 3-node cluster (each with its Hel replica), from 16
// concurrent callers spread over the nodes: calls/s is the figure.
//
//	go test -run '^$' -bench ClusterExec -benchtime 5s ./internal/clustertest
func BenchmarkClusterExec(b *testing.B) {
	for _, n := range []int{1, 2, 3} {
		b.Run(fmt.Sprintf("replicas=%d", n), func(b *testing.B) {
			c := clustertest.Start(b, 3)
			register(b, c)
			for i := range n {
				s := startStack(b, c, i)
				b.Cleanup(s.kill)
			}
			clients := make([]*loki.Client, 6)
			for i := range clients {
				nc, err := nats.Connect(c.URL(i % 3))
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(nc.Close)
				clients[i] = loki.NewClient(nc)
			}
			var next atomic.Uint64
			b.SetParallelism(8) // 8 callers per GOMAXPROCS: 16 on 2 vCPUs
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				lc := clients[next.Add(1)%uint64(len(clients))]
				for pb.Next() {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					_, err := lc.Call(ctx, "add", []byte(`{"a":1,"b":2}`))
					cancel()
					if err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
		})
	}
}

// BenchmarkClusterRecovery kills the node that leads a Hel bucket's stream
// (with its Loki and Hel replicas) 10 times, each time measuring how long
// until a write through Hel and a tool call, retried every 10 ms by
// clients connected to every node, succeed again; then it restarts the
// node and waits until it has caught up. It reports min, median and max.
// Each attempt waits at most probeTimeout, so a request lost with the
// killed replica costs that much.
//
//	go test -run '^$' -bench ClusterRecovery -benchtime 1x ./internal/clustertest
func BenchmarkClusterRecovery(b *testing.B) {
	const (
		kills        = 10
		probeTimeout = 200 * time.Millisecond
	)
	for range b.N {
		c := clustertest.Start(b, 3)
		register(b, c)
		stacks := make([]*stack, 3)
		for i := range stacks {
			stacks[i] = startStack(b, c, i)
		}
		probe, err := natsrv.Dial(context.Background(), c.URLs(), "probe", nil)
		if err != nil {
			b.Fatal(err)
		}
		hc, lc := hel.NewClient(probe), loki.NewClient(probe)
		write := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
			defer cancel()
			_, err := hc.KVPut(ctx, "load", "k", hel.Bytes([]byte("v")))
			return err
		}
		call := func() error {
			ctx, cancel := context.WithTimeout(context.Background(), probeTimeout)
			defer cancel()
			_, err := lc.Call(ctx, "add", []byte(`{"a":1,"b":2}`))
			return err
		}
		if err := write(); err != nil {
			b.Fatal(err)
		}
		var took []time.Duration
		for range kills {
			victim := leaderOf(b, c, "KV_hel_kv_load")
			killed := time.Now()
			stacks[victim].kill()
			c.Kill(victim)
			for _, op := range []func() error{write, call} {
				for deadline := time.Now().Add(30 * time.Second); op() != nil; time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						b.Fatal("not recovered within 30s")
					}
				}
			}
			took = append(took, time.Since(killed))
			c.Restart(b, victim)
			stacks[victim] = startStack(b, c, victim)
			c.WaitStreamCurrent(b, "KV_hel_kv_load")
		}
		probe.Close()
		for _, s := range stacks {
			s.kill()
		}
		c.Shutdown()
		slices.Sort(took)
		b.ReportMetric(float64(took[0].Microseconds())/1000, "min-ms")
		b.ReportMetric(float64(took[len(took)/2].Microseconds())/1000, "median-ms")
		b.ReportMetric(float64(took[len(took)-1].Microseconds())/1000, "max-ms")
	}
}

// leaderOf is the index of the node leading stream.
func leaderOf(b *testing.B, c *clustertest.Cluster, stream string) int {
	b.Helper()
	name := c.Leader(b, stream)
	for i := range 3 {
		if name == fmt.Sprintf("n%d", i+1) {
			return i
		}
	}
	b.Fatalf("stream %s: leader %q is no node", stream, name)
	return 0
}
