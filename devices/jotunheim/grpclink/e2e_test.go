package grpclink_test

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/jotunheim/grpclink"
	"github.com/loki-iot/loki/devices/streams"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	sjotunheim "github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/services/loki"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// realGateway runs the gateway on addr (127.0.0.1:0 picks a port) until
// stop, which waits for it to end.
func realGateway(t *testing.T, srv *natsrv.Server, cfg gateway.Config, addr string) (bound string, stop func()) {
	t.Helper()
	gw, err := gateway.New(cfg, natstest.Connect(t, srv), testLog())
	if err != nil {
		t.Fatal(err)
	}
	var lis net.Listener
	for i := 0; i < 100; i++ { // the previous gateway's port may take a moment to free
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx, lis) }()
	select {
	case <-gw.Ready():
	case err := <-done:
		t.Fatalf("gateway: %v", err)
	case <-time.After(waitLimit):
		t.Fatal("gateway not ready")
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("gateway: %v", err)
		}
	}
	t.Cleanup(stop)
	return lis.Addr().String(), stop
}

// stack is the platform a gRPC device meets, in process: NATS, the
// identity service, a Loki replica with the device module, the device
// service and the gateway; and the config of an agent "edge" with
// transport.kind = "grpc" and its device login.
type stack struct {
	srv         *natsrv.Server
	lc          *loki.Client
	jc          *sjotunheim.Client
	gcfg        gateway.Config
	addr        string
	stopGateway func()
	cfg         jotunheim.Config
	lcfg        grpclink.Config
	tr          *grpclink.Transport
}

func startStack(t *testing.T) *stack {
	t.Helper()
	st := &stack{srv: natstest.Start(t)}
	st.lc = lokitest.Start(t, st.srv, sjotunheim.NewModule)
	scfg := sjotunheim.DefaultConfig()
	scfg.Workers, scfg.Queue, scfg.DrainTimeout = 4, 64, 5*time.Second
	scfg.DeviceCalls = []string{"*"}
	svc, err := sjotunheim.New(scfg, natstest.Connect(t, st.srv), testLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)
	authority, err := auth.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = authority.Close() })
	natstest.RunService(t, auth.NewService(authority, natstest.Connect(t, st.srv), testLog()))
	cred, err := authority.AddDevice("edge")
	if err != nil {
		t.Fatal(err)
	}
	st.gcfg = gateway.DefaultConfig()
	st.gcfg.DeviceCalls = []string{"*"}
	st.addr, st.stopGateway = realGateway(t, st.srv, st.gcfg, "127.0.0.1:0")

	cfg := jotunheim.DefaultConfig()
	cfg.Device.ID, cfg.Board.Sim = "edge", true
	cfg.Transport.Kind, cfg.Transport.Gateway = jotunheim.TransportGRPC, st.addr
	cfg.Transport.Username, cfg.Transport.Password = cred.Username, cred.Password
	cfg.Resilience.BackoffBase, cfg.Resilience.BackoffCap = 20*time.Millisecond, 200*time.Millisecond
	cfg.Telemetry.StateFile = filepath.Join(t.TempDir(), "state.json")
	st.cfg = cfg
	if st.lcfg, err = grpclink.FromAgent(cfg, testLog()); err != nil {
		t.Fatal(err)
	}
	if st.tr, err = grpclink.New(st.lcfg); err != nil {
		t.Fatal(err)
	}
	st.jc = sjotunheim.NewClient(natstest.Connect(t, st.srv))
	return st
}

