package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// deviceBound is how long the device tests wait for what should happen.
const deviceBound = 15 * time.Second

// pahoDevice is device id made of a bare paho client speaking the wire
// protocol of docs/DEVICES.md: a temperature sensor and an LED. It logs in
// with the login `loki auth add-device` saved.
type pahoDevice struct {
	id  string
	c   mqtt.Client
	led atomic.Bool
}

func topic(t *testing.T, id, kind string, entity ...string) string {
	t.Helper()
	s, err := subjects.DeviceTopic(id, kind, entity...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func waitTok(tok mqtt.Token) error {
	if !tok.WaitTimeout(deviceBound) {
		return errors.New("MQTT: no answer")
	}
	return tok.Error()
}

func startPahoDevice(t *testing.T, mqttAddr, loginFile, id string) *pahoDevice {
	t.Helper()
	b, err := os.ReadFile(loginFile)
	if err != nil {
		t.Fatal(err)
	}
	var login struct{ Username, Password string }
	if err := json.Unmarshal(b, &login); err != nil {
		t.Fatal(err)
	}
	d := &pahoDevice{id: id}
	d.c = mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://"+mqttAddr).
		SetClientID(id).SetUsername(login.Username).SetPassword(login.Password).
		SetProtocolVersion(4).SetCleanSession(true).SetKeepAlive(30*time.Second).
		SetAutoReconnect(false).SetConnectRetry(false).SetOrderMatters(false).SetConnectTimeout(deviceBound).
		SetBinaryWill(topic(t, id, subjects.DeviceStatus), []byte(subjects.PresenceOffline), 1, true))
	if err := waitTok(d.c.Connect()); err != nil {
		t.Fatalf("device connect: %v", err)
	}
	t.Cleanup(func() { d.stop(t) })
	negotiated := make(chan *jv1.Negotiation, 4)
	manifest, _ := protojson.Marshal(&jv1.Manifest{
		DeviceId: id, Name: "Bare " + id, Model: "paho", FirmwareVersion: "0.0.1",
		Protocol:  &jv1.ProtocolVersion{Major: 1},
		Sensors:   []*jv1.Sensor{{Name: "temperature", Kind: "temperature", Unit: "°C", ValueType: "number"}},
		Actuators: []*jv1.Actuator{{Name: "led", Kind: "led", Accepts: []string{"boolean"}}},
		Reason:    jv1.Manifest_REASON_CONNECT,
	})
	subs := map[string]mqtt.MessageHandler{
		topic(t, id, subjects.DeviceNegotiation): func(_ mqtt.Client, m mqtt.Message) {
			n := &jv1.Negotiation{}
			if protojson.Unmarshal(m.Payload(), n) == nil {
				negotiated <- n
			}
		},
		topic(t, id, subjects.DeviceCmd): func(_ mqtt.Client, m mqtt.Message) {
			cmd := &jv1.Command{}
			if protojson.Unmarshal(m.Payload(), cmd) != nil {
				return
			}
			res := &jv1.CommandResult{Id: cmd.GetId(), Ok: true}
			switch {
			case cmd.GetName() == "read" && cmd.GetEntity() == "temperature":
				res.Data = structpb.NewNumberValue(21.5)
			case cmd.GetName() == "set" && cmd.GetEntity() == "led":
				on := cmd.GetArgs().GetFields()["value"].GetBoolValue()
				d.led.Store(on)
				res.Data = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"value": structpb.NewBoolValue(on)}})
			default:
				res = &jv1.CommandResult{Id: cmd.GetId(), Code: "NOT_FOUND", Message: "no such command"}
			}
			b, _ := protojson.Marshal(res)
			d.c.Publish(topic(t, id, subjects.DeviceResult), 1, false, b)
		},
	}
	for tp, h := range subs {
		if err := waitTok(d.c.Subscribe(tp, 0, h)); err != nil {
			t.Fatalf("subscribe %s: %v", tp, err)
		}
	}
	if err := waitTok(d.c.Publish(topic(t, id, subjects.DeviceStatus), 1, true, subjects.PresenceOnline)); err != nil {
		t.Fatal(err)
	}
	if err := waitTok(d.c.Publish(topic(t, id, subjects.DeviceManifest), 1, false, manifest)); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-negotiated:
		if !n.GetAccepted() {
			t.Fatalf("device refused: %s", n.GetReason())
		}
	case <-time.After(deviceBound):
		t.Fatal("no negotiation")
	}
	return d
}

