package wire_test

import (
	"errors"
	"testing"

	"github.com/loki-iot/loki/devices/wire"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

func TestManifestStreams(t *testing.T) {
	src := func(name string, policy jv1.StreamSource_Policy, chunk uint32) *jv1.StreamSource {
		return &jv1.StreamSource{Name: name, Kind: "audio", Policy: policy, MaxChunkBytes: chunk}
	}
	tests := []struct {
		name    string
		streams []*jv1.StreamSource
		wantErr error
	}{
		{name: "valid", streams: []*jv1.StreamSource{src("mic", jv1.StreamSource_POLICY_DROP, 640), src("cam", jv1.StreamSource_POLICY_BLOCK, 49152)}},
		{name: "twice", streams: []*jv1.StreamSource{src("mic", jv1.StreamSource_POLICY_DROP, 640), src("mic", jv1.StreamSource_POLICY_DROP, 640)}, wantErr: wire.ErrDecode},
		{name: "bad name", streams: []*jv1.StreamSource{src("Mic", jv1.StreamSource_POLICY_DROP, 640)}, wantErr: wire.ErrDecode},
		{name: "no policy", streams: []*jv1.StreamSource{src("mic", jv1.StreamSource_POLICY_UNSPECIFIED, 640)}, wantErr: wire.ErrDecode},
		{name: "chunk over a message", streams: []*jv1.StreamSource{src("mic", jv1.StreamSource_POLICY_DROP, 1<<31)}, wantErr: wire.ErrDecode},
		{name: "no chunk", streams: []*jv1.StreamSource{src("mic", jv1.StreamSource_POLICY_DROP, 0)}, wantErr: wire.ErrDecode},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := &jv1.Manifest{DeviceId: "demo", Protocol: wire.Version, Streams: tc.streams}
			if err := wire.ValidateManifest("demo", m); !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
}
