package jotunheim_test

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/types/known/structpb"
)

func TestConnectAnnouncesAndPublishesStates(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "demo")
	cfg := testConfig(t, s, "demo")
	cfg.Telemetry.Heartbeat = time.Second
	r := runAgent(t, cfg)

	p.waitStatus(0, subjects.PresenceOnline)
	man := p.waitManifest(0, jv1.Manifest_REASON_CONNECT)
	if got, want := wire.VersionString(man.GetProtocol()), wire.VersionString(wire.Version); got != want {
		t.Errorf("protocol: got %s, want %s", got, want)
	}
	if man.GetFirmwareVersion() != jotunheim.FirmwareVersion || man.GetModel() != "test" || man.GetHeartbeatSeconds() != 1 || man.GetTelemetrySeconds() != 30 {
		t.Errorf("manifest header: got %v", man)
	}
	var temp *jv1.Sensor
	for _, sn := range man.GetSensors() {
		if sn.GetName() == "temperature" {
			temp = sn
		}
	}
	if temp == nil || temp.GetValueType() != "number" || temp.GetUnit() != "°C" || temp.Min == nil || temp.Max == nil {
		t.Fatalf("temperature sensor: got %v", temp)
	}
	for _, want := range []string{"commands", "telemetry", "events", "tool_calls", "config"} {
		if !slices.Contains(man.GetFeatures(), want) {
			t.Errorf("features %v lack %q", man.GetFeatures(), want)
		}
	}
	if man.GetLimits().GetMaxQueuedCommands() != 32 || len(man.GetPins()) == 0 || !slices.Contains(man.GetInterfaces(), "i2c") {
		t.Errorf("limits/pins/interfaces: got %v / %d pins / %v", man.GetLimits(), len(man.GetPins()), man.GetInterfaces())
	}
	var led *jv1.Actuator
	for _, a := range man.GetActuators() {
		if a.GetName() == "led" {
			led = a
		}
	}
	if led == nil || led.GetKind() != hardware.KindLED || len(led.GetAccepts()) == 0 {
		t.Fatalf("led actuator: got %v", led)
	}
	// Every entity's state once accepted, then heartbeats.
	for _, e := range []string{"temperature", "humidity", "pressure", "motion", "led", "relay", "fan"} {
		p.waitState(0, e, anyValue)
	}
	p.wait(0, "heartbeat", kindIs(subjects.DeviceHeartbeat))
	if st := r.agent.Stats(); !st.Online || st.Connects != 1 {
		t.Errorf("stats: got %+v, want online after 1 connect", st)
	}
}

func TestRefusedMajorVersion(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "old")
	p.setAnswer(func(m *jv1.Manifest) *jv1.Negotiation {
		ok, reason := wire.Negotiate(&jv1.ProtocolVersion{Major: m.GetProtocol().GetMajor() + 1})
		return &jv1.Negotiation{Accepted: ok, Reason: reason, PlatformProtocol: &jv1.ProtocolVersion{Major: 2}}
	})
	r := runAgent(t, testConfig(t, s, "old"))
	err := r.wait(t)
	if !errors.Is(err, jotunheim.ErrRefused) {
		t.Fatalf("Run: got %v, want %v", err, jotunheim.ErrRefused)
	}
	p.waitStatus(0, subjects.PresenceOffline)
}

