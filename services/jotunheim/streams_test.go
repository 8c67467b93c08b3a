package jotunheim_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/streams"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/internal/streamtest"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// policySource is a pattern with another policy: an unpaced source that
// drops, to make drops happen at once.
type policySource struct {
	*streams.Pattern
	policy streams.Policy
}

func (s policySource) Info() streams.Info {
	i := s.Pattern.Info()
	i.Policy = s.policy
	return i
}

func newPattern(t testing.TB, name string, size int64, chunk int) *streams.Pattern {
	t.Helper()
	p, err := streams.NewPattern(name, size, chunk)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// creditMonitor watches device id's stream traffic from its own
// connection and checks the flow-control contract on every chunk: no
// chunk is sent beyond the last acknowledgement plus the credit. A CREDIT
// reaches the monitor before any chunk it allows, since the device sends
// that chunk only after it had the CREDIT itself.
type creditMonitor struct {
	t           *testing.T
	mu          sync.Mutex
	credit, ack map[string]uint64
	chunks      int
	maxInFlight uint64
}

func monitorCredit(t *testing.T, srv *natsrv.Server, id string) *creditMonitor {
	t.Helper()
	nc := natstest.Connect(t, srv)
	m := &creditMonitor{t: t, credit: map[string]uint64{}, ack: map[string]uint64{}}
	ctl, _ := subjects.DeviceSubject(id, subjects.DeviceStreamCtl)
	// One subscription for both directions: one delivery goroutine, so
	// the server's order is kept.
	tree, _ := subjects.DeviceTree(id)
	if _, err := nc.Subscribe(tree, func(msg *nats.Msg) {
		if msg.Subject == ctl {
			m.control(msg)
		} else {
			m.chunk(msg)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return m
}

// readAll reads r to its end.
func readAll(t *testing.T, r *jotunheim.StreamReader, pause time.Duration) ([]byte, *jv1.StreamChunk) {
	t.Helper()
	var data []byte
	var seq uint64
	for {
		c, err := r.Next(ctxT(t))
		if err != nil {
			t.Fatalf("Next after %d bytes: %v", len(data), err)
		}
		if c.GetSeq() <= seq {
			t.Fatalf("chunk %d after %d", c.GetSeq(), seq)
		}
		seq = c.GetSeq()
		data = append(data, c.GetData()...)
		if c.GetEof() {
			if _, err := r.Next(ctxT(t)); !errors.Is(err, io.EOF) {
				t.Fatalf("Next after the last chunk: got %v, want %v", err, io.EOF)
			}
			return data, c
		}
		time.Sleep(pause)
	}
}

func TestOpenStream(t *testing.T) {
	srv := natstest.Start(t)
	reg := streamtest.Registry(t, newPattern(t, "pattern", 0, 1000), newPattern(t, "short", 2500, 1000))
	host := streamtest.Serve(t, natstest.Connect(t, srv), "dev1", reg, streams.HostConfig{})
	nc := natstest.Connect(t, srv)
	tests := []struct {
		name, source string
		maxBytes     uint64
		want         int
	}{
		{name: "max bytes", source: "pattern", maxBytes: 100_500, want: 100_500},
		{name: "source ends", source: "short", want: 2500},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			mon := monitorCredit(t, srv, "dev1")
			r, err := jotunheim.OpenStream(ctxT(t), nc, "dev1", tc.source, tc.maxBytes, jotunheim.StreamOptions{Window: 4})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			data, last := readAll(t, r, 0)
			if len(data) != tc.want || last.GetCode() != "" {
				t.Fatalf("got %d bytes, code %q; want %d bytes, no code", len(data), last.GetCode(), tc.want)
			}
			for i, b := range data {
				if b != streams.PatternByte(int64(i)) {
					t.Fatalf("byte %d: got %d, want %d", i, b, streams.PatternByte(int64(i)))
				}
			}
			if st := r.Stats(); st.Lost != 0 || st.Dropped != 0 || st.Bytes != uint64(tc.want) {
				t.Fatalf("stats: %+v", st)
			}
			mon.mu.Lock()
			defer mon.mu.Unlock()
			if mon.maxInFlight > 4 {
				t.Fatalf("got %d chunks in flight, want at most the window of 4", mon.maxInFlight)
			}
		})
	}
	eventually(t, "streams ended on the device", func() bool { return host.Open() == 0 })
}

// TestOpenStreamSlowConsumer: a consumer slower than the source slows a
// blocking source to its pace, within its credit, and makes a dropping
// source drop, counting what it dropped.
func TestOpenStreamSlowConsumer(t *testing.T) {
	srv := natstest.Start(t)
	reg := streamtest.Registry(t, newPattern(t, "block", 0, 1000),
		policySource{newPattern(t, "drop", 0, 1000), streams.PolicyDrop})
	streamtest.Serve(t, natstest.Connect(t, srv), "dev1", reg, streams.HostConfig{})
	nc := natstest.Connect(t, srv)
	for _, source := range []string{"block", "drop"} {
		t.Run(source, func(t *testing.T) {
			mon := monitorCredit(t, srv, "dev1")
			r, err := jotunheim.OpenStream(ctxT(t), nc, "dev1", source, 40_000, jotunheim.StreamOptions{Window: 2})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			data, _ := readAll(t, r, 2*time.Millisecond)
			st := r.Stats()
			if len(data) != 40_000 || st.Lost != 0 {
				t.Fatalf("got %d bytes, stats %+v; want 40000 bytes, none lost", len(data), st)
			}
			if source == "drop" && st.Dropped == 0 {
				t.Fatal("a dropping source behind a slow consumer dropped nothing")
			}
			if source == "block" {
				for i, b := range data {
					if b != streams.PatternByte(int64(i)) {
						t.Fatalf("byte %d: got %d, want %d", i, b, streams.PatternByte(int64(i)))
					}
				}
				if st.Dropped != 0 {
					t.Fatalf("a blocking source dropped %d chunks", st.Dropped)
				}
			}
			mon.mu.Lock()
			defer mon.mu.Unlock()
			if mon.maxInFlight > 2 {
				t.Fatalf("got %d chunks in flight, want at most the window of 2", mon.maxInFlight)
			}
		})
	}
}

// TestOpenStreamConsumerVanishes: a reader whose connection dies sends no
// CLOSE; the device ends the stream when its lease runs out.
func TestOpenStreamConsumerVanishes(t *testing.T) {
	srv := natstest.Start(t)
	host := streamtest.Serve(t, natstest.Connect(t, srv), "dev1",
		streamtest.Registry(t, newPattern(t, "pattern", 0, 1000)), streams.HostConfig{})
	nc := natstest.Connect(t, srv)
	r, err := jotunheim.OpenStream(ctxT(t), nc, "dev1", "pattern", 0, jotunheim.StreamOptions{Lease: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Next(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if host.Open() != 1 {
		t.Fatalf("got %d streams open, want 1", host.Open())
	}
	nc.Close()
	eventually(t, "the lease ended the stream", func() bool { return host.Open() == 0 })
	_ = r.Close()
}

func TestOpenStreamRefused(t *testing.T) {
	srv := natstest.Start(t)
	streamtest.Serve(t, natstest.Connect(t, srv), "dev1",
		streamtest.Registry(t, newPattern(t, "pattern", 0, 1000)), streams.HostConfig{MaxStreams: 1})
	nc := natstest.Connect(t, srv)
	busy, err := jotunheim.OpenStream(ctxT(t), nc, "dev1", "pattern", 0, jotunheim.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	tests := []struct {
		name, device, source string
		want                 fault.Code
		msg                  string
	}{
		{name: "unknown source", device: "dev1", source: "camera", want: fault.NotFound, msg: "camera"},
		{name: "too many streams", device: "dev1", source: "pattern", want: fault.ResourceExhausted, msg: "at most 1"},
		{name: "no such device", device: "ghost", source: "pattern", want: fault.Unavailable, msg: "device ghost"},
		{name: "bad device id", device: "a.b", source: "pattern", want: fault.InvalidArgument, msg: "device id"},
		{name: "bad source name", device: "dev1", source: "Cam era", want: fault.InvalidArgument, msg: "source"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r, err := jotunheim.OpenStream(ctxT(t), nc, tc.device, tc.source, 0, jotunheim.StreamOptions{OpenTimeout: 300 * time.Millisecond})
			if err == nil {
				r.Close()
			}
			wantCode(t, err, tc.want)
			wantMessage(t, err, tc.msg)
		})
	}
}

// TestOpenStreamCloses: Close and the end of the context both end the
// stream on the device.
func TestOpenStreamCloses(t *testing.T) {
	srv := natstest.Start(t)
	host := streamtest.Serve(t, natstest.Connect(t, srv), "dev1",
		streamtest.Registry(t, newPattern(t, "pattern", 0, 1000)), streams.HostConfig{})
	nc := natstest.Connect(t, srv)
	r, err := jotunheim.OpenStream(ctxT(t), nc, "dev1", "pattern", 0, jotunheim.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Close()
	eventually(t, "Close ended the stream", func() bool { return host.Open() == 0 })
	ctx, cancel := context.WithCancel(ctxT(t))
	if r, err = jotunheim.OpenStream(ctx, nc, "dev1", "pattern", 0, jotunheim.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	cancel()
	eventually(t, "the context's end ended the stream", func() bool { return host.Open() == 0 })
}

// TestStreamRead: a script reads at most max_bytes of a device stream,
// with a grant for the device.
func TestStreamRead(t *testing.T) {
	e := setupBare(t)
	streamtest.Serve(t, natstest.Connect(t, e.srv), "dev1",
		streamtest.Registry(t, newPattern(t, "pattern", 0, 1000), newPattern(t, "short", 300, 100)), streams.HostConfig{})
	tests := []struct {
		name, source string
		grants       []string
		want         fault.Code
		wantLen      float64
		wantEOF      bool
		msg          string
	}{
		{name: "max bytes", source: `jotunheim.stream_read("dev1", "pattern", {max_bytes = 2500})`, grants: []string{"jotunheim:dev1"}, wantLen: 2500},
		{name: "default max", source: `jotunheim.stream_read("dev1", "pattern")`, grants: []string{"jotunheim"}, wantLen: 64 << 10},
		{name: "source ends", source: `jotunheim.stream_read("dev1", "short", {max_bytes = 2500, timeout = "2s"})`, grants: []string{"jotunheim"}, wantLen: 300, wantEOF: true},
		{name: "other device", source: `jotunheim.stream_read("dev1", "pattern")`, grants: []string{"jotunheim:dev2"}, want: fault.PermissionDenied, msg: "jotunheim:dev1"},
		{name: "unknown source", source: `jotunheim.stream_read("dev1", "camera")`, grants: []string{"jotunheim"}, want: fault.NotFound, msg: "camera"},
		{name: "no such device", source: `jotunheim.stream_read("ghost", "pattern", {timeout = 0.3})`, grants: []string{"jotunheim"}, want: fault.Unavailable, msg: "ghost"},
		{name: "too much", source: `jotunheim.stream_read("dev1", "pattern", {max_bytes = 2^21})`, grants: []string{"jotunheim"}, want: fault.ScriptError, msg: "max_bytes"},
		{name: "bad timeout", source: `jotunheim.stream_read("dev1", "pattern", {timeout = "soon"})`, grants: []string{"jotunheim"}, want: fault.ScriptError, msg: "timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := "s_" + strings.ReplaceAll(tc.name, " ", "_")
			e.userTool(t, &lokiv1.Tool{Name: name, Grants: tc.grants,
				Source: "local d, info = " + tc.source + "\nreturn {n = #d, eof = info.eof}"})
			got, err := lokitest.Call(t, e.loki, name, "{}")
			wantCode(t, err, tc.want)
			if tc.want != "" {
				wantMessage(t, err, tc.msg)
				return
			}
			m, _ := got.(map[string]any)
			if m["n"] != tc.wantLen || m["eof"] != tc.wantEOF {
				t.Fatalf("got %v, want n %v eof %v", got, tc.wantLen, tc.wantEOF)
			}
		})
	}
}

func (m *creditMonitor) control(msg *nats.Msg) {
	c, err := wire.DecodeStreamControl(msg.Data, 0)
	if err != nil {
		m.t.Errorf("control: %v", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.GetAction() != jv1.StreamControl_ACTION_CLOSE {
		m.credit[c.GetStreamId()] = uint64(c.GetCredit())
		m.ack[c.GetStreamId()] = max(m.ack[c.GetStreamId()], c.GetAckSeq())
	}
}

func (m *creditMonitor) chunk(msg *nats.Msg) {
	c, err := wire.DecodeStreamChunk(msg.Data)
	if err != nil {
		m.t.Errorf("chunk: %v", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.chunks++
	if c.GetEof() {
		return
	}
	inFlight := c.GetSeq() - m.ack[c.GetStreamId()]
	m.maxInFlight = max(m.maxInFlight, inFlight)
	if inFlight > m.credit[c.GetStreamId()] {
		m.t.Errorf("stream %s: chunk %d in flight beyond ack %d and credit %d", c.GetStreamId(), c.GetSeq(), m.ack[c.GetStreamId()], m.credit[c.GetStreamId()])
	}
}

// TestOpenStreamLostChunks: chunks lost on the way (QoS 0) show as Lost,
// and a whole window lost does not stall the stream: the reader's lease
// renewal acknowledges what never came.
func TestOpenStreamLostChunks(t *testing.T) {
	srv := natstest.Start(t)
	streamtest.ServeLossy(t, natstest.Connect(t, srv), "dev1",
		streamtest.Registry(t, newPattern(t, "pattern", 0, 100)), streams.HostConfig{},
		func(c *jv1.StreamChunk) bool { return !c.GetEof() && c.GetSeq() >= 3 && c.GetSeq() <= 6 })
	nc := natstest.Connect(t, srv)
	r, err := jotunheim.OpenStream(ctxT(t), nc, "dev1", "pattern", 2000, jotunheim.StreamOptions{Window: 4, Lease: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	data, _ := readAll(t, r, 0)
	if st := r.Stats(); st.Lost != 4 || len(data) != 1600 {
		t.Fatalf("got %d bytes, stats %+v; want 1600 bytes (2000 sent, 400 lost) and 4 lost", len(data), st)
	}
}
