package clustertest_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/loki-iot/loki/internal/clustertest"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/services/hel"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/nats-io/nats.go"
)

const addTool = `
[[tools]]
name = "add"
description = "Adds two numbers"
returns = "number"
script = "return a + b"
  [[tools.params]]
  name = "a"
  type = "number"
  required = true
  [[tools.params]]
  name = "b"
  type = "number"
  required = true
`

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// stack is the Loki and Hel replicas attached to one node.
type stack struct {
	cancel context.CancelFunc
	conns  []*nats.Conn
	done   sync.WaitGroup
}

// kill drops the replicas' connections at once (as a dead machine would)
// and waits for them to return.
func (s *stack) kill() {
	for _, nc := range s.conns {
		nc.Close()
	}
	s.cancel()
	s.done.Wait()
}

// startStack runs a Loki and a Hel replica connected to node i only, with
// every bucket at R3, and waits until both serve.
func startStack(t testing.TB, c *clustertest.Cluster, i int) *stack {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &stack{cancel: cancel}
	dial := func(name string) *nats.Conn {
		nc, err := natsrv.Dial(ctx, c.URL(i), fmt.Sprintf("%s-n%d", name, i+1), nil)
		if err != nil {
			t.Fatal(err)
		}
		s.conns = append(s.conns, nc)
		return nc
	}
	lnc, hnc := dial("loki"), dial("hel")
	hcfg := hel.DefaultConfig(t.TempDir())
	hcfg.Replicas = 3
	h, err := hel.New(hcfg, hnc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	lcfg := loki.DefaultConfig()
	lcfg.Registry.Replicas = 3
	lcfg.Modules = []engine.Module{hel.NewModule(lnc)}
	l, err := loki.New(lcfg, lnc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	for _, svc := range []interface {
		Run(context.Context) error
		Ready() <-chan struct{}
	}{h, l} {
		s.done.Add(1)
		early := make(chan error, 1)
		go func() {
			defer s.done.Done()
			early <- svc.Run(ctx) // after a kill, a failed drain is expected
		}()
		select {
		case <-svc.Ready():
		case err := <-early:
			t.Fatalf("%T on node %d stopped before it was ready: %v", svc, i+1, err)
		case <-time.After(30 * time.Second):
			t.Fatalf("%T on node %d not ready after 30s", svc, i+1)
		}
	}
	return s
}

// result is one operation of the load.
type result struct {
	kind       string // call, write, read
	start, end time.Time
	err        error
}

// load runs callers, writers and a registry reader against the whole
// cluster (their connections list every node) until stopped.
type load struct {
	mu      sync.Mutex
	results []result
	acked   map[string]uint64 // key -> value of every acknowledged write
	seq     atomic.Uint64
	stop    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

const (
	callers = 3
	writers = 2
)

func startLoad(t testing.TB, c *clustertest.Cluster) *load {
	t.Helper()
	ld := &load{acked: map[string]uint64{}, stop: make(chan struct{})}
	conn := func(name string) *nats.Conn {
		nc, err := natsrv.Dial(context.Background(), c.URLs(), name, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	run := func(kind string, op func(ctx context.Context) error) {
		ld.wg.Add(1)
		go func() {
			defer ld.wg.Done()
			for {
				select {
				case <-ld.stop:
					return
				default:
				}
				ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
				start := time.Now()
				err := op(ctx)
				cancel()
				ld.mu.Lock()
				ld.results = append(ld.results, result{kind, start, time.Now(), err})
				ld.mu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		}()
	}
	for g := range callers {
		lc := loki.NewClient(conn(fmt.Sprintf("caller-%d", g)))
		run("call", func(ctx context.Context) error {
			_, err := lc.Call(ctx, "add", []byte(`{"a":1,"b":2}`))
			return err
		})
	}
	for g := range writers {
		hc := hel.NewClient(conn(fmt.Sprintf("writer-%d", g)))
		run("write", func(ctx context.Context) error {
			n := ld.seq.Add(1)
			key := fmt.Sprintf("w%d-%d", g, n)
			_, err := hc.KVPut(ctx, "load", key, hel.Bytes([]byte(fmt.Sprint(n))))
			if err == nil {
				ld.mu.Lock()
				ld.acked[key] = n
				ld.mu.Unlock()
			}
			return err
		})
	}
	rc := loki.NewClient(conn("reader"))
	run("read", func(ctx context.Context) error {
		_, err := rc.Get(ctx, "add")
		return err
	})
	return ld
}

// since returns the results of kind that ended after t.
func (ld *load) since(kind string, t time.Time) (ok, failed []result) {
	ld.mu.Lock()
	defer ld.mu.Unlock()
	for _, r := range ld.results {
		if r.kind != kind || r.end.Before(t) {
			continue
		}
		if r.err == nil {
			ok = append(ok, r)
		} else {
			failed = append(failed, r)
		}
	}
	return ok, failed
}

// waitOK waits until an operation of kind that started after t succeeds.
func (ld *load) waitOK(t *testing.T, kind string, after time.Time, what string) time.Time {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		ok, _ := ld.since(kind, after)
		for _, r := range ok {
			if r.start.After(after) {
				return r.end
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s: no %s succeeded within 30s", what, kind)
	return time.Time{}
}

func (ld *load) halt() {
	ld.once.Do(func() { close(ld.stop) })
	ld.wg.Wait()
}

func register(t testing.TB, c *clustertest.Cluster) {
	t.Helper()
	tools, err := loki.ParseTools("test.toml", []byte(addTool), fstest.MapFS{})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(c.URLs())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	reg, err := loki.OpenRegistryConfig(context.Background(), nc, quietLog(), loki.RegistryConfig{Replicas: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(context.Background(), tools...); err != nil {
		t.Fatal(err)
	}
}

// TestFailover kills one node of three under load, then two.
func TestFailover(t *testing.T) {
	c := clustertest.Start(t, 3)
	register(t, c)
	stacks := make([]*stack, 3)
	for i := range stacks {
		stacks[i] = startStack(t, c, i)
	}
	ld := startLoad(t, c)
	defer ld.halt()
	begin := time.Now()
	for _, kind := range []string{"call", "write", "read"} {
		ld.waitOK(t, kind, begin, "steady state")
	}
	time.Sleep(300 * time.Millisecond) // some load before the kill

	// One node down: nothing acknowledged is lost; only what was in flight fails.
	const victim = 0
	killed := time.Now()
	stacks[victim].kill()
	c.Kill(victim)
	recovered := map[string]time.Time{}
	for _, kind := range []string{"call", "write", "read"} {
		recovered[kind] = ld.waitOK(t, kind, killed, "one node down")
	}
	time.Sleep(500 * time.Millisecond)
	for _, kind := range []string{"call", "read"} {
		ok, failed := ld.since(kind, killed)
		t.Logf("one node down: %ss: %d ok, %d failed, first success after the kill %s later", kind, len(ok), len(failed),
			recovered[kind].Sub(killed).Round(time.Millisecond))
		// Each caller and the reader has at most one operation in flight.
		if limit := map[string]int{"call": callers, "read": 1}[kind]; len(failed) > limit {
			t.Errorf("one node down: %d %ss failed, want at most %d (those in flight at the kill): %v", len(failed), kind, limit, failed[0].err)
		}
	}
	ok, failed := ld.since("write", killed)
	t.Logf("one node down: writes: %d ok, %d refused (not acknowledged) while the buckets elected new leaders, writes back after %s",
		len(ok), len(failed), recovered["write"].Sub(killed).Round(time.Millisecond))
	for _, r := range failed {
		if !(fault.CodeOf(r.err) == fault.Unavailable) && !(fault.CodeOf(r.err) == fault.DeadlineExceeded) {
			t.Errorf("one node down: a write failed with %v, want UNAVAILABLE or DEADLINE_EXCEEDED", r.err)
		}
	}

	// The node comes back and catches up.
	t.Logf("phase one done after %s", time.Since(begin).Round(time.Millisecond))
	c.Restart(t, victim)
	stacks[victim] = startStack(t, c, victim)
	c.WaitStreamCurrent(t, "KV_hel_kv_load")
	c.WaitStreamCurrent(t, "KV_loki_tools")

	// Two nodes down: no quorum. Writes are refused with UNAVAILABLE
	// naming the bucket, in bounded time; calls go on.
	ld.halt()
	for _, i := range []int{1, 2} {
		stacks[i].kill()
		c.Kill(i)
	}
	hc := hel.NewClient(dialNode(t, c, victim))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	refusedAt := time.Now()
	_, err := hc.KVPut(ctx, "load", "no-quorum", hel.Bytes([]byte("x")))
	cancel()
	t.Logf("write without quorum refused after %s: %v", time.Since(refusedAt).Round(time.Millisecond), err)
	if !(fault.CodeOf(err) == fault.Unavailable) || !strings.Contains(err.Error(), "load") {
		t.Errorf("write without quorum: got %v, want UNAVAILABLE naming bucket \"load\"", err)
	}
	lc := loki.NewClient(dialNode(t, c, victim))
	ctx, cancel = context.WithTimeout(context.Background(), 10*time.Second)
	if _, err := lc.Call(ctx, "add", []byte(`{"a":1,"b":2}`)); err != nil {
		t.Errorf("call without quorum: %v, want a result (the registry is in memory)", err)
	}
	cancel()

	// A node returns: writes work again.
	t.Logf("no quorum checked after %s", time.Since(begin).Round(time.Millisecond))
	c.Restart(t, 1)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := hc.KVPut(ctx, "load", "quorum-back", hel.Bytes([]byte("x")))
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("writes not back 30s after a node returned: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	t.Logf("quorum back after %s", time.Since(begin).Round(time.Millisecond))
	// Every acknowledged write is readable.
	ld.mu.Lock()
	acked := ld.acked
	ld.mu.Unlock()
	lost := 0
	for key, n := range acked {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		e, err := hc.KVGet(ctx, "load", key)
		cancel()
		if err != nil || string(e.Value.Data) != fmt.Sprint(n) {
			lost++
			if lost < 5 {
				t.Errorf("acknowledged write %s=%d: got %q, %v", key, n, e.Value.Data, err)
			}
		}
	}
	t.Logf("%d acknowledged writes, %d lost", len(acked), lost)
}

func dialNode(t testing.TB, c *clustertest.Cluster, i int) *nats.Conn {
	t.Helper()
	nc, err := natsrv.Dial(context.Background(), c.URL(i), "probe", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
