package loki

import (
	"context"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
	"time"

	"github.com/loki-iot/loki/services/loki/engine"
)

// gopher-lua has no memory limit of its own, and Go cannot tell which
// goroutine allocated what, so the bound is on the replica: memoryGuard
// samples the process heap and, when it passes the limit even after a
// collection, stops every running script with RESOURCE_EXHAUSTED and refuses
// new calls until the heap is back under it. A runaway script therefore
// costs the calls that ran beside it, not the process. A hard bound per
// script would need a worker process per execution slot.
type memoryGuard struct {
	limit  atomic.Uint64 // bytes; SetMemoryLimit changes it while run runs
	every  time.Duration
	log    *slog.Logger
	over   atomic.Bool
	sample []metrics.Sample
	// stopped, when not nil, is told how many running scripts each pass
	// over the limit stopped.
	stopped func(n int)
}

// heapMetric counts the bytes of heap objects, live or not yet swept.
const heapMetric = "/memory/classes/heap/objects:bytes"

func newMemoryGuard(limit uint64, every time.Duration, log *slog.Logger) *memoryGuard {
	g := &memoryGuard{every: every, log: log, sample: []metrics.Sample{{Name: heapMetric}}}
	g.limit.Store(limit)
	return g
}

// SetMemoryLimit makes limit bytes the heap size past which the replica
// stops its running scripts and refuses calls, from the guard's next
// sample on (0: DefaultMemoryLimit), as Config.MemoryLimit does at start.
// It is safe for concurrent use, before or during Run.
func (s *Service) SetMemoryLimit(limit uint64) {
	if limit == 0 {
		limit = DefaultMemoryLimit()
	}
	s.mem.limit.Store(limit)
}

func (g *memoryGuard) heap() uint64 {
	metrics.Read(g.sample)
	return g.sample[0].Value.Uint64()
}

// run checks the heap every g.every until ctx ends, ending the contexts of
// d when the limit is passed.
func (g *memoryGuard) run(ctx context.Context, d *deadlines) {
	t := time.NewTicker(g.every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		h, limit := g.heap(), g.limit.Load()
		if h > limit {
			// Garbage counts until it is swept: collect before deciding.
			runtime.GC()
			h = g.heap()
		}
		if h <= limit {
			if g.over.CompareAndSwap(true, false) {
				g.log.Info("memory back under the limit: taking calls again", "heap_mib", h>>20, "limit_mib", limit>>20)
			}
			continue
		}
		n := d.endAll(engine.ErrMemoryLimit)
		if g.stopped != nil {
			g.stopped(n)
		}
		if !g.over.Swap(true) || n > 0 {
			g.log.Warn("memory limit passed: stopped running tools, refusing new calls until it is back under",
				"heap_mib", h>>20, "limit_mib", limit>>20, "stopped", n)
		}
	}
}

// DefaultMemoryLimit is the heap size at which a replica stops its scripts
// when Config.MemoryLimit is 0: 90% of GOMEMLIMIT when that is set, else
// half the machine's memory, at most 2 GiB (1 GiB where the size of the
// machine's memory is not known).
func DefaultMemoryLimit() uint64 {
	if l := debug.SetMemoryLimit(-1); l > 0 && l < math.MaxInt64 {
		return uint64(l) / 10 * 9
	}
	total := totalMemory()
	if total == 0 {
		return 1 << 30
	}
	return min(total/2, 2<<30)
}
