package gateway_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/metrics"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// linkEnv is a NATS server with authentication on, the identity service,
// a Loki replica, the device service and a gateway, each connected with
// its own role, as `loki up` runs them; and two device logins.
type linkEnv struct {
	a       *auth.Authority
	admin   *nats.Conn
	addr    string
	logins  map[string]auth.Credential
	devices *jotunheim.Client
	// metrics is the gateway's metrics registry.
	metrics *metrics.Registry
	// gatewayConn connects with the gateway role.
	gatewayConn func() *nats.Conn
	// stopGateway shuts the gateway down (as at cleanup) and waits.
	stopGateway func()
}

// linkWait bounds what a link test waits for: every login check is a
// bcrypt compare, slow under the race detector on a busy machine.
const linkWait = 45 * time.Second

// deviceCalls is the [jotunheim] device_calls of the link tests.
var deviceCalls = []string{"add", "cou*"}

func startLinkEnv(t *testing.T) *linkEnv {
	t.Helper()
	a, err := auth.Open(filepath.Join(t.TempDir(), "auth"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	e := &linkEnv{a: a, logins: map[string]auth.Credential{}}
	for _, id := range []string{"kitchen", "garage"} {
		if e.logins[id], err = a.AddDevice(id); err != nil {
			t.Fatal(err)
		}
	}
	nkeys, users, err := a.ServerUsers()
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.Start(t, func(c *natsrv.Config) { c.Nkeys, c.Users = nkeys, users })
	connect := func(role subjects.Role) *nats.Conn {
		t.Helper()
		opts, err := auth.ConnectOptions(auth.SeedFile(a.Dir(), string(role)))
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(srv.ClientURL(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	e.admin = connect(subjects.RoleAdmin)
	e.devices = jotunheim.NewClient(e.admin)
	natstest.RunService(t, auth.NewService(a, connect(subjects.RoleAuth), quietLog()))

	lnc := connect(subjects.RoleLoki)
	tools, err := loki.ParseTools("test.toml", []byte(testTools), fstest.MapFS{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := loki.OpenRegistry(context.Background(), lnc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(context.Background(), tools...); err != nil {
		t.Fatal(err)
	}
	svc, err := loki.New(loki.Config{Modules: []engine.Module{jotunheim.NewModule(lnc)}}, lnc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)

	jcfg := jotunheim.DefaultConfig()
	jcfg.DeviceCalls = deviceCalls
	dev, err := jotunheim.New(jcfg, connect(subjects.RoleJotunheim), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, dev)

	cfg := gateway.DefaultConfig()
	cfg.DeviceCalls = deviceCalls
	cfg.DeviceReverify = 200 * time.Millisecond
	cfg.DeviceMaxFrameBytes = 16 << 10
	cfg.Metrics = metrics.New()
	e.metrics = cfg.Metrics
	e.gatewayConn = func() *nats.Conn { return connect(subjects.RoleGateway) }
	e.addr, e.stopGateway = e.startGateway(t, cfg)
	return e
}

// startGateway starts a gateway with cfg on its own connection and
// returns its address and a stop function (also called at cleanup).
func (e *linkEnv) startGateway(t *testing.T, cfg gateway.Config) (addr string, stop func()) {
	t.Helper()
	gw, err := gateway.New(cfg, e.gatewayConn(), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx, lis) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	select {
	case <-gw.Ready():
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("gateway not ready")
	}
	return lis.Addr().String(), stop
}

// basic is the metadata value of a device login.
func basic(user, pass string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+pass))
}

// conn is a bare gRPC connection (not the device agent) that sends
// authorization on every call, to the gateway or to addr.
func (e *linkEnv) conn(t *testing.T, authorization string, addr ...string) *grpc.ClientConn {
	t.Helper()
	target := e.addr
	if len(addr) > 0 {
		target = addr[0]
	}
	cc, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			return invoker(metadata.AppendToOutgoingContext(ctx, "authorization", authorization), method, req, reply, cc, opts...)
		}),
		grpc.WithStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			return streamer(metadata.AppendToOutgoingContext(ctx, "authorization", authorization), desc, cc, method, opts...)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return cc
}

// deviceConn is conn with device id's login.
func (e *linkEnv) deviceConn(t *testing.T, id string) *grpc.ClientConn {
	t.Helper()
	l := e.logins[id]
	return e.conn(t, basic(l.Username, l.Password))
}

// linkDevice is a device on a DeviceLink stream.
type linkDevice struct {
	t      *testing.T
	stream grpc.BidiStreamingClient[jv1.LinkFrame, jv1.LinkFrame]
	cancel context.CancelFunc
	frames chan *jv1.LinkFrame
	// end receives the error that ended the stream (nil: the gateway
	// closed it with OK).
	end chan error
}

// link opens a DeviceLink on cc.
func link(t *testing.T, cc *grpc.ClientConn) *linkDevice {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := lokiv1.NewDeviceLinkClient(cc).Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	d := &linkDevice{t: t, stream: s, cancel: cancel, frames: make(chan *jv1.LinkFrame, 256), end: make(chan error, 1)}
	go func() {
		for {
			f, err := s.Recv()
			if err != nil {
				if errors.Is(err, io.EOF) {
					err = nil
				}
				d.end <- err
				close(d.frames)
				return
			}
			d.frames <- f
		}
	}()
	return d
}

func (d *linkDevice) send(topic string, payload []byte) {
	d.t.Helper()
	// A refused frame ends the stream; Send then reports io.EOF and the
	// status comes from Recv, which the test checks.
	_ = d.stream.Send(&jv1.LinkFrame{Topic: topic, Payload: payload})
}

func (d *linkDevice) sendMsg(topic string, m proto.Message) {
	d.t.Helper()
	b, err := wire.Encode(m)
	if err != nil {
		d.t.Fatal(err)
	}
	d.send(topic, b)
}

// next returns the next frame on topic, skipping others.
func (d *linkDevice) next(topic string) *jv1.LinkFrame {
	d.t.Helper()
	timeout := time.After(linkWait)
	for {
		select {
		case f, ok := <-d.frames:
			if !ok {
				d.t.Fatalf("link ended waiting for a frame on %q: %v", topic, <-d.end)
			}
			if f.GetTopic() == topic {
				return f
			}
		case <-timeout:
			d.t.Fatalf("no frame on %q", topic)
		}
	}
}

// ended waits for the stream to end and returns its status code.
func (d *linkDevice) ended() (codes.Code, string) {
	d.t.Helper()
	for {
		select {
		case _, ok := <-d.frames:
			if ok {
				continue
			}
			err := <-d.end
			return status.Code(err), status.Convert(err).Message()
		case <-time.After(linkWait):
			d.t.Fatal("link did not end")
		}
	}
}

func manifest(id string) *jv1.Manifest {
	return &jv1.Manifest{
		DeviceId: id, Name: "Bare gRPC board", Model: "bare-grpc", FirmwareVersion: "1.0.0",
		Protocol:  proto.Clone(wire.Version).(*jv1.ProtocolVersion),
		Sensors:   []*jv1.Sensor{{Name: "temperature", Kind: "temperature", Unit: "°C", ValueType: "number"}},
		Actuators: []*jv1.Actuator{{Name: "led", Kind: "led", Accepts: []string{"boolean"}}},
		Features:  []string{"commands"},
		Reason:    jv1.Manifest_REASON_CONNECT,
	}
}

// online connects device id over a link, announces it and checks the
// platform accepted it.
func (e *linkEnv) online(t *testing.T, id string) *linkDevice {
	t.Helper()
	d := link(t, e.deviceConn(t, id))
	d.send(subjects.DeviceStatus, []byte(subjects.PresenceOnline))
	d.sendMsg(subjects.DeviceManifest, manifest(id))
	n := &jv1.Negotiation{}
	if err := wire.Decode(d.next(subjects.DeviceNegotiation).GetPayload(), n, 0); err != nil {
		t.Fatal(err)
	}
	if !n.GetAccepted() {
		t.Fatalf("device %s refused: %s", id, n.GetReason())
	}
	return d
}

// waitOnline waits until the device service records device id's presence
// as want.
func (e *linkEnv) waitOnline(t *testing.T, id string, want bool) {
	t.Helper()
	err := eventually(linkWait, func() error {
		d, err := e.devices.Get(ctxT(t), id)
		if err != nil {
			return err
		}
		if d.GetOnline() != want {
			return fmt.Errorf("device %s online=%v, want %v", id, d.GetOnline(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestDeviceLinkNegotiatesAndAnswersCommands: a bare gRPC device logs in
// with its device login, announces itself and is accepted by the real
// device service; a command sent through devices.cmd reaches it as a frame
// and its result gets back; closing the stream marks it offline.
func TestDeviceLinkNegotiatesAndAnswersCommands(t *testing.T) {
	e := startLinkEnv(t)
	d := e.online(t, "kitchen")
	e.waitOnline(t, "kitchen", true)

	got := make(chan cmdReply, 1)
	go func() {
		data, err := e.devices.Command(ctxT(t), "kitchen", &jv1.Command{Name: "read", Entity: "temperature"})
		got <- cmdReply{data: string(data), err: err}
	}()
	cmd, err := wire.DecodeCommand(d.next(subjects.DeviceCmd).GetPayload(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if cmd.GetName() != "read" || cmd.GetEntity() != "temperature" {
		t.Fatalf("got command %v, want read temperature", cmd)
	}
	d.sendMsg(subjects.DeviceResult, &jv1.CommandResult{Id: cmd.GetId(), Ok: true, Data: structpb.NewNumberValue(21.5)})
	if r := <-got; r.err != nil || r.data != "21.5" {
		t.Fatalf("command through the link: got %q, %v, want 21.5", r.data, r.err)
	}

	// State on state/<entity> reaches the platform as MQTT state does.
	d.sendMsg(subjects.DeviceState+"/led", &jv1.State{Value: structpb.NewBoolValue(true)})

	// The device hangs up without saying offline: the gateway says it.
	d.cancel()
	e.waitOnline(t, "kitchen", false)
}

type cmdReply struct {
	data string
	err  error
}

// TestDeviceLinkOfflineSaidByTheDevice: a device that says offline and
// closes is offline, and the gateway adds nothing.
func TestDeviceLinkOfflineSaidByTheDevice(t *testing.T) {
	e := startLinkEnv(t)
	status := subscribe(t, e.admin, "kitchen", subjects.DeviceStatus)
	d := e.online(t, "kitchen")
	e.waitOnline(t, "kitchen", true)
	d.send(subjects.DeviceStatus, []byte(subjects.PresenceOffline))
	if err := d.stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if code, msg := d.ended(); code != codes.OK {
		t.Fatalf("got %v (%s), want OK", code, msg)
	}
	e.waitOnline(t, "kitchen", false)
	var seen []string
	for {
		m, err := status.NextMsg(500 * time.Millisecond)
		if err != nil {
			break
		}
		seen = append(seen, string(m.Data))
	}
	if strings.Join(seen, ",") != "online,offline" {
		t.Fatalf("status messages: got %q, want online then one offline", seen)
	}
}

func subscribe(t *testing.T, nc *nats.Conn, id, kind string) *nats.Subscription {
	t.Helper()
	subj, err := subjects.DeviceSubject(id, kind)
	if err != nil {
		t.Fatal(err)
	}
	sub, err := nc.SubscribeSync(subj)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

// TestDeviceLinkRefusals: what a device may not send ends its link with a
// code naming the mistake; what it may not log in with never opens one.
func TestDeviceLinkRefusals(t *testing.T) {
	e := startLinkEnv(t)
	kitchen := e.logins["kitchen"]
	tests := []struct {
		name     string
		auth     string
		topic    string
		payload  []byte
		wantCode codes.Code
		wantMsg  string
	}{
		{name: "wrong password", auth: basic("kitchen", kitchen.Password+"x"), wantCode: codes.Unauthenticated},
		{name: "unknown user", auth: basic("cellar", kitchen.Password), wantCode: codes.Unauthenticated},
		{name: "malformed Basic", auth: "Basic !!!", wantCode: codes.Unauthenticated, wantMsg: "base64"},
		{name: "no login", auth: "Bearer whatever", wantCode: codes.Unauthenticated, wantMsg: "device's login"},
		{name: "another device's topic", topic: "jotunheim/garage/status", payload: []byte("online"),
			wantCode: codes.PermissionDenied, wantMsg: "only as itself"},
		{name: "own absolute topic", topic: "jotunheim/kitchen/status", payload: []byte("online"),
			wantCode: codes.InvalidArgument, wantMsg: `send "status"`},
		{name: "downlink kind", topic: "cmd", payload: []byte("{}"), wantCode: codes.PermissionDenied, wantMsg: "platform to the device"},
		{name: "downlink entity kind", topic: "set/led", payload: []byte("ON"), wantCode: codes.PermissionDenied},
		{name: "unknown kind", topic: "telemetry", payload: []byte("{}"), wantCode: codes.InvalidArgument},
		{name: "bad entity", topic: "state/le d", payload: []byte("{}"), wantCode: codes.InvalidArgument},
		{name: "empty entity", topic: "state/", payload: []byte("{}"), wantCode: codes.InvalidArgument},
		{name: "wildcard", topic: "state/*", payload: []byte("{}"), wantCode: codes.InvalidArgument},
		{name: "dotted topic", topic: "status.x", payload: []byte("{}"), wantCode: codes.InvalidArgument},
		{name: "empty topic", topic: "", payload: []byte("{}"), wantCode: codes.InvalidArgument},
		{name: "oversized frame", topic: "event", payload: make([]byte, 16<<10+1), wantCode: codes.ResourceExhausted, wantMsg: "limit"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			authz := tc.auth
			if authz == "" {
				authz = basic(kitchen.Username, kitchen.Password)
			}
			d := link(t, e.conn(t, authz))
			if tc.auth == "" {
				d.send(tc.topic, tc.payload)
			}
			code, msg := d.ended()
			if code != tc.wantCode || !strings.Contains(msg, tc.wantMsg) {
				t.Fatalf("got %v (%s), want %v containing %q", code, msg, tc.wantCode, tc.wantMsg)
			}
		})
	}
}

// TestDeviceLinkHomeAssistantDropped: Home Assistant discovery, outside
// the device tree, is dropped and the link stays up.
func TestDeviceLinkHomeAssistantDropped(t *testing.T) {
	e := startLinkEnv(t)
	d := e.online(t, "kitchen")
	d.send("homeassistant/device/kitchen/config", []byte(`{}`))
	got := make(chan error, 1)
	go func() {
		_, err := e.devices.Command(ctxT(t), "kitchen", &jv1.Command{Name: "ping"})
		got <- err
	}()
	cmd, err := wire.DecodeCommand(d.next(subjects.DeviceCmd).GetPayload(), 0)
	if err != nil {
		t.Fatal(err)
	}
	d.sendMsg(subjects.DeviceResult, &jv1.CommandResult{Id: cmd.GetId(), Ok: true})
	if err := <-got; err != nil {
		t.Fatalf("ping after a Home Assistant frame: %v", err)
	}
}

// TestDeviceLinkSecondLinkReplacesFirst: a second link of the same device
// ends the first (as a duplicate MQTT client id does), the device stays
// online, and commands go to the new link.
func TestDeviceLinkSecondLinkReplacesFirst(t *testing.T) {
	e := startLinkEnv(t)
	first := e.online(t, "kitchen")
	second := e.online(t, "kitchen")
	if code, _ := first.ended(); code != codes.Aborted {
		t.Fatalf("first link: got %v, want Aborted", code)
	}
	e.waitOnline(t, "kitchen", true)
	got := make(chan error, 1)
	go func() {
		_, err := e.devices.Command(ctxT(t), "kitchen", &jv1.Command{Name: "ping"})
		got <- err
	}()
	cmd, err := wire.DecodeCommand(second.next(subjects.DeviceCmd).GetPayload(), 0)
	if err != nil {
		t.Fatal(err)
	}
	second.sendMsg(subjects.DeviceResult, &jv1.CommandResult{Id: cmd.GetId(), Ok: true})
	if err := <-got; err != nil {
		t.Fatal(err)
	}
	// The replaced link said nothing: the device is still online.
	time.Sleep(200 * time.Millisecond)
	e.waitOnline(t, "kitchen", true)
}

// TestDeviceLinkRevoked: revoking the device's login ends its live link
// within the re-verification period, and it cannot connect again.
func TestDeviceLinkRevoked(t *testing.T) {
	e := startLinkEnv(t)
	d := e.online(t, "kitchen")
	if err := e.a.Revoke("kitchen"); err != nil {
		t.Fatal(err)
	}
	if code, msg := d.ended(); code != codes.Unauthenticated {
		t.Fatalf("got %v (%s), want Unauthenticated", code, msg)
	}
	e.waitOnline(t, "kitchen", false)
	// The gateway may remember the login briefly; the link test re-checks.
	again := link(t, e.deviceConn(t, "kitchen"))
	if code, _ := again.ended(); code != codes.Unauthenticated {
		t.Fatalf("reconnect after revocation: got %v, want Unauthenticated", code)
	}
}

// TestDeviceAsLokiClient: a device principal runs the tools device_calls
// allows, is refused others naming the setting, and may not register tools
// or use the Devices service.
func TestDeviceAsLokiClient(t *testing.T) {
	e := startLinkEnv(t)
	c, err := client.Dial(e.addr, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cc := e.deviceConn(t, "kitchen")
	lc := lokiv1.NewLokiClient(cc)
	args, _ := structpb.NewStruct(map[string]any{"a": 2, "b": 3})
	res, err := lc.ExecuteScript(ctxT(t), &lokiv1.ExecuteScriptRequest{Tool: "add", Arguments: args})
	if err != nil || res.GetResult().GetNumberValue() != 5 {
		t.Fatalf("add: got %v, %v, want 5", res, err)
	}
	st, err := lc.StreamScriptExecution(ctxT(t), &lokiv1.StreamScriptExecutionRequest{Tool: "count"})
	if err != nil {
		t.Fatal(err)
	}
	var chunks int
	for {
		m, err := st.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("count: %v", err)
		}
		if m.GetChunk() != nil {
			chunks++
		}
	}
	if chunks != 3 {
		t.Fatalf("count: got %d chunks, want 3", chunks)
	}
	for _, call := range []struct {
		name     string
		call     func() error
		wantCode codes.Code
		wantMsg  string
	}{
		{"GetCapabilities", func() error { _, err := lc.GetCapabilities(ctxT(t), &lokiv1.GetCapabilitiesRequest{}); return err }, codes.OK, ""},
		{"ListScripts", func() error { _, err := lc.ListScripts(ctxT(t), &lokiv1.ListScriptsRequest{}); return err }, codes.OK, ""},
		{"GetChildrenStatus", func() error {
			_, err := lc.GetChildrenStatus(ctxT(t), &lokiv1.GetChildrenStatusRequest{})
			return err
		}, codes.OK, ""},
		{"ExecuteScript disallowed", func() error {
			_, err := lc.ExecuteScript(ctxT(t), &lokiv1.ExecuteScriptRequest{Tool: "double"})
			return err
		}, codes.PermissionDenied, "device_calls"},
		{"StreamScriptExecution disallowed", func() error {
			s, err := lc.StreamScriptExecution(ctxT(t), &lokiv1.StreamScriptExecutionRequest{Tool: "double"})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		}, codes.PermissionDenied, "device_calls"},
		{"Script_double disallowed", func() error {
			return cc.Invoke(ctxT(t), "/"+gateway.ScriptsService+"/Script_double", &structpb.Struct{}, &structpb.Struct{})
		}, codes.PermissionDenied, "device_calls"},
		{"RegisterScript", func() error {
			_, err := lc.RegisterScript(ctxT(t), &lokiv1.RegisterScriptRequest{Tool: &lokiv1.Tool{Name: "evil", Source: "return 1"}})
			return err
		}, codes.PermissionDenied, "not open to devices"},
		{"UnregisterScript", func() error {
			_, err := lc.UnregisterScript(ctxT(t), &lokiv1.UnregisterScriptRequest{Name: "add"})
			return err
		}, codes.PermissionDenied, "not open to devices"},
		{"GetScript", func() error { _, err := lc.GetScript(ctxT(t), &lokiv1.GetScriptRequest{Name: "add"}); return err }, codes.PermissionDenied, ""},
		{"WatchEvents", func() error {
			s, err := lc.WatchEvents(ctxT(t), &lokiv1.WatchEventsRequest{})
			if err == nil {
				_, err = s.Recv()
			}
			return err
		}, codes.PermissionDenied, ""},
		{"ListDevices", func() error {
			_, err := lokiv1.NewDevicesClient(cc).ListDevices(ctxT(t), &lokiv1.ListDevicesRequest{})
			return err
		}, codes.PermissionDenied, "not open to devices"},
		{"CommandDevice", func() error {
			_, err := lokiv1.NewDevicesClient(cc).CommandDevice(ctxT(t), &jv1.CommandRequest{})
			return err
		}, codes.PermissionDenied, "not open to devices"},
	} {
		t.Run(call.name, func(t *testing.T) {
			err := call.call()
			if got := status.Code(err); got != call.wantCode || !strings.Contains(status.Convert(err).Message(), call.wantMsg) {
				t.Fatalf("got %v (%v), want %v containing %q", got, err, call.wantCode, call.wantMsg)
			}
		})
	}
	// A controller, without a device login, is not limited by device_calls.
	if _, _, err := c.Execute(ctxT(t), "double", map[string]any{"i": 2}); err != nil {
		t.Fatalf("controller double: %v", err)
	}
	// And cannot open a device link.
	if code, _ := link(t, c.Conn()).ended(); code != codes.Unauthenticated {
		t.Fatalf("controller Connect: got %v, want Unauthenticated", code)
	}
}

// TestDeviceLinkGatewayStops: a gateway that shuts down ends its links
// with UNAVAILABLE (reconnect) and its devices go offline.
func TestDeviceLinkGatewayStops(t *testing.T) {
	e := startLinkEnv(t)
	d := e.online(t, "kitchen")
	e.waitOnline(t, "kitchen", true)
	e.stopGateway()
	if code, msg := d.ended(); code != codes.Unavailable {
		t.Fatalf("got %v (%s), want Unavailable", code, msg)
	}
	e.waitOnline(t, "kitchen", false)
}

// TestDeviceLinkNetworkCut: a connection that goes away without the
// device closing its stream (the network between them cut) marks the
// device offline, as an MQTT will does.
func TestDeviceLinkNetworkCut(t *testing.T) {
	e := startLinkEnv(t)
	cut := proxy(t, e.addr)
	l := e.logins["kitchen"]
	d := link(t, e.conn(t, basic(l.Username, l.Password), cut.addr))
	d.send(subjects.DeviceStatus, []byte(subjects.PresenceOnline))
	d.sendMsg(subjects.DeviceManifest, manifest("kitchen"))
	d.next(subjects.DeviceNegotiation)
	e.waitOnline(t, "kitchen", true)
	cut.cut()
	e.waitOnline(t, "kitchen", false)
}

// tcpProxy forwards connections to a gateway until cut.
type tcpProxy struct {
	addr   string
	mu     sync.Mutex
	conns  []net.Conn
	frozen atomic.Bool
}

func proxy(t *testing.T, to string) *tcpProxy {
	t.Helper()
	lis := listen(t)
	p := &tcpProxy{addr: lis.Addr().String()}
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("tcp", to)
			if err != nil {
				_ = c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, up)
			p.mu.Unlock()
			go p.pipe(up, c)
			go p.pipe(c, up)
		}
	}()
	t.Cleanup(p.cut)
	return p
}

// pipe copies from src to dst until either closes, dropping what it reads
// while the proxy is frozen.
func (p *tcpProxy) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.frozen.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// freeze makes the network silent without closing anything, as a device
// that loses power or a route does: no FIN, no RST, nothing gets through.
func (p *tcpProxy) freeze() { p.frozen.Store(true) }

// cut closes every forwarded connection at both ends.
func (p *tcpProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

// TestDeviceLinkSlowDevice: a device that stops reading keeps its link;
// what the platform sends meanwhile beyond the link's queue is dropped,
// not buffered, and the link works again once the device reads.
func TestDeviceLinkSlowDevice(t *testing.T) {
	e := startLinkEnv(t)
	d := e.online(t, "kitchen")
	subj, err := subjects.DeviceSubject("kitchen", subjects.DeviceCmd)
	if err != nil {
		t.Fatal(err)
	}
	// The test does not read d.frames while the platform sends far more
	// than the frames buffer, gRPC's flow-control windows and the link's
	// queue hold: the device stalls.
	const sent = 3000
	payload := []byte(`{"id":"x","name":"flood","args":{"pad":"` + strings.Repeat("p", 4<<10) + `"}}`)
	for range sent {
		if err := e.admin.Publish(subj, payload); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.admin.Flush(); err != nil {
		t.Fatal(err)
	}
	// The device reads again: the flood's survivors arrive, the rest was
	// dropped. Then the link still works: a command gets through. (Sent
	// only once the device has caught up, since the link would drop it
	// too while its queue is full.)
	received := 0
	timeout := time.After(linkWait)
drain:
	for {
		select {
		case f, ok := <-d.frames:
			if !ok {
				t.Fatalf("link ended: %v", <-d.end)
			}
			if _, err := wire.DecodeCommand(f.GetPayload(), 0); err != nil {
				t.Fatal(err)
			}
			received++
		case <-time.After(500 * time.Millisecond):
			break drain
		case <-timeout:
			t.Fatalf("the flood did not stop (%d frames read)", received)
		}
	}
	if received >= sent {
		t.Fatalf("the device got all %d frames: want some dropped", received)
	}
	if got := e.metric(t, "loki_gateway_device_link_frames_dropped_total", metrics.DropSlowDevice); got != 0 {
		t.Fatalf("dropped frames counted while the link is up: got %v, want them counted when it ends", got)
	}
	defer func() {
		d.cancel()
		d.ended()
		if err := eventually(linkWait, func() error {
			if got := e.metric(t, "loki_gateway_device_link_frames_dropped_total", metrics.DropSlowDevice); got != float64(sent-received) {
				return fmt.Errorf("loki_gateway_device_link_frames_dropped_total{reason=%q}: got %v, want %d", metrics.DropSlowDevice, got, sent-received)
			}
			return nil
		}); err != nil {
			t.Error(err)
		}
	}()
	got := make(chan error, 1)
	go func() {
		_, err := e.devices.Command(ctxT(t), "kitchen", &jv1.Command{Name: "ping"})
		got <- err
	}()
	for {
		select {
		case f, ok := <-d.frames:
			if !ok {
				t.Fatalf("link ended: %v", <-d.end)
			}
			c, err := wire.DecodeCommand(f.GetPayload(), 0)
			if err != nil {
				t.Fatal(err)
			}
			if c.GetName() != "ping" {
				t.Fatalf("after the flood: got command %q, want ping", c.GetName())
			}
			d.sendMsg(subjects.DeviceResult, &jv1.CommandResult{Id: c.GetId(), Ok: true})
			if err := <-got; err != nil {
				t.Fatalf("ping after the flood: %v", err)
			}
			return
		case <-timeout:
			t.Fatalf("no ping after the flood (%d frames read)", received)
		}
	}
}

// TestDeviceLinkCutMidCommand: a link cut while the device holds a command
// leaves the caller with DEADLINE_EXCEEDED once the command's time is up,
// the device offline; on its next link it is online and answers again.
func TestDeviceLinkCutMidCommand(t *testing.T) {
	e := startLinkEnv(t)
	d := e.online(t, "kitchen")
	got := make(chan error, 1)
	go func() {
		_, err := e.devices.Command(ctxT(t), "kitchen", &jv1.Command{Name: "ping", TimeoutMs: 2000})
		got <- err
	}()
	d.next(subjects.DeviceCmd)
	d.cancel()
	if err := <-got; fault.CodeOf(err) != fault.DeadlineExceeded {
		t.Fatalf("command cut off: got %v, want DEADLINE_EXCEEDED", err)
	}
	e.waitOnline(t, "kitchen", false)

	again := e.online(t, "kitchen")
	e.waitOnline(t, "kitchen", true)
	go func() {
		_, err := e.devices.Command(ctxT(t), "kitchen", &jv1.Command{Name: "ping"})
		got <- err
	}()
	cmd, err := wire.DecodeCommand(again.next(subjects.DeviceCmd).GetPayload(), 0)
	if err != nil {
		t.Fatal(err)
	}
	again.sendMsg(subjects.DeviceResult, &jv1.CommandResult{Id: cmd.GetId(), Ok: true})
	if err := <-got; err != nil {
		t.Fatalf("ping on the new link: %v", err)
	}
}

// metric returns the value of the gateway's metric name (a gauge, or a
// counter whose reason label is reason).
func (e *linkEnv) metric(t *testing.T, name, reason string) float64 {
	t.Helper()
	mfs, err := e.metrics.Prometheus().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if reason == "" {
				return m.GetGauge().GetValue()
			}
			if labels(m)["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestDeviceLinkMetrics: loki_gateway_device_links counts live links.
func TestDeviceLinkMetrics(t *testing.T) {
	e := startLinkEnv(t)
	if got := e.metric(t, "loki_gateway_device_links", ""); got != 0 {
		t.Fatalf("device links before any: got %v, want 0", got)
	}
	k := e.online(t, "kitchen")
	g := e.online(t, "garage")
	if got := e.metric(t, "loki_gateway_device_links", ""); got != 2 {
		t.Fatalf("device links with two devices: got %v, want 2", got)
	}
	k.cancel()
	k.ended()
	if err := eventually(linkWait, func() error {
		if got := e.metric(t, "loki_gateway_device_links", ""); got != 1 {
			return fmt.Errorf("device links after one left: got %v, want 1", got)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	g.cancel()
}

// TestDeviceLinkMovesBetweenGateways: a device that reconnects through
// another gateway (a load balancer in front of two) while its old link is
// still open has one link: the old gateway ends its link as replaced,
// publishes no offline for it, and commands reach the device through the
// new one.
func TestDeviceLinkMovesBetweenGateways(t *testing.T) {
	e := startLinkEnv(t)
	cfg := gateway.DefaultConfig()
	cfg.DeviceCalls = deviceCalls
	addrB, _ := e.startGateway(t, cfg)
	old := e.online(t, "kitchen")
	offline, err := e.devices.Watch(ctxT(t), "kitchen", "offline")
	if err != nil {
		t.Fatal(err)
	}
	l := e.logins["kitchen"]
	moved := link(t, e.conn(t, basic(l.Username, l.Password), addrB))
	moved.send(subjects.DeviceStatus, []byte(subjects.PresenceOnline))
	moved.sendMsg(subjects.DeviceManifest, manifest("kitchen"))
	moved.next(subjects.DeviceNegotiation)
	if code, msg := old.ended(); code != codes.Aborted {
		t.Fatalf("the old link: got %v %q, want Aborted (replaced)", code, msg)
	}
	got := make(chan error, 1)
	go func() {
		_, err := e.devices.Command(ctxT(t), "kitchen", &jv1.Command{Name: "ping"})
		got <- err
	}()
	c, err := wire.DecodeCommand(moved.next(subjects.DeviceCmd).GetPayload(), 0)
	if err != nil {
		t.Fatal(err)
	}
	moved.sendMsg(subjects.DeviceResult, &jv1.CommandResult{Id: c.GetId(), Ok: true})
	if err := <-got; err != nil {
		t.Fatalf("ping through the new gateway: %v", err)
	}
	select {
	case ev := <-offline:
		t.Fatalf("the replaced link marked the device offline: %v", ev)
	default:
	}
	e.waitOnline(t, "kitchen", true)
}

// TestDeviceLinkKeepaliveFailure: a device whose network goes silent (no
// close, nothing gets through) is noticed by the gateway's keepalive: its
// link ends and it goes offline, as an MQTT device's will fires when its
// keepalive runs out.
func TestDeviceLinkKeepaliveFailure(t *testing.T) {
	e := startLinkEnv(t)
	cfg := gateway.DefaultConfig()
	cfg.Keepalive, cfg.KeepaliveTimeout = time.Second, time.Second
	addr, _ := e.startGateway(t, cfg)
	silent := proxy(t, addr)
	l := e.logins["kitchen"]
	d := link(t, e.conn(t, basic(l.Username, l.Password), silent.addr))
	d.send(subjects.DeviceStatus, []byte(subjects.PresenceOnline))
	d.sendMsg(subjects.DeviceManifest, manifest("kitchen"))
	d.next(subjects.DeviceNegotiation)
	e.waitOnline(t, "kitchen", true)
	silent.freeze()
	e.waitOnline(t, "kitchen", false)
}