func TestCommands(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "cmds")
	cfg := testConfig(t, s, "cmds")
	runAgent(t, cfg)
	p.waitState(0, "led", anyValue)

	t.Run("ping", func(t *testing.T) {
		r := p.command(jotunheim.CmdPing, "", nil, 0)
		if !r.GetOk() || r.GetData().GetStructValue().GetFields()["uptime"] == nil {
			t.Fatalf("got %v", r)
		}
	})
	t.Run("read", func(t *testing.T) {
		r := p.command(jotunheim.CmdRead, "temperature", nil, 0)
		if _, isNum := r.GetData().GetKind().(*structpb.Value_NumberValue); !r.GetOk() || !isNum {
			t.Fatalf("got %v, want a number", r)
		}
	})
	t.Run("set", func(t *testing.T) {
		from := p.mark()
		r := p.command(jotunheim.CmdSet, "led", map[string]any{"value": true}, 0)
		if !r.GetOk() || !r.GetData().GetStructValue().GetFields()["on"].GetBoolValue() {
			t.Fatalf("got %v, want the led on", r)
		}
		p.waitState(from, "led", isOn(true))
		st := p.command(jotunheim.CmdState, "led", nil, 0)
		if !st.GetOk() || !st.GetData().GetStructValue().GetFields()["value"].GetStructValue().GetFields()["on"].GetBoolValue() {
			t.Fatalf("state: got %v", st)
		}
	})
	t.Run("caps", func(t *testing.T) {
		r := p.command(jotunheim.CmdCaps, "", nil, 0)
		if !r.GetOk() || r.GetData().GetStructValue().GetFields()["deviceId"].GetStringValue() != "cmds" {
			t.Fatalf("got %v", r)
		}
	})
	t.Run("config.set", func(t *testing.T) {
		from := p.mark()
		r := p.command(jotunheim.CmdConfigSet, "", map[string]any{"telemetry_seconds": 5, "log_level": "debug"}, 0)
		if !r.GetOk() {
			t.Fatalf("got %v", r)
		}
		man := p.waitManifest(from, jv1.Manifest_REASON_UPDATE)
		if man.GetTelemetrySeconds() != 5 {
			t.Errorf("manifest telemetry_seconds: got %d, want 5", man.GetTelemetrySeconds())
		}
		got := p.command(jotunheim.CmdConfigGet, "", nil, 0).GetData().GetStructValue().AsMap()
		if got["telemetry_seconds"] != float64(5) || got["log_level"] != "debug" {
			t.Errorf("config.get: got %v", got)
		}
		var saved jotunheim.Settings
		b, err := os.ReadFile(cfg.Telemetry.StateFile)
		if err != nil || json.Unmarshal(b, &saved) != nil || saved.TelemetrySeconds != 5 {
			t.Errorf("state file: got %s, %v", b, err)
		}
	})
	for _, tc := range []struct {
		name, cmd, entity string
		args              map[string]any
		want              fault.Code
	}{
		{"unknown sensor", jotunheim.CmdRead, "nope", nil, fault.NotFound},
		{"unknown actuator", jotunheim.CmdSet, "temperature", map[string]any{"value": 1}, fault.NotFound},
		{"unknown entity", jotunheim.CmdState, "nope", nil, fault.NotFound},
		{"unknown command", "dance", "", nil, fault.NotFound},
		{"bad value", jotunheim.CmdSet, "led", map[string]any{"value": 7}, fault.InvalidArgument},
		{"no value", jotunheim.CmdSet, "led", map[string]any{}, fault.InvalidArgument},
		{"bad setting", jotunheim.CmdConfigSet, "", map[string]any{"telemetry_seconds": 0}, fault.InvalidArgument},
		{"unknown setting", jotunheim.CmdConfigSet, "", map[string]any{"colour": "red"}, fault.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := p.command(tc.cmd, tc.entity, tc.args, 0)
			if r.GetOk() || r.GetCode() != string(tc.want) || r.GetMessage() == "" {
				t.Fatalf("got %v, want %s with a message", r, tc.want)
			}
		})
	}
}

func isOn(on bool) func(v any) bool {
	return func(v any) bool {
		m, ok := v.(map[string]any)
		return ok && m["on"] == on
	}
}

