package jotunheim_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/metrics"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/types/known/structpb"
)

// TestBareDeviceBecomesTools: a bare MQTT client announces a sensor and an
// actuator; both become Loki tools owned by the device, and calling them
// through loki.exec reaches the device and returns what it answers.
func TestBareDeviceBecomesTools(t *testing.T) {
	forTransports(t, func(t *testing.T, tr transport) {
		e, _ := setupOver(t, tr, testConfig())
		events, err := e.jc.Watch(ctxT(t), "demo", "")
		if err != nil {
			t.Fatal(err)
		}
		d := e.dial(t, "demo")
		d.answer(demoFirmware)
		n := d.announce(demoManifest("demo"))
		if !n.GetAccepted() || n.GetReason() != "" {
			t.Fatalf("negotiation: got %v, want accepted without a reason", n)
		}
		if want := []string{"demo_led", "demo_temperature"}; !slices.Equal(n.GetTools(), want) {
			t.Fatalf("tools: got %v, want %v", n.GetTools(), want)
		}
		e.waitTools(t, n.GetTools()...)
		for _, name := range n.GetTools() {
			tool, err := e.loki.Get(ctxT(t), name)
			if err != nil {
				t.Fatal(err)
			}
			if tool.GetOwner() != "device:demo" || !slices.Equal(tool.GetGrants(), []string{"jotunheim:demo"}) {
				t.Fatalf("%s: got owner %q grants %v", name, tool.GetOwner(), tool.GetGrants())
			}
		}
		if got, err := lokitest.Call(t, e.loki, "demo_temperature", "{}"); err != nil || got != 21.5 {
			t.Fatalf("demo_temperature: got %v, %v, want 21.5", got, err)
		}
		got, err := lokitest.Call(t, e.loki, "demo_led", `{"value": true}`)
		if err != nil {
			t.Fatal(err)
		}
		if m, ok := got.(map[string]any); !ok || m["on"] != true {
			t.Fatalf("demo_led: got %v, want {on: true}", got)
		}
		// The device's own error code reaches the caller with its message.
		_, err = lokitest.Call(t, e.loki, "demo_led", `{"value": "purple"}`)
		wantMessage(t, err, "device demo", "led: value must be a boolean")

		data, err := e.jc.Command(ctxT(t), "demo", &jv1.Command{Name: "ping"})
		if err != nil || string(data) != `{"uptime":1}` {
			t.Fatalf("ping: got %s, %v", data, err)
		}
		_, err = e.jc.Command(ctxT(t), "demo", &jv1.Command{Name: "selfdestruct"})
		wantCode(t, err, fault.NotFound)
		_, err = e.jc.Command(ctxT(t), "ghost", &jv1.Command{Name: "ping"})
		wantCode(t, err, fault.NotFound)

		dev, err := e.jc.Get(ctxT(t), "demo")
		if err != nil {
			t.Fatal(err)
		}
		if !dev.GetOnline() || dev.GetManifest().GetFirmwareVersion() != "1.0.0" || !slices.Equal(dev.GetTools(), n.GetTools()) {
			t.Fatalf("record: got %v", dev)
		}
		list, err := e.jc.List(ctxT(t))
		if err != nil || len(list) != 1 || list[0].GetId() != "demo" {
			t.Fatalf("list: got %v, %v", list, err)
		}
		// State and events from the device are published as device events.
		d.publish(subjects.DeviceEvent, &jv1.Event{Kind: "boot"})
		kinds := map[string]bool{}
		for !kinds["manifest"] || !kinds["online"] || !kinds["event"] {
			select {
			case ev := <-events:
				kinds[ev.GetKind()] = true
			case <-time.After(wait):
				t.Fatalf("events: got %v, want manifest, online and event", kinds)
			}
		}
	})
}

