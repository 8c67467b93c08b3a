package loki_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"
)

const testTools = `
[[tools]]
name = "add"
returns = "number"
script = "return a + b"
  [[tools.params]]
  name = "a"
  type = "number"
  required = true
  [[tools.params]]
  name = "b"
  type = "number"
  default = 0

[[tools]]
name = "spin"
returns = "any"
timeout = "3s"
script = "while true do end"

[[tools]]
name = "work"
description = "busy for ms milliseconds of CPU time, then returns ms"
returns = "integer"
script = '''
local t0 = os.clock()
while (os.clock() - t0) * 1000 < ms do end
return ms
'''
  [[tools.params]]
  name = "ms"
  type = "integer"
  required = true

[[tools]]
name = "boom"
returns = "string"
script = '''
local x = 1
error("kaboom")
'''

[[tools]]
name = "bomb"
returns = "string"
script = "return string.rep('x', 1e10)"

[[tools]]
name = "wrong_type"
returns = "number"
script = "return 'not a number'"

[[tools]]
name = "stream"
returns = "string"
script = '''
for i = 1, n do emit({i = i}) end
return "done"
'''
  [[tools.params]]
  name = "n"
  type = "integer"
  default = 3
`

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// startLoki runs a Loki replica on its own connection to srv until the test ends.
func startLoki(t *testing.T, srv *natsrv.Server, cfg loki.Config) *loki.Service {
	t.Helper()
	nc := natstest.Connect(t, srv)
	svc, err := loki.New(cfg, nc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)
	return svc
}

