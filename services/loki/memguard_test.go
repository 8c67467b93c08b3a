package loki_test

import (
	"context"
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/loki"
)

const hogTools = `
[[tools]]
name = "hog"
returns = "any"
timeout = "2m"
script = '''
local t, i = {}, 0
while true do
  i = i + 1
  t[i] = string.rep("x", 1000) .. i
end
'''
`

func heapBytes() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	runtime.GC()
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestMemoryGuardStopsRunawayScript: a script that allocates without end
// is stopped with RESOURCE_EXHAUSTED once the replica's heap passes its
// limit — well before its two-minute timeout — and the replica serves
// again once the memory is back.
func TestMemoryGuardStopsRunawayScript(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	registerTools(t, nc, testTools+hogTools)
	startLoki(t, srv, loki.Config{MemoryLimit: heapBytes() + 64<<20})
	c := loki.NewClient(nc)

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	_, err := c.Call(ctx, "hog", []byte(`{}`))
	if fault.CodeOf(err) != fault.ResourceExhausted || !strings.Contains(err.Error(), "memory passed its limit") {
		t.Fatalf("got %v, want RESOURCE_EXHAUSTED naming the memory limit", err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got, err := call(t, c, "add", `{"a":1,"b":2}`)
		if err == nil {
			if got != "3" {
				t.Fatalf("add after the guard tripped: got %s, want 3", got)
			}
			return
		}
		if fault.CodeOf(err) != fault.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("add after the guard tripped: got %v, want 3 (or RESOURCE_EXHAUSTED while memory is freed)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestDefaultMemoryLimit(t *testing.T) {
	if l := loki.DefaultMemoryLimit(); l < 64<<20 || l > 2<<30 {
		t.Fatalf("DefaultMemoryLimit() = %d MiB, want between 64 MiB and 2 GiB", l>>20)
	}
}

// TestSetMemoryLimit: a limit raised on a running replica takes it out of
// refusing calls, and one lowered under the heap puts it back.
func TestSetMemoryLimit(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	registerTools(t, nc, testTools)
	svc := startLoki(t, srv, loki.Config{MemoryLimit: 1}) // any heap is over it
	c := loki.NewClient(nc)
	waitFor := func(what string, ok func(err error) bool) {
		t.Helper()
		var err error
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if _, err = call(t, c, "add", `{"a":1,"b":2}`); ok(err) {
				return
			}
		}
		t.Fatalf("%s: last call got %v", what, err)
	}
	overLimit := func(err error) bool { return fault.CodeOf(err) == fault.ResourceExhausted }
	waitFor("refused over a 1-byte limit", overLimit)
	svc.SetMemoryLimit(0) // the default, far above this test's heap
	waitFor("served after raising the limit", func(err error) bool { return err == nil })
	svc.SetMemoryLimit(1)
	waitFor("refused after lowering it again", overLimit)
}
