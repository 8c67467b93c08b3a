// Package clustertest starts a real NATS cluster in-process on loopback for
// tests and benchmarks: N nodes with JetStream, each on fixed random
// client and route ports, so a node can be killed and restarted on the
// same ports and data dir while clients ride through on their URL lists.
package clustertest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Name is the cluster name every node is started with.
const Name = "loki-test"

// Cluster is an in-process NATS cluster. Its methods are safe for
// concurrent use.
type Cluster struct {
	t     testing.TB
	mu    sync.Mutex
	nodes []*node
}

type node struct {
	cfg natsrv.Config
	srv *natsrv.Server // nil while the node is down
}

// Start runs an n-node cluster with JetStream in temp dirs, waits until
// JetStream has a meta leader, and shuts it down at cleanup.
func Start(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{t: t}
	routes := make([]string, n)
	ports := make([][2]int, n)
	for i := range n {
		ports[i] = [2]int{freePort(t), freePort(t)}
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i][1])
	}
	for i := range n {
		c.nodes = append(c.nodes, &node{cfg: natsrv.Config{
			Name:    fmt.Sprintf("n%d", i+1),
			DataDir: t.TempDir(),
			Port:    ports[i][0],
			Cluster: &natsrv.ClusterConfig{Name: Name, Port: ports[i][1], Routes: routes},
			// Clustered JetStream needs every node up before it reports
			// ready, so start them together.
			ReadyTimeout: 20 * time.Second,
		}})
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = c.start(i)
		}()
	}
	wg.Wait()
	t.Cleanup(c.Shutdown)
	for i, err := range errs {
		if err != nil {
			t.Fatalf("start node %d: %v", i+1, err)
		}
	}
	c.WaitJetStream(t, 0)
	c.waitPeers(t)
	return c
}

// waitPeers waits until a stream with a replica on every node can be
// created: the meta leader may be elected before it sees every peer online.
func (c *Cluster) waitPeers(t testing.TB) {
	t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.Timeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := jetstream.StreamConfig{Name: "clustertest_probe", Subjects: []string{"clustertest.probe"},
		Replicas: len(c.nodes), Storage: jetstream.MemoryStorage}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := js.CreateStream(ctx, cfg)
		if err == nil {
			err = js.DeleteStream(ctx, cfg.Name)
		}
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster: a stream of %d replicas cannot be placed after 30s: %v", len(c.nodes), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (c *Cluster) start(i int) error {
	c.mu.Lock()
	cfg := c.nodes[i].cfg
	c.mu.Unlock()
	srv, err := natsrv.Start(cfg, nil)
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.nodes[i].srv = srv
	c.mu.Unlock()
	return nil
}

// URL is the client URL of node i (0-based), valid while it is down too.
func (c *Cluster) URL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].cfg.Port)
}

// URLs is every node's client URL, comma-separated, as --nats-url takes them.
func (c *Cluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.URL(i)
	}
	return strings.Join(urls, ",")
}

// Kill shuts node i down (its data dir stays).
func (c *Cluster) Kill(i int) {
	c.mu.Lock()
	srv := c.nodes[i].srv
	c.nodes[i].srv = nil
	c.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
	}
}

// Restart starts node i again on its ports and data dir and waits until
// JetStream answers through it.
func (c *Cluster) Restart(t testing.TB, i int) {
	t.Helper()
	if err := c.start(i); err != nil {
		t.Fatalf("restart node %d: %v", i+1, err)
	}
	c.WaitJetStream(t, i)
}

// Up reports whether node i runs.
func (c *Cluster) Up(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[i].srv != nil
}

// Shutdown stops every node.
func (c *Cluster) Shutdown() {
	for i := range c.nodes {
		c.Kill(i)
	}
}

// WaitJetStream waits until JetStream answers through node i (an account
// info request needs a meta leader), failing the test after 30s.
func (c *Cluster) WaitJetStream(t testing.TB, i int) {
	t.Helper()
	nc, err := nats.Connect(c.URL(i), nats.Timeout(time.Second))
	if err != nil {
		t.Fatalf("connect node %d: %v", i+1, err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := js.AccountInfo(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("JetStream through node %d not ready after 30s: %v", i+1, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitStreamCurrent waits until every running replica of stream holds
// the leader's last sequence: a restarted node has caught up. It fails
// the test after 30s.
func (c *Cluster) WaitStreamCurrent(t testing.TB, stream string) {
	t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.Timeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		s, err := js.Stream(ctx, stream)
		cancel()
		if err == nil {
			info := s.CachedInfo()
			if cl := info.Cluster; cl != nil && cl.Leader != "" && len(cl.Replicas) == len(c.nodes)-1 {
				current := true
				for _, r := range cl.Replicas {
					current = current && r.Current && !r.Offline && r.Lag == 0
				}
				if current {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream %s: replicas not current after 30s (%v)", stream, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Leader is the server name (n1, n2, ...) of the node leading stream,
// failing the test when there is none within 30s.
func (c *Cluster) Leader(t testing.TB, stream string) string {
	t.Helper()
	nc, err := nats.Connect(c.URLs(), nats.Timeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		s, err := js.Stream(ctx, stream)
		cancel()
		if err == nil && s.CachedInfo().Cluster != nil && s.CachedInfo().Cluster.Leader != "" {
			return s.CachedInfo().Cluster.Leader
		}
		if time.Now().After(deadline) {
			t.Fatalf("stream %s: no leader after 30s (%v)", stream, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