func (d *pahoDevice) stop(t *testing.T) {
	if !d.c.IsConnected() {
		return
	}
	_ = waitTok(d.c.Publish(topic(t, d.id, subjects.DeviceStatus), 1, true, subjects.PresenceOffline))
	d.c.Disconnect(250)
}

// TestDevicesCommands follows the README's device tour with a bare MQTT
// device: add its login, connect it, see it with `loki devices`, read its
// temperature and switch its LED with `loki call` and `loki devices cmd`,
// watch it go offline, remove it.
func TestDevicesCommands(t *testing.T) {
	dir := t.TempDir()
	url, stop, banner := startUpOut(t, dir)
	defer stop()
	if !strings.Contains(banner, "jotunheim --sim --id demo") || !strings.Contains(banner, "loki auth add-device demo") {
		t.Errorf("the banner does not say how to start a device:\n%s", banner)
	}
	m := mqttLine.FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("no MQTT listener in the banner:\n%s", banner)
	}

	if out, err := cli(t, "devices", "--nats-url", url); err != nil || out != "" {
		t.Fatalf("devices with none: got %q, %v; want nothing on stdout", out, err)
	}
	if _, _, err := cliAll("auth", "add-device", "demo", "--nats-url", url); err != nil {
		t.Fatalf("auth add-device: %v", err)
	}
	dev := startPahoDevice(t, m[1], filepath.Join(dir, "auth", "devices", "demo.json"), "demo")

	// The tools follow the manifest's acceptance.
	var list string
	deadline := time.Now().Add(deviceBound)
	for {
		var err error
		list, err = cli(t, "devices", "--nats-url", url)
		if err == nil && strings.Contains(list, "demo_temperature") && strings.Contains(list, "demo_led") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("devices: got %q, %v; want demo with its tools", list, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^ID\s+NAME\s+MODEL\s+FIRMWARE\s+STATUS\s+LAST SEEN\s+TOOLS$`),
		regexp.MustCompile(`(?m)^demo\s+Bare demo\s+paho\s+0\.0\.1\s+online\s+.*demo_`),
	} {
		if !want.MatchString(list) {
			t.Errorf("devices does not match %s:\n%s", want, list)
		}
	}
	asJSON, err := cli(t, "devices", "list", "--json", "--nats-url", url)
	if err != nil {
		t.Fatal(err)
	}
	var dl jv1.DeviceList
	if err := protojson.Unmarshal([]byte(asJSON), &dl); err != nil || len(dl.GetDevices()) != 1 || !dl.GetDevices()[0].GetOnline() {
		t.Fatalf("devices --json: got %s, %v; want demo online", asJSON, err)
	}

	show, err := cli(t, "devices", "show", "demo", "--nats-url", url)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Bare demo", "online", "temperature", "°C", "demo_temperature", "led", "demo_led"} {
		if !strings.Contains(show, want) {
			t.Errorf("devices show lacks %q:\n%s", want, show)
		}
	}
	// protojson's spacing is deliberately unstable: decode, do not compare text.
	out, err := cli(t, "devices", "show", "demo", "--json", "--nats-url", url)
	var shown jv1.Device
	if err != nil || protojson.Unmarshal([]byte(out), &shown) != nil || shown.GetManifest().GetDeviceId() != "demo" {
		t.Errorf("devices show --json: got %s, %v", out, err)
	}

	if got, err := cli(t, "call", "demo_temperature", "--nats-url", url); err != nil || got != "21.5" {
		t.Errorf("call demo_temperature: got %q, %v; want 21.5", got, err)
	}
	if got, err := cli(t, "devices", "cmd", "demo", "set", "--entity", "led", "value=true", "--priority", "3", "--nats-url", url); err != nil || got != `{"value":true}` {
		t.Errorf("devices cmd set led: got %q, %v", got, err)
	}
	if !dev.led.Load() {
		t.Error("the LED is off after set value=true")
	}
	dev.led.Store(false)
	if got, err := cli(t, "call", "demo_led", "value=true", "--nats-url", url); err != nil || !strings.Contains(got, "true") {
		t.Errorf("call demo_led: got %q, %v", got, err)
	}
	if !dev.led.Load() {
		t.Error("the LED is off after call demo_led value=true")
	}

	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantMsg  string
	}{
		{name: "unknown device", args: []string{"devices", "cmd", "ghost", "ping"}, wantCode: 1, wantMsg: "NOT_FOUND"},
		{name: "the device's error", args: []string{"devices", "cmd", "demo", "read", "--entity", "nosuch"}, wantCode: 1, wantMsg: "NOT_FOUND"},
		{name: "no command", args: []string{"devices", "cmd", "demo"}, wantCode: 2, wantMsg: "command NAME"},
		{name: "bad pair", args: []string{"devices", "cmd", "demo", "set", "novalue"}, wantCode: 2, wantMsg: "key=value"},
		{name: "bad id", args: []string{"devices", "show", "a.b"}, wantCode: 2, wantMsg: "a.b"},
		{name: "unknown device show", args: []string{"devices", "show", "ghost"}, wantCode: 1, wantMsg: "NOT_FOUND"},
		{name: "bad kind", args: []string{"devices", "watch", "--kind", "exploded"}, wantCode: 2, wantMsg: "exploded"},
		{name: "unknown subcommand", args: []string{"devices", "frobnicate"}, wantCode: 2, wantMsg: "frobnicate"},
		{name: "rm as a client", args: []string{"devices", "rm", "demo", "--creds", filepath.Join(dir, "auth", "client.nk")}, wantCode: 1, wantMsg: "PERMISSION_DENIED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := cliAll(append(tc.args, "--nats-url", url)...)
			if got := exitCode(err); got != tc.wantCode || err == nil || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("got %v (exit %d), want exit %d and %q", err, got, tc.wantCode, tc.wantMsg)
			}
		})
	}

	// watch prints the device going offline.
	ctx, cancel := context.WithCancel(context.Background())
	var watchOut, errOut syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"devices", "watch", "demo", "--nats-url", url}, &watchOut, &errOut) }()
	var outJSON, errJSON syncBuffer
	doneJSON := make(chan error, 1)
	go func() {
		doneJSON <- run(ctx, []string{"devices", "watch", "--kind", "offline", "--json", "--nats-url", url}, &outJSON, &errJSON)
	}()
	for wait := time.Now().Add(deviceBound); !strings.Contains(errOut.String(), "listening on") || !strings.Contains(errJSON.String(), "listening on"); {
		if time.Now().After(wait) {
			t.Fatalf("devices watch never subscribed; stderr: %s %s", errOut.String(), errJSON.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	dev.stop(t)
	for wait := time.Now().Add(deviceBound); !regexp.MustCompile(`demo\s+offline`).MatchString(watchOut.String()) || !regexp.MustCompile(`"kind":\s*"offline"`).MatchString(outJSON.String()); {
		if time.Now().After(wait) {
			t.Fatalf("devices watch: got %q and %q, want demo's offline event in both", watchOut.String(), outJSON.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("devices watch: %v", err)
	}
	if err := <-doneJSON; err != nil {
		t.Fatalf("devices watch --json: %v", err)
	}
	var ev jv1.DeviceEvent
	if line, _, _ := strings.Cut(outJSON.String(), "\n"); protojson.Unmarshal([]byte(line), &ev) != nil || ev.GetDevice() != "demo" {
		t.Errorf("devices watch --json: got %q, want one DeviceEvent of demo per line", line)
	}

	_, err = cli(t, "devices", "cmd", "demo", "read", "--entity", "temperature", "--nats-url", url)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "UNAVAILABLE") || !strings.Contains(err.Error(), "demo") {
		t.Errorf("command to an offline device: got %v, want UNAVAILABLE naming demo, exit 1", err)
	}

	if got, err := cli(t, "devices", "rm", "demo", "--nats-url", url); err != nil || got != "removed demo" {
		t.Fatalf("devices rm: got %q, %v", got, err)
	}
	if out, err := cli(t, "devices", "--nats-url", url); err != nil || out != "" {
		t.Errorf("devices after rm: got %q, %v; want none", out, err)
	}
	if _, err := cli(t, "call", "demo_temperature", "--nats-url", url); err == nil || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Errorf("call of a removed device's tool: got %v, want NOT_FOUND", err)
	}
}

func TestDevicesHelp(t *testing.T) {
	for _, args := range [][]string{{"help", "devices"}, {"devices", "--help"}, {"devices", "cmd", "--help"}, {"help", "devices", "watch"}} {
		out, err := cli(t, args...)
		if err != nil || !strings.Contains(out, "Usage: loki devices") {
			t.Errorf("%v: got %q, %v", args, out, err)
		}
	}
	top, _ := cli(t, "help")
	if !strings.Contains(top, "loki devices") {
		t.Errorf("the top-level help does not list devices:\n%s", top)
	}
	bash, err := cli(t, "completion", "bash")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"devices ") words="list show cmd watch stream rm`, `"devices cmd") words="`, "--entity", `"serve jotunheim")`} {
		if !strings.Contains(bash, want) {
			t.Errorf("bash completion lacks %q", want)
		}
	}
}
