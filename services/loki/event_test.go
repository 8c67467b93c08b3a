package loki

import (
	"testing"
	"time"

	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// TestAppendEventIsProtoJSON: every event decodes with protojson to the
// ScriptEvent with the same fields.
func TestAppendEventIsProtoJSON(t *testing.T) {
	at := time.Date(2026, 11, 22, 14, 8, 46, 571663628, time.UTC)
	tests := []struct {
		name string
		ev   event
		want *lokiv1.ScriptEvent
	}{
		{name: "started",
			ev:   event{execID: "abc", tool: "add", kind: subjects.EventStarted, time: at, toolRevision: 7},
			want: &lokiv1.ScriptEvent{ExecutionId: "abc", Tool: "add", Kind: "started", Time: timestamppb.New(at), ToolRevision: 7}},
		{name: "completed",
			ev:   event{execID: "abc", tool: "add", kind: subjects.EventCompleted, time: at.Truncate(time.Second), duration: 155227 * time.Nanosecond, hasDuration: true},
			want: &lokiv1.ScriptEvent{ExecutionId: "abc", Tool: "add", Kind: "completed", Time: timestamppb.New(at.Truncate(time.Second)), Duration: durationpb.New(155227 * time.Nanosecond)}},
		{name: "local time",
			ev:   event{tool: "t", kind: subjects.EventStarted, time: at.In(time.FixedZone("X", 3600))},
			want: &lokiv1.ScriptEvent{Tool: "t", Kind: "started", Time: timestamppb.New(at)}},
		{name: "long duration",
			ev:   event{tool: "t", kind: subjects.EventCompleted, duration: 3*time.Minute + 7*time.Millisecond, hasDuration: true},
			want: &lokiv1.ScriptEvent{Tool: "t", Kind: "completed", Duration: durationpb.New(3*time.Minute + 7*time.Millisecond)}},
		{name: "zero duration",
			ev:   event{tool: "t", kind: subjects.EventCompleted, hasDuration: true},
			want: &lokiv1.ScriptEvent{Tool: "t", Kind: "completed", Duration: durationpb.New(0)}},
		{name: "failed with awkward text",
			ev: event{execID: "x", tool: "t", kind: subjects.EventFailed, time: at,
				errorCode: "SCRIPT_ERROR", errorMessage: "line 1: \"quoted\" \\ back\nnew\ttab \x01 ctl ünïcødé \u2028 ✓"},
			want: &lokiv1.ScriptEvent{ExecutionId: "x", Tool: "t", Kind: "failed", Time: timestamppb.New(at),
				ErrorCode: "SCRIPT_ERROR", ErrorMessage: "line 1: \"quoted\" \\ back\nnew\ttab \x01 ctl ünïcødé \u2028 ✓"}},
		{name: "empty", want: &lokiv1.ScriptEvent{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := appendEvent([]byte("prefix"), &tc.ev)[len("prefix"):]
			got := &lokiv1.ScriptEvent{}
			if err := protojson.Unmarshal(b, got); err != nil {
				t.Fatalf("protojson rejects %s: %v", b, err)
			}
			if !proto.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v (json %s)", got, tc.want, b)
			}
		})
	}
	// Invalid UTF-8 is replaced, never emitted raw.
	b := appendEvent(nil, &event{errorMessage: "bad \xff byte"})
	got := &lokiv1.ScriptEvent{}
	if err := protojson.Unmarshal(b, got); err != nil || got.GetErrorMessage() != "bad \ufffd byte" {
		t.Fatalf("got %q, %v", got.GetErrorMessage(), err)
	}
}

func BenchmarkAppendEvent(b *testing.B) {
	ev := &event{execID: "c6Xwlrw7euk5ZP1GWDFsYG", tool: "add", kind: subjects.EventCompleted,
		time: time.Now(), duration: 155227 * time.Nanosecond, hasDuration: true, toolRevision: 1}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = appendEvent(buf[:0], ev)
	}
}
