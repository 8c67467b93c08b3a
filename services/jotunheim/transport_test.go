package jotunheim_test

import (
	"context"
	"encoding/base64"
	"errors"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/natstest"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
)

// The conformance suite: the device-protocol tests run once per transport
// from one table, with a bare device that is not the agent: paho speaking
// MQTT 3.1.1 into the NATS server's listener, or a raw gRPC client on the
// gateway's device link (loki.v1.DeviceLink/Connect). The platform service
// must not be able to tell them apart, so every test asserts the same
// outcome on both.

// transport names one way a device reaches the platform.
type transport string

const (
	overMQTT transport = "mqtt"
	overGRPC transport = "grpc"
)

// transports is the table every conformance test runs against.
var transports = []transport{overMQTT, overGRPC}

// forTransports runs fn as a subtest per transport.
func forTransports(t *testing.T, fn func(t *testing.T, tr transport)) {
	for _, tr := range transports {
		t.Run(string(tr), func(t *testing.T) { fn(t, tr) })
	}
}

// setupOver is setup with devices dialling over tr.
func setupOver(t *testing.T, tr transport, cfg jotunheim.Config) (*env, *jotunheim.Service) {
	t.Helper()
	e, svc := setup(t, cfg)
	e.over(t, tr)
	return e, svc
}

// over makes e.dial use tr. For gRPC it starts what a device link needs:
// the identity service (which verifies device logins) and a gateway.
func (e *env) over(t *testing.T, tr transport) {
	t.Helper()
	e.tr = tr
	if tr != overGRPC {
		return
	}
	a, err := auth.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	e.authority = a
	e.logins = map[string]auth.Credential{}
	natstest.RunService(t, auth.NewService(a, natstest.Connect(t, e.srv), quietLog()))
	gw, err := gateway.New(gateway.DefaultConfig(), natstest.Connect(t, e.srv), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.gateway = lis.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("gateway: %v", err)
		}
	})
	select {
	case <-gw.Ready():
	case err := <-done:
		t.Fatalf("gateway: %v", err)
	case <-time.After(wait):
		t.Fatal("gateway not ready")
	}
}

// link is a bare device's connection, whatever carries it.
type link interface {
	// send publishes payload on the device's topic rel (below
	// jotunheim/<id>/) and waits until it is written.
	send(rel string, qos byte, retain bool, payload []byte) error
	// kill cuts the connection as a power cut would: no goodbye.
	kill()
	// close ends the connection cleanly.
	close()
}

// login is device id's MQTT username and password: the id and no
// password on a server without auth, or a device login from the identity
// service for the gateway.
func (e *env) login(t *testing.T, id string) (user, pass string) {
	t.Helper()
	if e.authority == nil {
		return id, ""
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	cred, ok := e.logins[id]
	if !ok {
		var err error
		if cred, err = e.authority.AddDevice(id); err != nil {
			t.Fatal(err)
		}
		e.logins[id] = cred
	}
	return cred.Username, cred.Password
}

// dialLink connects d over e.tr and subscribes it to its downlink topics.
func (e *env) dialLink(t *testing.T, d *device) link {
	t.Helper()
	if e.tr == overGRPC {
		return e.dialGRPC(t, d)
	}
	return e.dialMQTT(t, d)
}

// mqttLink is paho on the NATS server's MQTT listener.
type mqttLink struct {
	id   string
	c    mqtt.Client
	mu   sync.Mutex
	conn net.Conn
}

func (e *env) dialMQTT(t *testing.T, d *device) link {
	t.Helper()
	l := &mqttLink{id: d.id}
	user, pass := e.login(t, d.id)
	opts := mqtt.NewClientOptions().AddBroker(e.srv.MQTTURL()).SetClientID(d.id).SetUsername(user).SetPassword(pass).
		SetCleanSession(true).SetKeepAlive(30*time.Second).SetAutoReconnect(false).
		SetWill(topic(t, d.id, subjects.DeviceStatus), subjects.PresenceOffline, 1, true).
		SetCustomOpenConnectionFn(func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
			c, err := net.Dial("tcp", u.Host)
			l.mu.Lock()
			l.conn = c
			l.mu.Unlock()
			return c, err
		})
	l.c = mqtt.NewClient(opts)
	if tok := l.c.Connect(); !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatalf("device %s: connect: %v", d.id, tok.Error())
	}
	d.c = l.c
	for _, kind := range subjects.DeviceDownlinkKinds {
		if kind == subjects.DeviceSet {
			continue
		}
		tok := l.c.Subscribe(topic(t, d.id, kind), 0, func(_ mqtt.Client, msg mqtt.Message) {
			d.deliver(strings.TrimPrefix(msg.Topic(), subjects.DevicePrefix+"/"+d.id+"/"), msg.Payload())
		})
		if !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatalf("device %s: subscribe %s: %v", d.id, kind, tok.Error())
		}
	}
	return l
}

func (l *mqttLink) send(rel string, qos byte, retain bool, payload []byte) error {
	tok := l.c.Publish(subjects.DevicePrefix+"/"+l.id+"/"+rel, qos, retain, payload)
	if !tok.WaitTimeout(wait) {
		return errors.New("publish: no answer from the broker")
	}
	return tok.Error()
}

func (l *mqttLink) kill() {
	l.mu.Lock()
	defer l.mu.Unlock()
	_ = l.conn.Close()
}

func (l *mqttLink) close() { l.c.Disconnect(0) }

// grpcLink is a raw gRPC client on the gateway's device link.
type grpcLink struct {
	cc     *grpc.ClientConn
	cancel context.CancelFunc
	mu     sync.Mutex // serializes Send
	stream grpc.BidiStreamingClient[jv1.LinkFrame, jv1.LinkFrame]
	connMu sync.Mutex
	conn   net.Conn
}

func (e *env) dialGRPC(t *testing.T, d *device) link {
	t.Helper()
	l := &grpcLink{}
	user, pass := e.login(t, d.id)
	cc, err := grpc.NewClient(e.gateway, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
			l.connMu.Lock()
			l.conn = c
			l.connMu.Unlock()
			return c, err
		}))
	if err != nil {
		t.Fatal(err)
	}
	l.cc = cc
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization",
		"Basic "+base64.StdEncoding.EncodeToString([]byte(user+":"+pass)))
	if l.stream, err = lokiv1.NewDeviceLinkClient(cc).Connect(ctx); err != nil {
		t.Fatalf("device %s: connect: %v", d.id, err)
	}
	go func() {
		for {
			f, err := l.stream.Recv()
			if err != nil {
				return
			}
			d.deliver(f.GetTopic(), f.GetPayload())
		}
	}()
	return l
}

func (l *grpcLink) send(rel string, _ byte, retain bool, payload []byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.stream.Send(&jv1.LinkFrame{Topic: rel, Payload: payload, Retain: retain})
}

func (l *grpcLink) kill() {
	l.connMu.Lock()
	defer l.connMu.Unlock()
	_ = l.conn.Close()
}

func (l *grpcLink) close() {
	l.mu.Lock()
	_ = l.stream.CloseSend()
	l.mu.Unlock()
	l.cancel()
	_ = l.cc.Close()
}
