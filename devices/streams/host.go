package streams

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"regexp"
	"sync"
	"time"

	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

// Defaults of HostConfig.
const (
	// DefaultMaxStreams is how many streams a device serves at once.
	DefaultMaxStreams = 4
	// DefaultLease is how long a stream runs without a CREDIT.
	DefaultLease = 10 * time.Second
	// MaxCredit caps the chunks a consumer may let a device have in
	// flight; a larger credit is lowered to it.
	MaxCredit = 256
	// maxLease caps a lease an OPEN asks for.
	maxLease = 5 * time.Minute
)

// Codes of a failed stream's last chunk (StreamChunk.code): the names of
// the platform's error codes.
const (
	CodeNotFound          = "NOT_FOUND"
	CodeResourceExhausted = "RESOURCE_EXHAUSTED"
	CodeInvalidArgument   = "INVALID_ARGUMENT"
	CodeUnavailable       = "UNAVAILABLE"
	CodeDeadlineExceeded  = "DEADLINE_EXCEEDED"
)

// ErrBadControl marks a StreamControl the Host cannot act on: no valid
// stream id, or an unknown action. Nothing is published for it.
var ErrBadControl = errors.New("bad stream control")

var streamIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidStreamID reports whether id can name a stream instance (chosen by
// the platform): 1 to 64 of [A-Za-z0-9_-].
func ValidStreamID(id string) bool { return streamIDRE.MatchString(id) }

// HostConfig bounds a Host. Zero fields take the defaults.
type HostConfig struct {
	// MaxStreams caps the streams open at once (DefaultMaxStreams); an
	// OPEN beyond it ends at once with RESOURCE_EXHAUSTED.
	MaxStreams int
	// MaxChunkBytes caps the data of one chunk, below every source's own
	// cap: set it so that a chunk's message fits the device's message size
	// (see ChunkBytesFor). 0: MaxChunkBytes.
	MaxChunkBytes int
	// Lease is the lease of an OPEN that asks for none (DefaultLease).
	Lease time.Duration
}

// ChunkBytesFor returns the largest chunk data whose StreamChunk message
// (protojson: data is base64, 4 bytes per 3) fits in maxMessage bytes.
func ChunkBytesFor(maxMessage int) int {
	n := (maxMessage - 512) / 4 * 3 // 512: the other fields, generously
	if n > MaxChunkBytes {
		n = MaxChunkBytes
	}
	return max(n, 1)
}

// Publish sends one chunk to the platform (QoS 0). It must not keep c or
// c.Data after it returns; an error ends the stream (a device that is not
// connected cannot be read).
type Publish func(c *jv1.StreamChunk) error

// Host serves a device's open streams: it acts on the platform's
// StreamControls and publishes each stream's chunks from a goroutine of
// its own, sending at most the credit the consumer granted beyond what it
// acknowledged. Its methods are safe for concurrent use; Close ends every
// stream.
type Host struct {
	reg *Registry
	pub Publish
	cfg HostConfig
	log *slog.Logger

	mu     sync.Mutex
	open   map[string]*stream
	closed bool
	wg     sync.WaitGroup
}

// NewHost returns a host serving reg's sources (nil: none) through pub.
func NewHost(reg *Registry, pub Publish, cfg HostConfig, log *slog.Logger) *Host {
	if cfg.MaxStreams <= 0 {
		cfg.MaxStreams = DefaultMaxStreams
	}
	if cfg.MaxChunkBytes <= 0 || cfg.MaxChunkBytes > MaxChunkBytes {
		cfg.MaxChunkBytes = MaxChunkBytes
	}
	if cfg.Lease <= 0 {
		cfg.Lease = DefaultLease
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Host{reg: reg, pub: pub, cfg: cfg, log: log, open: map[string]*stream{}}
}

// Open returns the number of streams open now.
func (h *Host) Open() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.open)
}

