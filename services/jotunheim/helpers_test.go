package jotunheim_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// wait bounds every wait for something a test expects to happen.
const wait = 20 * time.Second

var (
	ctxT     = lokitest.Context
	wantCode = lokitest.WantCode
)

// testConfig is the default config with small pools.
func testConfig() jotunheim.Config {
	cfg := jotunheim.DefaultConfig()
	cfg.Workers, cfg.Queue = 4, 64
	cfg.DrainTimeout = 5 * time.Second
	cfg.CommandTimeout = 5 * time.Second
	return cfg
}

// env is a server with JetStream and MQTT, a Loki replica hosting the
// jotunheim module, and device service replicas. Devices dial over tr
// (MQTT unless a conformance test chose gRPC: transport_test.go).
type env struct {
	srv  *natsrv.Server
	loki *loki.Client
	jc   *jotunheim.Client

	tr        transport
	gateway   string // the gateway's address, for gRPC devices
	authority *auth.Authority
	mu        sync.Mutex
	logins    map[string]auth.Credential
}

func setup(t *testing.T, cfg jotunheim.Config) (*env, *jotunheim.Service) {
	t.Helper()
	e := setupBare(t)
	svc, _ := e.replica(t, cfg)
	return e, svc
}

// setupBare is setup without a device service replica.
func setupBare(t *testing.T) *env {
	t.Helper()
	srv := natstest.Start(t, func(c *natsrv.Config) { c.MQTTPort = -1 })
	lc := lokitest.Start(t, srv, jotunheim.NewModule)
	return &env{srv: srv, loki: lc, jc: jotunheim.NewClient(natstest.Connect(t, srv))}
}

// replica starts a device service replica on its own connection; stop
// stops it.
func (e *env) replica(t *testing.T, cfg jotunheim.Config) (svc *jotunheim.Service, stop func()) {
	t.Helper()
	svc, err := jotunheim.New(cfg, natstest.Connect(t, e.srv), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	return svc, natstest.RunService(t, svc)
}

// eventually polls cond until it holds, failing the test after wait.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not after %v", what, wait)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// device is a bare client speaking the protocol by hand, as a firmware
// would: no code of the agent's. It reaches the platform over its env's
// transport (transport_test.go).
type device struct {
	t  *testing.T
	id string
	l  link
	// c is the MQTT client of a device dialled over MQTT, for tests that
	// are about MQTT (nil over gRPC).
	c mqtt.Client

	neg     chan *jv1.Negotiation
	cmds    chan *jv1.Command
	caps    chan *jv1.CapsRequest
	results chan *jv1.ToolResult
}

// dial connects device id (over MQTT: client id and username id, will
// offline), subscribes it to its downlink topics and publishes online.
func (e *env) dial(t *testing.T, id string) *device {
	t.Helper()
	d := &device{t: t, id: id, neg: make(chan *jv1.Negotiation, 16), cmds: make(chan *jv1.Command, 64),
		caps: make(chan *jv1.CapsRequest, 16), results: make(chan *jv1.ToolResult, 16)}
	d.l = e.dialLink(t, d)
	t.Cleanup(d.l.close)
	d.publishRaw(subjects.DeviceStatus, 1, true, []byte(subjects.PresenceOnline))
	return d
}

// deliver decodes a message from the platform on the device's topic rel
// (below jotunheim/<id>/) and queues it for the test.
func (d *device) deliver(rel string, payload []byte) {
	var m interface{ ProtoReflect() protoreflect.Message }
	var put func()
	switch rel {
	case subjects.DeviceNegotiation:
		n := &jv1.Negotiation{}
		m, put = n, func() { d.neg <- n }
	case subjects.DeviceCapsGet:
		c := &jv1.CapsRequest{}
		m, put = c, func() { d.caps <- c }
	case subjects.DeviceCmd:
		c := &jv1.Command{}
		m, put = c, func() { d.cmds <- c }
	case subjects.DeviceCallResult:
		r := &jv1.ToolResult{}
		m, put = r, func() { d.results <- r }
	default:
		return // OTA and streams: tests that use them subscribe themselves
	}
	if err := wire.Decode(payload, m, 0); err != nil {
		d.t.Errorf("device %s: %s: %v", d.id, rel, err)
		return
	}
	put()
}

func topic(t *testing.T, id, kind string) string {
	t.Helper()
	s, err := subjects.DeviceTopic(id, kind)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// publishRaw publishes payload on the device's topic of kind.
func (d *device) publishRaw(kind string, qos byte, retain bool, payload []byte) {
	d.t.Helper()
	if err := d.l.send(kind, qos, retain, payload); err != nil {
		d.t.Fatalf("device %s: publish %s: %v", d.id, kind, err)
	}
}

// publish publishes m's protojson on the device's topic of kind.
func (d *device) publish(kind string, m proto.Message) {
	d.t.Helper()
	b, err := wire.Encode(m)
	if err != nil {
		d.t.Fatal(err)
	}
	d.publishRaw(kind, 1, false, b)
}

// negotiation waits for the platform's next Negotiation.
func (d *device) negotiation() *jv1.Negotiation {
	d.t.Helper()
	select {
	case n := <-d.neg:
		return n
	case <-time.After(wait):
		d.t.Fatalf("device %s: no negotiation after %v", d.id, wait)
		return nil
	}
}

// announce publishes m as the manifest and returns the negotiation.
func (d *device) announce(m *jv1.Manifest) *jv1.Negotiation {
	d.t.Helper()
	d.publish(subjects.DeviceManifest, m)
	return d.negotiation()
}

// answer answers every command with what reply returns (nothing when it
// returns nil), until the test ends.
func (d *device) answer(reply func(*jv1.Command) *jv1.CommandResult) {
	ctx, cancel := context.WithCancel(context.Background())
	d.t.Cleanup(cancel)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case c := <-d.cmds:
				if r := reply(c); r != nil {
					r.Id = c.GetId()
					b, _ := wire.Encode(r)
					_ = d.l.send(subjects.DeviceResult, 1, false, b)
				}
			}
		}
	}()
}