func registerTools(t *testing.T, nc *nats.Conn, src string) {
	t.Helper()
	tools, err := loki.ParseTools("test.toml", []byte(src), fstest.MapFS{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := loki.OpenRegistry(context.Background(), nc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(context.Background(), tools...); err != nil {
		t.Fatal(err)
	}
}

// setup starts a server, registers the test tools and one replica.
func setup(t *testing.T, cfg loki.Config) (*nats.Conn, *loki.Client) {
	t.Helper()
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	registerTools(t, nc, testTools)
	startLoki(t, srv, cfg)
	return nc, loki.NewClient(nc)
}

func call(t *testing.T, c *loki.Client, tool, args string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := c.Call(ctx, tool, []byte(args))
	return string(res.JSON), err
}

func TestExecOverRawNATS(t *testing.T) {
	nc, _ := setup(t, loki.Config{})
	subj, err := subjects.ToolExec("add")
	if err != nil {
		t.Fatal(err)
	}
	// What `nats req loki.exec.add '{"a":1,"b":2}'` does.
	msg, err := nc.Request(subj, []byte(`{"a":1,"b":2}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(msg.Data); got != "3" {
		t.Fatalf("got %q, want 3", got)
	}
	if msg.Header.Get(loki.HeaderExecutionID) == "" {
		t.Fatalf("reply has no %s header", loki.HeaderExecutionID)
	}
	msg, err = nc.Request(subj, []byte(`{"a":"x"}`), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get(micro.ErrorCodeHeader); got != string(fault.InvalidArgument) {
		t.Fatalf("error code header: got %q, want INVALID_ARGUMENT", got)
	}
	if got := msg.Header.Get(micro.ErrorHeader); !strings.Contains(got, `"a"`) {
		t.Fatalf("error message %q does not name param a", got)
	}
}

func TestExecResultsAndErrors(t *testing.T) {
	_, c := setup(t, loki.Config{})
	tests := []struct {
		name, tool, args string
		want             string
		wantCode         fault.Code
		wantMsg          []string
	}{
		{name: "add", tool: "add", args: `{"a":1,"b":2}`, want: "3"},
		{name: "default applied", tool: "add", args: `{"a":1.5}`, want: "1.5"},
		{name: "unknown tool", tool: "nope", args: `{}`, wantCode: fault.NotFound, wantMsg: []string{`"nope"`}},
		{name: "missing param", tool: "add", args: `{"b":2}`, wantCode: fault.InvalidArgument, wantMsg: []string{`"a"`, `"add"`}},
		{name: "mistyped param", tool: "add", args: `{"a":"one"}`, wantCode: fault.InvalidArgument, wantMsg: []string{`"a"`}},
		{name: "unknown param", tool: "add", args: `{"a":1,"c":3}`, wantCode: fault.InvalidArgument, wantMsg: []string{`"c"`}},
		{name: "not an object", tool: "add", args: `[1,2]`, wantCode: fault.InvalidArgument},
		{name: "malformed json", tool: "add", args: `{"a":`, wantCode: fault.InvalidArgument},
		{name: "lua error names tool and line", tool: "boom", args: `{}`, wantCode: fault.ScriptError, wantMsg: []string{`"boom"`, "line 2", "kaboom"}},
		{name: "wrong return type", tool: "wrong_type", args: `{}`, wantCode: fault.ScriptError, wantMsg: []string{"number"}},
		{name: "string.rep bomb", tool: "bomb", args: `{}`, wantCode: fault.ResourceExhausted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := call(t, c, tc.tool, tc.args)
			if code := fault.CodeOf(err); code != tc.wantCode {
				t.Fatalf("code: got %q (%v), want %q", code, err, tc.wantCode)
			}
			if got != tc.want {
				t.Fatalf("result: got %q, want %q", got, tc.want)
			}
			for _, w := range tc.wantMsg {
				if !strings.Contains(fault.MessageOf(err), w) {
					t.Errorf("message %q does not mention %q", fault.MessageOf(err), w)
				}
			}
		})
	}
}

// TestBusyLoopDoesNotBlockOthers: a script spinning until its timeout must not
// hold up other calls, and is stopped with DEADLINE_EXCEEDED.
func TestBusyLoopDoesNotBlockOthers(t *testing.T) {
	nc, c := setup(t, loki.Config{Concurrency: 4})
	events := subscribeEvents(t, nc, "spin")
	spinErr := make(chan error, 1)
	go func() {
		_, err := call(t, c, "spin", `{}`)
		spinErr <- err
	}()
	waitEvent(t, events, subjects.EventStarted)
	for i := range 20 {
		if got, err := call(t, c, "add", `{"a":1,"b":1}`); err != nil || got != "2" {
			t.Fatalf("call %d while spin runs: got %q, %v", i, got, err)
		}
	}
	select {
	case err := <-spinErr:
		t.Fatalf("spin ended (%v) before the other calls were answered", err)
	default:
	}
	if err := <-spinErr; fault.CodeOf(err) != fault.DeadlineExceeded {
		t.Fatalf("spin: got %v, want DEADLINE_EXCEEDED", err)
	}
}

// TestCallerDeadlineStopsScript: a caller's deadline shorter than the tool's
// timeout stops the script, as its failed event shows.
func TestCallerDeadlineStopsScript(t *testing.T) {
	nc, c := setup(t, loki.Config{})
	events := subscribeEvents(t, nc, "spin")
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Call(ctx, "spin", nil); fault.CodeOf(err) != fault.DeadlineExceeded {
		t.Fatalf("got %v, want DEADLINE_EXCEEDED", err)
	}
	waitEvent(t, events, subjects.EventStarted)
	ev := waitEvent(t, events, subjects.EventFailed)
	if ev.GetErrorCode() != string(fault.DeadlineExceeded) {
		t.Fatalf("failed event code: got %q, want DEADLINE_EXCEEDED", ev.GetErrorCode())
	}
	if ev.GetDuration().AsDuration() >= 3*time.Second {
		t.Fatalf("script ran its full 3s timeout (%s) instead of the caller's deadline", ev.GetDuration().AsDuration())
	}
}

func TestQueueFullIsResourceExhausted(t *testing.T) {
	// One slot, one queue place; a short drain so the spinning scripts are
	// cancelled when the test ends.
	nc, c := setup(t, loki.Config{Concurrency: 1, Queue: 1, DrainTimeout: 50 * time.Millisecond})
	events := subscribeEvents(t, nc, "spin")
	spin, err := subjects.ToolExec("spin")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.PublishRequest(spin, nats.NewInbox(), nil); err != nil {
		t.Fatal(err)
	}
	waitEvent(t, events, subjects.EventStarted)
	// Same connection, so the server delivers these two in order: the first
	// takes the queue place, the second finds the queue full.
	if err := nc.PublishRequest(spin, nats.NewInbox(), nil); err != nil {
		t.Fatal(err)
	}
	_, err = call(t, c, "add", `{"a":1}`)
	if fault.CodeOf(err) != fault.ResourceExhausted {
		t.Fatalf("got %v, want RESOURCE_EXHAUSTED while the slot and queue are full", err)
	}
	if !strings.Contains(fault.MessageOf(err), "busy") {
		t.Fatalf("message %q does not say the service is busy", fault.MessageOf(err))
	}
}

func TestEvents(t *testing.T) {
	nc, c := setup(t, loki.Config{})
	events := subscribeEvents(t, nc, "")
	if _, err := call(t, c, "add", `{"a":1}`); err != nil {
		t.Fatal(err)
	}
	started := waitEvent(t, events, subjects.EventStarted)
	done := waitEvent(t, events, subjects.EventCompleted)
	if started.GetExecutionId() == "" || started.GetExecutionId() != done.GetExecutionId() {
		t.Fatalf("execution ids: started %q, completed %q", started.GetExecutionId(), done.GetExecutionId())
	}
	if done.GetTool() != "add" || done.GetDuration() == nil || done.GetToolRevision() == 0 {
		t.Fatalf("completed event incomplete: %v", done)
	}
	if _, err := call(t, c, "boom", `{}`); err == nil {
		t.Fatal("boom succeeded")
	}
	waitEvent(t, events, subjects.EventStarted)
	failed := waitEvent(t, events, subjects.EventFailed)
	if failed.GetErrorCode() != string(fault.ScriptError) || !strings.Contains(failed.GetErrorMessage(), "kaboom") {
		t.Fatalf("failed event: got %v", failed)
	}
	// A call refused before it starts (a mistyped argument) still tells
	// automation it failed, with no started event: nothing ran.
	if _, err := call(t, c, "add", `{"a":"one"}`); fault.CodeOf(err) != fault.InvalidArgument {
		t.Fatalf("add with a string: got %v, want INVALID_ARGUMENT", err)
	}
	refused := waitEvent(t, events, subjects.EventFailed)
	if refused.GetTool() != "add" || refused.GetErrorCode() != string(fault.InvalidArgument) || refused.GetExecutionId() == "" {
		t.Fatalf("refused call's event: got %v", refused)
	}
}

func TestStreamEmit(t *testing.T) {
	_, c := setup(t, loki.Config{})
	var chunks []string
	res, err := c.Stream(context.Background(), "stream", []byte(`{"n":3}`), func(c loki.Chunk) error {
		if int(c.Seq) != len(chunks)+1 {
			t.Errorf("chunk seq: got %d, want %d", c.Seq, len(chunks)+1)
		}
		if c.ExecutionID == "" {
			t.Error("chunk has no execution id")
		}
		chunks = append(chunks, string(c.JSON))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`{"i":1}`, `{"i":2}`, `{"i":3}`}
	if strings.Join(chunks, ",") != strings.Join(want, ",") {
		t.Fatalf("chunks: got %v, want %v", chunks, want)
	}
	if string(res.JSON) != `"done"` {
		t.Fatalf("result: got %s, want \"done\"", res.JSON)
	}
	// A plain call gets only the result.
	if got, err := call(t, c, "stream", `{"n":2}`); err != nil || got != `"done"` {
		t.Fatalf("plain call: got %q, %v", got, err)
	}
}

func TestListGetCapabilities(t *testing.T) {
	nc, c := setup(t, loki.Config{})
	ctx := context.Background()
	tools, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools {
		names = append(names, tl.GetName())
	}
	if got := strings.Join(names, ","); got != "add,bomb,boom,spin,stream,work,wrong_type" {
		t.Fatalf("list: got %s", got)
	}
	add, err := c.Get(ctx, "add")
	if err != nil || add.GetSource() != "return a + b" || len(add.GetParams()) != 2 {
		t.Fatalf("get add: got %v, %v", add, err)
	}
	if _, err := c.Get(ctx, "nope"); fault.CodeOf(err) != fault.NotFound {
		t.Fatalf("get nope: got %v, want NOT_FOUND", err)
	}
	// JSON body form works too.
	msg, err := nc.Request(subjects.LokiToolsGet, []byte(`{"name":"add"}`), 5*time.Second)
	if err != nil || !strings.Contains(string(msg.Data), `"return a + b"`) {
		t.Fatalf("get by JSON: got %s, %v", msg.Data, err)
	}
	caps, err := c.Capabilities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if caps.GetService() != "loki" || len(caps.GetTools()) != len(tools) || caps.GetMaxConcurrency() == 0 {
		t.Fatalf("capabilities: got %v", caps)
	}
}

func TestNoServiceIsUnavailable(t *testing.T) {
	srv := natstest.Start(t)
	c := loki.NewClient(natstest.Connect(t, srv))
	if _, err := call(t, c, "add", `{"a":1}`); fault.CodeOf(err) != fault.Unavailable {
		t.Fatalf("got %v, want UNAVAILABLE", err)
	}
	_, err := c.Stream(context.Background(), "add", nil, func(loki.Chunk) error { return nil })
	if fault.CodeOf(err) != fault.Unavailable {
		t.Fatalf("stream: got %v, want UNAVAILABLE", err)
	}
}

// TestReplicasShareRegistryAndLoad: two replicas in one queue group; a tool
// registered after both started becomes callable, and calls reach both.
func TestReplicasShareRegistryAndLoad(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	a := startLoki(t, srv, loki.Config{})
	b := startLoki(t, srv, loki.Config{})
	registerTools(t, nc, testTools)
	for _, svc := range []*loki.Service{a, b} {
		waitFor(t, func() bool { _, ok := svc.Registry().Get("add"); return ok })
	}
	c := loki.NewClient(nc)
	for i := range 60 {
		if got, err := call(t, c, "add", `{"a":1,"b":2}`); err != nil || got != "3" {
			t.Fatalf("call %d: got %q, %v", i, got, err)
		}
	}
	stats := allStats(t, nc)
	if len(stats) != 2 {
		t.Fatalf("got %d replicas answering STATS, want 2", len(stats))
	}
	total := 0
	for _, st := range stats {
		n := execStats(t, st).NumRequests
		if n == 0 {
			t.Errorf("replica %s served no calls; queue group not shared", st.ID)
		}
		total += n
	}
	if total != 60 {
		t.Errorf("total exec requests: got %d, want 60", total)
	}

	// Updating the tool through the registry changes what both replicas run.
	registerTools(t, nc, strings.Replace(testTools, "return a + b", "return a * b", 1))
	for _, svc := range []*loki.Service{a, b} {
		waitFor(t, func() bool {
			tl, _ := svc.Registry().Get("add")
			return tl.Def.GetSource() == "return a * b"
		})
	}
	if got, err := call(t, c, "add", `{"a":3,"b":4}`); err != nil || got != "12" {
		t.Fatalf("after update: got %q, %v, want 12", got, err)
	}
	reg, err := loki.OpenRegistry(context.Background(), nc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Delete(context.Background(), "add"); err != nil {
		t.Fatal(err)
	}
	for _, svc := range []*loki.Service{a, b} {
		waitFor(t, func() bool { _, ok := svc.Registry().Get("add"); return !ok })
	}
	if _, err := call(t, c, "add", `{"a":1}`); fault.CodeOf(err) != fault.NotFound {
		t.Fatalf("after delete: got %v, want NOT_FOUND", err)
	}
	if err := reg.Delete(context.Background(), "add"); fault.CodeOf(err) != fault.NotFound {
		t.Fatalf("second delete: got %v, want NOT_FOUND", err)
	}
}

// TestStatsAreHonest: $SRV.STATS counts errors and measures the time scripts
// really run, though they run on workers after micro's handler returned.
func TestStatsAreHonest(t *testing.T) {
	nc, c := setup(t, loki.Config{})
	if _, err := call(t, c, "work", `{"ms":60}`); err != nil {
		t.Fatal(err)
	}
	if _, err := call(t, c, "boom", `{}`); err == nil {
		t.Fatal("boom succeeded")
	}
	st := execStats(t, allStats(t, nc)[0])
	if st.NumRequests != 2 || st.NumErrors != 1 {
		t.Fatalf("requests/errors: got %d/%d, want 2/1", st.NumRequests, st.NumErrors)
	}
	if !strings.HasPrefix(st.LastError, "SCRIPT_ERROR") {
		t.Fatalf("last error: got %q, want SCRIPT_ERROR...", st.LastError)
	}
	if st.ProcessingTime < 60*time.Millisecond {
		t.Fatalf("processing time %s is less than the 60ms the script ran", st.ProcessingTime)
	}
}

func TestRestartKeepsTools(t *testing.T) {
	dir := t.TempDir()
	srv := natstest.Start(t, func(c *natsrv.Config) { c.DataDir = dir })
	registerTools(t, natstest.Connect(t, srv), testTools)
	srv.Shutdown()

	srv = natstest.Start(t, func(c *natsrv.Config) { c.DataDir = dir })
	startLoki(t, srv, loki.Config{})
	c := loki.NewClient(natstest.Connect(t, srv))
	if got, err := call(t, c, "add", `{"a":2,"b":2}`); err != nil || got != "4" {
		t.Fatalf("after restart: got %q, %v, want 4", got, err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, cfg := range []loki.Config{{Concurrency: -1}, {Queue: -5}} {
		if _, err := loki.New(cfg, nil, quietLog()); err == nil {
			t.Errorf("New(%+v): got nil error", cfg)
		}
	}
}

// --- helpers ---

func subscribeEvents(t *testing.T, nc *nats.Conn, tool string) chan *nats.Msg {
	t.Helper()
	subj, err := subjects.ScriptEvents(tool, "")
	if err != nil {
		t.Fatal(err)
	}
	ch := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(subj, ch)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return ch
}

func waitEvent(t *testing.T, ch chan *nats.Msg, kind subjects.EventKind) *lokiv1.ScriptEvent {
	t.Helper()
	select {
	case m := <-ch:
		ev := &lokiv1.ScriptEvent{}
		if err := protojson.Unmarshal(m.Data, ev); err != nil {
			t.Fatalf("event %s is not protojson: %v", m.Data, err)
		}
		if ev.GetKind() != string(kind) || !strings.HasSuffix(m.Subject, "."+string(kind)) {
			t.Fatalf("event: got %s on %s, want kind %s", ev.GetKind(), m.Subject, kind)
		}
		return ev
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s event", kind)
	}
	return nil
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func allStats(t *testing.T, nc *nats.Conn) []micro.Stats {
	t.Helper()
	subj, err := micro.ControlSubject(micro.StatsVerb, subjects.LokiService, "")
	if err != nil {
		t.Fatal(err)
	}
	inbox := nats.NewInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subj, inbox, nil); err != nil {
		t.Fatal(err)
	}
	var out []micro.Stats
	for {
		m, err := sub.NextMsg(500 * time.Millisecond)
		if errors.Is(err, nats.ErrTimeout) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		var st micro.Stats
		if err := json.Unmarshal(m.Data, &st); err != nil {
			t.Fatal(err)
		}
		out = append(out, st)
	}
}

func execStats(t *testing.T, st micro.Stats) *micro.EndpointStats {
	t.Helper()
	for _, e := range st.Endpoints {
		if e.Name == "exec" {
			return e
		}
	}
	t.Fatalf("no exec endpoint in stats of %s", st.ID)
	return nil
}

func TestRegisterAndUnregisterOverNATS(t *testing.T) {
	_, c := setup(t, loki.Config{})
	ctx := context.Background()
	def := &lokiv1.Tool{Name: "triple", Returns: "integer", Source: "return x * 3",
		Params: []*lokiv1.Param{{Name: "x", Type: "integer", Required: true}}}
	stored, err := c.Register(ctx, def)
	if err != nil {
		t.Fatal(err)
	}
	if stored.GetRevision() == 0 {
		t.Fatal("registered tool has no revision")
	}
	// The registering replica serves it as soon as its watch delivers it.
	waitFor(t, func() bool { _, err := call(t, c, "triple", `{"x":2}`); return err == nil })
	if got, err := call(t, c, "triple", `{"x":5}`); err != nil || got != "15" {
		t.Fatalf("triple: got %q, %v", got, err)
	}
	bad := []struct {
		name string
		tool *lokiv1.Tool
		want string
	}{
		{name: "syntax error", tool: &lokiv1.Tool{Name: "broken", Source: "return +"}, want: `tool "broken"`},
		{name: "bad param type", tool: &lokiv1.Tool{Name: "bad", Source: "return 1", Params: []*lokiv1.Param{{Name: "a", Type: "float"}}}, want: `type "float"`},
		{name: "bad name", tool: &lokiv1.Tool{Name: "Bad Name", Source: "return 1"}, want: "name must match"},
		// This replica has no modules, so any grant names an unknown one.
		{name: "grant of no module", tool: &lokiv1.Tool{Name: "typo", Source: "return 1", Grants: []string{"hell.kv:x"}}, want: `no module "hell"`},
	}
	for _, tc := range bad {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Register(ctx, tc.tool)
			if fault.CodeOf(err) != fault.InvalidArgument || !strings.Contains(fault.MessageOf(err), tc.want) {
				t.Fatalf("got %v, want INVALID_ARGUMENT mentioning %q", err, tc.want)
			}
		})
	}
	if err := c.Unregister(ctx, "triple"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := call(t, c, "triple", `{"x":2}`); return fault.CodeOf(err) == fault.NotFound })
	if err := c.Unregister(ctx, "triple"); fault.CodeOf(err) != fault.NotFound {
		t.Fatalf("second unregister: got %v, want NOT_FOUND", err)
	}
}

// TestRegisterKeepsOwnedTools: a tool kept by an owner (a device's) is
// replaced only by its owner, and never replaces a tool of another owner,
// so a device cannot take over a user's tool nor a user a device's.
func TestRegisterKeepsOwnedTools(t *testing.T) {
	_, c := setup(t, loki.Config{})
	ctx := context.Background()
	devTool := func(src string) *lokiv1.Tool {
		return &lokiv1.Tool{Name: "demo_led", Source: src, Owner: "device:demo"}
	}
	if _, err := c.Register(ctx, devTool("return 1")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Register(ctx, devTool("return 2")); err != nil {
		t.Fatalf("owner updates its tool: %v", err)
	}
	tests := []struct {
		name string
		tool *lokiv1.Tool
	}{
		{"user replaces a device's tool", &lokiv1.Tool{Name: "demo_led", Source: "return 3"}},
		{"another device replaces it", &lokiv1.Tool{Name: "demo_led", Source: "return 3", Owner: "device:other"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := c.Register(ctx, tc.tool)
			if fault.CodeOf(err) != fault.AlreadyExists || !strings.Contains(fault.MessageOf(err), "kept by device:demo") {
				t.Fatalf("got %v, want ALREADY_EXISTS naming device:demo", err)
			}
		})
	}
	if _, err := c.Register(ctx, &lokiv1.Tool{Name: "mine", Source: "return 1"}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Register(ctx, &lokiv1.Tool{Name: "mine", Source: "return 9", Owner: "device:demo"})
	if fault.CodeOf(err) != fault.AlreadyExists {
		t.Fatalf("device takes a user's tool: got %v, want ALREADY_EXISTS", err)
	}
	waitFor(t, func() bool { got, err := call(t, c, "demo_led", `{}`); return err == nil && got == "2" })
	if got, err := call(t, c, "mine", `{}`); err != nil || got != "1" {
		t.Fatalf("user's tool after a refused takeover: got %q %v, want 1", got, err)
	}
}

// TestStreamCancelStopsScript: a streaming caller that gives up (its context
// ends, or its chunk consumer fails) stops the script, long before the tool's
// own timeout.
func TestStreamCancelStopsScript(t *testing.T) {
	nc, c := setup(t, loki.Config{})
	if _, err := c.Register(context.Background(), &lokiv1.Tool{Name: "emit_then_spin", Source: "emit(1) while true do end",
		Timeout: durationpb.New(time.Minute)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { _, err := c.Get(context.Background(), "emit_then_spin"); return err == nil })
	errConsumer := errors.New("consumer went away")
	tests := []struct {
		name     string
		onChunk  func(cancel context.CancelFunc) error
		wantCode fault.Code
		wantErr  error
	}{
		{name: "context cancelled", onChunk: func(cancel context.CancelFunc) error { cancel(); return nil }, wantCode: fault.DeadlineExceeded},
		{name: "consumer fails", onChunk: func(context.CancelFunc) error { return errConsumer }, wantErr: errConsumer},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			events := subscribeEvents(t, nc, "emit_then_spin")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			_, err := c.Stream(ctx, "emit_then_spin", nil, func(loki.Chunk) error { return tc.onChunk(cancel) })
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) || tc.wantErr == nil && fault.CodeOf(err) != tc.wantCode {
				t.Fatalf("stream: got %v, want %v%v", err, tc.wantErr, tc.wantCode)
			}
			waitEvent(t, events, subjects.EventStarted)
			ev := waitEvent(t, events, subjects.EventFailed)
			if !strings.Contains(ev.GetErrorMessage(), "cancel") {
				t.Fatalf("failed event: got %q, want a cancellation", ev.GetErrorMessage())
			}
		})
	}
}

// TestOpenRegistryKeepsBucketSettings: a replica starting against a bucket an
// operator configured (here: more history) does not reset it.
func TestOpenRegistryKeepsBucketSettings(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: subjects.ToolsBucket, History: 20}); err != nil {
		t.Fatal(err)
	}
	if _, err := loki.OpenRegistry(ctx, nc, quietLog()); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, subjects.ToolsBucket)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := st.History(); got != 20 {
		t.Fatalf("history: got %d, want the operator's 20", got)
	}
}

// TestOpenRegistryReportsReplicaMismatch: a replica configured for three
// replicas, starting against a bucket that has one, keeps the bucket as it
// is and says so at WARN, naming the bucket, have and want.
func TestOpenRegistryReportsReplicaMismatch(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	ctx := context.Background()
	if _, err := loki.OpenRegistry(ctx, nc, quietLog()); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	log := slog.New(slog.NewTextHandler(&logs, nil))
	if _, err := loki.OpenRegistryConfig(ctx, nc, log, loki.RegistryConfig{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"level=WARN", "bucket=" + subjects.ToolsBucket, "have=1", "want=3"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("log: got %q, want %q in it", logs.String(), want)
		}
	}
	js, _ := jetstream.New(nc)
	s, err := js.Stream(ctx, "KV_"+subjects.ToolsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.Replicas; got != 1 {
		t.Errorf("replicas: got %d, want the bucket's 1", got)
	}
}

// TestListPastOneMessage: a registry whose list is larger than one NATS
// message (a fleet's device tools) is listed whole by the client, in parts;
// a caller that did not ask for parts is told why instead of timing out.
func TestListPastOneMessage(t *testing.T) {
	nc, c := setup(t, loki.Config{})
	ctx := context.Background()
	big := strings.Repeat("d", 60<<10)
	const n = 24 // 24 × 60 KiB descriptions: past the 1 MiB payload limit
	for i := range n {
		if _, err := c.Register(ctx, &lokiv1.Tool{Name: fmt.Sprintf("t%02d", i), Description: big, Source: "return 1"}); err != nil {
			t.Fatal(err)
		}
	}
	mine := func(tools []*lokiv1.Tool) (names []string) {
		for _, tl := range tools {
			if tl.GetDescription() == big {
				names = append(names, tl.GetName())
			}
		}
		return names
	}
	waitFor(t, func() bool { tools, err := c.List(ctx); return err == nil && len(mine(tools)) == n })
	tools, err := c.List(ctx)
	got := mine(tools)
	if err != nil || len(got) != n || got[0] != "t00" || got[n-1] != fmt.Sprintf("t%02d", n-1) {
		t.Fatalf("list: got %v, %v; want t00..t%02d in name order", got, err, n-1)
	}
	m, err := nc.Request(subjects.LokiToolsList, nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "RESOURCE_EXHAUSTED" || !strings.Contains(m.Header.Get("Nats-Service-Error"), loki.HeaderStream) {
		t.Fatalf("a plain request: got code %q (%s), want RESOURCE_EXHAUSTED naming %s", code, m.Header.Get("Nats-Service-Error"), loki.HeaderStream)
	}
}

// TestResultsNeverVanish: a result, or an emit() chunk, larger than the
// server's message limit is RESOURCE_EXHAUSTED naming the size and the
// limit, at once, not a reply NATS drops and a caller that reports a
// successful script as DEADLINE_EXCEEDED.
func TestResultsNeverVanish(t *testing.T) {
	srv := natstest.Start(t, func(c *natsrv.Config) { c.MaxPayload = 16 << 10 })
	nc := natstest.Connect(t, srv)
	registerTools(t, nc, `
[[tools]]
name = "big"
returns = "string"
script = "return string.rep('x', 20000)"

[[tools]]
name = "big_chunk"
returns = "integer"
script = "emit(string.rep('x', 20000)) return 1"
`)
	startLoki(t, srv, loki.Config{})
	c := loki.NewClient(nc)
	_, err := call(t, c, "big", `{}`)
	if fault.CodeOf(err) != fault.ResourceExhausted || !strings.Contains(fault.MessageOf(err), "16384-byte") {
		t.Fatalf("big result: got %v, want RESOURCE_EXHAUSTED naming the 16384-byte limit", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.Stream(ctx, "big_chunk", []byte(`{}`), func(loki.Chunk) error { return nil })
	if fault.CodeOf(err) != fault.ResourceExhausted || !strings.Contains(fault.MessageOf(err), "16384-byte") {
		t.Fatalf("big chunk: got %v, want RESOURCE_EXHAUSTED naming the 16384-byte limit", err)
	}
}
