package jotunheim_test

import (
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nuid"
)

// haConfig is a discovery config as Home Assistant decodes it.
type haConfig struct {
	Dev          map[string]any            `json:"dev"`
	O            map[string]any            `json:"o"`
	Availability []map[string]any          `json:"availability"`
	Cmps         map[string]map[string]any `json:"cmps"`
}

func decodeHAConfig(t *testing.T, payload string) haConfig {
	t.Helper()
	var c haConfig
	if err := json.Unmarshal([]byte(payload), &c); err != nil {
		t.Fatalf("discovery config is not JSON: %v\n%s", err, payload)
	}
	return c
}

// sub is a bare MQTT subscriber that keeps what it receives.
type sub struct {
	t  *testing.T
	ch chan mqtt.Message
}

// bareClient connects a bare MQTT client with a client id of its own
// (several are connected at once here: a shared id would close the older).
func bareClient(t *testing.T, s *server) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(s.srv.MQTTURL()).SetClientID("ha" + nuid.Next()).
		SetCleanSession(true).SetAutoReconnect(false))
	if tok := c.Connect(); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("mqtt connect: %v", tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

func subscribe(t *testing.T, s *server, filter string) *sub {
	t.Helper()
	c := bareClient(t, s)
	x := &sub{t: t, ch: make(chan mqtt.Message, 256)}
	tok := c.Subscribe(filter, 0, func(_ mqtt.Client, m mqtt.Message) { x.ch <- m })
	if !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
	return x
}

// next returns the next message that match accepts.
func (x *sub) next(what string, match func(mqtt.Message) bool) mqtt.Message {
	x.t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		select {
		case m := <-x.ch:
			if match(m) {
				return m
			}
		case <-deadline.C:
			x.t.Fatalf("no %s within %v", what, waitLimit)
			return nil
		}
	}
}

func topicIs(topic string) func(mqtt.Message) bool {
	return func(m mqtt.Message) bool { return m.Topic() == topic }
}

func haConfigTopic(t *testing.T, id string) string {
	t.Helper()
	topic, err := subjects.HADeviceConfigTopic(subjects.HADiscoveryPrefix, id)
	if err != nil {
		t.Fatal(err)
	}
	return topic
}

func publish(t *testing.T, c mqtt.Client, topic, payload string) {
	t.Helper()
	if tok := c.Publish(topic, 0, false, payload); !tok.WaitTimeout(waitLimit) || tok.Error() != nil {
		t.Fatalf("publish %s: %v", topic, tok.Error())
	}
}

func str(v any) string { s, _ := v.(string); return s }

