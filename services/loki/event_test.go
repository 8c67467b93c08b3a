package loki

import (
	"testing"
	"time"

	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestMarshalEventIsProtoJSON: every event decodes with protojson to the same message.
func TestMarshalEventIsProtoJSON(t *testing.T) {
	at := time.Date(2026, 11, 22, 14, 8, 46, 571663628, time.UTC)
	tests := []struct {
		name string
		ev   *lokiv1.ScriptEvent
	}{
		{name: "started", ev: &lokiv1.ScriptEvent{ExecutionId: "abc", Tool: "add", Kind: "started", Time: timestamppb.New(at), ToolRevision: 7}},
		{name: "completed", ev: &lokiv1.ScriptEvent{ExecutionId: "abc", Tool: "add", Kind: "completed", Time: timestamppb.New(at.Truncate(time.Second)), Duration: durationpb.New(155227 * time.Nanosecond)}},
		{name: "long duration", ev: &lokiv1.ScriptEvent{Tool: "t", Kind: "completed", Duration: durationpb.New(3*time.Minute + 7*time.Millisecond)}},
		{name: "failed with awkward text", ev: &lokiv1.ScriptEvent{ExecutionId: "x", Tool: "t", Kind: "failed", Time: timestamppb.New(at),
			ErrorCode: "SCRIPT_ERROR", ErrorMessage: "line 1: \"quoted\" \\ back\nnew\ttab \x01 ctl ünïcødé \u2028 ✓"}},
		{name: "empty", ev: &lokiv1.ScriptEvent{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := marshalEvent(tc.ev)
			got := &lokiv1.ScriptEvent{}
			if err := protojson.Unmarshal(b, got); err != nil {
				t.Fatalf("protojson rejects %s: %v", b, err)
			}
			if !proto.Equal(got, tc.ev) {
				t.Fatalf("got %v, want %v (json %s)", got, tc.ev, b)
			}
		})
	}
	// Invalid UTF-8 is replaced, never emitted raw.
	b := marshalEvent(&lokiv1.ScriptEvent{ErrorMessage: "bad \xff byte"})
	got := &lokiv1.ScriptEvent{}
	if err := protojson.Unmarshal(b, got); err != nil || got.GetErrorMessage() != "bad \ufffd byte" {
		t.Fatalf("got %q, %v", got.GetErrorMessage(), err)
	}
}

func BenchmarkMarshalEvent(b *testing.B) {
	ev := &lokiv1.ScriptEvent{ExecutionId: "c6Xwlrw7euk5ZP1GWDFsYG", Tool: "add", Kind: "completed",
		Time: timestamppb.Now(), Duration: durationpb.New(155227 * time.Nanosecond), ToolRevision: 1}
	for b.Loop() {
		marshalEvent(ev)
	}
}
