package isolate

import (
	"bytes"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		err  bool
	}{
		{in: "64MiB", want: 64 << 20}, {in: "512KiB", want: 512 << 10}, {in: "1GiB", want: 1 << 30},
		{in: "1.5GiB", want: 3 << 29}, {in: "4096", want: 4096}, {in: "64 MB", want: 64e6},
		{in: "64XB", err: true}, {in: "MiB", err: true}, {in: "-1MiB", err: true}, {in: "", err: true},
	} {
		got, err := ParseSize(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseSize(%q): got %d, %v; want %d, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		in   uint64
		want string
	}{
		{64 << 20, "64 MiB"}, {3 << 29, "1.5 GiB"}, {512 << 10, "512 KiB"}, {100, "100 B"},
	} {
		if got := FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d): got %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestFrames(t *testing.T) {
	var buf bytes.Buffer
	if err := writeFrame(&buf, frameCall, []byte("ab"), []byte("cd")); err != nil {
		t.Fatal(err)
	}
	if err := writeFrame(&buf, frameReady); err != nil {
		t.Fatal(err)
	}
	typ, body, err := readFrame(&buf)
	if err != nil || typ != frameCall || string(body) != "abcd" {
		t.Fatalf("got %q %q %v, want call \"abcd\"", typ, body, err)
	}
	typ, body, err = readFrame(&buf)
	if err != nil || typ != frameReady || len(body) != 0 {
		t.Fatalf("got %q %q %v, want an empty ready frame", typ, body, err)
	}
	// A length past the cap is refused before anything is allocated.
	if _, _, err := readFrame(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff, 'C'})); err == nil {
		t.Fatal("a 4 GiB frame was accepted")
	}
}
