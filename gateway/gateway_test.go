package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natstest"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

func TestExecute(t *testing.T) {
	e := start(t, gateway.Config{})
	c := e.dial(t)
	tests := []struct {
		name      string
		tool      string
		args      map[string]any
		want      any
		wantCode  codes.Code
		wantFault string
		wantMsg   []string
	}{
		{name: "add", tool: "add", args: map[string]any{"a": 1, "b": 2}, want: 3.0},
		{name: "default applies", tool: "add", args: map[string]any{"a": 1.5}, want: 1.5},
		{name: "integer result", tool: "double", args: map[string]any{"i": int64(1 << 40)}, want: float64(2 << 40)},
		{name: "unknown tool", tool: "nope", args: nil, wantCode: codes.NotFound, wantFault: "NOT_FOUND", wantMsg: []string{`"nope"`}},
		{name: "invalid tool name", tool: "No.Pe", wantCode: codes.InvalidArgument, wantFault: "INVALID_ARGUMENT"},
		{name: "missing param", tool: "add", args: map[string]any{"b": 2}, wantCode: codes.InvalidArgument, wantMsg: []string{`"a"`}},
		{name: "mistyped param", tool: "add", args: map[string]any{"a": "one"}, wantCode: codes.InvalidArgument, wantMsg: []string{`"a"`}},
		{name: "unknown param", tool: "add", args: map[string]any{"a": 1, "zz": 1}, wantCode: codes.InvalidArgument, wantMsg: []string{`"zz"`}},
		{name: "script error keeps its message", tool: "boom", wantCode: codes.FailedPrecondition, wantFault: "SCRIPT_ERROR", wantMsg: []string{"kaboom", "line 2"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, id, err := c.Execute(ctxT(t), tc.tool, tc.args)
			checkCode(t, err, tc.wantCode)
			if tc.wantCode != codes.OK {
				if tc.wantFault != "" && client.FaultCode(err) != tc.wantFault {
					t.Errorf("fault code: got %q, want %q", client.FaultCode(err), tc.wantFault)
				}
				for _, m := range tc.wantMsg {
					if !strings.Contains(status.Convert(err).Message(), m) {
						t.Errorf("message %q does not contain %s", status.Convert(err).Message(), m)
					}
				}
				return
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
			if id == "" {
				t.Error("no execution id")
			}
		})
	}
}

func TestExecuteTimeoutField(t *testing.T) {
	e := start(t, gateway.Config{})
	api := lokiv1.NewLokiClient(e.dial(t).Conn())
	events := subscribeEvents(t, e.nc, "spin", subjects.EventFailed)
	_, err := api.ExecuteScript(ctxT(t), &lokiv1.ExecuteScriptRequest{Tool: "spin", Timeout: durationpb.New(200 * time.Millisecond)})
	checkCode(t, err, codes.DeadlineExceeded)
	nextEvent(t, events, 10*time.Second)
	_, err = api.ExecuteScript(ctxT(t), &lokiv1.ExecuteScriptRequest{Tool: "spin", Timeout: durationpb.New(-time.Second)})
	checkCode(t, err, codes.InvalidArgument)
}

func TestRegistryRPCs(t *testing.T) {
	// Registering needs the admin role (TestRoles has who may).
	e := start(t, gateway.Config{AdminTokens: []string{"adm1n"}})
	c := e.dial(t, client.WithToken("adm1n"))
	ctx := ctxT(t)

	tools, err := c.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tl := range tools {
		names = append(names, tl.GetName())
	}
	if want := []string{"add", "boom", "count", "double", "echo_all", "emit_then_spin", "spin"}; !slices.Equal(names, want) {
		t.Fatalf("got %v, want %v", names, want)
	}
	add, err := c.Get(ctx, "add")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := add.GetSource(), "return a + b"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	_, err = c.Get(ctx, "nope")
	checkCode(t, err, codes.NotFound)

	caps, err := c.Capabilities(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := caps.GetService(), subjects.LokiService; got != want {
		t.Errorf("got %v, want %v", got, want)
	}
	if !slices.Contains(caps.GetTools(), "add") {
		t.Errorf("capabilities tools %v lack add", caps.GetTools())
	}

	regTests := []struct {
		name     string
		tool     *lokiv1.Tool
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "valid", tool: &lokiv1.Tool{Name: "mul", Returns: "number", Source: "return a * b",
			Params: []*lokiv1.Param{{Name: "a", Type: "number", Required: true}, {Name: "b", Type: "number", Required: true}}}},
		{name: "bad name", tool: &lokiv1.Tool{Name: "Mul", Source: "return 1"}, wantCode: codes.InvalidArgument, wantMsg: "name"},
		{name: "bad lua", tool: &lokiv1.Tool{Name: "bad", Source: "return +"}, wantCode: codes.InvalidArgument, wantMsg: "bad"},
		{name: "bad param type", tool: &lokiv1.Tool{Name: "bad", Source: "return 1", Params: []*lokiv1.Param{{Name: "a", Type: "float"}}},
			wantCode: codes.InvalidArgument, wantMsg: `"float"`},
		{name: "reserved param", tool: &lokiv1.Tool{Name: "bad", Source: "return 1", Params: []*lokiv1.Param{{Name: "end", Type: "string"}}},
			wantCode: codes.InvalidArgument, wantMsg: "reserved"},
		{name: "missing tool", tool: nil, wantCode: codes.InvalidArgument},
	}
	for _, tc := range regTests {
		t.Run("register/"+tc.name, func(t *testing.T) {
			got, err := c.Register(ctx, tc.tool)
			checkCode(t, err, tc.wantCode)
			if tc.wantCode != codes.OK {
				if !strings.Contains(status.Convert(err).Message(), tc.wantMsg) {
					t.Errorf("message %q lacks %q", status.Convert(err).Message(), tc.wantMsg)
				}
				return
			}
			if got.GetRevision() == 0 {
				t.Error("no revision")
			}
		})
	}
	// Registered through the gateway, callable through it.
	if err := eventually(5*time.Second, func() error {
		_, _, err := c.Execute(ctx, "mul", map[string]any{"a": 6, "b": 7})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.Unregister(ctx, "mul"); err != nil {
		t.Fatal(err)
	}
	checkCode(t, c.Unregister(ctx, "mul"), codes.NotFound)
	checkCode(t, c.Unregister(ctx, "No"), codes.InvalidArgument)
}

func TestStreamOrder(t *testing.T) {
	e := start(t, gateway.Config{})
	c := e.dial(t)
	var seqs []uint64
	var values []any
	res, id, err := c.Stream(ctxT(t), "count", map[string]any{"n": 5}, func(seq uint64, v any) error {
		seqs = append(seqs, seq)
		values = append(values, v)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []uint64{1, 2, 3, 4, 5}; !slices.Equal(seqs, want) {
		t.Errorf("got sequences %v, want %v", seqs, want)
	}
	for i, v := range values {
		if want := map[string]any{"i": float64(i + 1)}; !reflect.DeepEqual(v, want) {
			t.Errorf("chunk %d: got %v, want %v", i+1, v, want)
		}
	}
	if res != "done" || id == "" {
		t.Errorf("got result %v (id %q), want done with an id", res, id)
	}
	// Errors arrive as statuses on the stream.
	_, _, err = c.Stream(ctxT(t), "boom", nil, nil)
	checkCode(t, err, codes.FailedPrecondition)
}

func TestCancelStreamStopsScript(t *testing.T) {
	e := start(t, gateway.Config{})
	c := e.dial(t)
	failed := subscribeEvents(t, e.nc, "emit_then_spin", subjects.EventFailed)
	ctx, cancel := context.WithCancel(ctxT(t))
	defer cancel()
	errStop := errors.New("enough")
	_, _, err := c.Stream(ctx, "emit_then_spin", nil, func(seq uint64, v any) error {
		if v != "first" {
			t.Errorf("got chunk %v, want first", v)
		}
		return errStop // cancels the call mid-stream
	})
	if !errors.Is(err, errStop) {
		t.Fatalf("got %v, want %v", err, errStop)
	}
	// The tool's timeout is 20s; the script must stop long before.
	ev := nextEvent(t, failed, 5*time.Second)
	if ev.GetErrorCode() == "" {
		t.Errorf("failed event without an error code: %v", ev)
	}
}

func TestDeadlineStopsScript(t *testing.T) {
	e := start(t, gateway.Config{})
	c := e.dial(t)
	failed := subscribeEvents(t, e.nc, "spin", subjects.EventFailed)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, _, err := c.Execute(ctx, "spin", nil)
	checkCode(t, err, codes.DeadlineExceeded)
	ev := nextEvent(t, failed, 5*time.Second) // the tool's own timeout is 20s
	if got, want := ev.GetErrorCode(), string(fault.DeadlineExceeded); got != want {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestWatchEvents(t *testing.T) {
	e := start(t, gateway.Config{})
	c := e.dial(t)
	ctx := ctxT(t)
	tests := []struct {
		name, tool, kind string
		want             []string // tool/kind of the events expected, in order
	}{
		{name: "all of one tool", tool: "add", want: []string{"add/started", "add/completed"}},
		{name: "one kind", kind: "failed", want: []string{"boom/failed"}},
		{name: "tool and kind", tool: "boom", kind: "started", want: []string{"boom/started"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, err := c.WatchEvents(ctx, tc.tool, tc.kind)
			if err != nil {
				t.Fatal(err)
			}
			defer w.Close()
			if _, _, err := c.Execute(ctx, "add", map[string]any{"a": 1}); err != nil {
				t.Fatal(err)
			}
			_, _, _ = c.Execute(ctx, "boom", nil)
			var got []string
			for range tc.want {
				ev, err := w.Recv()
				if err != nil {
					t.Fatal(err)
				}
				if ev.GetExecutionId() == "" {
					t.Errorf("event without execution id: %v", ev)
				}
				got = append(got, ev.GetTool()+"/"+ev.GetKind())
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
	_, err := c.WatchEvents(ctx, "", "exploded")
	checkCode(t, err, codes.InvalidArgument)
}

func TestWatchEndsOnShutdown(t *testing.T) {
	e := start(t, gateway.Config{})
	c := e.dial(t)
	w, err := c.WatchEvents(ctxT(t), "", "")
	if err != nil {
		t.Fatal(err)
	}
	e.stop(t)
	_, err = w.Recv()
	checkCode(t, err, codes.Unavailable)
}

func TestChildrenStatus(t *testing.T) {
	e := start(t, gateway.Config{})
	c := e.dial(t)
	ctx := ctxT(t)
	if _, _, err := c.Execute(ctx, "add", map[string]any{"a": 1}); err != nil {
		t.Fatal(err)
	}
	_, _, _ = c.Execute(ctx, "boom", nil)
	for _, names := range [][]string{nil, {"loki"}} {
		t.Run(fmt.Sprint(names), func(t *testing.T) {
			list, err := c.ChildrenStatus(ctx, names...)
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 1 {
				t.Fatalf("got %d instances (%v), want 1", len(list), list)
			}
			st := list[0]
			if st.GetName() != "loki" || st.GetId() == "" || st.GetVersion() != loki.Version || st.GetStarted() == nil {
				t.Errorf("got %v, want loki with id, version and start time", st)
			}
			var exec *lokiv1.EndpointStatus
			for _, ep := range st.GetEndpoints() {
				if ep.GetName() == "exec" {
					exec = ep
				}
			}
			if exec == nil {
				t.Fatalf("no exec endpoint in %v", st.GetEndpoints())
			}
			if exec.GetRequests() < 2 || exec.GetErrors() < 1 || !strings.Contains(exec.GetLastError(), "kaboom") || exec.GetAverageLatency() == nil {
				t.Errorf("got exec endpoint %v, want >= 2 requests, >= 1 error, last error kaboom, a latency", exec)
			}
		})
	}
	list, err := c.ChildrenStatus(ctx, "fenrir")
	if err != nil || len(list) != 0 {
		t.Errorf("got %v, %v; want no instance of fenrir", list, err)
	}
	_, err = c.ChildrenStatus(ctx, "a.b")
	checkCode(t, err, codes.InvalidArgument)
}

func TestNoLokiIsUnavailable(t *testing.T) {
	srv := natstest.Start(t)
	e := &env{srv: srv, nc: natstest.Connect(t, srv), gwConn: natstest.Connect(t, srv)}
	e.startGateway(t, gateway.Config{})
	c := e.dial(t)
	_, _, err := c.Execute(ctxT(t), "add", map[string]any{"a": 1})
	checkCode(t, err, codes.Unavailable)
	_, err = c.List(ctxT(t))
	checkCode(t, err, codes.Unavailable)
}

func TestGRPCCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want codes.Code
	}{
		{name: "nil", err: nil, want: codes.OK},
		{name: "invalid argument", err: fault.New(fault.InvalidArgument, "x"), want: codes.InvalidArgument},
		{name: "not found", err: fault.New(fault.NotFound, "x"), want: codes.NotFound},
		{name: "already exists", err: fault.New(fault.AlreadyExists, "x"), want: codes.AlreadyExists},
		{name: "deadline", err: fault.New(fault.DeadlineExceeded, "x"), want: codes.DeadlineExceeded},
		{name: "resource exhausted", err: fault.New(fault.ResourceExhausted, "x"), want: codes.ResourceExhausted},
		{name: "permission denied", err: fault.New(fault.PermissionDenied, "x"), want: codes.PermissionDenied},
		{name: "failed precondition", err: fault.New(fault.FailedPrecondition, "x"), want: codes.FailedPrecondition},
		{name: "script error", err: fault.New(fault.ScriptError, "x"), want: codes.FailedPrecondition},
		{name: "unavailable", err: fault.New(fault.Unavailable, "x"), want: codes.Unavailable},
		{name: "unauthenticated", err: fault.New("UNAUTHENTICATED", "x"), want: codes.Unauthenticated},
		{name: "internal", err: fault.New(fault.Internal, "x"), want: codes.Internal},
		{name: "plain error", err: io.ErrUnexpectedEOF, want: codes.Internal},
		{name: "wrapped", err: fmt.Errorf("ctx: %w", fault.New(fault.NotFound, "x")), want: codes.NotFound},
		{name: "cancelled", err: fault.Wrap(fault.DeadlineExceeded, context.Canceled, "cancelled"), want: codes.Canceled},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := gateway.GRPCCode(tc.err); got != tc.want {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestServeTwice(t *testing.T) {
	e := start(t, gateway.Config{})
	gw, err := gateway.New(gateway.Config{}, e.gwConn, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // Serve returns at once
	lis := listen(t)
	if err := gw.Serve(ctx, lis); err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	if err := gw.Serve(ctx, listen(t)); !errors.Is(err, gateway.ErrServed) {
		t.Fatalf("got %v, want %v", err, gateway.ErrServed)
	}
}

// The client package spells the gateway's constants itself, so that
// controllers do not link the gateway; they must agree.
func TestClientConstants(t *testing.T) {
	if gateway.ErrorDomain != client.ErrorDomain {
		t.Errorf("got %q, want %q", client.ErrorDomain, gateway.ErrorDomain)
	}
}
