package jotunheim

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/loki-iot/loki/devices/streams"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// Defaults of StreamOptions.
const (
	// DefaultStreamWindow is the credit a reader grants: chunks the device
	// may have in flight beyond those the reader took.
	DefaultStreamWindow = 8
	// DefaultStreamOpenTimeout bounds the wait for a device's first chunk.
	DefaultStreamOpenTimeout = 5 * time.Second
	// DefaultStreamIdleTimeout bounds Next's wait for any later chunk.
	DefaultStreamIdleTimeout = 30 * time.Second
	// DefaultStreamLease is the lease a reader asks for; it renews it three
	// times per lease while it is open, taking chunks or not.
	DefaultStreamLease = 10 * time.Second
)

// StreamOptions tune OpenStream; zero fields take the defaults.
type StreamOptions struct {
	// Window is the credit in chunks (DefaultStreamWindow, at most
	// streams.MaxCredit). What a reader buffers is bounded by it: Window
	// chunks of at most 64 KiB each.
	Window uint32
	// OpenTimeout bounds the wait for the first chunk (or the device's
	// refusal): a device that never answers is UNAVAILABLE.
	OpenTimeout time.Duration
	// IdleTimeout bounds Next's wait for a chunk once the stream runs.
	IdleTimeout time.Duration
	// Lease is asked of the device: it ends the stream when no CREDIT came
	// for this long (the reader vanished).
	Lease time.Duration
}

func (o StreamOptions) withDefaults() StreamOptions {
	if o.Window == 0 {
		o.Window = DefaultStreamWindow
	}
	o.Window = min(o.Window, streams.MaxCredit)
	if o.OpenTimeout <= 0 {
		o.OpenTimeout = DefaultStreamOpenTimeout
	}
	if o.IdleTimeout <= 0 {
		o.IdleTimeout = DefaultStreamIdleTimeout
	}
	if o.Lease <= 0 {
		o.Lease = DefaultStreamLease
	}
	return o
}

// StreamStats are a reader's counts so far.
type StreamStats struct {
	// Chunks and Bytes taken with Next (the last chunk included).
	Chunks, Bytes uint64
	// Dropped is the sum of the chunks' dropped counts: chunks the device
	// dropped for want of credit (POLICY_DROP).
	Dropped uint64
	// Lost counts chunks that never arrived (gaps in seq): QoS 0 delivery
	// lost them between the device and this reader.
	Lost uint64
}

// StreamReader reads one open device stream. Next is for one goroutine;
// Close may be called from any, any number of times.
type StreamReader struct {
	nc        *nats.Conn
	device    string
	source    string
	id        string
	ctl       string
	sub       *nats.Subscription
	opts      StreamOptions
	first     *jv1.StreamChunk
	stop      chan struct{}
	closeOnce sync.Once
	wg        sync.WaitGroup

	mu       sync.Mutex
	ack      uint64 // highest seq taken
	credited uint64 // the ack of the last CREDIT sent
	done     bool   // the last chunk was taken
	stats    StreamStats
}

