package streams_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/streams"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"google.golang.org/protobuf/proto"
)

const waitLimit = 20 * time.Second

// platform records what a Host publishes and checks the credit contract
// on every chunk: a chunk's seq is never beyond the last acknowledgement
// plus the credit the platform granted.
type platform struct {
	t      *testing.T
	chunks chan *jv1.StreamChunk

	mu          sync.Mutex
	credit, ack map[string]uint64
}

func newPlatform(t *testing.T) *platform {
	return &platform{t: t, chunks: make(chan *jv1.StreamChunk, 4096), credit: map[string]uint64{}, ack: map[string]uint64{}}
}

func (p *platform) publish(c *jv1.StreamChunk) error {
	p.mu.Lock()
	if !c.GetEof() && c.GetSeq() > p.ack[c.GetStreamId()]+p.credit[c.GetStreamId()] {
		p.t.Errorf("stream %s: chunk %d sent with ack %d and credit %d", c.GetStreamId(), c.GetSeq(), p.ack[c.GetStreamId()], p.credit[c.GetStreamId()])
	}
	p.mu.Unlock()
	p.chunks <- proto.Clone(c).(*jv1.StreamChunk) // the host reuses Data
	return nil
}

func (p *platform) open(h *streams.Host, id, source string, credit uint32, maxBytes uint64, leaseMs uint32) {
	p.t.Helper()
	p.mu.Lock()
	p.credit[id] = uint64(credit)
	p.mu.Unlock()
	if err := h.Control(&jv1.StreamControl{StreamId: id, Action: jv1.StreamControl_ACTION_OPEN, Source: source,
		Credit: credit, MaxBytes: maxBytes, LeaseMs: leaseMs}); err != nil {
		p.t.Fatal(err)
	}
}

func (p *platform) grant(h *streams.Host, id string, credit uint32, ack uint64) {
	p.t.Helper()
	p.mu.Lock()
	p.credit[id], p.ack[id] = uint64(credit), ack
	p.mu.Unlock()
	if err := h.Control(&jv1.StreamControl{StreamId: id, Action: jv1.StreamControl_ACTION_CREDIT, Credit: credit, AckSeq: ack}); err != nil {
		p.t.Fatal(err)
	}
}

func (p *platform) next() *jv1.StreamChunk {
	p.t.Helper()
	select {
	case c := <-p.chunks:
		return c
	case <-time.After(waitLimit):
		p.t.Fatalf("no chunk within %v", waitLimit)
		return nil
	}
}

// untilEOF reads chunks of id until its last one, acknowledging each with
// credit.
func (p *platform) untilEOF(h *streams.Host, id string, credit uint32) (data []byte, last *jv1.StreamChunk, dropped uint64) {
	p.t.Helper()
	var seq uint64
	for {
		c := p.next()
		if c.GetStreamId() != id {
			continue
		}
		if c.GetSeq() != seq+1 {
			p.t.Fatalf("chunk %d after %d", c.GetSeq(), seq)
		}
		seq = c.GetSeq()
		data = append(data, c.GetData()...)
		dropped += c.GetDropped()
		if c.GetEof() {
			return data, c, dropped
		}
		p.grant(h, id, credit, seq)
	}
}

// counting wraps a pattern source with a chosen policy and counts reads.
type counting struct {
	streams.Source
	policy streams.Policy
	mu     sync.Mutex
	reads  int
}

func (c *counting) Info() streams.Info {
	i := c.Source.Info()
	i.Policy = c.policy
	return i
}

func (c *counting) Open(ctx context.Context) (io.ReadCloser, error) {
	rc, err := c.Source.Open(ctx)
	return &countingReader{rc, c}, err
}

type countingReader struct {
	io.ReadCloser
	c *counting
}

func (r *countingReader) Read(p []byte) (int, error) {
	r.c.mu.Lock()
	r.c.reads++
	r.c.mu.Unlock()
	return r.ReadCloser.Read(p)
}

func pattern(t *testing.T, name string, size int64, chunk int, policy streams.Policy) *counting {
	t.Helper()
	p, err := streams.NewPattern(name, size, chunk)
	if err != nil {
		t.Fatal(err)
	}
	return &counting{Source: p, policy: policy}
}

func newHost(t *testing.T, cfg streams.HostConfig, srcs ...streams.Source) (*streams.Host, *platform) {
	t.Helper()
	reg := streams.NewRegistry()
	for _, s := range srcs {
		if err := reg.Register(s); err != nil {
			t.Fatal(err)
		}
	}
	p := newPlatform(t)
	h := streams.NewHost(reg, p.publish, cfg, nil)
	t.Cleanup(h.Close)
	return h, p
}

func checkPattern(t *testing.T, data []byte) {
	t.Helper()
	for i, c := range data {
		if c != streams.PatternByte(int64(i)) {
			t.Fatalf("byte %d: got %d, want %d", i, c, streams.PatternByte(int64(i)))
		}
	}
}

func TestHostEnds(t *testing.T) {
	tests := []struct {
		name     string
		size     int64
		maxBytes uint64
		want     int
	}{
		{name: "source ends", size: 250, want: 250},
		{name: "max bytes", maxBytes: 250, want: 250},
		{name: "max bytes past the end", size: 120, maxBytes: 250, want: 120},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h, p := newHost(t, streams.HostConfig{}, pattern(t, "pattern", tc.size, 100, streams.PolicyBlock))
			p.open(h, "s1", "pattern", 2, tc.maxBytes, 0)
			data, last, _ := p.untilEOF(h, "s1", 2)
			if len(data) != tc.want || last.GetCode() != "" {
				t.Fatalf("got %d bytes and code %q, want %d bytes and no code", len(data), last.GetCode(), tc.want)
			}
			checkPattern(t, data)
		})
	}
}

