package jormungandr

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// conn is a connection a replica holds for a handle. Its methods are safe
// for concurrent use; an operation it does not support returns
// errUnsupported.
type conn interface {
	kind() string
	send(ctx context.Context, data []byte, binary bool) error
	publish(ctx context.Context, topic string, data []byte, qos int, retain bool) error
	subscribe(ctx context.Context, topic string, qos int) error
	// receive waits up to wait for a message; nil when none arrived.
	receive(ctx context.Context, wait time.Duration) (*Message, error)
	// close releases the connection; it may block for a polite shutdown.
	close()
}

// handleEntry is a held connection and its use.
type handleEntry struct {
	c    conn
	last time.Time // last use ended
	busy int       // calls running; a busy handle is never idle
}

// handleTable holds a replica's connections by id.
type handleTable struct {
	mu  sync.Mutex
	m   map[string]*handleEntry
	max int
}

func newHandleTable(maxHandles int) *handleTable {
	return &handleTable{m: map[string]*handleEntry{}, max: maxHandles}
}

// reserve fails with RESOURCE_EXHAUSTED when the table is full.
func (t *handleTable) reserve() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.m) >= t.max {
		return fault.New(fault.ResourceExhausted, "this replica holds %d connections, its maximum; close some", t.max)
	}
	return nil
}

// add stores c and returns its new id, or closes c and fails when full.
func (t *handleTable) add(c conn) (string, error) {
	t.mu.Lock()
	if len(t.m) >= t.max {
		t.mu.Unlock()
		go c.close()
		return "", fault.New(fault.ResourceExhausted, "this replica holds %d connections, its maximum; close some", t.max)
	}
	id := nuid.Next()
	t.m[id] = &handleEntry{c: c, last: time.Now()}
	t.mu.Unlock()
	return id, nil
}

// acquire returns the connection of id marked busy; release ends the use.
func (t *handleTable) acquire(id string) (*handleEntry, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[id]
	if ok {
		e.busy++
	}
	return e, ok
}

func (t *handleTable) release(e *handleEntry) {
	t.mu.Lock()
	e.busy--
	e.last = time.Now()
	t.mu.Unlock()
}

// remove takes id out of the table.
func (t *handleTable) remove(id string) (conn, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.m[id]
	if ok {
		delete(t.m, id)
	}
	if !ok {
		return nil, false
	}
	return e.c, true
}

// expire takes out every connection idle since before cutoff.
func (t *handleTable) expire(cutoff time.Time) map[string]conn {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[string]conn{}
	for id, e := range t.m {
		if e.busy == 0 && e.last.Before(cutoff) {
			out[id] = e.c
			delete(t.m, id)
		}
	}
	return out
}

// closeAll closes every connection, waiting for each.
func (t *handleTable) closeAll() {
	t.mu.Lock()
	all := t.m
	t.m = map[string]*handleEntry{}
	t.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.c.close()
		}()
	}
	wg.Wait()
}

// register stores a new connection and answers with its handle.
func (s *Service) register(c conn) ([]byte, nats.Header, error) {
	id, err := s.handles.add(c)
	if err != nil {
		return nil, nil, err
	}
	b, err := json.Marshal(Handle{Instance: s.instance, ID: id, Kind: c.kind()})
	return b, nil, err
}

// serveHandle serves op on the handles this replica holds.
func (s *Service) serveHandle(op subjects.HandleOp) microsvc.Handler {
	return func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
		req, wait, err := DecodeHandleRequest(r.Data(), string(op))
		if err != nil {
			return nil, nil, err
		}
		if op == subjects.HandleClose {
			c, ok := s.handles.remove(req.ID)
			if ok {
				go c.close()
			}
			return []byte("{}"), nil, nil
		}
		e, ok := s.handles.acquire(req.ID)
		if !ok {
			return nil, nil, fault.New(fault.NotFound, "connection %s is closed or was idle too long", req.ID)
		}
		defer s.handles.release(e)
		if len(req.Data) > s.cfg.Handles.MaxMessageBytes {
			return nil, nil, fault.New(fault.ResourceExhausted, "%s: message is %d bytes: at most %d",
				fmtHandle(e.c.kind(), req.ID), len(req.Data), s.cfg.Handles.MaxMessageBytes)
		}
		switch op {
		case subjects.HandleSend:
			err = e.c.send(ctx, req.Data, req.Binary)
		case subjects.HandlePublish:
			err = e.c.publish(ctx, req.Topic, req.Data, req.QoS, req.Retain)
		case subjects.HandleSubscribe:
			err = e.c.subscribe(ctx, req.Topic, req.QoS)
		case subjects.HandleReceive:
			if wait < 0 {
				wait = time.Until(deadlineOf(ctx))
			}
			var m *Message
			if m, err = e.c.receive(ctx, wait); err == nil {
				b, err := json.Marshal(ReceiveReply{Message: m})
				return b, nil, err
			}
		}
		if err != nil {
			return nil, nil, err
		}
		return []byte("{}"), nil, nil
	}
}

func deadlineOf(ctx context.Context) time.Time {
	dl, _ := ctx.Deadline()
	return dl
}