// kill closes the device's network connection without a goodbye (no
// MQTT DISCONNECT, no end of the gRPC stream), as a power cut or a crash
// would: the server publishes its will, or the gateway its offline.
func (d *device) kill() { d.l.kill() }

// demoManifest is a device with a temperature sensor and an LED.
func demoManifest(id string) *jv1.Manifest {
	return &jv1.Manifest{
		DeviceId: id, Name: "Demo board", Model: "bare-paho", FirmwareVersion: "1.0.0",
		Protocol:  proto.Clone(wire.Version).(*jv1.ProtocolVersion),
		Sensors:   []*jv1.Sensor{{Name: "temperature", Kind: "temperature", Unit: "°C", ValueType: "number"}},
		Actuators: []*jv1.Actuator{{Name: "led", Kind: "led", Accepts: []string{"boolean"}}},
		Features:  []string{"commands", "tool_calls"},
		Reason:    jv1.Manifest_REASON_CONNECT,
	}
}

// demoFirmware answers read temperature with 21.5, set led with
// {"on": value}, ping with {"uptime": 1}, and anything else NOT_FOUND.
func demoFirmware(c *jv1.Command) *jv1.CommandResult {
	switch {
	case c.GetName() == "read" && c.GetEntity() == "temperature":
		return &jv1.CommandResult{Ok: true, Data: structpb.NewNumberValue(21.5)}
	case c.GetName() == "set" && c.GetEntity() == "led":
		v := c.GetArgs().GetFields()["value"]
		if _, ok := v.GetKind().(*structpb.Value_BoolValue); !ok {
			return &jv1.CommandResult{Code: "INVALID_ARGUMENT", Message: "led: value must be a boolean"}
		}
		st, _ := structpb.NewStruct(map[string]any{"on": v.GetBoolValue()})
		return &jv1.CommandResult{Ok: true, Data: structpb.NewStructValue(st)}
	case c.GetName() == "ping":
		st, _ := structpb.NewStruct(map[string]any{"uptime": 1})
		return &jv1.CommandResult{Ok: true, Data: structpb.NewStructValue(st)}
	}
	return &jv1.CommandResult{Code: "NOT_FOUND", Message: "no command " + c.GetName() + " for entity " + c.GetEntity()}
}

// connectDemo connects device id with the demo manifest and firmware and
// checks it is accepted.
func (e *env) connectDemo(t *testing.T, id string) *device {
	t.Helper()
	d := e.dial(t, id)
	d.answer(demoFirmware)
	n := d.announce(demoManifest(id))
	if !n.GetAccepted() {
		t.Fatalf("device %s refused: %s", id, n.GetReason())
	}
	e.waitTools(t, n.GetTools()...)
	return d
}

// userTool registers a user's tool.
func (e *env) userTool(t *testing.T, tool *lokiv1.Tool) {
	t.Helper()
	if _, err := e.loki.Register(ctxT(t), tool); err != nil {
		t.Fatalf("register %s: %v", tool.GetName(), err)
	}
	e.waitTools(t, tool.GetName())
}

// waitTools waits until Loki serves every tool of names. Loki's register
// answers once its replica's revision reaches the write, but the revision
// moves before the tool is installed (services/loki Registry.apply), so a
// call right after can still find no tool.
func (e *env) waitTools(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		eventually(t, "tool "+n+" served", func() bool {
			_, err := e.loki.Get(ctxT(t), n)
			return err == nil
		})
	}
}

// wantMessage fails unless err's text contains every part.
func wantMessage(t *testing.T, err error, parts ...string) {
	t.Helper()
	for _, p := range parts {
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Fatalf("got %v, want an error containing %q", err, p)
		}
	}
}
