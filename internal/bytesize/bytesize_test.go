package bytesize_test

import (
	"testing"

	"github.com/loki-iot/loki/internal/bytesize"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  bool
	}{
		{in: "64MiB", want: 64 << 20}, {in: "512KiB", want: 512 << 10}, {in: "1GiB", want: 1 << 30},
		{in: "1.5GiB", want: 3 << 29}, {in: "4096", want: 4096}, {in: "64 MB", want: 64e6}, {in: "10kB", want: 10000},
		{in: "48m", want: 48 << 20}, {in: "2TiB", want: 2 << 40}, {in: " 7 b ", want: 7},
		{in: "64XB", err: true}, {in: "MiB", err: true}, {in: "-1MiB", err: true}, {in: "", err: true},
		{in: "NaN", err: true}, {in: "9999999TiB", err: true},
	} {
		got, err := bytesize.Parse(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("Parse(%q): got %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"64MiB", "1.5GiB", "10kB", "4096", "-1", "NaN", "1e300GB"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := bytesize.Parse(s)
		if err == nil && n >= 1<<62 {
			t.Fatalf("Parse(%q) = %d: over the bound", s, n)
		}
	})
}
