package engine

import (
	"errors"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	lua "github.com/yuin/gopher-lua"
)

// TestEncoderStopsAsItGoes checks that result encoding polls for the end of
// the execution while it converts, not once at the end: the deadline can
// pass in the middle of a large result.
func TestEncoderStopsAsItGoes(t *testing.T) {
	L := lua.NewState()
	defer L.Close()
	tab := L.CreateTable(100000, 0)
	for i := 1; i <= 100000; i++ {
		tab.RawSetInt(i, lua.LNumber(i))
	}
	polls := 0
	stopErr := fault.New(fault.DeadlineExceeded, "stopped")
	enc := encoder{max: 16 << 20, stop: stopFunc(func() *fault.Error {
		polls++
		if polls == 3 {
			return stopErr
		}
		return nil
	})}
	_, err := enc.encode(tab, Any, "result")
	if !errors.Is(err, stopErr) {
		t.Fatalf("got %v, want %v", err, stopErr)
	}
	if polls != 3 {
		t.Fatalf("got %d polls, want the encoding to end at the 3rd", polls)
	}
	if enc.count > 3*stopEvery {
		t.Fatalf("encoded %d values, want at most %d", enc.count, 3*stopEvery)
	}
}

// TestArgConversionStopsAsItGoes is TestEncoderStopsAsItGoes for
// arguments converted to Lua.
func TestArgConversionStopsAsItGoes(t *testing.T) {
	L := lua.NewState()
	defer L.Close()
	xs := make([]any, 100000)
	for i := range xs {
		xs[i] = []any{}
	}
	polls := 0
	stopErr := fault.New(fault.DeadlineExceeded, "stopped")
	c := luaConverter{L: L, stop: stopFunc(func() *fault.Error {
		polls++
		if polls == 3 {
			return stopErr
		}
		return nil
	})}
	_, err := c.value(xs, 0)
	if !errors.Is(err, stopErr) || polls != 3 || c.count > 3*stopEvery {
		t.Fatalf("got %v after %d polls and %d values, want %v at the 3rd poll", err, polls, c.count, stopErr)
	}
}

type stopFunc func() *fault.Error

func (f stopFunc) stopped() *fault.Error { return f() }
