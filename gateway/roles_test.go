package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/natstest"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// roleRPC is one call through the gateway, as a holder of a token would
// make it.
type roleRPC struct {
	name  string // the RPC's method name
	admin bool   // only admin tokens may make it
	call  func(t *testing.T, e *env, c *client.Client) error
}

var toolSeq atomic.Int64

// newToolName returns a tool name no other call of the test uses.
func newToolName() string { return fmt.Sprintf("role_tool_%d", toolSeq.Add(1)) }

func roleRPCs() []roleRPC {
	return append(deviceRoleRPCs(), []roleRPC{
		{name: "GetCapabilities", call: func(t *testing.T, _ *env, c *client.Client) error {
			_, err := c.Capabilities(ctxT(t))
			return err
		}},
		{name: "GetChildrenStatus", call: func(t *testing.T, _ *env, c *client.Client) error {
			_, err := c.ChildrenStatus(ctxT(t))
			return err
		}},
		{name: "ListScripts", call: func(t *testing.T, _ *env, c *client.Client) error {
			_, err := c.List(ctxT(t))
			return err
		}},
		{name: "GetScript", call: func(t *testing.T, _ *env, c *client.Client) error {
			_, err := c.Get(ctxT(t), "add")
			return err
		}},
		{name: "ExecuteScript", call: func(t *testing.T, _ *env, c *client.Client) error {
			_, _, err := c.Execute(ctxT(t), "add", map[string]any{"a": 1})
			return err
		}},
		{name: "StreamScriptExecution", call: func(t *testing.T, _ *env, c *client.Client) error {
			_, _, err := c.Stream(ctxT(t), "count", nil, nil)
			return err
		}},
		{name: "WatchEvents", call: func(t *testing.T, _ *env, c *client.Client) error {
			w, err := c.WatchEvents(ctxT(t), "", "")
			if err == nil {
				w.Close()
			}
			return err
		}},
		{name: "Script_add", call: func(t *testing.T, _ *env, c *client.Client) error {
			// Script_add_Request's field 1 is `optional double a`, as
			// DoubleValue's is; the response's result is field 1 too.
			out := &wrapperspb.DoubleValue{}
			err := c.Conn().Invoke(ctxT(t), "/"+gateway.ScriptsService+"/Script_add", wrapperspb.Double(2), out)
			if err == nil && out.GetValue() != 2 {
				t.Errorf("got %v, want 2", out.GetValue())
			}
			return err
		}},
		{name: "StreamScript_count", call: func(t *testing.T, _ *env, c *client.Client) error {
			s, err := c.Conn().NewStream(ctxT(t), &grpc.StreamDesc{ServerStreams: true}, "/"+gateway.ScriptsService+"/StreamScript_count")
			if err != nil {
				return err
			}
			if err := s.SendMsg(&emptypb.Empty{}); err != nil {
				return err
			}
			if err := s.CloseSend(); err != nil {
				return err
			}
			for {
				if err := s.RecvMsg(&emptypb.Empty{}); errors.Is(err, io.EOF) {
					return nil
				} else if err != nil {
					return err
				}
			}
		}},
		{name: "RegisterScript", admin: true, call: func(t *testing.T, e *env, c *client.Client) error {
			name := newToolName()
			_, err := c.Register(ctxT(t), &lokiv1.Tool{Name: name, Returns: "number", Source: "return 1"})
			// A refused register leaves nothing behind.
			if got, want := registered(t, e, name), err == nil; got != want {
				t.Errorf("after register (%v): got tool registered %v, want %v", err, got, want)
			}
			return err
		}},
		{name: "UnregisterScript", admin: true, call: func(t *testing.T, e *env, c *client.Client) error {
			name := newToolName()
			// Registered over NATS, where the test's connection may.
			if _, err := loki.NewClient(e.nc).Register(ctxT(t), &lokiv1.Tool{Name: name, Returns: "number", Source: "return 1"}); err != nil {
				t.Fatal(err)
			}
			err := c.Unregister(ctxT(t), name)
			if got, want := registered(t, e, name), err != nil; got != want {
				t.Errorf("after unregister (%v): got tool registered %v, want %v", err, got, want)
			}
			return err
		}},
	}...)
}

