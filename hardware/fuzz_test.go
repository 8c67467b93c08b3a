package hardware_test

import (
	"errors"
	"testing"

	"github.com/loki-iot/loki/hardware"
)

// FuzzParseBoards: any input either parses into boards that validate and
// open on a simulated board, or fails with ErrConfig; it never panics.
func FuzzParseBoards(f *testing.F) {
	f.Add([]byte(goodBoard))
	f.Add([]byte("[[boards]]\nname = \"x\"\nbackend = \"sim\"\n[[boards.pins]]\nname = \"a\"\nnumber = 1\n"))
	f.Add([]byte("[[boards]]\nname = \"x\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		bs, err := hardware.ParseBoards("fuzz.toml", data)
		if err != nil {
			if !errors.Is(err, hardware.ErrConfig) {
				t.Fatalf("got %v, want an error wrapping ErrConfig", err)
			}
			return
		}
		for _, b := range bs {
			if err := b.Validate(); err != nil {
				t.Fatalf("parsed board %q does not validate: %v", b.Name, err)
			}
			d, err := hardware.NewDevice(b, hardware.NewSimBoard(b))
			if err != nil {
				t.Fatalf("parsed board %q does not open: %v", b.Name, err)
			}
			if err := d.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})
}
