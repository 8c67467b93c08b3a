package hel_test

import (
	"context"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/clustertest"
	"github.com/loki-iot/loki/services/hel"
	"github.com/nats-io/nats.go"
)

// TestReplicasStartTogetherOnACluster: two Hel replicas started at the same
// moment on a 3-node cluster, with replicated buckets, both come up (on a
// cluster, two concurrent set-ups of one replicated bucket can leave one of
// them without an answer) and serve the same KV.
func TestReplicasStartTogetherOnACluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	c := clustertest.Start(t, 3)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var clients []*hel.Client
	done := make(chan error, 2)
	var ready []<-chan struct{}
	for i := range 2 {
		nc, err := nats.Connect(c.URL(i))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		cfg := hel.DefaultConfig(t.TempDir())
		cfg.Replicas = 3
		svc, err := hel.New(cfg, nc, quietLog())
		if err != nil {
			t.Fatal(err)
		}
		ready = append(ready, svc.Ready())
		go func() { done <- svc.Run(ctx) }()
		clients = append(clients, hel.NewClient(nc))
	}
	for i, r := range ready {
		select {
		case <-r:
		case err := <-done:
			t.Fatalf("replica exited: %v", err)
		case <-time.After(90 * time.Second):
			t.Fatalf("replica %d never ready", i)
		}
	}
	cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
	defer ccancel()
	if _, err := clients[0].KVPut(cctx, "shared", "k", hel.Bytes([]byte("v"))); err != nil {
		t.Fatal(err)
	}
	e, err := clients[1].KVGet(cctx, "shared", "k")
	if err != nil || string(e.Data) != "v" {
		t.Fatalf("read through the other replica: got %v %v, want v", e, err)
	}
}
