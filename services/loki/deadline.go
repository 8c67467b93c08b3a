package loki

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// deadlines ends execution contexts when their deadline passes or their
// parent ends. One timer, set to the earliest deadline, serves every running
// execution, and the parent is watched once for all of them: a
// context.WithTimeout per call cost a runtime timer and a registration in the
// parent, more than a small script's run.
type deadlines struct {
	parent context.Context

	mu      sync.Mutex
	heap    []*execCtx // by deadline, earliest first
	timer   *time.Timer
	armed   time.Time // when timer fires; zero when it is stopped
	stopped bool      // parent ended: no context outlives it
}

// newDeadlines returns a watchdog for contexts derived from parent; stop
// releases it.
func newDeadlines(parent context.Context) (d *deadlines, stop func()) {
	d = &deadlines{parent: parent}
	d.timer = time.AfterFunc(time.Hour, d.expire)
	d.timer.Stop()
	stopWatch := context.AfterFunc(parent, d.parentDone)
	return d, func() {
		stopWatch()
		d.timer.Stop()
	}
}

// withTimeout is context.WithTimeout(ctx, timeout) for ctx == d.parent; for
// any other ctx it is context.WithTimeout itself.
func (d *deadlines) withTimeout(ctx context.Context, timeout time.Duration) (context.Context, context.CancelFunc) {
	if ctx != d.parent {
		return context.WithTimeout(ctx, timeout)
	}
	c := &execCtx{parent: ctx, deadline: time.Now().Add(timeout), done: make(chan struct{}), d: d, idx: -1}
	d.mu.Lock()
	if d.stopped {
		d.mu.Unlock()
		c.end(ctx.Err())
		return c, c.cancel
	}
	c.idx = len(d.heap)
	d.heap = append(d.heap, c)
	d.up(c.idx)
	if d.armed.IsZero() || c.deadline.Before(d.armed) {
		d.armed = c.deadline
		d.timer.Reset(time.Until(c.deadline))
	}
	d.mu.Unlock()
	return c, c.cancel
}

// expire ends the contexts whose deadline has passed and sets the timer for
// the next one.
func (d *deadlines) expire() {
	var ended []*execCtx
	d.mu.Lock()
	now := time.Now()
	for len(d.heap) > 0 && !d.heap[0].deadline.After(now) {
		c := d.heap[0]
		d.remove(c)
		ended = append(ended, c)
	}
	d.armed = time.Time{}
	if len(d.heap) > 0 && !d.stopped {
		d.armed = d.heap[0].deadline
		d.timer.Reset(d.armed.Sub(now))
	}
	d.mu.Unlock()
	for _, c := range ended {
		c.end(context.DeadlineExceeded)
	}
}

func (d *deadlines) parentDone() {
	d.mu.Lock()
	d.stopped = true
	ended := d.heap
	for _, c := range ended {
		c.idx = -1
	}
	d.heap = nil
	d.mu.Unlock()
	for _, c := range ended {
		c.end(d.parent.Err())
	}
}

// endAll ends every running context with err and returns how many there
// were. Contexts made later are not affected.
func (d *deadlines) endAll(err error) int {
	d.mu.Lock()
	ended := d.heap
	for _, c := range ended {
		c.idx = -1
	}
	d.heap = nil
	d.armed = time.Time{}
	d.timer.Stop()
	d.mu.Unlock()
	for _, c := range ended {
		c.end(err)
	}
	return len(ended)
}

// remove takes c out of the heap; d.mu is held.
func (d *deadlines) remove(c *execCtx) {
	i := c.idx
	if i < 0 {
		return
	}
	last := len(d.heap) - 1
	if i != last {
		d.heap[i] = d.heap[last]
		d.heap[i].idx = i
	}
	d.heap[last] = nil
	d.heap = d.heap[:last]
	c.idx = -1
	if i != last {
		d.down(i)
		d.up(i)
	}
}

func (d *deadlines) up(i int) {
	h := d.heap
	for i > 0 {
		p := (i - 1) / 2
		if !h[i].deadline.Before(h[p].deadline) {
			break
		}
		h[i], h[p] = h[p], h[i]
		h[i].idx, h[p].idx = i, p
		i = p
	}
}

func (d *deadlines) down(i int) {
	h := d.heap
	for {
		l := 2*i + 1
		if l >= len(h) {
			return
		}
		m := l
		if r := l + 1; r < len(h) && h[r].deadline.Before(h[l].deadline) {
			m = r
		}
		if !h[m].deadline.Before(h[i].deadline) {
			return
		}
		h[i], h[m] = h[m], h[i]
		h[i].idx, h[m].idx = i, m
		i = m
	}
}

// execCtx is the context of one execution: its parent's values, its own
// deadline, ended by its deadlines watchdog, its parent or its cancel func.
type execCtx struct {
	parent   context.Context
	deadline time.Time
	done     chan struct{}
	ended    atomic.Bool
	err      error // set before done is closed
	d        *deadlines
	idx      int // position in d.heap, -1 when not in it; guarded by d.mu
}

var _ context.Context = (*execCtx)(nil)

func (c *execCtx) Deadline() (time.Time, bool) { return c.deadline, true }
func (c *execCtx) Done() <-chan struct{}       { return c.done }
func (c *execCtx) Value(key any) any           { return c.parent.Value(key) }

func (c *execCtx) Err() error {
	select {
	case <-c.done:
		return c.err
	default:
		return nil
	}
}

func (c *execCtx) String() string { return "loki.execCtx" }

// cancel ends c with context.Canceled and releases its place in the
// watchdog; it may be called more than once and from any goroutine.
func (c *execCtx) cancel() {
	c.d.mu.Lock()
	c.d.remove(c)
	c.d.mu.Unlock()
	c.end(context.Canceled)
}

func (c *execCtx) end(err error) {
	if c.ended.CompareAndSwap(false, true) {
		c.err = err
		close(c.done)
	}
}