func TestQueuePriorityAndFull(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "busy")
	cfg := testConfig(t, s, "busy")
	cfg.Limits.MaxQueuedCommands = 2
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	block := func(ctx context.Context, args map[string]any) (any, error) {
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return args["n"], nil
	}
	r := runAgent(t, cfg, jotunheim.WithCommand("block", block))
	p.waitState(0, "led", anyValue)

	from := p.mark()
	first := p.send("block", "", map[string]any{"n": 0}, 0)
	select {
	case <-started:
	case <-time.After(waitLimit):
		t.Fatal("the worker did not start the first command")
	}
	low := p.send("block", "", map[string]any{"n": 1}, 0)
	eventually(t, "one command queued", func() bool { return r.agent.Stats().Queued == 1 })
	high := p.send("block", "", map[string]any{"n": 2}, 5)
	eventually(t, "two commands queued", func() bool { return r.agent.Stats().Queued == 2 })
	over := p.command("block", "", map[string]any{"n": 3}, 9)
	if over.GetOk() || over.GetCode() != string(fault.ResourceExhausted) {
		t.Fatalf("a command over the limit: got %v, want %s", over, fault.ResourceExhausted)
	}
	close(release)
	var order []string
	p.wait(from, "three results", func(m msg) bool {
		if m.kind == subjects.DeviceResult {
			res, err := wire.DecodeResult(m.data)
			if err == nil && res.GetId() != over.GetId() {
				order = append(order, res.GetId())
			}
		}
		return len(order) == 3
	})
	if want := []string{first, high, low}; !slices.Equal(order, want) {
		t.Fatalf("results in order %v, want %v (running, high priority, low)", order, want)
	}
	if st := r.agent.Stats(); st.QueueFull != 1 {
		t.Errorf("QueueFull: got %d, want 1", st.QueueFull)
	}
}

func TestGarbageIsCountedAndIgnored(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "garbage")
	r := runAgent(t, testConfig(t, s, "garbage"))
	p.waitState(0, "led", anyValue)
	for _, g := range [][]byte{[]byte("{"), []byte(`{"id": 5}`), []byte(`{"name":"ping"}`), make([]byte, wire.MaxMessageBytes+1), []byte("\x00\xff")} {
		p.publishRaw(subjects.DeviceCmd, g)
	}
	p.publishRaw(subjects.DeviceCallResult, []byte("not json"))
	p.publishRaw(subjects.DeviceNegotiation, []byte(`{"accepted": "yes"}`))
	eventually(t, "7 bad messages counted", func() bool { return r.agent.Stats().Bad == 7 })
	if res := p.command(jotunheim.CmdPing, "", nil, 0); !res.GetOk() {
		t.Fatalf("ping after garbage: got %v", res)
	}
}

func TestReconnectAfterServerRestart(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "phoenix")
	r := runAgent(t, testConfig(t, s, "phoenix"))
	p.waitState(0, "led", anyValue)
	if res := p.command(jotunheim.CmdSet, "led", map[string]any{"value": true}, 0); !res.GetOk() {
		t.Fatalf("set led: %v", res)
	}

	// The platform's NATS subscription may come back after the agent has
	// announced itself, so presence is checked where it is kept: the
	// retained status, set to offline here as the will would.
	status, err := subjects.DeviceTopic("phoenix", subjects.DeviceStatus)
	if err != nil {
		t.Fatal(err)
	}
	publishRetained(t, s, status, subjects.PresenceOffline)

	s.stop()
	eventually(t, "agent notices the server is gone", func() bool { return !r.agent.Stats().Online })
	from := p.mark()
	s.start()

	// A manifest the platform missed is sent again until answered; states
	// follow the answer.
	p.waitManifest(from, jv1.Manifest_REASON_CONNECT)
	p.waitState(from, "led", isOn(true))
	p.waitState(from, "temperature", anyValue)
	if got := retained(t, s, status); got != subjects.PresenceOnline {
		t.Errorf("retained status: got %q, want %q", got, subjects.PresenceOnline)
	}
	if st := r.agent.Stats(); st.Connects < 2 {
		t.Errorf("connects: got %d, want at least 2", st.Connects)
	}
	res := p.command(jotunheim.CmdState, "led", nil, 0)
	if !res.GetOk() || !res.GetData().GetStructValue().GetFields()["value"].GetStructValue().GetFields()["on"].GetBoolValue() {
		t.Fatalf("led after the restart: got %v, want on", res)
	}
}

