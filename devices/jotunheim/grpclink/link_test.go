package grpclink_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/jotunheim/grpclink"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// waitLimit bounds every wait; tests never assert timing.
const waitLimit = 20 * time.Second

var login = jotunheim.Login{Username: "d1", Password: "s3cret"}

// fakeGateway is a stand-in for the gateway's DeviceLink and Loki services on
// 127.0.0.1: it checks the device's Basic login, records the frames it
// gets and lets the test send frames down. Restartable on the same port.
type fakeGateway struct {
	lokiv1.UnimplementedDeviceLinkServer
	lokiv1.UnimplementedLokiServer
	t    *testing.T
	addr string
	srv  *grpc.Server
	auth string
	opts []grpc.ServerOption // TLS, for the TLS test

	mu     sync.Mutex
	frames []*jv1.LinkFrame
	ends   []error // how each stream ended, as the gateway saw it
	cur    grpc.BidiStreamingServer[jv1.LinkFrame, jv1.LinkFrame]
	cut    chan error // ends the current stream with this error
	change chan struct{}
	// onFrame answers a frame from the device (nil: no answer).
	onFrame func(f *jv1.LinkFrame) []*jv1.LinkFrame
}

func startGateway(t *testing.T, opts ...grpc.ServerOption) *fakeGateway {
	t.Helper()
	g := &fakeGateway{t: t, addr: "127.0.0.1:0", change: make(chan struct{}), opts: opts,
		auth: "Basic " + base64.StdEncoding.EncodeToString([]byte(login.Username+":"+login.Password))}
	g.start()
	t.Cleanup(g.stop)
	return g
}

func (g *fakeGateway) start() {
	g.t.Helper()
	var lis net.Listener
	var err error
	for i := 0; i < 100; i++ { // the old listener's port may take a moment to free
		if lis, err = net.Listen("tcp", g.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		g.t.Fatal(err)
	}
	g.addr = lis.Addr().String()
	g.srv = grpc.NewServer(g.opts...)
	lokiv1.RegisterDeviceLinkServer(g.srv, g)
	lokiv1.RegisterLokiServer(g.srv, g)
	go func() { _ = g.srv.Serve(lis) }()
}

func (g *fakeGateway) stop() { g.srv.Stop() }

func (g *fakeGateway) authorized(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("authorization"); len(v) != 1 || v[0] != g.auth {
		return status.Error(codes.Unauthenticated, "wrong device login")
	}
	return nil
}

func (g *fakeGateway) Connect(s grpc.BidiStreamingServer[jv1.LinkFrame, jv1.LinkFrame]) error {
	if err := g.authorized(s.Context()); err != nil {
		return err
	}
	cut := make(chan error, 1)
	g.mu.Lock()
	g.cur, g.cut = s, cut
	onFrame := g.onFrame
	g.notify()
	g.mu.Unlock()
	recvd := make(chan error, 1)
	go func() {
		for {
			f, err := s.Recv()
			if err != nil {
				recvd <- err
				return
			}
			g.mu.Lock()
			g.frames = append(g.frames, f)
			g.notify()
			g.mu.Unlock()
			if onFrame != nil {
				for _, out := range onFrame(f) {
					g.send(out)
				}
			}
		}
	}()
	var end, ret error
	select {
	case end = <-recvd:
	case ret = <-cut:
		end = ret
	}
	g.mu.Lock()
	g.ends = append(g.ends, end)
	g.cur = nil
	g.notify()
	g.mu.Unlock()
	return ret
}

func (g *fakeGateway) notify() { close(g.change); g.change = make(chan struct{}) }

// send sends f down the current stream.
func (g *fakeGateway) send(f *jv1.LinkFrame) {
	g.mu.Lock()
	s := g.cur
	g.mu.Unlock()
	if s == nil {
		g.t.Errorf("send %s: no stream", f.GetTopic())
		return
	}
	if err := s.Send(f); err != nil {
		g.t.Errorf("send %s: %v", f.GetTopic(), err)
	}
}

// until waits until cond (called under the lock) holds.
func (g *fakeGateway) until(what string, cond func() bool) {
	g.t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		g.mu.Lock()
		ok, ch := cond(), g.change
		g.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			g.t.Fatalf("%s: not within %v", what, waitLimit)
		}
	}
}

