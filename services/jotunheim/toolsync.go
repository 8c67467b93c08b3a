package jotunheim

import (
	"context"
	"sync"
)

// syncQueue runs the tool syncs of accepted manifests on a few goroutines,
// one device at a time: a device has at most one sync waiting, and a newer
// manifest replaces it (a device that resent its manifest while the
// platform was busy costs one sync, not one per copy). It holds at most
// one entry per device.
type syncQueue struct {
	run func(ctx context.Context, id string, j manifestSync)

	mu      sync.Mutex
	pending map[string]manifestSync // waiting, by device
	running map[string]bool
	order   []string // devices with a pending sync, oldest first, not running
	wake    chan struct{}
}

func newSyncQueue(workers int, run func(ctx context.Context, id string, j manifestSync)) *syncQueue {
	return &syncQueue{run: run, pending: map[string]manifestSync{}, running: map[string]bool{}, wake: make(chan struct{}, workers)}
}

// submit queues j for device id, replacing one already waiting.
func (q *syncQueue) submit(id string, j manifestSync) {
	q.mu.Lock()
	defer q.mu.Unlock()
	_, waiting := q.pending[id]
	q.pending[id] = j
	if !waiting && !q.running[id] {
		q.order = append(q.order, id)
		q.signal()
	}
}

func (q *syncQueue) signal() {
	select {
	case q.wake <- struct{}{}:
	default: // enough wake-ups are pending
	}
}

// next takes the oldest waiting sync whose device has none running.
func (q *syncQueue) next() (string, manifestSync, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.order) == 0 {
		return "", manifestSync{}, false
	}
	id := q.order[0]
	q.order = q.order[1:]
	j := q.pending[id]
	delete(q.pending, id)
	q.running[id] = true
	return id, j, true
}

func (q *syncQueue) done(id string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	delete(q.running, id)
	if _, ok := q.pending[id]; ok { // a newer manifest came meanwhile
		q.order = append(q.order, id)
		q.signal()
	}
}

// work runs syncs until ctx ends.
func (q *syncQueue) work(ctx context.Context) {
	for {
		id, j, ok := q.next()
		if !ok {
			select {
			case <-q.wake:
				continue
			case <-ctx.Done():
				return
			}
		}
		q.run(ctx, id, j)
		q.done(id)
	}
}