// TestRefusedManifests: manifests that do not decode, fail validation,
// claim another id or speak another major version are refused with a
// reason, and nothing reaches the registry or the tools.
func TestRefusedManifests(t *testing.T) {
	forTransports(t, func(t *testing.T, tr transport) {
		cfg := testConfig()
		cfg.Metrics = metrics.New()
		e, svc := setupOver(t, tr, cfg)
		d := e.dial(t, "dev1")
		good := func() *jv1.Manifest { return demoManifest("dev1") }
		encode := func(m *jv1.Manifest) []byte {
			b, err := wire.Encode(m)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}
		huge := good()
		huge.Name = strings.Repeat("x", wire.MaxManifestBytes)
		badEntity := good()
		badEntity.Sensors[0].Name = "temp erature"
		major := good()
		major.Protocol = &jv1.ProtocolVersion{Major: wire.Version.GetMajor() + 1}
		noVersion := good()
		noVersion.Protocol = nil
		for _, tc := range []struct {
			name    string
			payload []byte
			reason  string
		}{
			{"garbage", []byte("\x00\xffnot json"), "bad device message"},
			{"wrong types", []byte(`{"deviceId": 5, "sensors": "many"}`), "bad device message"},
			{"oversized", encode(huge), "over the"},
			{"bad entity", encode(badEntity), "sensor"},
			{"another id", encode(demoManifest("dev2")), "does not match"},
			{"major mismatch", encode(major), "major versions must match"},
			{"no version", encode(noVersion), "no protocol version"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				d.publishRaw(subjects.DeviceManifest, 1, false, tc.payload)
				n := d.negotiation()
				if n.GetAccepted() || !strings.Contains(n.GetReason(), tc.reason) {
					t.Fatalf("negotiation: got %v, want refused with %q", n, tc.reason)
				}
				for _, id := range []string{"dev1", "dev2"} {
					_, err := e.jc.Get(ctxT(t), id)
					wantCode(t, err, fault.NotFound)
				}
				tools, err := e.loki.List(ctxT(t))
				if err != nil || len(tools) != 0 {
					t.Fatalf("tools: got %v, %v, want none", tools, err)
				}
			})
		}
		if st := svc.Stats(); st.Refused != 7 || st.Bad["manifest"] != 7 {
			t.Fatalf("stats: got %+v, want 7 refused manifests", st)
		}
		if got := refusedMetric(t, cfg.Metrics, "manifest"); got != 7 {
			t.Fatalf("loki_jotunheim_device_messages_refused_total{kind=manifest}: got %v, want 7", got)
		}
		// Garbage on every other topic is counted and changes nothing; the
		// service still accepts a good manifest afterwards.
		for _, kind := range []string{subjects.DeviceStatus, subjects.DeviceHeartbeat, subjects.DeviceEvent,
			subjects.DeviceResult, subjects.DeviceCall} {
			d.publishRaw(kind, 1, false, []byte(`{"garbage`))
		}
		// Oversized: the MQTT listener passes it and the platform drops it;
		// the gateway refuses it at the link (gateway tests), so over gRPC the
		// platform never sees it.
		if tr == overMQTT {
			d.publishRaw(subjects.DeviceCall, 1, false, make([]byte, wire.MaxMessageBytes+1))
		} else {
			d.publishRaw(subjects.DeviceCall, 1, false, []byte(`{"garbage`))
		}
		if n := d.announce(good()); !n.GetAccepted() {
			t.Fatalf("good manifest after garbage: got %v", n)
		}
		eventually(t, "garbage counted", func() bool {
			st := svc.Stats()
			return st.Bad["status"] == 1 && st.Bad["heartbeat"] == 1 && st.Bad["event"] == 1 &&
				st.Bad["result"] == 1 && st.Bad["call"] == 2
		})
	})
}

// TestWillMarksOffline: a device whose connection dies is marked offline by
// its will, and its tools, still registered, fail at once with UNAVAILABLE
// naming it.
func TestWillMarksOffline(t *testing.T) {
	forTransports(t, func(t *testing.T, tr transport) {
		e, _ := setupOver(t, tr, testConfig())
		d := e.connectDemo(t, "demo")
		offline, err := e.jc.Watch(ctxT(t), "demo", "offline")
		if err != nil {
			t.Fatal(err)
		}
		d.kill()
		select {
		case ev := <-offline:
			if ev.GetDevice() != "demo" {
				t.Fatalf("offline event: got %v", ev)
			}
		case <-time.After(wait):
			t.Fatal("no offline event after the connection died")
		}
		dev, err := e.jc.Get(ctxT(t), "demo")
		if err != nil || dev.GetOnline() {
			t.Fatalf("record: got %v, %v, want offline", dev, err)
		}
		if _, err := e.loki.Get(ctxT(t), "demo_temperature"); err != nil {
			t.Fatalf("tool of an offline device: %v, want it kept", err)
		}
		_, err = lokitest.Call(t, e.loki, "demo_temperature", "{}")
		wantCode(t, err, fault.Unavailable)
		wantMessage(t, err, "device demo is offline")
		_, err = e.jc.Command(ctxT(t), "demo", &jv1.Command{Name: "ping"})
		wantCode(t, err, fault.Unavailable)
	})
}