func TestCleanStopPublishesOffline(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "bye")
	r := runAgent(t, testConfig(t, s, "bye"))
	p.waitState(0, "led", anyValue)
	from := p.mark()
	r.stop()
	if err := r.wait(t); err != nil {
		t.Fatalf("Run: got %v, want nil", err)
	}
	p.waitStatus(from, subjects.PresenceOffline)
}

func TestCallTool(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "caller")
	r := runAgent(t, testConfig(t, s, "caller"))
	p.waitState(0, "led", anyValue)
	sub, err := subjects.DeviceSubject("caller", subjects.DeviceCall)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.nc.Subscribe(sub, func(m *nats.Msg) {
		c, err := wire.DecodeToolCall(m.Data)
		if err != nil {
			t.Errorf("tool call: %v", err)
			return
		}
		res := &jv1.ToolResult{Id: c.GetId()}
		if c.GetTool() == "add" {
			sum := c.GetArgs().GetFields()["a"].GetNumberValue() + c.GetArgs().GetFields()["b"].GetNumberValue()
			res.Ok, res.Result = true, structpb.NewNumberValue(sum)
		} else {
			res.Code, res.Message = string(fault.PermissionDenied), "tool "+c.GetTool()+" is not in device_calls"
		}
		p.publish(subjects.DeviceCallResult, res)
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	got, err := r.agent.CallTool(ctx, "add", map[string]any{"a": 2, "b": 3})
	if err != nil || string(got) != "5" {
		t.Fatalf("CallTool(add): got %s, %v, want 5", got, err)
	}
	_, err = r.agent.CallTool(ctx, "secret", nil)
	if !errors.Is(err, &fault.Error{Code: fault.PermissionDenied}) {
		t.Fatalf("CallTool(secret): got %v, want %s", err, fault.PermissionDenied)
	}
	_, err = r.agent.CallTool(ctx, "Not A Tool", nil)
	if !errors.Is(err, &fault.Error{Code: fault.InvalidArgument}) {
		t.Fatalf("CallTool(bad name): got %v, want %s", err, fault.InvalidArgument)
	}
}

func TestUpdateBoardRepublishesManifest(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "grow")
	r := runAgent(t, testConfig(t, s, "grow"))
	p.waitState(0, "led", anyValue)

	bc := hardware.SimBoardConfig()
	bc.Sensors = slices.DeleteFunc(bc.Sensors, func(s hardware.SensorConfig) bool { return s.Name == "pressure" })
	from := p.mark()
	if err := r.agent.UpdateBoard(bc); err != nil {
		t.Fatal(err)
	}
	man := p.waitManifest(from, jv1.Manifest_REASON_UPDATE)
	for _, sn := range man.GetSensors() {
		if sn.GetName() == "pressure" {
			t.Fatalf("pressure still in the manifest after its removal")
		}
	}
	if res := p.command(jotunheim.CmdRead, "pressure", nil, 0); res.GetCode() != string(fault.NotFound) {
		t.Fatalf("read removed sensor: got %v, want NOT_FOUND", res)
	}
	// Adding it back announces it again.
	from = p.mark()
	if err := r.agent.UpdateBoard(hardware.SimBoardConfig()); err != nil {
		t.Fatal(err)
	}
	man = p.waitManifest(from, jv1.Manifest_REASON_UPDATE)
	var names []string
	for _, sn := range man.GetSensors() {
		names = append(names, sn.GetName())
	}
	if !containsName(names, "pressure") {
		t.Fatalf("sensors after re-adding: got %v", names)
	}
}

func TestStateFileOverridesConfig(t *testing.T) {
	s := startServer(t)
	cfg := testConfig(t, s, "persist")
	if err := os.WriteFile(cfg.Telemetry.StateFile, []byte(`{"telemetry_seconds": 7, "heartbeat_seconds": 3, "log_level": "warn"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runAgent(t, cfg)
	if got := r.agent.Settings(); got.TelemetrySeconds != 7 || got.HeartbeatSeconds != 3 || got.LogLevel != "warn" {
		t.Fatalf("settings: got %+v", got)
	}
}