// runAgent runs the agent over the stack's gateway; stop stops it and
// returns Run's error (the test's end stops it too).
func (st *stack) runAgent(t *testing.T, opts ...jotunheim.Option) (agent *jotunheim.Agent, stop func() error) {
	t.Helper()
	opts = append([]jotunheim.Option{jotunheim.WithTransport(st.tr), jotunheim.WithToolRunner(st.tr.Loki().Runner())}, opts...)
	agent, err := jotunheim.New(st.cfg, testLog(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.Run(ctx) }()
	var once sync.Once
	var runErr error
	stop = func() error {
		once.Do(func() {
			cancel()
			runErr = <-done
		})
		return runErr
	}
	t.Cleanup(func() { _ = stop() })
	return agent, stop
}

// online reports whether the device service sees edge online (with its
// tools) or offline.
func (st *stack) online(want bool) func() bool {
	return func() bool {
		c, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		d, err := st.jc.Get(c, "edge")
		return err == nil && d.GetOnline() == want && (!want || len(d.GetTools()) > 0)
	}
}

// The agent over gRPC, end to end, on the stack above. It is accepted,
// its sensor's tool answers through Loki, a command round-trips, loki.exec
// and the device's own Loki client reach Loki through the gateway's Loki
// service, a wrong login gets no link, it comes back after the gateway
// restarts, and it goes offline when it stops.
func TestAgentThroughTheGateway(t *testing.T) {
	st := startStack(t)
	agent, stopAgent := st.runAgent(t)
	lc, jc, lcfg, tr, online := st.lc, st.jc, st.lcfg, st.tr, st.online
	eventually(t, "edge online with its tools", online(true))
	// Its sensor is a Loki tool: the call crosses Loki, the device service,
	// the gateway and the link.
	got, err := lokitest.Call(t, lc, "edge_temperature", "{}")
	if _, ok := got.(float64); err != nil || !ok {
		t.Fatalf("edge_temperature: got %v, %v, want a number", got, err)
	}
	cctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	out, err := jc.Command(cctx, "edge", &jv1.Command{Name: jotunheim.CmdPing})
	if err != nil || !json.Valid(out) {
		t.Fatalf("ping: got %s, %v", out, err)
	}
	// loki.exec: the device calls Loki through the gateway with its own
	// login; the tool reads this very device.
	args, err := structpb.NewStruct(map[string]any{"tool": "edge_temperature", "timeout_ms": 10000})
	if err != nil {
		t.Fatal(err)
	}
	out, err = jc.Command(cctx, "edge", &jv1.Command{Name: jotunheim.CmdToolCall, Args: args})
	var temp float64
	if err != nil || json.Unmarshal(out, &temp) != nil {
		t.Fatalf("loki.exec edge_temperature: got %s, %v, want a number", out, err)
	}
	args, _ = structpb.NewStruct(map[string]any{"tool": "no_such_tool"})
	if _, err = jc.Command(cctx, "edge", &jv1.Command{Name: jotunheim.CmdToolCall, Args: args}); err == nil {
		t.Fatal("loki.exec no_such_tool: got nil, want NOT_FOUND")
	} else {
		lokitest.WantCode(t, err, "NOT_FOUND")
	}

	// The device's own Loki client, with its login, over the link.
	loki := tr.Loki()
	caps, err := loki.Capabilities(cctx)
	if err != nil || len(caps.GetTools()) == 0 {
		t.Fatalf("capabilities: got %v, %v", caps, err)
	}
	tools, err := loki.ListTools(cctx)
	if err != nil || len(tools) == 0 {
		t.Fatalf("list tools: got %v, %v", tools, err)
	}
	if _, err := loki.ChildrenStatus(cctx); err != nil {
		t.Fatalf("children status: %v", err)
	}
	res, err := loki.Stream(cctx, "edge_humidity", nil, func(json.RawMessage) error { return nil })
	if err != nil || !json.Valid(res) {
		t.Fatalf("stream edge_humidity: got %s, %v", res, err)
	}
	if _, err := loki.Execute(cctx, "no_such_tool", nil, time.Second); fault.CodeOf(err) != fault.NotFound {
		t.Fatalf("execute no_such_tool: got %v, want NOT_FOUND", err)
	}

	// A wrong login gets no link: the gateway answers UNAUTHENTICATED.
	bad := lcfg
	bad.Login.Password = "wrong"
	btr, err := grpclink.New(bad)
	if err != nil {
		t.Fatal(err)
	}
	lost := make(chan error, 1)
	bconn, err := btr.Connect(cctx, jotunheim.Message{}, func(err error) { lost <- err })
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-lost:
		if status.Code(err) != codes.Unauthenticated {
			t.Fatalf("wrong login: got %v, want UNAUTHENTICATED", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("wrong login: the link was not refused")
	}
	bconn.Disconnect(0)

	// The gateway restarts: the device is offline meanwhile, then back.
	connects := agent.Stats().Connects
	st.stopGateway()
	eventually(t, "edge offline while the gateway is down", online(false))
	realGateway(t, st.srv, st.gcfg, st.addr)
	eventually(t, "the agent reconnects", func() bool { return agent.Stats().Connects > connects && agent.Stats().Online })
	eventually(t, "edge online again", online(true))

	// A clean stop: offline at once.
	if err := stopAgent(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	eventually(t, "edge offline after the agent stopped", online(false))
}

// A device stream over the link: a controller's reader on NATS gets the
// source's bytes, exactly as from an MQTT device.
func TestStreamThroughTheGateway(t *testing.T) {
	st := startStack(t)
	reg := streams.NewRegistry()
	pattern, err := streams.NewPattern("pattern", 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Register(pattern); err != nil {
		t.Fatal(err)
	}
	st.runAgent(t, jotunheim.WithStreams(reg))
	eventually(t, "edge online with its tools", st.online(true))
	cctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	sr, err := sjotunheim.OpenStream(cctx, natstest.Connect(t, st.srv), "edge", "pattern", 20_500, sjotunheim.StreamOptions{Window: 4})
	if err != nil {
		t.Fatal(err)
	}
	var data []byte
	for {
		c, err := sr.Next(cctx)
		if err != nil {
			t.Fatalf("stream after %d bytes: %v", len(data), err)
		}
		data = append(data, c.GetData()...)
		if c.GetEof() {
			break
		}
	}
	sr.Close()
	if len(data) != 20_500 || data[20_499] != streams.PatternByte(20_499) {
		t.Fatalf("stream: got %d bytes, want 20500 of the pattern", len(data))
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitLimit)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
