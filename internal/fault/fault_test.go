package fault_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
)

func TestCodeAndMessage(t *testing.T) {
	base := fault.New(fault.NotFound, "no tool named %q", "x")
	wrapped := fmt.Errorf("lookup: %w", base)
	tests := []struct {
		name     string
		err      error
		wantCode fault.Code
		wantMsg  string
	}{
		{name: "nil", err: nil, wantCode: "", wantMsg: "internal error"},
		{name: "direct", err: base, wantCode: fault.NotFound, wantMsg: `no tool named "x"`},
		{name: "wrapped", err: wrapped, wantCode: fault.NotFound, wantMsg: `no tool named "x"`},
		{name: "plain error hides details", err: errors.New("disk on fire"), wantCode: fault.Internal, wantMsg: "internal error"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := fault.CodeOf(tc.err); got != tc.wantCode {
				t.Errorf("code: got %q, want %q", got, tc.wantCode)
			}
			if tc.err != nil {
				if got := fault.MessageOf(tc.err); got != tc.wantMsg {
					t.Errorf("message: got %q, want %q", got, tc.wantMsg)
				}
			}
		})
	}
	if !errors.Is(wrapped, &fault.Error{Code: fault.NotFound}) {
		t.Error("errors.Is does not match by code")
	}
	if errors.Is(wrapped, &fault.Error{Code: fault.Internal}) {
		t.Error("errors.Is matched a different code")
	}
}

func TestParseRoundTrip(t *testing.T) {
	e := fault.New(fault.PermissionDenied, "tool has no grant for hel.kv:x")
	got, ok := fault.Parse(e.Error())
	if !ok || got.Code != e.Code || got.Msg != e.Msg {
		t.Fatalf("got %v, %v, want %v", got, ok, e)
	}
	for _, s := range []string{"", "boom", "NOT_A_CODE: x", "line 3: PERMISSION_DENIED: x"} {
		if _, ok := fault.Parse(s); ok {
			t.Errorf("Parse(%q) accepted a string without a leading code", s)
		}
	}
}