// TestDeviceDoesNotAnswer: a command the device never answers ends with
// DEADLINE_EXCEEDED naming the device, bounded by the caller's deadline.
func TestDeviceDoesNotAnswer(t *testing.T) {
	forTransports(t, func(t *testing.T, tr transport) {
		cfg := testConfig()
		cfg.CommandTimeout = time.Second // the device tools' timeout
		e, _ := setupOver(t, tr, cfg)
		d := e.dial(t, "mute")
		n := d.announce(demoManifest("mute"))
		if !n.GetAccepted() {
			t.Fatal(n.GetReason())
		}
		e.waitTools(t, n.GetTools()...)
		ctx, cancel := context.WithTimeout(ctxT(t), 500*time.Millisecond)
		defer cancel()
		_, err := e.jc.Command(ctx, "mute", &jv1.Command{Name: "ping"})
		wantCode(t, err, fault.DeadlineExceeded)
		wantMessage(t, err, "device mute did not answer command ping")
		_, err = e.jc.Command(ctxT(t), "mute", &jv1.Command{Name: "ping", TimeoutMs: 200})
		wantCode(t, err, fault.DeadlineExceeded)
		_, err = lokitest.Call(t, e.loki, "mute_temperature", "{}")
		wantCode(t, err, fault.DeadlineExceeded)
		wantMessage(t, err, "device mute")
	})
}

// TestManifestUpdate: a manifest update adds and removes tools.
func TestManifestUpdate(t *testing.T) {
	forTransports(t, func(t *testing.T, tr transport) {
		e, _ := setupOver(t, tr, testConfig())
		d := e.connectDemo(t, "demo")
		m := demoManifest("demo")
		m.Reason = jv1.Manifest_REASON_UPDATE
		m.Actuators = nil
		m.Sensors = append(m.Sensors, &jv1.Sensor{Name: "motion", Kind: "motion", ValueType: "boolean"})
		n := d.announce(m)
		if want := []string{"demo_motion", "demo_temperature"}; !n.GetAccepted() || !slices.Equal(n.GetTools(), want) {
			t.Fatalf("negotiation: got %v, want tools %v", n, want)
		}
		eventually(t, "demo_led unregistered", func() bool {
			_, err := e.loki.Get(ctxT(t), "demo_led")
			return fault.CodeOf(err) == fault.NotFound
		})
		e.waitTools(t, "demo_motion")
		tool, err := e.loki.Get(ctxT(t), "demo_motion")
		if err != nil || tool.GetReturns() != "boolean" {
			t.Fatalf("demo_motion: got %v, %v", tool, err)
		}
		dev, err := e.jc.Get(ctxT(t), "demo")
		if err != nil || !slices.Equal(dev.GetTools(), n.GetTools()) {
			t.Fatalf("record: got %v, %v", dev, err)
		}
		// Removing the device removes its tools.
		if err := e.jc.Remove(ctxT(t), "demo"); err != nil {
			t.Fatal(err)
		}
		_, err = e.jc.Get(ctxT(t), "demo")
		wantCode(t, err, fault.NotFound)
		eventually(t, "no tools after remove", func() bool {
			tools, err := e.loki.List(ctxT(t))
			return err == nil && len(tools) == 0
		})
	})
}

