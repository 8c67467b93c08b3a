package jotunheim_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/natsrv"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// waitLimit bounds every wait for a condition; tests never assert timing.
const waitLimit = 20 * time.Second

// server is an in-process nats-server with its MQTT listener, restartable
// on the same ports and data dir.
type server struct {
	t    *testing.T
	cfg  natsrv.Config
	srv  *natsrv.Server
	down bool
}

func startServer(t *testing.T, opts ...func(*natsrv.Config)) *server {
	t.Helper()
	cfg := natsrv.Config{Name: "test", DataDir: t.TempDir(), Port: -1, MQTTPort: -1}
	for _, o := range opts {
		o(&cfg)
	}
	s := &server{t: t, cfg: cfg}
	s.start()
	// Later starts reuse the ports the first one picked.
	u, err := url.Parse(s.srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	s.cfg.Port, _ = strconv.Atoi(u.Port())
	_, mp, _ := net.SplitHostPort(s.srv.MQTTAddr())
	s.cfg.MQTTPort, _ = strconv.Atoi(mp)
	t.Cleanup(s.stop)
	return s
}

func (s *server) start() {
	s.t.Helper()
	srv, err := natsrv.Start(s.cfg, nil)
	if err != nil {
		s.t.Fatalf("start nats-server: %v", err)
	}
	s.srv, s.down = srv, false
}

func (s *server) stop() {
	if !s.down {
		s.srv.Shutdown()
		s.down = true
	}
}

// msg is one device message the platform saw.
type msg struct {
	kind, entity string
	data         []byte
}

// platform plays the platform's side with a plain NATS connection: it
// records every message of device id and answers manifests.
type platform struct {
	t  *testing.T
	nc *nats.Conn
	id string

	mu      sync.Mutex
	msgs    []msg
	changed chan struct{}
	answer  func(m *jv1.Manifest) *jv1.Negotiation
}

func newPlatform(t *testing.T, s *server, id string, opts ...nats.Option) *platform {
	t.Helper()
	opts = append([]nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(50 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(s.srv.ClientURL(), opts...)
	if err != nil {
		t.Fatalf("platform connect: %v", err)
	}
	t.Cleanup(nc.Close)
	p := &platform{t: t, nc: nc, id: id, changed: make(chan struct{}),
		answer: func(*jv1.Manifest) *jv1.Negotiation {
			return &jv1.Negotiation{Accepted: true, PlatformProtocol: wire.Version, Tools: []string{"x"}}
		}}
	if _, err := nc.Subscribe(subjects.DevicePrefix+"."+id+".>", p.record); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return p
}

func (p *platform) record(m *nats.Msg) {
	_, kind, entity, err := subjects.ParseDeviceSubject(m.Subject)
	if err != nil {
		p.t.Errorf("device message on %q: %v", m.Subject, err)
		return
	}
	p.mu.Lock()
	p.msgs = append(p.msgs, msg{kind: kind, entity: entity, data: m.Data})
	close(p.changed)
	p.changed = make(chan struct{})
	answer := p.answer
	p.mu.Unlock()
	if kind == subjects.DeviceManifest {
		man, err := wire.DecodeManifest(p.id, m.Data)
		if err != nil {
			p.t.Errorf("manifest: %v", err)
			return
		}
		if man.GetReason() != jv1.Manifest_REASON_REQUEST {
			if n := answer(man); n != nil { // nil: no answer at all
				p.publish(subjects.DeviceNegotiation, n)
			}
		}
	}
}

func (p *platform) setAnswer(f func(m *jv1.Manifest) *jv1.Negotiation) {
	p.mu.Lock()
	p.answer = f
	p.mu.Unlock()
}

func (p *platform) publish(kind string, m proto.Message) {
	subj, err := subjects.DeviceSubject(p.id, kind)
	if err != nil {
		p.t.Fatal(err)
	}
	b, err := wire.Encode(m)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.nc.Publish(subj, b); err != nil {
		p.t.Errorf("publish %s: %v", subj, err)
	}
}

func (p *platform) publishRaw(kind string, data []byte) {
	subj, err := subjects.DeviceSubject(p.id, kind)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.nc.Publish(subj, data); err != nil {
		p.t.Errorf("publish %s: %v", subj, err)
	}
}

// mark is the position after which wait looks.
func (p *platform) mark() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.msgs)
}

// wait returns the first message after from that match accepts, failing
// the test after waitLimit.
func (p *platform) wait(from int, what string, match func(msg) bool) msg {
	p.t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		p.mu.Lock()
		for i := from; i < len(p.msgs); i++ {
			if match(p.msgs[i]) {
				m := p.msgs[i]
				p.mu.Unlock()
				return m
			}
		}
		from = len(p.msgs)
		ch := p.changed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-deadline.C:
			p.t.Fatalf("no %s within %v", what, waitLimit)
		}
	}
}

func kindIs(kind string) func(msg) bool { return func(m msg) bool { return m.kind == kind } }

func (p *platform) waitStatus(from int, status string) {
	p.t.Helper()
	p.wait(from, "status "+status, func(m msg) bool { return m.kind == subjects.DeviceStatus && string(m.data) == status })
}

