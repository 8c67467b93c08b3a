package hel_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/hel"
)

// setupCacheScopes starts Hel replicas (one or two) sharing a 1 MiB cache
// whose scopes hold 128 KiB each (7 scopes at once).
func setupCacheScopes(t *testing.T, replicas int) *env {
	t.Helper()
	small := func(c *hel.Config) {
		c.Cache.MaxBytes = 1 << 20
		c.Cache.ScopeMaxBytes = 128 << 10
		c.Cache.MaxValueBytes = 32 << 10
	}
	e := setup(t, small)
	if replicas == 2 {
		cfg2 := testConfig(filepath.Join(t.TempDir(), "data2"))
		small(&cfg2)
		startHel(t, e.srv, cfg2)
	}
	return e
}

// TestCacheScopeCannotEvictAnother floods one scope from many writers
// through two replicas: the flood evicts its own oldest entries and stays
// near its budget, and another scope's entries survive.
func TestCacheScopeCannotEvictAnother(t *testing.T) {
	e := setupCacheScopes(t, 2)
	ctx := ctxT(t)
	for i := range 4 {
		if err := e.c.CacheSet(ctx, fmt.Sprintf("victim/k%d", i), hel.Bytes([]byte("keep me")), time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	val := bytes.Repeat([]byte("f"), 16<<10)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 40 {
				// 8 × 40 × 16 KiB = 5 MiB, five times the whole cache.
				if err := e.c.CacheSet(ctx, fmt.Sprintf("flood/w%d-%d", w, i), hel.Bytes(val), time.Hour); err != nil {
					t.Errorf("flood set: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for i := range 4 {
		v, err := e.c.CacheGet(ctx, fmt.Sprintf("victim/k%d", i))
		if err != nil || string(v.Data) != "keep me" {
			t.Fatalf("victim/k%d after the flood: got %q, %v, want it kept", i, v.Data, err)
		}
	}
	live := 0
	for w := range 8 {
		for i := range 40 {
			if _, err := e.c.CacheGet(ctx, fmt.Sprintf("flood/w%d-%d", w, i)); err == nil {
				live++
			}
		}
	}
	// 128 KiB holds 7 entries of 16 KiB and their keys; sets racing on two
	// replicas may each keep one more for a moment.
	if live == 0 || live > 7+2 {
		t.Fatalf("%d flood entries live, want 1 to 9 (the scope's 128 KiB budget)", live)
	}
	if _, err := e.c.CacheGet(ctx, "flood/w0-39"); err != nil {
		t.Logf("the newest entry of writer 0 was evicted by its own scope: %v", err)
	}
}

// TestCacheScopeSlots checks that the scopes holding entries at once are
// bounded, with a clear refusal, and that clear frees them. One replica:
// a second one learns of other replicas' scopes through its watch, a
// moment later (the slack the spare scope absorbs).
func TestCacheScopeSlots(t *testing.T) {
	e := setupCacheScopes(t, 1)
	ctx := ctxT(t)
	for i := range 7 {
		if err := e.c.CacheSet(ctx, fmt.Sprintf("s%d/k", i), hel.Bytes([]byte("v")), time.Hour); err != nil {
			t.Fatalf("scope %d: %v", i, err)
		}
	}
	err := e.c.CacheSet(ctx, "s7/k", hel.Bytes([]byte("v")), time.Hour)
	wantCode(t, err, fault.ResourceExhausted)
	if msg := fault.MessageOf(err); !strings.Contains(msg, "7 scopes") || !strings.Contains(msg, "cache.scope_max_bytes") {
		t.Fatalf("got %q, want it to name the 7 scopes and cache.scope_max_bytes", msg)
	}
	// Within an existing scope, and in the root scope once a slot frees.
	if err := e.c.CacheSet(ctx, "s3/other", hel.Bytes([]byte("v")), time.Hour); err != nil {
		t.Fatalf("set in an existing scope: %v", err)
	}
	if err := e.c.CacheClear(ctx); err != nil {
		t.Fatal(err)
	}
	// The replica resets when its watch sees the clear marker.
	eventually(t, "new scopes after clear", func() bool {
		for i := range 7 {
			if err := e.c.CacheSet(ctx, fmt.Sprintf("n%d/k", i), hel.Bytes([]byte("v")), time.Hour); err != nil {
				return false
			}
		}
		return true
	})
	// An expired entry no longer holds its scope.
	if err := e.c.CacheClear(ctx); err != nil {
		t.Fatal(err)
	}
	eventually(t, "sets after the second clear", func() bool {
		for i := range 7 {
			if err := e.c.CacheSet(ctx, fmt.Sprintf("t%d/k", i), hel.Bytes([]byte("v")), 50*time.Millisecond); err != nil {
				return false
			}
		}
		return true
	})
	time.Sleep(100 * time.Millisecond)
	if err := e.c.CacheSet(ctx, "late/k", hel.Bytes([]byte("v")), time.Hour); err != nil {
		t.Fatalf("set after the other scopes expired: %v", err)
	}
}