// TestToolNameCollision: a device entity whose tool name a user's tool
// holds is not registered; the device is told why, and the user's tool is
// untouched.
func TestToolNameCollision(t *testing.T) {
	forTransports(t, func(t *testing.T, tr transport) {
		e, _ := setupOver(t, tr, testConfig())
		e.userTool(t, &lokiv1.Tool{Name: "demo_temperature", Returns: "number", Source: "return 1"})
		d := e.dial(t, "demo")
		d.answer(demoFirmware)
		n := d.announce(demoManifest("demo"))
		if !n.GetAccepted() || !slices.Equal(n.GetTools(), []string{"demo_led"}) {
			t.Fatalf("negotiation: got %v, want accepted with demo_led only", n)
		}
		for _, p := range []string{`tool "demo_temperature"`, "taken"} {
			if !strings.Contains(n.GetReason(), p) {
				t.Fatalf("reason %q: want it to contain %q", n.GetReason(), p)
			}
		}
		tool, err := e.loki.Get(ctxT(t), "demo_temperature")
		if err != nil || tool.GetOwner() != "" || tool.GetSource() != "return 1" {
			t.Fatalf("user tool: got %v, %v, want it unchanged", tool, err)
		}
		if got, err := lokitest.Call(t, e.loki, "demo_temperature", "{}"); err != nil || got != 1.0 {
			t.Fatalf("user tool call: got %v, %v", got, err)
		}
	})
}

// TestCaps: devices.caps asks the device for its manifest and answers with
// the record the answer produced.
func TestCaps(t *testing.T) {
	forTransports(t, func(t *testing.T, tr transport) {
		e, _ := setupOver(t, tr, testConfig())
		d := e.connectDemo(t, "demo")
		go func() {
			select {
			case req := <-d.caps:
				m := demoManifest("demo")
				m.Reason, m.RequestId, m.FirmwareVersion = jv1.Manifest_REASON_REQUEST, req.GetId(), "1.0.1"
				b, _ := wire.Encode(m)
				_ = d.l.send(subjects.DeviceManifest, 1, false, b)
			case <-time.After(wait):
			}
		}()
		dev, err := e.jc.Caps(ctxT(t), "demo")
		if err != nil {
			t.Fatal(err)
		}
		if dev.GetManifest().GetFirmwareVersion() != "1.0.1" || dev.GetManifest().GetReason() != jv1.Manifest_REASON_REQUEST {
			t.Fatalf("caps: got %v", dev.GetManifest())
		}
		// A device that does not answer: DEADLINE_EXCEEDED.
		ctx, cancel := context.WithTimeout(ctxT(t), 300*time.Millisecond)
		defer cancel()
		_, err = e.jc.Caps(ctx, "demo")
		wantCode(t, err, fault.DeadlineExceeded)
	})
}

// TestReplicasShareTheRegistry: two replicas on one server see the same
// devices; with the first stopped, the second serves them, and a replica
// started afterwards finds the registry as it was.
func TestReplicasShareTheRegistry(t *testing.T) {
	e, _ := setup(t, testConfig())
	_, stopB := e.replica(t, testConfig())
	e.connectDemo(t, "demo")
	for range 8 { // spread over both replicas by the queue group
		if got, err := lokitest.Call(t, e.loki, "demo_temperature", "{}"); err != nil || got != 21.5 {
			t.Fatalf("demo_temperature: got %v, %v", got, err)
		}
	}
	stopB()
	_, stopC := e.replica(t, testConfig())
	defer stopC()
	dev, err := e.jc.Get(ctxT(t), "demo")
	if err != nil || !dev.GetOnline() || len(dev.GetTools()) != 2 {
		t.Fatalf("record after restart: got %v, %v", dev, err)
	}
	if got, err := lokitest.Call(t, e.loki, "demo_temperature", "{}"); err != nil || got != 21.5 {
		t.Fatalf("demo_temperature after restart: got %v, %v", got, err)
	}
}

// TestRegistrySurvivesRestart: with the only replica stopped and a new
// one started, the device, its state and its tools are as they were, and
// the device, still connected, answers commands through the new replica.
func TestRegistrySurvivesRestart(t *testing.T) {
	e := setupBare(t)
	_, stopA := e.replica(t, testConfig())
	e.connectDemo(t, "demo")
	stopA()
	_, err := e.jc.Get(ctxT(t), "demo")
	wantCode(t, err, fault.Unavailable) // nothing serves devices.get
	e.replica(t, testConfig())
	list, err := e.jc.List(ctxT(t))
	if err != nil || len(list) != 1 || list[0].GetManifest().GetName() != "Demo board" || !list[0].GetOnline() {
		t.Fatalf("list: got %v, %v", list, err)
	}
	if got, err := lokitest.Call(t, e.loki, "demo_temperature", "{}"); err != nil || got != 21.5 {
		t.Fatalf("demo_temperature after restart: got %v, %v", got, err)
	}
}