// frame waits for a frame on topic after from (an index into frames).
func (g *fakeGateway) frame(from int, topic string, match func(*jv1.LinkFrame) bool) *jv1.LinkFrame {
	g.t.Helper()
	var got *jv1.LinkFrame
	g.until("frame on "+topic, func() bool {
		for _, f := range g.frames[min(from, len(g.frames)):] {
			if f.GetTopic() == topic && (match == nil || match(f)) {
				got = f
				return true
			}
		}
		return false
	})
	return got
}

func (g *fakeGateway) mark() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.frames)
}

// The Loki service: add answers, boom is a script error, others are not
// found; stream emits 1 and 2 and then answers 3.
func (g *fakeGateway) ExecuteScript(ctx context.Context, r *lokiv1.ExecuteScriptRequest) (*lokiv1.ExecuteScriptResponse, error) {
	if err := g.authorized(ctx); err != nil {
		return nil, err
	}
	switch r.GetTool() {
	case "add":
		f := r.GetArguments().GetFields()
		return &lokiv1.ExecuteScriptResponse{ExecutionId: "x1", Result: structpb.NewNumberValue(f["a"].GetNumberValue() + f["b"].GetNumberValue())}, nil
	case "boom":
		return nil, withReason(codes.FailedPrecondition, fault.ScriptError, "boom.lua:1: boom")
	}
	return nil, withReason(codes.NotFound, fault.NotFound, "no tool "+r.GetTool())
}

func (g *fakeGateway) StreamScriptExecution(r *lokiv1.StreamScriptExecutionRequest, s grpc.ServerStreamingServer[lokiv1.StreamScriptExecutionResponse]) error {
	if err := g.authorized(s.Context()); err != nil {
		return err
	}
	for i := 1; i <= 2; i++ {
		if err := s.Send(&lokiv1.StreamScriptExecutionResponse{Event: &lokiv1.StreamScriptExecutionResponse_Chunk{
			Chunk: &lokiv1.EmitChunk{Sequence: uint64(i), Value: structpb.NewNumberValue(float64(i))}}}); err != nil {
			return err
		}
	}
	return s.Send(&lokiv1.StreamScriptExecutionResponse{Event: &lokiv1.StreamScriptExecutionResponse_Result{
		Result: &lokiv1.ExecuteScriptResponse{Result: structpb.NewNumberValue(3)}}})
}

func (g *fakeGateway) ListScripts(ctx context.Context, _ *lokiv1.ListScriptsRequest) (*lokiv1.ListScriptsResponse, error) {
	if err := g.authorized(ctx); err != nil {
		return nil, err
	}
	return &lokiv1.ListScriptsResponse{Tools: []*lokiv1.Tool{{Name: "add"}, {Name: "boom"}}}, nil
}

func (g *fakeGateway) GetCapabilities(ctx context.Context, _ *lokiv1.GetCapabilitiesRequest) (*lokiv1.GetCapabilitiesResponse, error) {
	if err := g.authorized(ctx); err != nil {
		return nil, err
	}
	return &lokiv1.GetCapabilitiesResponse{Capabilities: &lokiv1.Capabilities{Service: "loki", Tools: []string{"add", "boom"}}}, nil
}

// withReason is a status as the gateway makes them: a gRPC code and the
// fault code in an ErrorInfo.
func withReason(c codes.Code, reason fault.Code, msg string) error {
	st, err := status.New(c, msg).WithDetails(&errdetails.ErrorInfo{Reason: string(reason), Domain: "loki-iot.github.io"})
	if err != nil {
		panic(err)
	}
	return st.Err()
}