func TestHADiscoveryConfigOnConnect(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "demo")
	cfg := testConfig(t, s, "demo")
	cfg.Device.Name = "Demo"
	runAgent(t, cfg)
	// Discovery goes out before the states; once a state is here, a
	// subscriber that comes later gets the config only if it is retained.
	p.waitState(0, "led", anyValue)
	c := decodeHAConfig(t, retained(t, s, haConfigTopic(t, "demo")))

	status, _ := subjects.DeviceTopic("demo", subjects.DeviceStatus)
	if ids, _ := c.Dev["identifiers"].([]any); len(ids) != 1 || ids[0] != "demo" {
		t.Errorf("dev.identifiers: got %v, want [demo]", c.Dev["identifiers"])
	}
	if c.Dev["name"] != "Demo" || c.Dev["model"] != "test" || c.Dev["sw_version"] != jotunheim.FirmwareVersion || str(c.Dev["manufacturer"]) == "" {
		t.Errorf("dev: got %v", c.Dev)
	}
	if c.O["name"] != "jotunheim" || c.O["sw_version"] != jotunheim.FirmwareVersion || !strings.HasPrefix(str(c.O["support_url"]), "https://") {
		t.Errorf("o: got %v", c.O)
	}
	if len(c.Availability) != 1 || c.Availability[0]["topic"] != status ||
		c.Availability[0]["payload_available"] != "online" || c.Availability[0]["payload_not_available"] != "offline" {
		t.Errorf("availability: got %v, want the status topic %s with online/offline", c.Availability, status)
	}
	// Every component: a platform and a unique id; topics where the
	// platform requires them.
	needs := map[string][]string{
		"sensor": {"state_topic"}, "binary_sensor": {"state_topic"},
		"switch": {"command_topic", "state_topic"}, "light": {"command_topic", "state_topic"},
		"fan": {"command_topic", "state_topic"}, "button": {"command_topic"},
	}
	for key, cmp := range c.Cmps {
		plat := str(cmp["p"])
		req, known := needs[plat]
		if !known {
			t.Errorf("cmps.%s: platform %q", key, plat)
		}
		if str(cmp["unique_id"]) == "" {
			t.Errorf("cmps.%s: no unique_id", key)
		}
		for _, k := range req {
			if str(cmp[k]) == "" {
				t.Errorf("cmps.%s (%s): no %s", key, plat, k)
			}
		}
	}
	stateTopic := func(e string) string { s, _ := subjects.DeviceTopic("demo", subjects.DeviceState, e); return s }
	setTopic := func(e string) string { s, _ := subjects.DeviceTopic("demo", subjects.DeviceSet, e); return s }
	tests := []struct {
		key, platform, deviceClass, unit string
	}{
		{"temperature", "sensor", "temperature", "°C"},
		{"humidity", "sensor", "humidity", "%"},
		{"pressure", "sensor", "atmospheric_pressure", "hPa"},
		{"motion", "binary_sensor", "motion", ""},
		{"led", "light", "", ""},
		{"relay", "switch", "", ""},
		{"fan", "fan", "", ""},
	}
	for _, tc := range tests {
		cmp, ok := c.Cmps[tc.key]
		if !ok {
			t.Errorf("cmps: no %s (have %v)", tc.key, keys(c.Cmps))
			continue
		}
		if got := str(cmp["p"]); got != tc.platform {
			t.Errorf("cmps.%s.p: got %q, want %q", tc.key, got, tc.platform)
		}
		if got := str(cmp["unique_id"]); got != "demo_"+tc.key {
			t.Errorf("cmps.%s.unique_id: got %q, want demo_%s", tc.key, got, tc.key)
		}
		if got := str(cmp["device_class"]); got != tc.deviceClass {
			t.Errorf("cmps.%s.device_class: got %q, want %q", tc.key, got, tc.deviceClass)
		}
		if got := str(cmp["unit_of_measurement"]); got != tc.unit {
			t.Errorf("cmps.%s.unit_of_measurement: got %q, want %q", tc.key, got, tc.unit)
		}
		if got := str(cmp["state_topic"]); got != stateTopic(tc.key) {
			t.Errorf("cmps.%s.state_topic: got %q, want %q", tc.key, got, stateTopic(tc.key))
		}
		if tc.platform == "sensor" && cmp["value_template"] != "{{ value_json.value }}" {
			t.Errorf("cmps.%s.value_template: got %v", tc.key, cmp["value_template"])
		}
		if tc.platform == "switch" || tc.platform == "light" || tc.platform == "fan" {
			if got := str(cmp["command_topic"]); got != setTopic(tc.key) || cmp["payload_on"] != "ON" || cmp["payload_off"] != "OFF" {
				t.Errorf("cmps.%s: command_topic %q (want %q), payload_on %v, payload_off %v", tc.key, got, setTopic(tc.key), cmp["payload_on"], cmp["payload_off"])
			}
		}
	}
	if b := c.Cmps["reboot"]; str(b["p"]) != "button" || b["command_topic"] != setTopic("reboot") || b["payload_press"] != "PRESS" || b["entity_category"] != "config" {
		t.Errorf("cmps.reboot: got %v", b)
	}
	if d := c.Cmps["firmware"]; str(d["p"]) != "sensor" || d["entity_category"] != "diagnostic" || !strings.Contains(str(d["value_template"]), jotunheim.FirmwareVersion) {
		t.Errorf("cmps.firmware: got %v", d)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func TestHAOnlineResendsDiscovery(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "ha1")
	runAgent(t, testConfig(t, s, "ha1"))
	p.waitState(0, "led", anyValue)
	topic := haConfigTopic(t, "ha1")
	x := subscribe(t, s, topic)
	x.next("retained discovery config", topicIs(topic))

	from := p.mark()
	ha := bareClient(t, s)
	status, _ := subjects.HAStatusTopic(subjects.HADiscoveryPrefix)
	publish(t, ha, status, subjects.HAOnline)
	c := decodeHAConfig(t, string(x.next("discovery config after Home Assistant's online", topicIs(topic)).Payload()))
	if _, ok := c.Cmps["led"]; !ok {
		t.Errorf("resent config lacks led: %v", keys(c.Cmps))
	}
	// Then the states, so that Home Assistant shows current values.
	p.waitState(from, "temperature", anyValue)
}

