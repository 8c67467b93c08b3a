package loki_test

import (
	"context"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/natstest"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
)

// TestEventInterest: with EventInterest from the embedded server (as
// under loki up), events still reach whoever listens — a subscriber over
// TCP, and a JetStream stream capturing them with no subscriber at all —
// while a call nobody watches publishes none.
func TestEventInterest(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	registerTools(t, nc, testTools)
	asked := make(chan string, 64)
	startLoki(t, srv, loki.Config{EventInterest: func(subj string) bool {
		select {
		case asked <- subj:
		default:
		}
		return srv.Interest(subj)
	}})
	c := loki.NewClient(nc)

	// Nobody listens: the events are checked and skipped.
	if _, err := call(t, c, "add", `{"a":1}`); err != nil {
		t.Fatal(err)
	}
	if got := len(asked); got != 2 {
		t.Fatalf("interest asked for %d events, want 2 (started, completed)", got)
	}

	// A subscriber on another connection gets them.
	events := subscribeEvents(t, natstest.Connect(t, srv), "add")
	if _, err := call(t, c, "add", `{"a":2}`); err != nil {
		t.Fatal(err)
	}
	started := waitEvent(t, events, subjects.EventStarted)
	done := waitEvent(t, events, subjects.EventCompleted)
	if started.GetExecutionId() == "" || started.GetExecutionId() != done.GetExecutionId() {
		t.Fatalf("execution ids: started %q, completed %q", started.GetExecutionId(), done.GetExecutionId())
	}

	// A stream that keeps events, with no subscriber: it stores them.
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	all, err := subjects.ScriptEvents("count_calls", "")
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{all}})
	if err != nil {
		t.Fatal(err)
	}
	registerTools(t, nc, `
[[tools]]
name = "count_calls"
returns = "number"
script = "return 1"
`)
	waitFor(t, func() bool { _, err := c.Get(context.Background(), "count_calls"); return err == nil })
	if _, err := call(t, c, "count_calls", `{}`); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 2
	})
	m, err := st.GetMsg(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	ev := &lokiv1.ScriptEvent{}
	if err := protojson.Unmarshal(m.Data, ev); err != nil || ev.GetKind() != string(subjects.EventCompleted) {
		t.Fatalf("stored event: got %v, %v, want completed", ev, err)
	}
}
