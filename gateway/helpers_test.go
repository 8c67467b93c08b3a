package gateway_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"testing"
	"testing/fstest"
	"time"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

const testTools = `
[[tools]]
name = "add"
description = "Adds a and b."
returns = "number"
script = "return a + b"
  [[tools.params]]
  name = "a"
  type = "number"
  required = true
  description = "the first addend"
  [[tools.params]]
  name = "b"
  type = "number"
  default = 0

[[tools]]
name = "double"
returns = "integer"
script = "return i * 2"
  [[tools.params]]
  name = "i"
  type = "integer"
  required = true

[[tools]]
name = "spin"
returns = "any"
timeout = "20s"
script = "while true do end"

[[tools]]
name = "emit_then_spin"
returns = "any"
timeout = "20s"
script = '''
emit("first")
while true do end
'''

[[tools]]
name = "boom"
returns = "string"
script = '''
local x = 1
error("kaboom")
'''

[[tools]]
name = "count"
returns = "string"
script = '''
for i = 1, n do emit({i = i}) end
return "done"
'''
  [[tools.params]]
  name = "n"
  type = "integer"
  default = 3

[[tools]]
name = "echo_all"
description = "Returns its arguments, with the names of those that were given."
returns = "object"
script = '''
local given = {}
for _, k in ipairs({"s", "n", "i", "b", "o", "arr", "x", "d"}) do
  if params[k] ~= nil then table.insert(given, k) end
end
return {s = s, n = n, i = i, b = b, o = o, arr = arr, x = x, d = d, given = given}
'''
  [[tools.params]]
  name = "s"
  type = "string"
  [[tools.params]]
  name = "n"
  type = "number"
  [[tools.params]]
  name = "i"
  type = "integer"
  [[tools.params]]
  name = "b"
  type = "boolean"
  [[tools.params]]
  name = "o"
  type = "object"
  [[tools.params]]
  name = "arr"
  type = "array"
  [[tools.params]]
  name = "x"
  type = "any"
  [[tools.params]]
  name = "d"
  type = "string"
  default = "dflt"
`

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// env is a NATS server, a Loki replica and a gateway, all real, on loopback.
type env struct {
	srv    *natsrv.Server
	nc     *nats.Conn // the test's own connection
	gwConn *nats.Conn // the gateway's connection
	addr   string
	cancel context.CancelFunc
	done   chan error
}

// start runs everything with the test tools until the test ends.
func start(t testing.TB, cfg gateway.Config) *env {
	t.Helper()
	return startEnv(t, cfg, false)
}

// startDevices is start with the device service (services/jotunheim) too,
// and the server's MQTT listener for devices.
func startDevices(t testing.TB, cfg gateway.Config) *env {
	t.Helper()
	return startEnv(t, cfg, true)
}

func startEnv(t testing.TB, cfg gateway.Config, devices bool) *env {
	t.Helper()
	srv := natstest.Start(t, func(c *natsrv.Config) {
		if devices {
			c.MQTTPort = -1
		}
	})
	nc := natstest.Connect(t, srv)
	tools, err := loki.ParseTools("test.toml", []byte(testTools), fstest.MapFS{})
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
	startLoki(t, srv)
	if devices {
		startJotunheim(t, srv)
	}
	e := &env{srv: srv, nc: nc, gwConn: natstest.Connect(t, srv)}
	e.startGateway(t, cfg)
	return e
}

func startLoki(t testing.TB, srv *natsrv.Server) {
	t.Helper()
	nc := natstest.Connect(t, srv)
	// The device module, for the tools the device service makes of devices.
	svc, err := loki.New(loki.Config{Modules: []engine.Module{jotunheim.NewModule(nc)}}, nc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)
}

func startJotunheim(t testing.TB, srv *natsrv.Server) {
	t.Helper()
	svc, err := jotunheim.New(jotunheim.DefaultConfig(), natstest.Connect(t, srv), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)
}

func listen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	return lis
}

func (e *env) startGateway(t testing.TB, cfg gateway.Config) {
	t.Helper()
	gw, err := gateway.New(cfg, e.gwConn, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	lis := listen(t)
	e.addr = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	e.cancel = cancel
	e.done = make(chan error, 1)
	go func() { e.done <- gw.Serve(ctx, lis) }()
	t.Cleanup(func() { e.stop(t) })
	select {
	case <-gw.Ready():
	case err := <-e.done:
		t.Fatalf("Serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gateway not ready")
	}
}

// stop shuts the gateway down and checks Serve's result; safe to repeat.
func (e *env) stop(t testing.TB) {
	t.Helper()
	if e.done == nil {
		return
	}
	e.cancel()
	select {
	case err := <-e.done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Error("Serve did not return after cancel")
	}
	e.done = nil
}

// dial returns a plaintext client closed at cleanup.
func (e *env) dial(t testing.TB, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.Dial(e.addr, append([]client.Option{client.WithInsecure()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// subscribeEvents watches loki.events.<tool>.<kind> directly on NATS.
func subscribeEvents(t testing.TB, nc *nats.Conn, tool string, kind subjects.EventKind) *nats.Subscription {
	t.Helper()
	subj, err := subjects.ScriptEvent(tool, kind)
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
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	return sub
}

// nextEvent waits up to within for the next event on sub.
func nextEvent(t testing.TB, sub *nats.Subscription, within time.Duration) *lokiv1.ScriptEvent {
	t.Helper()
	m, err := sub.NextMsg(within)
	if err != nil {
		t.Fatalf("no event on %s within %s: %v", sub.Subject, within, err)
	}
	ev := &lokiv1.ScriptEvent{}
	if err := protojson.Unmarshal(m.Data, ev); err != nil {
		t.Fatal(err)
	}
	return ev
}

// checkCode fails unless err has gRPC code want (codes.OK: err is nil).
func checkCode(t testing.TB, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got code %v (%v), want %v", got, err, want)
	}
}

var errTimeout = errors.New("timed out")

// eventually polls f every 20ms until it returns nil or within passes.
func eventually(within time.Duration, f func() error) error {
	deadline := time.Now().Add(within)
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.Join(errTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
