package jotunheim

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

// TestSyncQueueCoalesces: manifests a device sends while its tool sync
// runs cost one more sync, of the newest, not one per copy; devices'
// syncs never run at once for one device.
func TestSyncQueueCoalesces(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var ran []string
	running := map[string]bool{}
	q := newSyncQueue(4, func(_ context.Context, id string, j manifestSync) {
		mu.Lock()
		if running[id] {
			t.Errorf("two syncs of %s at once", id)
		}
		running[id] = true
		ran = append(ran, id+":"+j.m.GetFirmwareVersion())
		mu.Unlock()
		if j.m.GetFirmwareVersion() == "1" {
			<-release // the first sync of a is slow
		}
		mu.Lock()
		running[id] = false
		mu.Unlock()
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() { q.work(ctx) })
	}
	job := func(v string) manifestSync { return manifestSync{m: &jv1.Manifest{FirmwareVersion: v}} }
	q.submit("a", job("1"))
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(ran) == 1 })
	for _, v := range []string{"2", "3", "4"} {
		q.submit("a", job(v))
	}
	q.submit("b", job("1b"))
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return slices.Contains(ran, "b:1b") })
	close(release)
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(ran) == 3 })
	cancel()
	wg.Wait()
	if want := []string{"a:1", "b:1b", "a:4"}; !slices.Equal(ran, want) {
		t.Fatalf("syncs run: got %v, want %v", ran, want)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(time.Millisecond)
	}
}
