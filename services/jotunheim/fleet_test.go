package jotunheim_test

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/types/known/structpb"
)

// What a fleet of devices needs of the device service: these failed
// before `loki bench devices --count 1000` (docs/BENCHMARKS.md) found them.

// TestToolsPastTheListLimit: a device gets its tools even when the list of
// every tool is larger than one NATS message (15,000 tools of 1,000 sim
// devices are). Here the server's message limit is 16 KiB and users hold
// more tools than fit in it.
func TestToolsPastTheListLimit(t *testing.T) {
	srv := natstest.Start(t, func(c *natsrv.Config) { c.MQTTPort, c.MaxPayload = -1, 16<<10 })
	lc := lokitest.Start(t, srv, jotunheim.NewModule)
	e := &env{srv: srv, loki: lc, jc: jotunheim.NewClient(natstest.Connect(t, srv))}
	e.replica(t, testConfig())
	for i := range 120 {
		tool := &lokiv1.Tool{Name: fmt.Sprintf("user_tool_%03d", i), Returns: "number", Source: "return 1",
			Description: "A user's tool, one of many, with a description long enough to weigh something in a list."}
		if _, err := e.loki.Register(ctxT(t), tool); err != nil {
			t.Fatal(err)
		}
	}
	// A plain list request (one message) is refused: the list is past the limit.
	if m, err := natstest.Connect(t, srv).Request(subjects.LokiToolsList, nil, 10*time.Second); err != nil ||
		m.Header.Get("Nats-Service-Error-Code") != "RESOURCE_EXHAUSTED" {
		t.Fatal("the list of every tool fits in one message: the test proves nothing")
	}
	d := e.dial(t, "demo")
	d.answer(demoFirmware)
	n := d.announce(demoManifest("demo"))
	if want := []string{"demo_led", "demo_temperature"}; !n.GetAccepted() || n.GetReason() != "" || !slices.Equal(n.GetTools(), want) {
		t.Fatalf("negotiation: got %v, want accepted without a reason, tools %v", n, want)
	}
	// A manifest without the LED unregisters its tool; removing the device,
	// the rest.
	m := demoManifest("demo")
	m.Actuators, m.Reason = nil, jv1.Manifest_REASON_UPDATE
	if n := d.announce(m); !slices.Equal(n.GetTools(), []string{"demo_temperature"}) {
		t.Fatalf("after update: got tools %v, want [demo_temperature]", n.GetTools())
	}
	eventually(t, "demo_led unregistered", func() bool {
		_, err := e.loki.Get(ctxT(t), "demo_led")
		return err != nil
	})
	if err := e.jc.Remove(ctxT(t), "demo"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "demo_temperature unregistered", func() bool {
		_, err := e.loki.Get(ctxT(t), "demo_temperature")
		return err != nil
	})
	if _, err := e.loki.Get(ctxT(t), "user_tool_000"); err != nil {
		t.Fatalf("a user's tool: %v", err)
	}
}

// TestStatesDoNotReadTheRegistry: states and heartbeats from a device
// whose last_seen is fresh cost the registry bucket no read (a fleet's
// telemetry would read it hundreds of times a second).
func TestStatesDoNotReadTheRegistry(t *testing.T) {
	e, _ := setup(t, testConfig())
	d := e.connectDemo(t, "demo")
	m := demoManifest("demo")
	m.HeartbeatSeconds, m.Reason = 600, jv1.Manifest_REASON_UPDATE // last_seen written at most every 5 min
	if n := d.announce(m); !n.GetAccepted() {
		t.Fatalf("negotiation: %v", n)
	}
	eventually(t, "the record holds the new manifest", func() bool {
		dev, err := e.jc.Get(ctxT(t), "demo")
		return err == nil && dev.GetManifest().GetHeartbeatSeconds() == 600
	})
	nc := natstest.Connect(t, e.srv)
	var reads atomic.Int64
	for _, subj := range []string{"$JS.API.DIRECT.GET.KV_" + subjects.DevicesBucket + ".>", "$JS.API.STREAM.MSG.GET.KV_" + subjects.DevicesBucket} {
		if _, err := nc.Subscribe(subj, func(*nats.Msg) { reads.Add(1) }); err != nil {
			t.Fatal(err)
		}
	}
	states, err := e.jc.Watch(ctxT(t), "demo", "state")
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	const n = 40
	stateTopic, err := subjects.DeviceTopic("demo", subjects.DeviceState, "temperature")
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		d.publish(subjects.DeviceHeartbeat, &jv1.Heartbeat{Seq: uint64(i + 1)})
		b, err := wire.Encode(&jv1.State{Entity: "temperature", Value: structpb.NewNumberValue(float64(i))})
		if err != nil {
			t.Fatal(err)
		}
		if tok := d.c.Publish(stateTopic, 0, true, b); !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatalf("publish state: %v", tok.Error())
		}
	}
	for i := range n {
		select {
		case <-states:
		case <-time.After(wait):
			t.Fatalf("state events: got %d, want %d", i, n)
		}
	}
	// Each heartbeat was sent before a state, on one connection, and one
	// device's messages are handled in order: all are handled by now.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := reads.Load(); got > 2 {
		t.Fatalf("registry reads for %d states and %d heartbeats: got %d, want at most 2", n, n, got)
	}
}