// OpenStream opens stream source source of device deviceID over nc and
// waits for its first chunk. It stops after maxBytes (0: when closed). The
// reader grants opts.Window chunks of credit and renews it as Next takes
// chunks, so a consumer that does not call Next slows the device (or makes
// it drop, by the source's policy) instead of buffering. The stream ends
// with Close or when ctx ends; the caller must Close it.
//
// Errors are *fault.Error: INVALID_ARGUMENT for a bad device id or source
// name, UNAVAILABLE naming the device when it does not answer within
// opts.OpenTimeout, and the device's own code when it refuses (NOT_FOUND
// for a source it does not have, RESOURCE_EXHAUSTED when too many streams
// are open on it).
func OpenStream(ctx context.Context, nc *nats.Conn, deviceID, source string, maxBytes uint64, opts StreamOptions) (*StreamReader, error) {
	if err := subjects.ValidDeviceID(deviceID); err != nil {
		return nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	if err := streams.ValidName(source); err != nil {
		return nil, fault.New(fault.InvalidArgument, "stream source: %v", err)
	}
	opts = opts.withDefaults()
	data, err := subjects.DeviceSubject(deviceID, subjects.DeviceStreamData)
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	ctl, err := subjects.DeviceSubject(deviceID, subjects.DeviceStreamCtl)
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	sub, err := nc.SubscribeSync(data)
	if err != nil {
		return nil, fault.Wrap(fault.Unavailable, err, "subscribe to device %s's stream data: %v", deviceID, err)
	}
	// A device that ignores credit (or other readers' streams of the same
	// device) cannot grow this reader's buffer without bound: past these
	// limits NATS drops, and the gaps show as Lost.
	limit := 4*int(opts.Window) + 16
	_ = sub.SetPendingLimits(limit, limit*wire.MaxMessageBytes)
	r := &StreamReader{nc: nc, device: deviceID, source: source, id: nuid.Next(), ctl: ctl, sub: sub, opts: opts,
		stop: make(chan struct{})}
	fctx, cancel := context.WithTimeout(ctx, opts.OpenTimeout) // FlushWithContext needs a deadline
	err = nc.FlushWithContext(fctx)
	cancel()
	if err != nil {
		_ = sub.Unsubscribe()
		return nil, fault.Wrap(fault.Unavailable, err, "NATS: %v", err)
	}
	if err := r.control(&jv1.StreamControl{Action: jv1.StreamControl_ACTION_OPEN, Source: source, Credit: opts.Window,
		MaxBytes: maxBytes, LeaseMs: uint32(opts.Lease / time.Millisecond)}); err != nil {
		_ = sub.Unsubscribe()
		return nil, fault.Wrap(fault.Unavailable, err, "open stream %s of device %s: %v", source, deviceID, err)
	}
	first, err := r.receive(ctx, opts.OpenTimeout)
	if errors.Is(err, errIdle) {
		err = fault.New(fault.Unavailable, "device %s did not answer the opening of stream %q within %v: it is offline or offers no streams",
			deviceID, source, opts.OpenTimeout)
	}
	if err == nil {
		err = chunkError(deviceID, source, first)
	}
	if err != nil {
		r.shutdown(!errors.Is(err, errRefused)) // a device that refused has ended it
		return nil, err
	}
	r.first = first
	r.wg.Add(1)
	go r.keepalive(ctx)
	return r, nil
}

// errIdle is receive's timeout; errRefused marks a device's own refusal.
var (
	errIdle    = errors.New("no chunk in time")
	errRefused = errors.New("refused by the device")
)

// chunkError is the error of a last chunk that carries a code.
func chunkError(device, source string, c *jv1.StreamChunk) error {
	if !c.GetEof() || c.GetCode() == "" {
		return nil
	}
	code := fault.Code(c.GetCode())
	if !code.Valid() {
		code = fault.Internal
	}
	return fault.Wrap(code, errRefused, "device %s, stream %s: %s", device, source, c.GetError())
}

// ID is the stream's id, as StreamControl and StreamChunk carry it.
func (r *StreamReader) ID() string { return r.id }

// Stats returns the reader's counts so far.
func (r *StreamReader) Stats() StreamStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

// Next returns the stream's next chunk, in order; the last one has eof set
// (its dropped counts too). After it, Next returns io.EOF. A last chunk
// with a code is returned as that code's *fault.Error instead (DEADLINE_
// EXCEEDED for a lease that ran out, UNAVAILABLE for a source that failed).
// No chunk for opts.IdleTimeout is UNAVAILABLE naming the device.
func (r *StreamReader) Next(ctx context.Context) (*jv1.StreamChunk, error) {
	r.mu.Lock()
	done := r.done
	r.mu.Unlock()
	if done {
		return nil, io.EOF
	}
	c := r.first
	r.first = nil
	if c == nil {
		var err error
		if c, err = r.receive(ctx, r.opts.IdleTimeout); err != nil {
			if errors.Is(err, errIdle) {
				err = fault.New(fault.Unavailable, "device %s sent nothing on stream %s for %v", r.device, r.source, r.opts.IdleTimeout)
			}
			return nil, err
		}
	}
	r.take(c)
	if err := chunkError(r.device, r.source, c); err != nil {
		return nil, err
	}
	return c, nil
}

// receive waits up to idle for the next chunk of this stream, skipping
// other streams' chunks, repeats and what does not decode.
func (r *StreamReader) receive(ctx context.Context, idle time.Duration) (*jv1.StreamChunk, error) {
	tctx, cancel := context.WithTimeout(ctx, idle)
	defer cancel()
	for {
		m, err := r.sub.NextMsgWithContext(tctx)
		switch {
		case err == nil:
		case errors.Is(err, nats.ErrSlowConsumer):
			continue // counted as Lost by the gap it leaves
		case errors.Is(ctx.Err(), context.DeadlineExceeded):
			return nil, fault.Wrap(fault.DeadlineExceeded, ctx.Err(), "stream %s of device %s: %v", r.source, r.device, ctx.Err())
		case ctx.Err() != nil:
			return nil, fmt.Errorf("stream %s of device %s: %w", r.source, r.device, ctx.Err())
		case tctx.Err() != nil:
			return nil, errIdle
		default:
			return nil, fault.Wrap(fault.Unavailable, err, "stream %s of device %s: %v", r.source, r.device, err)
		}
		c, err := wire.DecodeStreamChunk(m.Data)
		if err != nil || c.GetStreamId() != r.id {
			continue
		}
		r.mu.Lock()
		old := c.GetSeq() <= r.ack
		r.mu.Unlock()
		if !old {
			return c, nil
		}
	}
}

// take records c as taken and grants more credit once half the window was
// used.
func (r *StreamReader) take(c *jv1.StreamChunk) {
	r.mu.Lock()
	if gap := c.GetSeq() - r.ack - 1; c.GetSeq() > r.ack+1 {
		r.stats.Lost += gap
	}
	r.ack = c.GetSeq()
	r.stats.Chunks++
	r.stats.Bytes += uint64(len(c.GetData()))
	r.stats.Dropped += c.GetDropped()
	r.done = c.GetEof()
	credit := !r.done && r.ack-r.credited >= uint64(max(r.opts.Window/2, 1))
	if credit {
		r.credited = r.ack
	}
	ack := r.ack
	r.mu.Unlock()
	if credit {
		_ = r.control(&jv1.StreamControl{Action: jv1.StreamControl_ACTION_CREDIT, Credit: r.opts.Window, AckSeq: ack})
	}
}

// keepalive renews the lease three times per lease while the stream is
// open, and closes it when ctx ends.
func (r *StreamReader) keepalive(ctx context.Context) {
	defer r.wg.Done()
	t := time.NewTicker(r.opts.Lease / 3)
	defer t.Stop()
	var lastAck uint64
	for {
		select {
		case <-r.stop:
			return
		case <-ctx.Done():
			go func() { _ = r.Close() }() // Close waits for this goroutine
			return
		case <-t.C:
			r.mu.Lock()
			ack, done := r.ack, r.done
			r.credited = ack
			r.mu.Unlock()
			if done {
				return
			}
			// No progress for a third of a lease and nothing waiting to be
			// taken: the chunks in flight were lost (QoS 0), and the device
			// waits for credit that only their acknowledgement would bring.
			// Acknowledge them (the device never counts an ack beyond what
			// it sent). A consumer that is merely slow has chunks waiting.
			stalled := ack == lastAck
			lastAck = ack
			if n, _, err := r.sub.Pending(); stalled && err == nil && n == 0 {
				ack += uint64(r.opts.Window)
			}
			_ = r.control(&jv1.StreamControl{Action: jv1.StreamControl_ACTION_CREDIT, Credit: r.opts.Window, AckSeq: ack})
		}
	}
}

func (r *StreamReader) control(c *jv1.StreamControl) error {
	c.StreamId = r.id
	b, err := wire.Encode(c)
	if err != nil {
		return err
	}
	return r.nc.Publish(r.ctl, b)
}

// Close ends the stream: it tells the device (CLOSE) unless the last chunk
// came, and unsubscribes. It always returns nil.
func (r *StreamReader) Close() error {
	r.mu.Lock()
	done := r.done
	r.mu.Unlock()
	r.shutdown(!done)
	return nil
}

func (r *StreamReader) shutdown(tellDevice bool) {
	r.closeOnce.Do(func() {
		if tellDevice {
			_ = r.control(&jv1.StreamControl{Action: jv1.StreamControl_ACTION_CLOSE})
		}
		close(r.stop)
		r.wg.Wait()
		_ = r.sub.Unsubscribe()
	})
}

// String names the stream for logs.
func (r *StreamReader) String() string {
	return fmt.Sprintf("stream %s (%s of device %s)", r.id, r.source, r.device)
}