func TestHASetTopicDrivesActuators(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "ha2")
	r := runAgent(t, testConfig(t, s, "ha2"))
	p.waitState(0, "led", anyValue)
	ha := bareClient(t, s)
	set := func(e string) string { s, _ := subjects.DeviceTopic("ha2", subjects.DeviceSet, e); return s }
	on := func(want bool, level float64) func(any) bool {
		return func(v any) bool {
			m, _ := v.(map[string]any)
			return m["on"] == want && m["level"] == level
		}
	}

	tests := []struct {
		name, entity, payload string
		want                  func(any) bool
	}{
		{"LED on", "led", "ON", on(true, 1)},
		{"LED dimmed", "led", "0.25", on(true, 0.25)},
		{"LED off as false", "led", "false", on(false, 0)},
		{"relay on as 1", "relay", "1", on(true, 1)},
		{"relay off", "relay", "OFF", on(false, 0)},
		{"fan at half speed", "fan", "0.5", on(true, 0.5)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			from := p.mark()
			publish(t, ha, set(tc.entity), tc.payload)
			p.waitState(from, tc.entity, tc.want)
		})
	}

	// Bad payloads are counted and dropped; the agent goes on.
	bad := r.agent.Stats().Bad
	for _, tc := range []struct{ entity, payload string }{
		{"led", "bright"}, {"relay", "0.5"}, {"nosuch", "ON"}, {"reboot", "ON"},
	} {
		publish(t, ha, set(tc.entity), tc.payload)
	}
	eventually(t, "4 bad set payloads counted", func() bool { return r.agent.Stats().Bad == bad+4 })
	from := p.mark()
	publish(t, ha, set("led"), "ON")
	p.waitState(from, "led", on(true, 1))

	// A press on the reboot button reboots through the command queue.
	publish(t, ha, set("reboot"), "PRESS")
	if err := r.wait(t); !errors.Is(err, jotunheim.ErrReboot) {
		t.Fatalf("Run after PRESS: got %v, want ErrReboot", err)
	}
}

func TestHAUpdateBoardRemovesComponent(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "ha3")
	r := runAgent(t, testConfig(t, s, "ha3"))
	p.waitState(0, "relay", anyValue)
	topic := haConfigTopic(t, "ha3")
	x := subscribe(t, s, topic)
	x.next("retained discovery config", topicIs(topic))

	bc := hardware.SimBoardConfig()
	bc.Actuators = slices.DeleteFunc(bc.Actuators, func(a hardware.ActuatorConfig) bool { return a.Name == "relay" })
	if err := r.agent.UpdateBoard(bc); err != nil {
		t.Fatal(err)
	}
	// First an update where the relay keeps only its platform (Home
	// Assistant's way to remove one component of a device), then the
	// config without it.
	removal := decodeHAConfig(t, string(x.next("removal update", topicIs(topic)).Payload()))
	if got := removal.Cmps["relay"]; len(got) != 1 || got["p"] != "switch" {
		t.Errorf("removal update: cmps.relay = %v, want only {p: switch}", got)
	}
	if _, ok := removal.Cmps["led"]; !ok {
		t.Errorf("removal update dropped led: %v", keys(removal.Cmps))
	}
	after := decodeHAConfig(t, string(x.next("config after removal", topicIs(topic)).Payload()))
	if _, ok := after.Cmps["relay"]; ok {
		t.Errorf("config after removal still has the relay")
	}
	final := decodeHAConfig(t, retained(t, s, topic))
	if _, ok := final.Cmps["relay"]; ok || final.Cmps["led"] == nil {
		t.Errorf("retained config after removal: %v", keys(final.Cmps))
	}
}

