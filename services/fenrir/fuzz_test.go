package fenrir_test

import (
	"encoding/json"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/fenrir"
)

// FuzzParseBoards: any input either parses into boards that validate, or
// fails with ErrConfig; it never panics.
func FuzzParseBoards(f *testing.F) {
	f.Add([]byte(goodBoard))
	f.Add([]byte("[[boards]]\nname = \"x\"\nbackend = \"sim\"\n[[boards.pins]]\nname = \"a\"\nnumber = 1\n"))
	f.Add([]byte("[[boards]]\nname = \"x\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		bs, err := fenrir.ParseBoards("fuzz.toml", data)
		if err != nil {
			return
		}
		for _, b := range bs {
			if err := b.Validate(); err != nil {
				t.Fatalf("parsed board %q does not validate: %v", b.Name, err)
			}
		}
	})
}

// FuzzDecodeRequest: a request either decodes and re-encodes to something
// that decodes the same, or is refused with INVALID_ARGUMENT.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{``, `{}`, `{"pin":"aux","level":1}`, `{"pin":"5","duty":0.5,"hz":100}`,
		`{"name":"fan","value":{"speed":0.5,"direction":"reverse"}}`, `{"pin":"b","edge":"rising","timeout":"1s"}`, `{"pin":1}`, `{"x":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := fenrir.DecodeRequest(data)
		if err != nil {
			if fault.CodeOf(err) != fault.InvalidArgument {
				t.Fatalf("got %v, want INVALID_ARGUMENT", err)
			}
			return
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := fenrir.DecodeRequest(b); err != nil && len(b) <= fenrir.MaxRequestBytes {
			t.Fatalf("re-encoded request %s refused: %v", b, err)
		}
	})
}