// Control acts on one StreamControl: OPEN starts a stream (a failure is
// answered with a last chunk carrying a code: NOT_FOUND for an unknown
// source, RESOURCE_EXHAUSTED past MaxStreams), CREDIT moves its window and
// renews its lease, CLOSE ends it with a last chunk. An OPEN of a stream
// that is open already, and a CREDIT or CLOSE of one that is not, are
// ignored (controls are QoS 0 and may come twice or late). It returns an
// error wrapping ErrBadControl for a control it cannot answer.
func (h *Host) Control(c *jv1.StreamControl) error {
	id := c.GetStreamId()
	if !ValidStreamID(id) {
		return fmt.Errorf("%w: stream_id %.70q must be 1 to 64 of [A-Za-z0-9_-]", ErrBadControl, id)
	}
	switch c.GetAction() {
	case jv1.StreamControl_ACTION_OPEN:
		h.openStream(c)
	case jv1.StreamControl_ACTION_CREDIT:
		if s := h.get(id); s != nil {
			s.grant(c.GetCredit(), c.GetAckSeq())
		}
	case jv1.StreamControl_ACTION_CLOSE:
		if s := h.get(id); s != nil {
			s.finish(endClosed)
		}
	default:
		return fmt.Errorf("%w: stream %s: action %v", ErrBadControl, id, c.GetAction())
	}
	return nil
}

func (h *Host) get(id string) *stream {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.open[id]
}

func (h *Host) openStream(c *jv1.StreamControl) {
	id := c.GetStreamId()
	fail := func(code, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		h.log.Info("stream refused", "stream", id, "source", c.GetSource(), "code", code, "reason", msg)
		_ = h.pub(&jv1.StreamChunk{StreamId: id, Seq: 1, Eof: true, Code: code, Error: msg})
	}
	src, err := h.reg.Get(c.GetSource())
	if err != nil {
		fail(CodeNotFound, "%v", err)
		return
	}
	info := src.Info()
	lease := time.Duration(c.GetLeaseMs()) * time.Millisecond
	if lease <= 0 {
		lease = h.cfg.Lease
	}
	lease = min(lease, maxLease)
	ctx, cancel := context.WithCancel(context.Background())
	s := &stream{id: id, src: src, info: info, pub: h.pub, ctx: ctx, cancel: cancel,
		chunk: min(info.MaxChunkBytes, h.cfg.MaxChunkBytes), maxBytes: c.GetMaxBytes(), lease: lease,
		credit: min(c.GetCredit(), MaxCredit), lastCredit: time.Now(), wake: make(chan struct{}, 1)}
	h.mu.Lock()
	switch {
	case h.open[id] != nil:
		h.mu.Unlock()
		cancel()
		return // a repeated OPEN
	case h.closed:
		h.mu.Unlock()
		cancel()
		fail(CodeUnavailable, "the device's streams are stopping")
		return
	case len(h.open) >= h.cfg.MaxStreams:
		h.mu.Unlock()
		cancel()
		fail(CodeResourceExhausted, "%d streams are open on this device: at most %d", h.cfg.MaxStreams, h.cfg.MaxStreams)
		return
	}
	h.open[id] = s
	h.wg.Add(1)
	h.mu.Unlock()
	h.log.Info("stream opened", "stream", id, "source", info.Name, "policy", info.Policy.String(),
		"credit", s.credit, "max_bytes", s.maxBytes, "lease", lease)
	go func() {
		defer h.wg.Done()
		end := s.run()
		h.mu.Lock()
		delete(h.open, id)
		h.mu.Unlock()
		h.log.Info("stream ended", "stream", id, "source", info.Name, "chunks", s.seq, "bytes", s.sent,
			"dropped", s.droppedTotal, "code", end.code, "reason", end.msg)
	}()
}

// Close ends every open stream (their last chunks say UNAVAILABLE), waits
// for their goroutines and refuses later OPENs.
func (h *Host) Close() {
	h.mu.Lock()
	h.closed = true
	open := make([]*stream, 0, len(h.open))
	for _, s := range h.open {
		open = append(open, s)
	}
	h.mu.Unlock()
	for _, s := range open {
		s.finish(endStopping)
	}
	h.wg.Wait()
}

// end is why a stream ended: a code for the last chunk ("" for a clean
// end) and a message.
type end struct{ code, msg string }

var (
	endClosed   = &end{msg: "closed by the platform"}
	endStopping = &end{code: CodeUnavailable, msg: "the device's streams are stopping"}
)

// stream is one open stream. pump (run's goroutine) owns the source and
// seq; the platform's controls move credit and ack under mu.
type stream struct {
	id       string
	src      Source
	info     Info
	pub      Publish
	ctx      context.Context
	cancel   context.CancelFunc
	chunk    int
	maxBytes uint64
	lease    time.Duration
	wake     chan struct{}

	mu         sync.Mutex
	credit     uint32 // chunks allowed in flight
	ack        uint64 // highest seq the platform acknowledged
	seq        uint64 // last seq sent
	lastCredit time.Time
	ended      *end

	sent, droppedTotal uint64 // for the log, written by run only
}