// registered reports whether the registry bucket holds the tool name.
func registered(t *testing.T, e *env, name string) bool {
	t.Helper()
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctxT(t), subjects.ToolsBucket)
	if err != nil {
		t.Fatal(err)
	}
	_, err = kv.Get(ctxT(t), name)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false
	}
	if err != nil {
		t.Fatal(err)
	}
	return true
}

// TestRoles calls every RPC with each kind of token against gateways with
// and without tokens: client tokens (and every caller of a gateway without
// tokens) may do what the client role may do over NATS, admin tokens may
// also register and unregister tools.
func TestRoles(t *testing.T) {
	configs := map[string]gateway.Config{
		"no tokens":   {},
		"tokens":      {Tokens: []string{"s3cret", "other"}, AdminTokens: []string{"adm1n", "adm2n"}},
		"admin only":  {AdminTokens: []string{"adm1n"}},
		"client only": {Tokens: []string{"s3cret"}},
	}
	const (
		ok      = codes.OK
		denied  = codes.PermissionDenied
		unauthn = codes.Unauthenticated
	)
	tests := []struct {
		name            string
		config          string
		token           string
		wantRead        codes.Code // RPCs the client role may make
		wantAdmin       codes.Code // RPCs only the admin role may make
		wantDeniedAdmin string     // in the message of a refused admin RPC
	}{
		{name: "no tokens configured, no token", config: "no tokens", wantRead: ok, wantAdmin: denied, wantDeniedAdmin: "set admin_tokens"},
		{name: "no tokens configured, a token sent", config: "no tokens", token: "adm1n", wantRead: ok, wantAdmin: denied, wantDeniedAdmin: "set admin_tokens"},
		{name: "client token", config: "tokens", token: "s3cret", wantRead: ok, wantAdmin: denied, wantDeniedAdmin: "this is a client token"},
		{name: "second client token", config: "tokens", token: "other", wantRead: ok, wantAdmin: denied},
		{name: "admin token", config: "tokens", token: "adm1n", wantRead: ok, wantAdmin: ok},
		{name: "second admin token", config: "tokens", token: "adm2n", wantRead: ok, wantAdmin: ok},
		{name: "no token", config: "tokens", wantRead: unauthn, wantAdmin: unauthn},
		{name: "wrong token", config: "tokens", token: "adm1", wantRead: unauthn, wantAdmin: unauthn},
		{name: "admin tokens only, no token", config: "admin only", wantRead: unauthn, wantAdmin: unauthn},
		{name: "admin tokens only, admin token", config: "admin only", token: "adm1n", wantRead: ok, wantAdmin: ok},
		{name: "admin tokens only, another gateway's client token", config: "admin only", token: "s3cret", wantRead: unauthn, wantAdmin: unauthn},
		{name: "client tokens only, client token", config: "client only", token: "s3cret", wantRead: ok, wantAdmin: denied},
		{name: "client tokens only, another gateway's admin token", config: "client only", token: "adm1n", wantRead: unauthn, wantAdmin: unauthn},
	}
	envs := map[string]*env{}
	for name, cfg := range configs {
		envs[name] = startDevices(t, cfg)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := envs[tc.config]
			var opts []client.Option
			if tc.token != "" {
				opts = append(opts, client.WithToken(tc.token))
			}
			c := e.dial(t, opts...)
			for _, rpc := range roleRPCs() {
				t.Run(rpc.name, func(t *testing.T) {
					want := tc.wantRead
					if rpc.admin {
						want = tc.wantAdmin
					}
					err := rpc.call(t, e, c)
					if got := status.Code(err); got != want {
						t.Fatalf("got %v (%v), want %v", got, err, want)
					}
					if want != denied {
						return
					}
					msg := status.Convert(err).Message()
					for _, part := range []string{rpc.name + " needs an admin token", tc.wantDeniedAdmin} {
						if !strings.Contains(msg, part) {
							t.Errorf("got message %q, want it to contain %q", msg, part)
						}
					}
				})
			}
		})
	}
}

