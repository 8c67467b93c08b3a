package loki

import (
	"math/rand/v2"
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

// TestEventNumbers: times read exactly as time.RFC3339Nano writes them, and
// durations decode with protojson to the exact duration.
func TestEventNumbers(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	times := []time.Time{
		time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), time.Date(2026, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2026, 6, 1, 0, 0, 0, 500000000, time.UTC), time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 10, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC), time.Now().UTC(),
	}
	for range 10000 {
		times = append(times, time.Unix(r.Int64N(1<<35), r.Int64N(1e9)).UTC(),
			time.Unix(r.Int64N(1<<35), r.Int64N(1000)*1e6).UTC())
	}
	for _, tm := range times {
		if got, want := string(appendTime(nil, tm)), tm.Format(time.RFC3339Nano); got != want {
			t.Fatalf("time %v: got %s, want %s", tm, got, want)
		}
	}
	durations := []time.Duration{0, 1, 999, time.Microsecond, 155227, time.Second, 3*time.Minute + 7*time.Millisecond,
		28490532773, 1e15 + 1, 1<<63 - 1, -1, -1500 * time.Millisecond}
	for range 3000 {
		durations = append(durations, time.Duration(r.Int64N(1e6)), time.Duration(r.Int64N(1e12)), time.Duration(r.Int64N(1e18)))
	}
	for _, d := range durations {
		b := appendEvent(nil, &event{duration: d, hasDuration: true})
		got := &lokiv1.ScriptEvent{}
		if err := protojson.Unmarshal(b, got); err != nil {
			t.Fatalf("duration %d: protojson rejects %s: %v", d, b, err)
		}
		if !proto.Equal(got.GetDuration(), durationpb.New(d)) {
			t.Fatalf("duration %d: got %v from %s, want %v", d, got.GetDuration(), b, durationpb.New(d))
		}
	}
}
