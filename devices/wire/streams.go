package wire

import (
	"fmt"

	"github.com/loki-iot/loki/devices/streams"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

// MaxStreamSources caps the stream sources of one manifest.
const MaxStreamSources = 32

// ValidStreamID returns an error unless id can name a stream instance: 1
// to 64 of [A-Za-z0-9_-].
func ValidStreamID(id string) error {
	if !streams.ValidStreamID(id) {
		return fmt.Errorf("%w: stream_id %.70q must be 1 to 64 of [A-Za-z0-9_-]", ErrDecode, id)
	}
	return nil
}

// validateStreams checks a manifest's stream sources with the rules the
// device side registers them by (streams.Info.Validate), and that each
// name appears once.
func validateStreams(ss []*jv1.StreamSource, bad func(string, ...any) error) error {
	if len(ss) > MaxStreamSources {
		return bad("%d stream sources: at most %d", len(ss), MaxStreamSources)
	}
	seen := map[string]bool{}
	for _, s := range ss {
		info := streams.Info{Name: s.GetName(), Kind: s.GetKind(), ContentType: s.GetContentType(),
			BytesPerSecond: s.GetBytesPerSecond(), Policy: streams.Policy(s.GetPolicy()), MaxChunkBytes: int(s.GetMaxChunkBytes())}
		if s.GetMaxChunkBytes() > streams.MaxChunkBytes {
			info.MaxChunkBytes = -1 // not truncated into range by the conversion
		}
		if err := info.Validate(); err != nil {
			return bad("streams: %v", err)
		}
		if seen[s.GetName()] {
			return bad("stream source %q appears twice", s.GetName())
		}
		seen[s.GetName()] = true
	}
	return nil
}

// DecodeStreamControl decodes a StreamControl from the platform, refusing
// one without a valid stream id or a known action, or an OPEN without a
// source name.
func DecodeStreamControl(data []byte, max int) (*jv1.StreamControl, error) {
	c := &jv1.StreamControl{}
	if err := Decode(data, c, max); err != nil {
		return nil, err
	}
	if err := ValidStreamID(c.GetStreamId()); err != nil {
		return nil, err
	}
	switch c.GetAction() {
	case jv1.StreamControl_ACTION_OPEN:
		if err := streams.ValidName(c.GetSource()); err != nil {
			return nil, fmt.Errorf("%w: stream %s: %v", ErrDecode, c.GetStreamId(), err)
		}
	case jv1.StreamControl_ACTION_CREDIT, jv1.StreamControl_ACTION_CLOSE:
	default:
		return nil, fmt.Errorf("%w: stream %s: unknown action %v", ErrDecode, c.GetStreamId(), c.GetAction())
	}
	return c, nil
}

// DecodeStreamChunk decodes a StreamChunk from a device, refusing one
// without a valid stream id or a seq, or with a code or error too long to
// be one.
func DecodeStreamChunk(data []byte) (*jv1.StreamChunk, error) {
	c := &jv1.StreamChunk{}
	if err := Decode(data, c, 0); err != nil {
		return nil, err
	}
	if err := ValidStreamID(c.GetStreamId()); err != nil {
		return nil, err
	}
	if c.GetSeq() == 0 {
		return nil, fmt.Errorf("%w: stream %s: a chunk needs a seq from 1", ErrDecode, c.GetStreamId())
	}
	if len(c.GetCode()) > 64 || len(c.GetError()) > 1024 {
		return nil, fmt.Errorf("%w: stream %s: code or error too long", ErrDecode, c.GetStreamId())
	}
	return c, nil
}