func (p *platform) waitManifest(from int, reason jv1.Manifest_Reason) *jv1.Manifest {
	p.t.Helper()
	var man *jv1.Manifest
	p.wait(from, "manifest "+reason.String(), func(m msg) bool {
		if m.kind != subjects.DeviceManifest {
			return false
		}
		x, err := wire.DecodeManifest(p.id, m.data)
		if err != nil || x.GetReason() != reason {
			return false
		}
		man = x
		return true
	})
	return man
}

// waitState waits for a state of entity whose value ok accepts.
func (p *platform) waitState(from int, entity string, ok func(v any) bool) *jv1.State {
	p.t.Helper()
	var st *jv1.State
	p.wait(from, "state of "+entity, func(m msg) bool {
		if m.kind != subjects.DeviceState || m.entity != entity {
			return false
		}
		s, err := wire.DecodeState(entity, m.data)
		if err != nil || !ok(s.GetValue().AsInterface()) {
			return false
		}
		st = s
		return true
	})
	return st
}

func anyValue(any) bool { return true }

// command sends a command and waits for its result.
func (p *platform) command(name, entity string, args map[string]any, priority int32) *jv1.CommandResult {
	p.t.Helper()
	id := p.send(name, entity, args, priority)
	return p.result(0, id)
}

func (p *platform) send(name, entity string, args map[string]any, priority int32) string {
	p.t.Helper()
	c := &jv1.Command{Id: nuid.Next(), Name: name, Entity: entity, Priority: priority}
	if args != nil {
		st, err := structpb.NewStruct(args)
		if err != nil {
			p.t.Fatal(err)
		}
		c.Args = st
	}
	p.publish(subjects.DeviceCmd, c)
	return c.Id
}

func (p *platform) result(from int, id string) *jv1.CommandResult {
	p.t.Helper()
	var r *jv1.CommandResult
	p.wait(from, "result of command "+id, func(m msg) bool {
		if m.kind != subjects.DeviceResult {
			return false
		}
		x, err := wire.DecodeResult(m.data)
		if err != nil || x.GetId() != id {
			return false
		}
		r = x
		return true
	})
	return r
}

// testConfig is a config for the sim board against s, with short backoffs.
func testConfig(t *testing.T, s *server, id string) jotunheim.Config {
	cfg := jotunheim.DefaultConfig()
	cfg.Device.ID = id
	cfg.Device.Model = "test"
	cfg.Transport.Broker = s.srv.MQTTURL()
	cfg.Board.Sim = true
	cfg.Resilience.BackoffBase = 20 * time.Millisecond
	cfg.Resilience.BackoffCap = 200 * time.Millisecond
	cfg.Resilience.NegotiateTimeout = 2 * time.Second
	cfg.Telemetry.StateFile = filepath.Join(t.TempDir(), "state.json")
	return cfg
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("JOTUNHEIM_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// running is an agent running in the background.
type running struct {
	agent *jotunheim.Agent
	stop  context.CancelFunc
	done  chan error
}

// runAgent starts an agent for cfg; the test's end stops it.
func runAgent(t *testing.T, cfg jotunheim.Config, opts ...jotunheim.Option) *running {
	t.Helper()
	a, err := jotunheim.New(cfg, testLogger(t), opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{agent: a, stop: cancel, done: make(chan error, 1)}
	go func() { r.done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := r.wait(t); err != nil && !errors.Is(err, jotunheim.ErrRefused) {
			t.Errorf("Run: %v", err)
		}
	})
	return r
}

// wait waits for Run to return (once; later calls return nil).
func (r *running) wait(t *testing.T) error {
	t.Helper()
	select {
	case err, ok := <-r.done:
		if ok {
			close(r.done)
		}
		return err
	case <-time.After(waitLimit):
		t.Fatalf("Run did not return within %v", waitLimit)
		return nil
	}
}

// eventually waits until cond holds.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitLimit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func containsName(names []string, n string) bool {
	for _, x := range names {
		if strings.EqualFold(x, n) {
			return true
		}
	}
	return false
}

// mqttClient connects a bare MQTT client to s.
func mqttClient(t *testing.T, s *server) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(s.srv.MQTTURL()).SetClientID("t" + nuid.Next()[:16]).
		SetCleanSession(true).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("mqtt connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// publishRetained publishes a retained message as any MQTT client could.
func publishRetained(t *testing.T, s *server, topic, payload string) {
	t.Helper()
	c := mqttClient(t, s)
	if tok := c.Publish(topic, 1, true, payload); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
	eventually(t, "retained "+topic+" = "+payload, func() bool { return retained(t, s, topic) == payload })
	c.Disconnect(0)
}

// retained returns the retained message of topic, as a new MQTT
// subscriber receives it.
func retained(t *testing.T, s *server, topic string) string {
	t.Helper()
	c := mqttClient(t, s)
	defer c.Disconnect(0)
	got := make(chan string, 1)
	tok := c.Subscribe(topic, 0, func(_ mqtt.Client, m mqtt.Message) {
		select {
		case got <- string(m.Payload()):
		default:
		}
	})
	if !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", topic, tok.Error())
	}
	select {
	case v := <-got:
		return v
	case <-time.After(waitLimit):
		t.Fatalf("no retained message on %s", topic)
		return ""
	}
}