// TestRolesCoverEveryRPC keeps TestRoles honest: it must call every RPC of
// loki.v1.Loki and loki.v1.Devices.
func TestRolesCoverEveryRPC(t *testing.T) {
	called := map[string]bool{}
	for _, rpc := range roleRPCs() {
		called[rpc.name] = true
	}
	for _, sd := range []grpc.ServiceDesc{lokiv1.Loki_ServiceDesc, lokiv1.Devices_ServiceDesc} {
		for _, m := range sd.Methods {
			if !called[m.MethodName] {
				t.Errorf("TestRoles does not call %s", m.MethodName)
			}
		}
		for _, s := range sd.Streams {
			if !called[s.StreamName] {
				t.Errorf("TestRoles does not call %s", s.StreamName)
			}
		}
	}
}

// addrListener is a loopback listener that reports another address, as a
// listener on every interface would.
type addrListener struct {
	net.Listener
	addr net.Addr
}

func (l addrListener) Addr() net.Addr { return l.addr }

// logRecords keeps every record logged through it.
type logRecords struct {
	mu      sync.Mutex
	records []slog.Record
}

func (h *logRecords) Enabled(context.Context, slog.Level) bool { return true }
func (h *logRecords) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *logRecords) WithGroup(string) slog.Handler            { return h }
func (h *logRecords) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.records = append(h.records, r)
	return nil
}

// warnings returns the messages of the WARN records that contain substr.
func (h *logRecords) warnings(substr string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var msgs []string
	for _, r := range h.records {
		if r.Level == slog.LevelWarn && strings.Contains(r.Message, substr) {
			msgs = append(msgs, r.Message)
		}
	}
	return msgs
}

func TestWarnOpenGateway(t *testing.T) {
	srv := natstest.Start(t)
	tests := []struct {
		name     string
		cfg      gateway.Config
		ip       string
		wantWarn bool
	}{
		{name: "no tokens on every IPv4 interface", ip: "0.0.0.0", wantWarn: true},
		{name: "no tokens on every interface", ip: "::", wantWarn: true},
		{name: "no tokens on a LAN address", ip: "192.168.1.20", wantWarn: true},
		{name: "no tokens on loopback", ip: "127.0.0.1"},
		{name: "no tokens on IPv6 loopback", ip: "::1"},
		{name: "client tokens on every interface", cfg: gateway.Config{Tokens: []string{"s3cret"}}, ip: "0.0.0.0"},
		{name: "admin tokens on every interface", cfg: gateway.Config{AdminTokens: []string{"adm1n"}}, ip: "0.0.0.0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			logs := &logRecords{}
			gw, err := gateway.New(tc.cfg, natstest.Connect(t, srv), slog.New(logs))
			if err != nil {
				t.Fatal(err)
			}
			lis := addrListener{Listener: listen(t), addr: &net.TCPAddr{IP: net.ParseIP(tc.ip), Port: 50051}}
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			done := make(chan error, 1)
			go func() { done <- gw.Serve(ctx, lis) }()
			select {
			case <-gw.Ready():
			case err := <-done:
				t.Fatalf("Serve: %v", err)
			case <-time.After(10 * time.Second):
				t.Fatal("gateway not ready")
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Serve: %v", err)
			}
			want := 0
			if tc.wantWarn {
				want = 1
			}
			if got := logs.warnings("no tokens"); len(got) != want {
				t.Errorf("got warnings %q, want %d", got, want)
			}
		})
	}
}
