package streams_test

import (
	"context"
	"errors"
	"io"
	"sync"
	"testing"

	"github.com/loki-iot/loki/devices/streams"
)

// fixed is a source with a given Info whose reader ends at once.
type fixed struct{ info streams.Info }

func (f fixed) Info() streams.Info { return f.info }
func (f fixed) Open(context.Context) (io.ReadCloser, error) {
	return io.NopCloser(&emptyReader{}), nil
}

type emptyReader struct{}

func (emptyReader) Read([]byte) (int, error) { return 0, io.EOF }

func info(name string) streams.Info {
	return streams.Info{Name: name, Kind: "test", Policy: streams.PolicyBlock, MaxChunkBytes: 1024}
}

func TestRegistry(t *testing.T) {
	tests := []struct {
		name    string
		src     streams.Source
		wantErr error
	}{
		{name: "valid", src: fixed{info("cam")}},
		{name: "duplicate", src: fixed{info("mic")}, wantErr: streams.ErrDuplicate},
		{name: "nil", src: nil, wantErr: streams.ErrInvalid},
		{name: "upper case name", src: fixed{info("Cam")}, wantErr: streams.ErrInvalid},
		{name: "name with a dot", src: fixed{info("a.b")}, wantErr: streams.ErrInvalid},
		{name: "empty name", src: fixed{info("")}, wantErr: streams.ErrInvalid},
		{name: "long name", src: fixed{info("a23456789012345678901234567890123")}, wantErr: streams.ErrInvalid},
		{name: "no policy", src: fixed{streams.Info{Name: "x", MaxChunkBytes: 1}}, wantErr: streams.ErrInvalid},
		{name: "chunk too big", src: fixed{streams.Info{Name: "x", Policy: streams.PolicyDrop, MaxChunkBytes: streams.MaxChunkBytes + 1}}, wantErr: streams.ErrInvalid},
		{name: "no chunk", src: fixed{streams.Info{Name: "x", Policy: streams.PolicyDrop}}, wantErr: streams.ErrInvalid},
	}
	reg := streams.NewRegistry()
	if err := reg.Register(fixed{info("mic")}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := reg.Register(tc.src); !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
	var names []string
	for _, i := range reg.List() {
		names = append(names, i.Name)
	}
	if len(names) != 2 || names[0] != "cam" || names[1] != "mic" {
		t.Fatalf("List: got %v, want [cam mic]", names)
	}
	if _, err := reg.Get("mic"); err != nil {
		t.Fatalf("Get(mic): %v", err)
	}
	if _, err := reg.Get("nope"); !errors.Is(err, streams.ErrNotFound) {
		t.Fatalf("Get(nope): got %v, want %v", err, streams.ErrNotFound)
	}
	var nilReg *streams.Registry
	if _, err := nilReg.Get("x"); !errors.Is(err, streams.ErrNotFound) || nilReg.List() != nil {
		t.Fatalf("nil registry: got %v, want %v and no list", err, streams.ErrNotFound)
	}
}

func TestRegistryConcurrent(t *testing.T) {
	reg := streams.NewRegistry()
	var wg sync.WaitGroup
	var mu sync.Mutex
	ok := 0
	for i := range 16 {
		wg.Go(func() {
			err := reg.Register(fixed{info("shared")})
			reg.List()
			_, _ = reg.Get("shared")
			if err == nil {
				mu.Lock()
				ok++
				mu.Unlock()
			} else if !errors.Is(err, streams.ErrDuplicate) {
				t.Errorf("register %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	if ok != 1 {
		t.Fatalf("got %d successful registrations of one name, want 1", ok)
	}
}

func TestPattern(t *testing.T) {
	p, err := streams.NewPattern("pattern", 1000, 300)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := p.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 1000 {
		t.Fatalf("got %d bytes, want 1000", len(b))
	}
	for i, c := range b {
		if c != streams.PatternByte(int64(i)) {
			t.Fatalf("byte %d: got %d, want %d", i, c, streams.PatternByte(int64(i)))
		}
	}
}

func TestSine(t *testing.T) {
	s, err := streams.NewSine("sine", 8000, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if i := s.Info(); i.Validate() != nil || i.Policy != streams.PolicyDrop || i.BytesPerSecond != 16000 {
		t.Fatalf("info: %+v (%v)", i, i.Validate())
	}
	ctx, cancel := context.WithCancel(context.Background())
	rc, err := s.Open(ctx)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16) // 8 samples: 1 ms
	n, err := rc.Read(buf)
	if err != nil || n != 16 {
		t.Fatalf("read: %d, %v", n, err)
	}
	nonzero := false
	for _, c := range buf[2:] {
		nonzero = nonzero || c != 0
	}
	if !nonzero {
		t.Fatal("a sine wave of silence")
	}
	cancel()
	big := make([]byte, 16000) // a second's worth: must not wait once ctx ended
	if _, err := rc.Read(big); !errors.Is(err, context.Canceled) {
		t.Fatalf("read after cancel: got %v, want %v", err, context.Canceled)
	}
	for _, bad := range []struct {
		rate int
		freq float64
	}{{100, 10}, {8000, 5000}, {8000, 0}} {
		if _, err := streams.NewSine("sine", bad.rate, bad.freq); !errors.Is(err, streams.ErrInvalid) {
			t.Errorf("NewSine(%d, %g): got %v, want %v", bad.rate, bad.freq, err, streams.ErrInvalid)
		}
	}
}