func newTransport(t *testing.T, g *fakeGateway, l jotunheim.Login) *grpclink.Transport {
	t.Helper()
	tr, err := grpclink.New(grpclink.Config{Gateway: g.addr, DeviceID: "d1", Login: l, Log: testLog()})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func testLog() *slog.Logger {
	if os.Getenv("JOTUNHEIM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func wait(t *testing.T, tok jotunheim.Token) error {
	t.Helper()
	select {
	case <-tok.Done():
		return tok.Error()
	case <-time.After(waitLimit):
		t.Fatalf("token not done within %v", waitLimit)
		return nil
	}
}

type received struct{ topic, payload string }

// Frames map to the device's tree both ways: relative topics on the link,
// full topics for the agent; what the agent did not subscribe to and what
// lies outside the tree never crosses.
func TestTopicsMapToTheDeviceTree(t *testing.T) {
	g := startGateway(t)
	tr := newTransport(t, g, login)
	conn, err := tr.Connect(context.Background(), jotunheim.Message{}, func(err error) { t.Errorf("lost: %v", err) })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect(time.Second)
	got := make(chan received, 16)
	if err := wait(t, conn.Subscribe(map[string]byte{"jotunheim/d1/cmd": 0, "jotunheim/d1/ota/+": 0, "jotunheim/d1/set/#": 0},
		func(topic string, payload []byte) { got <- received{topic, string(payload)} })); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ topic, payload string }{
		{"state/led", `{"entity":"led"}`},
		{"status", "online"},
	} {
		if err := wait(t, conn.Publish("jotunheim/d1/"+tc.topic, 1, true, []byte(tc.payload))); err != nil {
			t.Fatalf("publish %s: %v", tc.topic, err)
		}
		f := g.frame(0, tc.topic, nil)
		if string(f.GetPayload()) != tc.payload || !f.GetRetain() {
			t.Fatalf("frame %s: got %q retain=%v, want %q retained", tc.topic, f.GetPayload(), f.GetRetain(), tc.payload)
		}
	}
	// Home Assistant discovery lies outside the tree: skipped, not an error.
	if err := wait(t, conn.Publish("homeassistant/device/d1/config", 1, true, []byte("{}"))); err != nil {
		t.Fatalf("publish outside the tree: got %v, want it skipped", err)
	}
	for _, f := range []*jv1.LinkFrame{
		{Topic: "negotiation", Payload: []byte("not subscribed")},
		{Topic: "+/cmd", Payload: []byte("a wildcard")},
		{Topic: "cmd", Payload: []byte("c1")},
		{Topic: "ota/chunk", Payload: []byte("c2")},
		{Topic: "set/led", Payload: []byte("ON")},
	} {
		g.send(f)
	}
	for _, want := range []received{{"jotunheim/d1/cmd", "c1"}, {"jotunheim/d1/ota/chunk", "c2"}, {"jotunheim/d1/set/led", "ON"}} {
		select {
		case r := <-got:
			if r != want {
				t.Fatalf("got %v, want %v", r, want)
			}
		case <-time.After(waitLimit):
			t.Fatalf("no %v", want)
		}
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, f := range g.frames {
		if f.GetTopic() != "state/led" && f.GetTopic() != "status" {
			t.Errorf("unexpected frame %q", f.GetTopic())
		}
	}
}

// A link the gateway cuts is lost (onLost, once) and refuses publishes;
// a clean Disconnect half-closes the stream and is no loss.
func TestLostAndDisconnect(t *testing.T) {
	g := startGateway(t)
	tr := newTransport(t, g, login)
	lost := make(chan error, 2)
	conn, err := tr.Connect(context.Background(), jotunheim.Message{}, func(err error) { lost <- err })
	if err != nil {
		t.Fatal(err)
	}
	g.until("stream", func() bool { return g.cur != nil })
	g.mu.Lock()
	g.cut <- status.Error(codes.Unavailable, "gateway shutting down")
	g.mu.Unlock()
	select {
	case err := <-lost:
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("lost: got %v, want UNAVAILABLE", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("the loss was not reported")
	}
	if err := wait(t, conn.Publish("jotunheim/d1/status", 1, true, []byte("online"))); err == nil {
		t.Fatal("publish on a lost link: got nil, want an error")
	}
	conn.Disconnect(0)

	conn, err = tr.Connect(context.Background(), jotunheim.Message{}, func(err error) { lost <- err })
	if err != nil {
		t.Fatal(err)
	}
	from := g.mark()
	if err := wait(t, conn.Publish("jotunheim/d1/status", 1, true, []byte("offline"))); err != nil {
		t.Fatal(err)
	}
	conn.Disconnect(time.Second)
	g.frame(from, "status", func(f *jv1.LinkFrame) bool { return string(f.GetPayload()) == "offline" })
	g.until("the stream's end", func() bool { return len(g.ends) == 2 })
	g.mu.Lock()
	end := g.ends[1]
	g.mu.Unlock()
	if end != io.EOF {
		t.Fatalf("the gateway saw the stream end with %v, want EOF (a half-close)", end)
	}
	select {
	case err := <-lost:
		t.Fatalf("a clean disconnect was reported lost: %v", err)
	default:
	}
}

// A wrong login is the gateway's UNAUTHENTICATED, reported as the loss of
// the link (the agent retries with backoff).
func TestWrongLogin(t *testing.T) {
	g := startGateway(t)
	tr := newTransport(t, g, jotunheim.Login{Username: "d1", Password: "wrong"})
	lost := make(chan error, 1)
	conn, err := tr.Connect(context.Background(), jotunheim.Message{}, func(err error) { lost <- err })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect(0)
	select {
	case err := <-lost:
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("got %v, want UNAUTHENTICATED", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("no loss reported")
	}
}

// The login never crosses the network in clear: plaintext only to
// loopback.
func TestCleartextOnlyOnLoopback(t *testing.T) {
	for _, tc := range []struct {
		name, addr string
		wantErr    error
	}{
		{"ipv4 loopback", "127.0.0.1:50051", nil},
		{"ipv6 loopback", "[::1]:50051", nil},
		{"localhost", "localhost:50051", nil},
		{"lan", "192.168.1.10:50051", grpclink.ErrCleartext},
		{"name", "loki.local:50051", grpclink.ErrCleartext},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := grpclink.New(grpclink.Config{Gateway: tc.addr, DeviceID: "d1", Login: login})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		name, filter, topic string
		want                bool
	}{
		{"exact", "a/b", "a/b", true},
		{"longer topic", "a/b", "a/b/c", false},
		{"plus", "a/+/c", "a/b/c", true},
		{"plus is one level", "a/+", "a/b/c", false},
		{"hash", "a/#", "a/b/c", true},
		{"hash matches the parent", "a/#", "a", true},
		{"other", "a/b", "a/c", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := grpclink.Match(split(tc.filter), split(tc.topic)); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func split(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == '/' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return out
}

// The device's Loki client gets what a controller gets: results, and
// errors with the same codes.
func TestLokiClient(t *testing.T) {
	g := startGateway(t)
	tr := newTransport(t, g, login)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	loki := tr.Loki()
	if _, err := loki.Execute(ctx, "add", nil, 0); !errors.Is(err, &fault.Error{Code: fault.Unavailable}) {
		t.Fatalf("without a link: got %v, want UNAVAILABLE", err)
	}
	conn, err := tr.Connect(ctx, jotunheim.Message{}, func(error) {})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect(0)

	got, err := loki.Execute(ctx, "add", map[string]any{"a": 2, "b": 3}, time.Second)
	if err != nil || string(got) != "5" {
		t.Fatalf("add: got %s, %v, want 5", got, err)
	}
	for _, tc := range []struct {
		tool string
		want fault.Code
	}{
		{"boom", fault.ScriptError},
		{"missing", fault.NotFound},
	} {
		_, err := loki.Runner()(ctx, tc.tool, nil)
		if !errors.Is(err, &fault.Error{Code: tc.want}) {
			t.Fatalf("%s: got %v, want %s", tc.tool, err, tc.want)
		}
	}
	var chunks []string
	res, err := loki.Stream(ctx, "count", nil, func(c json.RawMessage) error {
		chunks = append(chunks, string(c))
		return nil
	})
	if err != nil || string(res) != "3" || len(chunks) != 2 || chunks[0] != "1" || chunks[1] != "2" {
		t.Fatalf("stream: got %v, %s, %v, want [1 2], 3", chunks, res, err)
	}
	tools, err := loki.ListTools(ctx)
	if err != nil || len(tools) != 2 {
		t.Fatalf("list: got %v, %v", tools, err)
	}
	caps, err := loki.Capabilities(ctx)
	if err != nil || caps.GetService() != "loki" {
		t.Fatalf("capabilities: got %v, %v", caps, err)
	}
}

// The real agent over a link: accepted, answers a command, says offline on
// a clean stop, and comes back after the gateway restarts.
func TestAgentOverLink(t *testing.T) {
	g := startGateway(t)
	g.onFrame = func(f *jv1.LinkFrame) []*jv1.LinkFrame {
		if f.GetTopic() != subjects.DeviceManifest {
			return nil
		}
		m, err := wire.DecodeManifest("d1", f.GetPayload())
		if err != nil || m.GetReason() == jv1.Manifest_REASON_REQUEST {
			return nil
		}
		b, err := wire.Encode(&jv1.Negotiation{Accepted: true, PlatformProtocol: wire.Version})
		if err != nil {
			t.Error(err)
			return nil
		}
		return []*jv1.LinkFrame{{Topic: subjects.DeviceNegotiation, Payload: b}}
	}
	cfg := jotunheim.DefaultConfig()
	cfg.Device.ID = "d1"
	cfg.Board.Sim = true
	cfg.Transport.Kind, cfg.Transport.Gateway, cfg.Transport.Password = jotunheim.TransportGRPC, g.addr, login.Password
	cfg.Resilience.BackoffBase, cfg.Resilience.BackoffCap = 20*time.Millisecond, 200*time.Millisecond
	cfg.Telemetry.StateFile = filepath.Join(t.TempDir(), "state.json")
	lc, err := grpclink.FromAgent(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	if lc.TLS != nil {
		t.Fatalf("a loopback gateway without ca_file: got TLS, want plaintext")
	}
	tr, err := grpclink.New(lc)
	if err != nil {
		t.Fatal(err)
	}
	a, err := jotunheim.New(cfg, testLog(), jotunheim.WithTransport(tr), jotunheim.WithToolRunner(tr.Loki().Runner()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() {
		stop()
		<-done
	}()
	g.frame(0, "status", func(f *jv1.LinkFrame) bool { return string(f.GetPayload()) == subjects.PresenceOnline })
	g.frame(0, "state/led", nil)

	command := func(name string, args map[string]any) *jv1.CommandResult {
		t.Helper()
		st, err := structpb.NewStruct(args)
		if err != nil {
			t.Fatal(err)
		}
		from := g.mark()
		b, err := wire.Encode(&jv1.Command{Id: name + "-1", Name: name, Args: st})
		if err != nil {
			t.Fatal(err)
		}
		g.send(&jv1.LinkFrame{Topic: subjects.DeviceCmd, Payload: b})
		var r *jv1.CommandResult
		g.frame(from, subjects.DeviceResult, func(f *jv1.LinkFrame) bool {
			x, err := wire.DecodeResult(f.GetPayload())
			if err == nil && x.GetId() == name+"-1" {
				r = x
				return true
			}
			return false
		})
		return r
	}
	if r := command(jotunheim.CmdPing, nil); !r.GetOk() {
		t.Fatalf("ping: got %v", r)
	}
	// loki.exec goes to the gateway's Loki service with the device's login.
	if r := command(jotunheim.CmdToolCall, map[string]any{"tool": "add", "args": map[string]any{"a": 1, "b": 2}}); !r.GetOk() || r.GetData().GetNumberValue() != 3 {
		t.Fatalf("loki.exec add: got %v", r)
	}
	if r := command(jotunheim.CmdToolCall, map[string]any{"tool": "boom"}); r.GetOk() || r.GetCode() != string(fault.ScriptError) {
		t.Fatalf("loki.exec boom: got %v, want %s", r, fault.ScriptError)
	}

	// The gateway restarts: the agent connects again and re-announces.
	g.stop()
	from := g.mark()
	g.start()
	g.frame(from, subjects.DeviceManifest, nil)
	g.frame(from, "status", func(f *jv1.LinkFrame) bool { return string(f.GetPayload()) == subjects.PresenceOnline })

	// A clean stop says offline on the link, then half-closes it.
	from = g.mark()
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	done <- nil
	g.frame(from, "status", func(f *jv1.LinkFrame) bool { return string(f.GetPayload()) == subjects.PresenceOffline })
}