// TestHeartbeatMissed: a device that stops sending heartbeats, without its
// will being published, is marked offline; its next heartbeat brings it
// back.
func TestHeartbeatMissed(t *testing.T) {
	forTransports(t, func(t *testing.T, tr transport) {
		cfg := testConfig()
		cfg.HeartbeatMisses = 2
		e, _ := setupOver(t, tr, cfg)
		d := e.dial(t, "quiet")
		m := demoManifest("quiet")
		m.HeartbeatSeconds = 1
		offline, err := e.jc.Watch(ctxT(t), "quiet", "offline")
		if err != nil {
			t.Fatal(err)
		}
		n := d.announce(m)
		if !n.GetAccepted() {
			t.Fatal(n.GetReason())
		}
		e.waitTools(t, n.GetTools()...)
		select {
		case ev := <-offline:
			if ev.GetReason() != "heartbeat missed" {
				t.Fatalf("offline event: got %v, want reason heartbeat missed", ev)
			}
		case <-time.After(wait):
			t.Fatal("no offline event after heartbeats stopped")
		}
		_, err = lokitest.Call(t, e.loki, "quiet_temperature", "{}")
		wantCode(t, err, fault.Unavailable)
		d.publish(subjects.DeviceHeartbeat, &jv1.Heartbeat{Uptime: 5, Seq: 1})
		eventually(t, "back online after a heartbeat", func() bool {
			dev, err := e.jc.Get(ctxT(t), "quiet")
			return err == nil && dev.GetOnline()
		})
	})
}

// TestDeviceCalls: a device may call the tools device_calls lets it, and
// no other; never another device's tools.
func TestDeviceCalls(t *testing.T) {
	forTransports(t, func(t *testing.T, tr transport) {
		cfg := testConfig()
		cfg.DeviceCalls = []string{"user_*", "other_*"}
		e, _ := setupOver(t, tr, cfg)
		e.userTool(t, &lokiv1.Tool{Name: "user_add", Returns: "number", Source: "return a + b",
			Params: []*lokiv1.Param{{Name: "a", Type: "number", Required: true}, {Name: "b", Type: "number", Required: true}}})
		e.userTool(t, &lokiv1.Tool{Name: "secret", Returns: "string", Source: `return "s"`})
		d := e.connectDemo(t, "demo")
		e.connectDemo(t, "other")
		call := func(id, tool string, args map[string]any) *jv1.ToolResult {
			t.Helper()
			st, err := structpb.NewStruct(args)
			if err != nil {
				t.Fatal(err)
			}
			d.publish(subjects.DeviceCall, &jv1.ToolCall{Id: id, Tool: tool, Args: st})
			select {
			case r := <-d.results:
				if r.GetId() != id {
					t.Fatalf("result: got id %q, want %q", r.GetId(), id)
				}
				return r
			case <-time.After(wait):
				t.Fatalf("no result for call %s", id)
				return nil
			}
		}
		if r := call("c1", "user_add", map[string]any{"a": 1, "b": 2}); !r.GetOk() || r.GetResult().GetNumberValue() != 3 {
			t.Fatalf("user_add: got %v", r)
		}
		r := call("c2", "secret", nil)
		if r.GetOk() || r.GetCode() != string(fault.PermissionDenied) || !strings.Contains(r.GetMessage(), "device_calls") {
			t.Fatalf("secret: got %v, want PERMISSION_DENIED naming device_calls", r)
		}
		r = call("c3", "other_temperature", nil)
		if r.GetOk() || r.GetCode() != string(fault.PermissionDenied) || !strings.Contains(r.GetMessage(), "device:other") {
			t.Fatalf("other_temperature: got %v, want PERMISSION_DENIED naming device:other", r)
		}
		r = call("c4", "user_add", map[string]any{"a": "x"})
		if r.GetOk() || r.GetCode() != string(fault.InvalidArgument) {
			t.Fatalf("user_add with bad args: got %v, want INVALID_ARGUMENT", r)
		}
	})
}

