package jsonenc_test

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/loki-iot/loki/internal/jsonenc"
)

func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", `"q" \ b`, "\n\r\t\x00\x1f", "ünï ✓ \u2028\u2029", "bad \xff\xfe byte"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := jsonenc.AppendString(nil, s)
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("%q encodes to invalid JSON %s: %v", s, b, err)
		}
		want := strings.ToValidUTF8(s, "\ufffd")
		if !utf8.ValidString(s) {
			// Each invalid byte becomes its own U+FFFD, as encoding/json does.
			var sb strings.Builder
			for i := 0; i < len(s); {
				r, n := utf8.DecodeRuneInString(s[i:])
				sb.WriteRune(r)
				i += n
			}
			want = sb.String()
		}
		if got != want {
			t.Fatalf("round trip of %q: got %q, want %q", s, got, want)
		}
	})
}

func TestAppendStringMatchesSeeds(t *testing.T) {
	if got := string(jsonenc.AppendString([]byte("x="), "a\"b\n")); got != `x="a\"b\n"` {
		t.Fatalf(`got %s, want x="a\"b\n"`, got)
	}
}
