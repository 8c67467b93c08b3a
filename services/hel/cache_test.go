package hel_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/hel"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

func TestCache(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	c := e.c
	tests := []struct {
		name, key string
		v         hel.Value
	}{
		{name: "string", key: "weather/oslo", v: hel.Bytes([]byte("rain"))},
		{name: "json", key: "lookup:42", v: hel.JSON([]byte(`{"name":"kitchen"}`))},
		{name: "url as key", key: "https://example.com/api?q=a b&x=ü", v: hel.Bytes([]byte("body"))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.CacheGet(ctx, tc.key); fault.CodeOf(err) != fault.NotFound {
				t.Fatalf("before set: got %v, want NOT_FOUND", err)
			}
			if err := c.CacheSet(ctx, tc.key, tc.v, time.Minute); err != nil {
				t.Fatal(err)
			}
			got, err := c.CacheGet(ctx, tc.key)
			if err != nil || !bytes.Equal(got.Data, tc.v.Data) || got.Type != tc.v.Type {
				t.Fatalf("got %q %s %v, want %q %s", got.Data, got.Type, err, tc.v.Data, tc.v.Type)
			}
		})
	}
	if err := c.CacheDelete(ctx, "weather/oslo"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CacheGet(ctx, "weather/oslo"); fault.CodeOf(err) != fault.NotFound {
		t.Fatalf("after delete: got %v, want NOT_FOUND", err)
	}
	if err := c.CacheClear(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.CacheGet(ctx, "lookup:42"); fault.CodeOf(err) != fault.NotFound {
		t.Fatalf("after clear: got %v, want NOT_FOUND", err)
	}
	if err := c.CacheSet(ctx, "after-clear", hel.Bytes([]byte("v")), 0); err != nil {
		t.Fatalf("set after clear: %v", err)
	}

	bad := []struct {
		name string
		err  error
	}{
		{"ttl over max", c.CacheSet(ctx, "k", hel.Bytes(nil), e.cfg.Cache.MaxTTL+time.Second)},
		{"empty key", c.CacheSet(ctx, "", hel.Bytes(nil), 0)},
		{"key with newline", c.CacheSet(ctx, "a\nb", hel.Bytes(nil), 0)},
		{"key too long", c.CacheSet(ctx, strings.Repeat("k", hel.MaxCacheKeyBytes+1), hel.Bytes(nil), 0)},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.err, fault.InvalidArgument) })
	}
}

func TestCacheTTL(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	if err := e.c.CacheSet(ctx, "short", hel.Bytes([]byte("v")), 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if err := e.c.CacheSet(ctx, "long", hel.Bytes([]byte("v")), time.Hour); err != nil {
		t.Fatal(err)
	}
	eventually(t, "cache entry with a 300ms TTL expires", func() bool {
		_, err := e.c.CacheGet(ctx, "short")
		return fault.CodeOf(err) == fault.NotFound
	})
	if _, err := e.c.CacheGet(ctx, "long"); err != nil {
		t.Fatalf("entry with a 1h TTL: got %v, want a hit", err)
	}
	// A set renews the entry and its TTL.
	if err := e.c.CacheSet(ctx, "short", hel.Bytes([]byte("again")), time.Hour); err != nil {
		t.Fatal(err)
	}
	if v, err := e.c.CacheGet(ctx, "short"); err != nil || string(v.Data) != "again" {
		t.Fatalf("after re-set: got %q %v, want again", v.Data, err)
	}
}

// TestCacheSharedByReplicas checks that what one replica caches, every
// replica serves, and that a delete invalidates everywhere.
func TestCacheSharedByReplicas(t *testing.T) {
	srv := natstest.Start(t)
	for i := range 3 {
		startHel(t, srv, testConfig(t.TempDir()+"/r"+string(rune('0'+i))))
	}
	c := hel.NewClient(natstest.Connect(t, srv))
	ctx := ctxT(t)
	if err := c.CacheSet(ctx, "k", hel.Bytes([]byte("v")), time.Minute); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if v, err := c.CacheGet(ctx, "k"); err != nil || string(v.Data) != "v" {
			t.Fatalf("get %d: got %q %v, want a hit on every replica", i, v.Data, err)
		}
	}
	if err := c.CacheDelete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	for i := range 30 {
		if _, err := c.CacheGet(ctx, "k"); fault.CodeOf(err) != fault.NotFound {
			t.Fatalf("get %d after delete: got %v, want a miss on every replica", i, err)
		}
	}
}

// TestServiceInfo checks the micro service: name, queue group, one
// endpoint per subject, and that replicas share the load.
func TestServiceInfo(t *testing.T) {
	srv := natstest.Start(t)
	startHel(t, srv, testConfig(t.TempDir()+"/a"))
	startHel(t, srv, testConfig(t.TempDir()+"/b"))
	nc := natstest.Connect(t, srv)
	subj, err := micro.ControlSubject(micro.InfoVerb, subjects.HelService, "")
	if err != nil {
		t.Fatal(err)
	}
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest(subj, inbox, nil); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for range 2 {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var info micro.Info
		if err := jsonUnmarshal(m.Data, &info); err != nil {
			t.Fatal(err)
		}
		ids[info.ID] = true
		if info.Name != subjects.HelService || len(info.Endpoints) != 23 {
			t.Fatalf("got %s with %d endpoints, want hel with 23", info.Name, len(info.Endpoints))
		}
		for _, ep := range info.Endpoints {
			if ep.QueueGroup != subjects.HelQueueGroup || !strings.HasPrefix(ep.Subject, subjects.HelPrefix+".") {
				t.Fatalf("endpoint %s: got subject %s queue %s, want hel.* in queue %s", ep.Name, ep.Subject, ep.QueueGroup, subjects.HelQueueGroup)
			}
		}
	}
	if len(ids) != 2 {
		t.Fatalf("got %d replicas answering INFO, want 2", len(ids))
	}
	// Load is shared: both replicas serve requests.
	c := hel.NewClient(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for range 200 {
		if _, err := c.KVPut(ctx, "load", "k", hel.Bytes([]byte("v"))); err != nil {
			t.Fatal(err)
		}
	}
	statsSubj, _ := micro.ControlSubject(micro.StatsVerb, subjects.HelService, "")
	if err := nc.PublishRequest(statsSubj, inbox, nil); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		var st micro.Stats
		if err := jsonUnmarshal(m.Data, &st); err != nil {
			t.Fatal(err)
		}
		for _, ep := range st.Endpoints {
			if ep.Subject == subjects.HelKVPut && ep.NumRequests == 0 {
				t.Fatalf("replica %s served no kv.put of 200, want both to share the load", st.ID)
			}
		}
	}
}