func (s *stream) grant(credit uint32, ack uint64) {
	s.mu.Lock()
	s.credit = min(credit, MaxCredit)
	if ack > s.ack {
		s.ack = min(ack, s.seq) // never acknowledge what was not sent
	}
	s.lastCredit = time.Now()
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// finish records why the stream ends (the first reason wins) and cancels
// the source's context.
func (s *stream) finish(e *end) {
	s.mu.Lock()
	if s.ended == nil {
		s.ended = e
	}
	s.mu.Unlock()
	s.cancel()
}

// state reports whether a chunk may be sent now and, if the stream ended
// (or its lease ran out), why.
func (s *stream) state(now time.Time) (canSend bool, e *end, leaseEnd time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	leaseEnd = s.lastCredit.Add(s.lease)
	if s.ended == nil && !now.Before(leaseEnd) {
		s.ended = &end{code: CodeDeadlineExceeded, msg: fmt.Sprintf("no credit from the platform for %v", s.lease)}
		s.cancel()
	}
	return s.seq-s.ack < uint64(s.credit), s.ended, leaseEnd
}

// waitCredit blocks until a chunk may be sent or the stream ends.
func (s *stream) waitCredit() *end {
	for {
		ok, e, leaseEnd := s.state(time.Now())
		if e != nil {
			return e
		}
		if ok {
			return nil
		}
		t := time.NewTimer(time.Until(leaseEnd))
		select {
		case <-s.wake:
		case <-t.C:
		case <-s.ctx.Done():
		}
		t.Stop()
	}
}

// run pumps the source and publishes the last chunk.
func (s *stream) run() *end {
	e, dropped := s.pump()
	if e == nil {
		e = &end{}
	}
	s.mu.Lock()
	s.seq++
	seq := s.seq
	s.mu.Unlock()
	// The last chunk needs no credit: it is small, and the consumer waits for it.
	_ = s.pub(&jv1.StreamChunk{StreamId: s.id, Seq: seq, Dropped: dropped, Eof: true, Code: e.code, Error: e.msg})
	s.cancel()
	return e
}

// pump reads the source and publishes chunks until the stream ends; it
// returns why (nil: the source's end or max_bytes, a clean end) and the
// drops not yet reported.
func (s *stream) pump() (*end, uint64) {
	rc, err := s.src.Open(s.ctx)
	if err != nil {
		if e := s.endedBy(); e != nil {
			return e, 0
		}
		return &end{code: CodeUnavailable, msg: fmt.Sprintf("open source %s: %v", s.info.Name, err)}, 0
	}
	defer rc.Close()
	buf := make([]byte, s.chunk)
	var dropped uint64
	for {
		n := len(buf)
		if s.maxBytes > 0 {
			if s.sent >= s.maxBytes {
				return nil, dropped
			}
			n = int(min(uint64(n), s.maxBytes-s.sent))
		}
		if s.info.Policy == PolicyBlock {
			if e := s.waitCredit(); e != nil {
				return e, dropped
			}
		}
		rn, rerr := rc.Read(buf[:n])
		if rn > 0 {
			ok, e, _ := s.state(time.Now())
			if e != nil {
				return e, dropped
			}
			if !ok { // PolicyDrop without credit
				dropped++
				s.droppedTotal++
			} else {
				s.mu.Lock()
				s.seq++
				seq := s.seq
				s.mu.Unlock()
				if err := s.pub(&jv1.StreamChunk{StreamId: s.id, Seq: seq, Data: buf[:rn], Dropped: dropped}); err != nil {
					return &end{code: CodeUnavailable, msg: fmt.Sprintf("publish: %v", err)}, dropped
				}
				s.sent += uint64(rn)
				dropped = 0
			}
		}
		switch {
		case rerr == nil:
		case errors.Is(rerr, io.EOF):
			return nil, dropped
		default:
			if e := s.endedBy(); e != nil {
				return e, dropped
			}
			return &end{code: CodeUnavailable, msg: fmt.Sprintf("read source %s: %v", s.info.Name, rerr)}, dropped
		}
		if _, e, _ := s.state(time.Now()); e != nil {
			return e, dropped
		}
	}
}

func (s *stream) endedBy() *end {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ended
}