func TestHADisabledPublishesNothing(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "ha4")
	x := subscribe(t, s, subjects.HADiscoveryPrefix+"/#")
	ledState, _ := subjects.DeviceTopic("ha4", subjects.DeviceState, "led")
	states := subscribe(t, s, ledState)
	cfg := testConfig(t, s, "ha4")
	cfg.HomeAssistant.Enabled = false
	r := runAgent(t, cfg)
	p.waitState(0, "led", anyValue)
	// The agent publishes discovery before states on its one connection:
	// once the LED's state reached an MQTT subscriber, a config would have.
	states.next("led state", topicIs(ledState))
	select {
	case m := <-x.ch:
		t.Fatalf("discovery disabled, yet %s got %q", m.Topic(), m.Payload())
	default:
	}
	// Nor does it take commands on set topics.
	ha := bareClient(t, s)
	set, _ := subjects.DeviceTopic("ha4", subjects.DeviceSet, "led")
	publish(t, ha, set, "ON")
	res := p.command(jotunheim.CmdState, "led", nil, 0)
	if v := res.GetData().GetStructValue().AsMap()["value"]; v.(map[string]any)["on"] != false {
		t.Errorf("LED after a set with discovery off: got %v, want off", v)
	}
	if st := r.agent.Stats(); st.Bad != 0 {
		t.Errorf("stats: got %+v, want nothing bad", st)
	}
}

func TestHAConfigPrefix(t *testing.T) {
	if c := jotunheim.DefaultConfig(); !c.HomeAssistant.Enabled || c.HomeAssistant.Prefix != "homeassistant" {
		t.Fatalf("default: got %+v, want enabled with prefix homeassistant", c.HomeAssistant)
	}
	_, err := jotunheim.ParseConfig("dev.toml", []byte("[device]\nid = \"x\"\n[board]\nsim = true\n[homeassistant]\nprefix = \"a/b\"\n"))
	if !errors.Is(err, jotunheim.ErrConfig) || !strings.Contains(err.Error(), "dev.toml:6: homeassistant.prefix") {
		t.Fatalf("bad prefix: got %v", err)
	}
	c, err := jotunheim.ParseConfig("dev.toml", []byte("[device]\nid = \"x\"\n[board]\nsim = true\n[homeassistant]\nenabled = false\nprefix = \"ha\"\n"))
	if err != nil || c.HomeAssistant.Enabled || c.HomeAssistant.Prefix != "ha" {
		t.Fatalf("got %+v, %v", c.HomeAssistant, err)
	}
}

func TestParseSetPayload(t *testing.T) {
	tests := []struct {
		name, kind, payload string
		want                any
		wantErr             error
	}{
		{"ON", hardware.KindRelay, "ON", true, nil},
		{"off lower case", hardware.KindLED, "off", false, nil},
		{"true", hardware.KindLED, "true", true, nil},
		{"0", hardware.KindRelay, "0", false, nil},
		{"toggle", hardware.KindRelay, "TOGGLE", "toggle", nil},
		{"level", hardware.KindLED, "0.5", 0.5, nil},
		{"motor reverse", hardware.KindMotor, "-0.5", -0.5, nil},
		{"relay level", hardware.KindRelay, "0.5", nil, jotunheim.ErrSetPayload},
		{"word", hardware.KindLED, "bright", nil, jotunheim.ErrSetPayload},
		{"NaN", hardware.KindLED, "NaN", nil, jotunheim.ErrSetPayload},
		{"empty", hardware.KindLED, "", nil, jotunheim.ErrSetPayload},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := jotunheim.ParseSetPayload(tc.kind, []byte(tc.payload))
			if !errors.Is(err, tc.wantErr) || (err == nil && got != tc.want) {
				t.Fatalf("got %v, %v, want %v, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func FuzzParseSetPayload(f *testing.F) {
	for _, s := range []string{"ON", "OFF", "true", "0", "1", "0.5", "-1", "1e309", "NaN", "PRESS", " on ", ""} {
		f.Add(hardware.KindLED, []byte(s))
	}
	f.Fuzz(func(t *testing.T, kind string, payload []byte) {
		v, err := jotunheim.ParseSetPayload(kind, payload)
		if err != nil {
			if !errors.Is(err, jotunheim.ErrSetPayload) {
				t.Fatalf("error %v does not wrap ErrSetPayload", err)
			}
			return
		}
		switch x := v.(type) {
		case bool:
		case string:
			if x != "toggle" {
				t.Fatalf("string value %q", x)
			}
		case float64:
			if math.IsNaN(x) || math.IsInf(x, 0) || kind == hardware.KindRelay {
				t.Fatalf("level %v for %s", x, kind)
			}
		default:
			t.Fatalf("value of type %T", v)
		}
	})
}