func TestHostBlockWaitsForCredit(t *testing.T) {
	src := pattern(t, "pattern", 0, 100, streams.PolicyBlock)
	h, p := newHost(t, streams.HostConfig{}, src)
	p.open(h, "s1", "pattern", 3, 0, 60_000)
	for range 3 {
		p.next()
	}
	// Without credit the source is not read: three reads for three chunks.
	if err := h.Control(&jv1.StreamControl{StreamId: "s1", Action: jv1.StreamControl_ACTION_OPEN, Source: "pattern", Credit: 100}); err != nil {
		t.Fatal(err) // a repeated OPEN changes nothing
	}
	src.mu.Lock()
	reads := src.reads
	src.mu.Unlock()
	if reads > 4 { // at most one read ahead
		t.Fatalf("got %d reads for 3 chunks without credit", reads)
	}
	p.grant(h, "s1", 3, 3)
	for range 3 {
		p.next()
	}
	if err := h.Control(&jv1.StreamControl{StreamId: "s1", Action: jv1.StreamControl_ACTION_CLOSE}); err != nil {
		t.Fatal(err)
	}
	last := p.next()
	if !last.GetEof() || last.GetCode() != "" || last.GetSeq() != 7 {
		t.Fatalf("after CLOSE: got %v, want a clean last chunk 7", last)
	}
}

func TestHostDropCountsDrops(t *testing.T) {
	src := pattern(t, "pattern", 0, 100, streams.PolicyDrop)
	h, p := newHost(t, streams.HostConfig{}, src)
	p.open(h, "s1", "pattern", 1, 0, 60_000)
	first := p.next()
	if first.GetSeq() != 1 || first.GetDropped() != 0 {
		t.Fatalf("first chunk: %v", first)
	}
	// The source goes on being read and its chunks dropped.
	deadline := time.Now().Add(waitLimit)
	for {
		src.mu.Lock()
		reads := src.reads
		src.mu.Unlock()
		if reads > 10 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the source is not read without credit")
		}
		time.Sleep(time.Millisecond)
	}
	p.grant(h, "s1", 1, 1)
	second := p.next()
	if second.GetSeq() != 2 || second.GetDropped() < 9 {
		t.Fatalf("second chunk: got seq %d dropped %d, want seq 2 and at least 9 dropped", second.GetSeq(), second.GetDropped())
	}
}

func TestHostLease(t *testing.T) {
	for _, policy := range []streams.Policy{streams.PolicyBlock, streams.PolicyDrop} {
		t.Run(policy.String(), func(t *testing.T) {
			h, p := newHost(t, streams.HostConfig{}, pattern(t, "pattern", 0, 100, policy))
			p.open(h, "s1", "pattern", 1, 0, 20) // the consumer then vanishes
			for {
				c := p.next()
				if c.GetEof() {
					if c.GetCode() != streams.CodeDeadlineExceeded {
						t.Fatalf("got code %q, want %s", c.GetCode(), streams.CodeDeadlineExceeded)
					}
					break
				}
			}
			eventuallyOpen(t, h, 0)
		})
	}
}

func eventuallyOpen(t *testing.T, h *streams.Host, n int) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for h.Open() != n {
		if time.Now().After(deadline) {
			t.Fatalf("got %d streams open, want %d", h.Open(), n)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestHostRefusals(t *testing.T) {
	h, p := newHost(t, streams.HostConfig{MaxStreams: 1}, pattern(t, "pattern", 0, 100, streams.PolicyBlock))
	p.open(h, "s1", "pattern", 0, 0, 60_000) // open, idle
	eventuallyOpen(t, h, 1)
	tests := []struct {
		name, id, source, code string
	}{
		{name: "unknown source", id: "s2", source: "camera", code: streams.CodeNotFound},
		{name: "too many streams", id: "s3", source: "pattern", code: streams.CodeResourceExhausted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p.open(h, tc.id, tc.source, 1, 0, 0)
			c := p.next()
			if c.GetStreamId() != tc.id || !c.GetEof() || c.GetCode() != tc.code || c.GetError() == "" {
				t.Fatalf("got %v, want a last chunk of %s with code %s", c, tc.id, tc.code)
			}
		})
	}
	for _, bad := range []*jv1.StreamControl{
		{StreamId: "", Action: jv1.StreamControl_ACTION_OPEN},
		{StreamId: "a.b", Action: jv1.StreamControl_ACTION_CREDIT},
		{StreamId: "s1"},
	} {
		if err := h.Control(bad); !errors.Is(err, streams.ErrBadControl) {
			t.Errorf("Control(%v): got %v, want %v", bad, err, streams.ErrBadControl)
		}
	}
	h.Close()
	c := p.next()
	if c.GetStreamId() != "s1" || !c.GetEof() || c.GetCode() != streams.CodeUnavailable {
		t.Fatalf("after Close: got %v, want s1's last chunk with code %s", c, streams.CodeUnavailable)
	}
	if h.Open() != 0 {
		t.Fatalf("after Close: %d streams open", h.Open())
	}
}

func TestChunkBytesFor(t *testing.T) {
	for _, max := range []int{1024, 4096, 64 << 10, 256 << 10} {
		n := streams.ChunkBytesFor(max)
		data := make([]byte, n)
		b, err := protojsonChunk(&jv1.StreamChunk{StreamId: "0123456789012345678901234567890123456789012345678901234567890123",
			Seq: 1 << 62, Data: data, Dropped: 1 << 62})
		if err != nil {
			t.Fatal(err)
		}
		if len(b) > max {
			t.Errorf("ChunkBytesFor(%d) = %d: the message is %d bytes", max, n, len(b))
		}
	}
}
