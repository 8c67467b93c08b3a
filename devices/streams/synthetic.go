package streams

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math"
	"time"
)

// Sine is a synthetic microphone: a sine wave as 16-bit little-endian
// mono PCM, paced in real time (Read waits until the samples it returns
// are due), so it behaves like a live source on any machine. Its policy is
// PolicyDrop, as a live source's would be.
type Sine struct {
	name       string
	rate       int
	freq, gain float64
}

var _ Source = (*Sine)(nil)

// NewSine returns a sine source named name of freq Hz sampled rate times a
// second (rate 8000 to 48000), at half of full scale.
func NewSine(name string, rate int, freq float64) (*Sine, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if rate < 8000 || rate > 48000 {
		return nil, fmt.Errorf("%w: sine %q: rate %d must be 8000 to 48000", ErrInvalid, name, rate)
	}
	if freq <= 0 || freq >= float64(rate)/2 {
		return nil, fmt.Errorf("%w: sine %q: frequency %g must be above 0 and below half the rate", ErrInvalid, name, freq)
	}
	return &Sine{name: name, rate: rate, freq: freq, gain: 0.5}, nil
}

// Info announces 20 ms chunks of audio/L16.
func (s *Sine) Info() Info {
	return Info{Name: s.name, Kind: "audio", ContentType: fmt.Sprintf("audio/L16;rate=%d;channels=1", s.rate),
		BytesPerSecond: uint64(s.rate) * 2, Policy: PolicyDrop, MaxChunkBytes: s.rate * 2 / 50}
}

// Open starts the wave at phase 0, now.
func (s *Sine) Open(ctx context.Context) (io.ReadCloser, error) {
	return &sineReader{s: s, ctx: ctx, start: time.Now()}, nil
}

type sineReader struct {
	s     *Sine
	ctx   context.Context
	start time.Time
	pos   int64 // samples produced
}

func (r *sineReader) Read(p []byte) (int, error) {
	n := len(p) / 2
	if n == 0 {
		return 0, nil
	}
	// The last sample returned is due at start + (pos+n)/rate.
	due := r.start.Add(time.Duration((r.pos + int64(n)) * int64(time.Second) / int64(r.s.rate)))
	if d := time.Until(due); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-r.ctx.Done():
			t.Stop()
			return 0, r.ctx.Err()
		case <-t.C:
		}
	} else if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	w := 2 * math.Pi * r.s.freq / float64(r.s.rate)
	for i := range n {
		v := int16(r.s.gain * math.MaxInt16 * math.Sin(w*float64(r.pos+int64(i))))
		binary.LittleEndian.PutUint16(p[2*i:], uint16(v))
	}
	r.pos += int64(n)
	return 2 * n, nil
}

func (r *sineReader) Close() error { return nil }

// Pattern is a synthetic source for throughput: an unpaced test pattern
// (byte i of the stream is PatternByte(i)) that fills every Read at once.
// Its policy is PolicyBlock: a consumer gets every byte, in order, as fast
// as it takes them.
type Pattern struct {
	name  string
	size  int64
	chunk int
}

var _ Source = (*Pattern)(nil)

// NewPattern returns a pattern source named name that ends after size
// bytes (0: never) and reads chunk bytes at a time (0: MaxChunkBytes).
func NewPattern(name string, size int64, chunk int) (*Pattern, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	if chunk == 0 {
		chunk = MaxChunkBytes
	}
	if size < 0 || chunk < 1 || chunk > MaxChunkBytes {
		return nil, fmt.Errorf("%w: pattern %q: size %d must be at least 0, chunk %d 1 to %d", ErrInvalid, name, size, chunk, MaxChunkBytes)
	}
	return &Pattern{name: name, size: size, chunk: chunk}, nil
}

// PatternByte is byte i of a Pattern's stream: its position modulo 251, a
// prime, so a lost, repeated or reordered chunk shows.
func PatternByte(i int64) byte { return byte(i % 251) }

// Info announces an unpaced octet stream.
func (s *Pattern) Info() Info {
	return Info{Name: s.name, Kind: "test", ContentType: "application/octet-stream", Policy: PolicyBlock, MaxChunkBytes: s.chunk}
}

// Open starts the pattern at byte 0.
func (s *Pattern) Open(ctx context.Context) (io.ReadCloser, error) {
	return &patternReader{ctx: ctx, size: s.size}, nil
}

type patternReader struct {
	ctx       context.Context
	pos, size int64
}

func (r *patternReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	if r.size > 0 {
		if r.pos >= r.size {
			return 0, io.EOF
		}
		if rem := r.size - r.pos; int64(len(p)) > rem {
			p = p[:rem]
		}
	}
	for i := range p {
		p[i] = PatternByte(r.pos + int64(i))
	}
	r.pos += int64(len(p))
	return len(p), nil
}

func (r *patternReader) Close() error { return nil }
