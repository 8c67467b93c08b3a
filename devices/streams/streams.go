// Package streams is the device side of Jotunheim device streams: the
// Source interface that hardware-specific code (a camera, a microphone, a
// high-rate sensor) implements, a Registry of sources by name, synthetic
// sources for the sim board, and the Host that serves a device's open
// streams with credit-based flow control (docs/DEVICES.md, "Streams").
//
// It runs on devices: it imports no NATS, MQTT, gRPC or Lua, only the
// protocol's messages. The Host publishes through a function it is given,
// so the same engine serves every device transport.
package streams

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"sync"

	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

// Errors of the registry.
var (
	// ErrInvalid marks a source whose name or info cannot be announced.
	ErrInvalid = errors.New("invalid stream source")
	// ErrDuplicate marks a second source with a name already registered.
	ErrDuplicate = errors.New("stream source already registered")
	// ErrNotFound marks a name no source is registered under.
	ErrNotFound = errors.New("no such stream source")
)

// Policy is what a source does when its consumer is slower than it.
type Policy int

// The policies; their values are those of jotunheim.v1.StreamSource.Policy.
const (
	// PolicyBlock stops reading the source until the consumer grants
	// credit: nothing is lost, a live source falls behind. Fits a file, a
	// test pattern, a sensor with its own buffer.
	PolicyBlock Policy = 1
	// PolicyDrop keeps reading and drops the chunks the consumer has no
	// credit for, counting them: fits a live camera or microphone.
	PolicyDrop Policy = 2
)

// String is the policy's name as docs/DEVICES.md spells it.
func (p Policy) String() string {
	switch p {
	case PolicyBlock:
		return "block"
	case PolicyDrop:
		return "drop"
	}
	return fmt.Sprintf("Policy(%d)", int(p))
}

// Info describes a source as the device's manifest announces it.
type Info struct {
	// Name is the source's key on the device: [a-z][a-z0-9_]{0,31}.
	Name string
	// Kind is audio, video, sensor, test, ... (at most 32 bytes).
	Kind string
	// ContentType is the MIME type of the bytes (at most 128 bytes), e.g.
	// "audio/L16;rate=8000;channels=1".
	ContentType string
	// BytesPerSecond is the source's nominal rate (0: unknown).
	BytesPerSecond uint64
	// Policy is what the Host does with a slow consumer.
	Policy Policy
	// MaxChunkBytes is the largest piece the Host reads at once: 1 to
	// MaxChunkBytes. A Host lowers it further to fit the device's
	// message size.
	MaxChunkBytes int
}

// MaxChunkBytes caps Info.MaxChunkBytes: a chunk travels base64-encoded
// in one protocol message of at most 64 KiB.
const MaxChunkBytes = 48 << 10

var nameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// ValidName returns an error unless name can name a source:
// [a-z][a-z0-9_]{0,31}.
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: name %q must match [a-z][a-z0-9_]{0,31}", ErrInvalid, name)
	}
	return nil
}

// Validate returns an error naming the first field of i that cannot be
// announced.
func (i Info) Validate() error {
	if err := ValidName(i.Name); err != nil {
		return err
	}
	switch {
	case len(i.Kind) > 32:
		return fmt.Errorf("%w: source %q: kind is %d bytes, at most 32", ErrInvalid, i.Name, len(i.Kind))
	case len(i.ContentType) > 128:
		return fmt.Errorf("%w: source %q: content_type is %d bytes, at most 128", ErrInvalid, i.Name, len(i.ContentType))
	case i.Policy != PolicyBlock && i.Policy != PolicyDrop:
		return fmt.Errorf("%w: source %q: policy %v must be PolicyBlock or PolicyDrop", ErrInvalid, i.Name, i.Policy)
	case i.MaxChunkBytes < 1 || i.MaxChunkBytes > MaxChunkBytes:
		return fmt.Errorf("%w: source %q: max chunk of %d bytes must be 1 to %d", ErrInvalid, i.Name, i.MaxChunkBytes, MaxChunkBytes)
	}
	return nil
}

// Proto is i as a manifest's StreamSource.
func (i Info) Proto() *jv1.StreamSource {
	return &jv1.StreamSource{Name: i.Name, Kind: i.Kind, ContentType: i.ContentType, BytesPerSecond: i.BytesPerSecond,
		Policy: jv1.StreamSource_Policy(i.Policy), MaxChunkBytes: uint32(i.MaxChunkBytes)}
}

// Source is one stream a device offers. Info must not change after the
// source is registered. Open starts one reading of the source; a source
// may be open several times at once (one per consumer) or refuse a second
// Open with an error.
//
// Read on the returned reader blocks until some bytes are available and
// returns at most len(p) of them, as io.Reader does; io.EOF ends the
// stream cleanly (a clip, a file), any other error ends it as failed. Read
// must return soon after ctx ends, and the Host calls Close exactly once,
// after the last Read has returned.
type Source interface {
	Info() Info
	Open(ctx context.Context) (io.ReadCloser, error)
}

// Registry holds a device's sources by name. The agent owns one; its
// methods are safe for concurrent use. The zero value is not usable: use
// NewRegistry.
type Registry struct {
	mu  sync.RWMutex
	src map[string]Source
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{src: map[string]Source{}} }

// Register adds s under its Info().Name. It fails with ErrInvalid for a
// nil source or an invalid Info, and ErrDuplicate when the name is taken.
func (r *Registry) Register(s Source) error {
	if s == nil {
		return fmt.Errorf("%w: nil source", ErrInvalid)
	}
	info := s.Info()
	if err := info.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.src[info.Name]; dup {
		return fmt.Errorf("%w: %q", ErrDuplicate, info.Name)
	}
	r.src[info.Name] = s
	return nil
}

// Get returns the source named name, or an error wrapping ErrNotFound that
// lists the names there are.
func (r *Registry) Get(name string) (Source, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: %q (this device has no stream sources)", ErrNotFound, name)
	}
	r.mu.RLock()
	s, ok := r.src[name]
	r.mu.RUnlock()
	if !ok {
		names := r.names()
		if len(names) == 0 {
			return nil, fmt.Errorf("%w: %q (this device has no stream sources)", ErrNotFound, name)
		}
		return nil, fmt.Errorf("%w: %q (sources: %v)", ErrNotFound, name, names)
	}
	return s, nil
}

func (r *Registry) names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]string, 0, len(r.src))
	for n := range r.src {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// List returns the Info of every source, sorted by name; nil for a nil
// registry.
func (r *Registry) List() []Info {
	if r == nil {
		return nil
	}
	r.mu.RLock()
	out := make([]Info, 0, len(r.src))
	for _, s := range r.src {
		out = append(out, s.Info())
	}
	r.mu.RUnlock()
	sort.Slice(out, func(a, b int) bool { return out[a].Name < out[b].Name })
	return out
}