// TestModuleGrants: scripts reach a device only with a grant for it, and
// bad arguments are script errors.
func TestModuleGrants(t *testing.T) {
	forTransports(t, func(t *testing.T, tr transport) {
		e, _ := setupOver(t, tr, testConfig())
		e.connectDemo(t, "demo")
		for _, tc := range []struct {
			name, source string
			grants       []string
			want         fault.Code
			msg          string
		}{
			{"granted device", `return jotunheim.read("demo", "temperature")`, []string{"jotunheim:demo"}, "", ""},
			{"every device", `return jotunheim.command("demo", "ping", {})`, []string{"jotunheim"}, "", ""},
			{"set", `return jotunheim.set("demo", "led", false)`, []string{"jotunheim:demo"}, "", ""},
			{"other device", `return jotunheim.read("demo", "temperature")`, []string{"jotunheim:other"}, fault.PermissionDenied, "jotunheim:demo"},
			{"bad device", `return jotunheim.read(5, "temperature")`, []string{"jotunheim"}, fault.ScriptError, "argument #1"},
			{"bad entity", `return jotunheim.read("demo", "a b")`, []string{"jotunheim"}, fault.ScriptError, "argument #2"},
			{"set without value", `return jotunheim.set("demo", "led")`, []string{"jotunheim"}, fault.ScriptError, "value is required"},
			{"list args", `return jotunheim.command("demo", "ping", {1, 2})`, []string{"jotunheim"}, fault.ScriptError, "string keys"},
			{"unknown command", `return jotunheim.command("demo", "nope")`, []string{"jotunheim"}, fault.NotFound, "device demo"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				name := "t_" + strings.ReplaceAll(tc.name, " ", "_")
				e.userTool(t, &lokiv1.Tool{Name: name, Source: tc.source, Grants: tc.grants})
				_, err := lokitest.Call(t, e.loki, name, "{}")
				wantCode(t, err, tc.want)
				if tc.msg != "" {
					wantMessage(t, err, tc.msg)
				}
			})
		}
	})
}

// refusedMetric is the value of the refused-messages counter of kind.
func refusedMetric(t *testing.T, reg *metrics.Registry, kind string) float64 {
	t.Helper()
	mfs, err := reg.Prometheus().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "loki_jotunheim_device_messages_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "kind" && l.GetValue() == kind {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*jotunheim.Config)
		key    string
	}{
		{"defaults", func(*jotunheim.Config) {}, ""},
		{"misses", func(c *jotunheim.Config) { c.HeartbeatMisses = 0 }, "heartbeat_misses"},
		{"timeout", func(c *jotunheim.Config) { c.CommandTimeout = 0 }, "command_timeout"},
		{"max", func(c *jotunheim.Config) { c.MaxCommandTimeout = time.Second }, "max_command_timeout"},
		{"caps", func(c *jotunheim.Config) { c.CapsTimeout = -1 }, "caps_timeout"},
		{"workers", func(c *jotunheim.Config) { c.Workers = 0 }, "workers"},
		{"queue", func(c *jotunheim.Config) { c.Queue = -1 }, "queue"},
		{"drain", func(c *jotunheim.Config) { c.DrainTimeout = 0 }, "drain_timeout"},
		{"replicas", func(c *jotunheim.Config) { c.Replicas = 0 }, "replicas"},
		{"bad glob", func(c *jotunheim.Config) { c.DeviceCalls = []string{"[a-"} }, "device_calls[0]"},
		{"empty glob", func(c *jotunheim.Config) { c.DeviceCalls = []string{""} }, "device_calls[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := jotunheim.DefaultConfig()
			tc.change(&cfg)
			err := cfg.Validate()
			if tc.key == "" {
				if err != nil {
					t.Fatalf("got %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, jotunheim.ErrConfig) || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("got %v, want ErrConfig naming %s", err, tc.key)
			}
		})
	}
}

// TestCommandResultData: the reply of devices.cmd is the JSON of the data.
func TestCommandResultData(t *testing.T) {
	forTransports(t, func(t *testing.T, tr transport) {
		e, _ := setupOver(t, tr, testConfig())
		e.connectDemo(t, "demo")
		data, err := e.jc.Command(ctxT(t), "demo", &jv1.Command{Name: "read", Entity: "temperature"})
		if err != nil {
			t.Fatal(err)
		}
		var v float64
		if err := json.Unmarshal(data, &v); err != nil || v != 21.5 {
			t.Fatalf("got %s, %v", data, err)
		}
	})
}