// TestCommandToEveryDevice: a burst of commands far beyond the endpoint
// workers (a controller switching every device of a fleet at once) is
// waited for, not refused with RESOURCE_EXHAUSTED. The device here holds
// its answers until it has every command, so commands that wait for a free
// worker would never be answered.
func TestCommandToEveryDevice(t *testing.T) {
	cfg := testConfig() // 4 workers, 64 queued: far fewer than the burst
	e, _ := setup(t, cfg)
	const n = 300
	if cfg.Commands < n {
		t.Fatalf("commands = %d: the default must hold a burst of %d", cfg.Commands, n)
	}
	d := e.dial(t, "burst")
	if neg := d.announce(demoManifest("burst")); !neg.GetAccepted() {
		t.Fatalf("negotiation: %v", neg)
	}
	go func() {
		var held []*jv1.Command
		timeout := time.After(wait)
		for len(held) < n {
			select {
			case c := <-d.cmds:
				held = append(held, c)
				continue
			case <-timeout:
			}
			break
		}
		for _, c := range held {
			r := demoFirmware(c)
			r.Id = c.GetId()
			b, _ := wire.Encode(r)
			d.c.Publish(topic(t, "burst", subjects.DeviceResult), 0, false, b)
		}
	}()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			if _, err := e.jc.Command(ctxT(t), "burst", &jv1.Command{Name: "ping"}); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err, ok := <-errs; ok {
		t.Fatalf("%d of %d commands failed; the first: %v", len(errs)+1, n, err)
	}
}

// TestListInParts: a device list larger than one message comes in parts to
// a client that asks for them (jotunheim.Client does), and is refused with
// RESOURCE_EXHAUSTED, naming the header, to one that does not. Here the
// server's message limit is 8 KiB; a record with its manifest weighs about
// 700 bytes.
func TestListInParts(t *testing.T) {
	srv := natstest.Start(t, func(c *natsrv.Config) { c.MQTTPort, c.MaxPayload = -1, 8<<10 })
	lc := lokitest.Start(t, srv, jotunheim.NewModule)
	e := &env{srv: srv, loki: lc, jc: jotunheim.NewClient(natstest.Connect(t, srv))}
	e.replica(t, testConfig())
	const n = 30
	var want []string
	for i := range n {
		id := fmt.Sprintf("dev%02d", i)
		if neg := e.dial(t, id).announce(demoManifest(id)); !neg.GetAccepted() {
			t.Fatalf("%s: %v", id, neg)
		}
		want = append(want, id)
	}
	list, err := e.jc.List(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range list {
		got = append(got, d.GetId())
		if !d.GetOnline() || d.GetManifest().GetFirmwareVersion() != "1.0.0" {
			t.Fatalf("%s: got %v", d.GetId(), d)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("list: got %v, want %v", got, want)
	}
	nc := natstest.Connect(t, srv)
	m, err := nc.RequestWithContext(ctxT(t), subjects.DevicesList, nil)
	if err != nil {
		t.Fatal(err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "RESOURCE_EXHAUSTED" || !strings.Contains(m.Header.Get("Nats-Service-Error"), jotunheim.HeaderChunks) {
		t.Fatalf("a plain request: got code %q, error %q, want RESOURCE_EXHAUSTED naming %s", code, m.Header.Get("Nats-Service-Error"), jotunheim.HeaderChunks)
	}
}
