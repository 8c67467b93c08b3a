package fenrir_test

import (
	"encoding/json"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/fenrir"
)

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
