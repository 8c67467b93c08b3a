package hel_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/helbucket"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/hel"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// With authentication on, Hel may not create streams: its KV buckets,
// object stores and cache are made by the bucket broker of the identity
// service, which may start after Hel does, as in `loki up`. Everything a
// script does with them works, and the bus refuses Hel nothing.
func TestBucketsThroughTheBrokerUnderAuth(t *testing.T) {
	a, err := auth.Open(filepath.Join(t.TempDir(), "auth"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	nk, users, err := a.ServerUsers()
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.Start(t, func(c *natsrv.Config) { c.Nkeys, c.Users = nk, users })
	var mu sync.Mutex
	var refused []error
	connect := func(name string) *nats.Conn {
		opts, err := auth.ConnectOptions(auth.SeedFile(a.Dir(), name))
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			mu.Lock()
			refused = append(refused, err)
			mu.Unlock()
		}))
		nc, err := srv.Connect(name, opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}

	// The broker starts a moment after Hel, which waits for it.
	broker := auth.NewService(a, connect("auth"), quietLog())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	time.AfterFunc(300*time.Millisecond, func() { done <- broker.Run(ctx) })
	t.Cleanup(func() { cancel(); <-done })
	svc, err := hel.New(testConfig(filepath.Join(t.TempDir(), "data")), connect("hel"), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)

	admin := connect("admin")
	c := hel.NewClient(admin)
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer rcancel()
	if _, err := c.KVPut(rctx, "notes", "a", hel.Bytes([]byte("1"))); err != nil {
		t.Fatalf("kv put: %v", err)
	}
	if err := c.CacheSet(rctx, "k", hel.Bytes([]byte("v")), time.Minute); err != nil {
		t.Fatalf("cache set: %v", err)
	}
	if err := c.CacheClear(rctx); err != nil {
		t.Fatalf("cache clear: %v", err)
	}
	blob := bytes.Repeat([]byte("firmware"), 10_000)
	for range 2 { // the second put replaces the first, purging its chunks
		if _, err := c.PutObject(rctx, "fw", "image.bin", bytes.NewReader(blob), int64(len(blob))); err != nil {
			t.Fatalf("put object: %v", err)
		}
	}
	if err := c.DeleteObject(rctx, "fw", "image.bin"); err != nil {
		t.Fatalf("delete object: %v", err)
	}

	js, err := jetstream.New(admin)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"KV_hel_kv_notes", "KV_hel_cache", "OBJ_hel_obj_fw"} {
		st, err := js.Stream(rctx, name)
		if err != nil {
			t.Fatalf("stream %s: %v", name, err)
		}
		cfg := st.CachedInfo().Config
		if !helbucket.IsHel(cfg.Metadata) {
			t.Errorf("stream %s: got metadata %v, want %s=%s", name, cfg.Metadata, helbucket.OwnerKey, helbucket.Owner)
		}
		if name == "KV_hel_cache" && cfg.Discard != jetstream.DiscardOld {
			t.Errorf("cache: got discard %v, want %v", cfg.Discard, jetstream.DiscardOld)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, err := range refused {
		if errors.Is(err, nats.ErrPermissionViolation) {
			t.Errorf("the bus refused: %v", err)
		}
	}
}

// Without authentication (a development server) there may be no broker:
// Hel creates its buckets itself, marked as Hel's all the same.
func TestBucketsDirectWithoutAuth(t *testing.T) {
	e := setup(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := e.c.KVPut(ctx, "notes", "a", hel.Bytes([]byte("1"))); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "KV_hel_kv_notes")
	if err != nil {
		t.Fatal(err)
	}
	if md := st.CachedInfo().Config.Metadata; !helbucket.IsHel(md) {
		t.Fatalf("got metadata %v, want %s=%s", md, helbucket.OwnerKey, helbucket.Owner)
	}
}
