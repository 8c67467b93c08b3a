package jotunheim

// Home Assistant MQTT discovery, device-based: one retained config per
// device on <prefix>/device/<id>/config holding the device block ("dev"),
// the origin ("o"), availability tied to the device's status topic, and
// one component per entity under "cmps", each with its platform ("p") and
// a unique_id. Home Assistant reads the states the agent already publishes
// (jotunheim/<id>/state/<entity>, retained) and commands an actuator on
// jotunheim/<id>/set/<entity>; those commands run on the agent's command
// queue like the platform's. See docs/DEVICES.md, "Home Assistant".

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/loki-iot/loki/hardware"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/types/known/structpb"
)

// Home Assistant payloads and names.
const (
	haPayloadOn    = "ON"
	haPayloadOff   = "OFF"
	haPayloadPress = "PRESS"
	// haOrigin is the origin name in every discovery config.
	haOrigin = "jotunheim"
	// haSupportURL is the origin's support_url.
	haSupportURL = "https://github.com/loki-iot/loki"
	// haManufacturer is the device block's manufacturer.
	haManufacturer = "Loki"
	// haRebootKey is the reboot button's component key and set entity;
	// haFirmwareKey the firmware diagnostic's. An entity of the same name
	// wins: the built-in component is then left out.
	haRebootKey   = "reboot"
	haFirmwareKey = "firmware"
	// haCommandTimeoutMs bounds how long a command from Home Assistant may
	// wait in the queue: a switch flipped long after the click surprises.
	haCommandTimeoutMs = 10000
)

// Templates Home Assistant applies to a State payload ({"entity", "value",
// "unit", "at"}); an actuator's value is {"on", "level", ...}.
const (
	haValueTemplate    = "{{ value_json.value }}"
	haBoolTemplate     = "{{ 'ON' if value_json.value else 'OFF' }}"
	haOnTemplate       = "{{ 'ON' if value_json.value.on else 'OFF' }}"
	haLevelTemplate    = "{{ (value_json.value.level * 100) | round(0) | int }}"
	haLevelCmdTemplate = "{{ value / 100 }}"
)

// ErrSetPayload is a payload on a set topic that the agent cannot turn
// into a command.
var ErrSetPayload = errors.New("bad set payload")

// HomeAssistantConfig is the [homeassistant] table.
type HomeAssistantConfig struct {
	// Enabled publishes the discovery config and takes commands on
	// jotunheim/<id>/set/<entity>. Default true.
	Enabled bool `toml:"enabled"`
	// Prefix is Home Assistant's discovery prefix (default
	// "homeassistant"). A device login may publish only under the
	// default one; another prefix needs a login that allows it.
	Prefix string `toml:"prefix"`
}

// haState is what the agent remembers of its discovery: the components
// it last published (key → platform), so that those that left the
// manifest are removed the way Home Assistant documents it.
type haState struct {
	mu        sync.Mutex
	published map[string]string
	// fromHA marks queued commands that came from a set topic: their
	// result is logged, not published to the platform, which never asked.
	fromHA sync.Map // *jv1.Command → struct{}
	seq    atomic.Uint64
}

// haTopics are the Home Assistant topics of one device.
type haTopics struct {
	config, status, setPrefix, setFilter string
}

func newHATopics(id, prefix string) (haTopics, error) {
	config, err := subjects.HADeviceConfigTopic(prefix, id)
	if err != nil {
		return haTopics{}, err
	}
	status, err := subjects.HAStatusTopic(prefix)
	if err != nil {
		return haTopics{}, err
	}
	// DeviceTopic builds one entity's topic; the filter for all of them
	// replaces the entity level with MQTT's single-level wildcard.
	one, err := subjects.DeviceTopic(id, subjects.DeviceSet, "x")
	if err != nil {
		return haTopics{}, err
	}
	setPrefix := strings.TrimSuffix(one, "x")
	return haTopics{config: config, status: status, setPrefix: setPrefix, setFilter: setPrefix + "+"}, nil
}

// haEnabled reports whether discovery is on.
func (a *Agent) haEnabled() bool { return a.cfg.HomeAssistant.Enabled }

// haTopics returns the device's Home Assistant topics (validated with
// the config).
func (a *Agent) haTopics() haTopics {
	t, err := newHATopics(a.cfg.Device.ID, a.cfg.HomeAssistant.Prefix)
	if err != nil {
		panic(err) // Config.Validate checked the id and the prefix
	}
	return t
}

// haFilters adds the Home Assistant subscriptions to filters (QoS 0),
// when discovery is on.
func (a *Agent) haFilters(filters map[string]byte) {
	if !a.haEnabled() {
		return
	}
	t := a.haTopics()
	filters[t.setFilter] = 0
	filters[t.status] = 0
}

// handleHA takes a message on a set topic or on Home Assistant's status
// topic; it reports false for any other topic.
func (a *Agent) handleHA(topic string, payload []byte) bool {
	if !a.haEnabled() {
		return false
	}
	t := a.haTopics()
	switch {
	case topic == t.status:
		if strings.TrimSpace(string(payload)) == subjects.HAOnline && a.online.Load() {
			// Home Assistant (re)started: discovery first, then states.
			a.log.Info("Home Assistant is online: sending discovery and states again")
			a.publishDiscovery()
			a.publishStates(true)
		}
		return true
	case strings.HasPrefix(topic, t.setPrefix):
		a.handleSet(strings.TrimPrefix(topic, t.setPrefix), payload)
		return true
	}
	return false
}

// handleSet turns a set payload into a command on the queue, or counts
// and logs it as bad.
func (a *Agent) handleSet(entity string, payload []byte) {
	bad := func(err error) {
		a.bad.Add(1)
		a.log.Warn("bad command from Home Assistant: dropped", logEntity, trunc(entity), "payload", trunc(string(payload)), logErr, err)
	}
	if err := subjects.ValidEntity(entity); err != nil {
		bad(err)
		return
	}
	c := &jv1.Command{Id: "ha-" + strconv.FormatUint(a.ha.seq.Add(1), 10), TimeoutMs: haCommandTimeoutMs}
	kind, isActuator := a.actuatorKind(entity)
	switch {
	case isActuator:
		v, err := ParseSetPayload(kind, payload)
		if err != nil {
			bad(err)
			return
		}
		args, err := structpb.NewStruct(map[string]any{"value": v})
		if err != nil {
			bad(err)
			return
		}
		c.Name, c.Entity, c.Args = CmdSet, entity, args
	case entity == haRebootKey && !a.entities()[haRebootKey]:
		if strings.TrimSpace(string(payload)) != haPayloadPress {
			bad(fmt.Errorf("%w: the reboot button takes %q", ErrSetPayload, haPayloadPress))
			return
		}
		c.Name = CmdReboot
	default:
		bad(fmt.Errorf("%w: no actuator %q", ErrSetPayload, entity))
		return
	}
	a.ha.fromHA.Store(c, struct{}{})
	a.enqueue(c)
}

// haReply is reply for a command from Home Assistant: it reports whether
// c came from a set topic, and if so logs a failure (Home Assistant sees
// the outcome on the state topic).
func (a *Agent) haReply(c *jv1.Command, err error) bool {
	if _, ok := a.ha.fromHA.LoadAndDelete(c); !ok {
		return false
	}
	if err != nil {
		a.log.Warn("command from Home Assistant failed", logCmd, c.GetName(), logEntity, c.GetEntity(), logErr, err)
	}
	return true
}

// actuatorKind returns the kind of actuator name.
func (a *Agent) actuatorKind(name string) (string, bool) {
	for _, ac := range a.hw.device().Config().Actuators {
		if ac.Name == name {
			return ac.Kind, true
		}
	}
	return "", false
}

// ParseSetPayload parses what Home Assistant publishes on an actuator's
// set topic into the value of a set command: "ON"/"OFF" (any case, also
// "true"/"false", "1"/"0") as a boolean, "TOGGLE" as "toggle", and any
// other finite number as a level (an LED's brightness or a motor's speed,
// 0..1). It returns an error wrapping ErrSetPayload for anything else.
// The actuator checks the range when the command runs.
func ParseSetPayload(kind string, payload []byte) (any, error) {
	if len(payload) > 64 {
		return nil, fmt.Errorf("%w: %d bytes", ErrSetPayload, len(payload))
	}
	s := strings.TrimSpace(string(payload))
	switch strings.ToLower(s) {
	case "on", "true", "1":
		return true, nil
	case "off", "false", "0":
		return false, nil
	case "toggle":
		return "toggle", nil
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, fmt.Errorf("%w: %q: want ON, OFF, TOGGLE or a number", ErrSetPayload, trunc(s))
	}
	if kind == hardware.KindRelay {
		return nil, fmt.Errorf("%w: %q: a relay is ON or OFF", ErrSetPayload, trunc(s))
	}
	return f, nil
}

// haComponent is one entry of "cmps".
type haComponent map[string]any

// DiscoveryConfig returns the device's discovery config as Home Assistant
// reads it from <prefix>/device/<id>/config (without the removal of
// components that left the manifest: see publishDiscovery).
func (a *Agent) DiscoveryConfig() map[string]any {
	m := a.Manifest()
	id := a.cfg.Device.ID
	state := func(entity string) string {
		t, _ := subjects.DeviceTopic(id, subjects.DeviceState, entity)
		return t
	}
	set := func(entity string) string {
		t, _ := subjects.DeviceTopic(id, subjects.DeviceSet, entity)
		return t
	}
	uid := func(key string) string { return id + "_" + key }
	cmps := map[string]haComponent{}
	for _, s := range m.GetSensors() {
		c := haComponent{"name": s.GetName(), "unique_id": uid(s.GetName()), "state_topic": state(s.GetName())}
		if s.GetValueType() == "boolean" {
			c["p"] = "binary_sensor"
			c["value_template"] = haBoolTemplate
		} else {
			c["p"] = "sensor"
			c["value_template"] = haValueTemplate
			if s.GetValueType() == "number" {
				c["state_class"] = "measurement"
			}
			if u := haUnit(s.GetUnit()); u != "" {
				c["unit_of_measurement"] = u
			}
		}
		if s.GetDeviceClass() != "" {
			c["device_class"] = s.GetDeviceClass()
		}
		if s.GetKind() == KindDiagnostic {
			c["entity_category"] = "diagnostic" // the agent's own figures, not the board's
		}
		cmps[s.GetName()] = c
	}
	for _, ac := range m.GetActuators() {
		n := ac.GetName()
		c := haComponent{"name": n, "unique_id": uid(n), "command_topic": set(n), "state_topic": state(n),
			"payload_on": haPayloadOn, "payload_off": haPayloadOff}
		switch ac.GetKind() {
		case hardware.KindLED:
			// A light with brightness: Home Assistant's 0..100 is the LED's
			// level 0..1. With on_command_type "brightness" turning it on
			// sends only the brightness (100 without one), never an "ON"
			// that would reset a dimmed level to full.
			c["p"] = "light"
			c["state_value_template"] = haOnTemplate
			c["brightness_command_topic"] = set(n)
			c["brightness_command_template"] = haLevelCmdTemplate
			c["brightness_state_topic"] = state(n)
			c["brightness_value_template"] = haLevelTemplate
			c["brightness_scale"] = 100
			c["on_command_type"] = "brightness"
		case hardware.KindMotor:
			// A fan: on/off and a speed in percent (the direction stays
			// with Loki's tools).
			c["p"] = "fan"
			c["state_value_template"] = haOnTemplate
			c["percentage_command_topic"] = set(n)
			c["percentage_command_template"] = haLevelCmdTemplate
			c["percentage_state_topic"] = state(n)
			c["percentage_value_template"] = haLevelTemplate
		default: // relay, and any on/off output
			c["p"] = "switch"
			c["value_template"] = haOnTemplate
		}
		cmps[n] = c
	}
	entities := a.entities()
	if !entities[haRebootKey] {
		cmps[haRebootKey] = haComponent{"p": "button", "name": "Reboot", "unique_id": uid(haRebootKey),
			"command_topic": set(haRebootKey), "payload_press": haPayloadPress,
			"device_class": "restart", "entity_category": "config"}
	}
	for _, d := range a.haDiagnostics() {
		if entities[d.key] {
			continue
		}
		c := haComponent{"p": "sensor", "name": d.name, "unique_id": uid(d.key), "state_topic": d.stateTopic,
			"value_template": d.valueTemplate, "entity_category": "diagnostic"}
		if d.unit != "" {
			c["unit_of_measurement"] = d.unit
		}
		if d.deviceClass != "" {
			c["device_class"] = d.deviceClass
		}
		cmps[d.key] = c
	}
	return map[string]any{
		"dev": map[string]any{"identifiers": []string{id}, "name": m.GetName(), "manufacturer": haManufacturer,
			"model": m.GetModel(), "sw_version": m.GetFirmwareVersion()},
		"o": map[string]any{"name": haOrigin, "sw_version": m.GetFirmwareVersion(), "support_url": haSupportURL},
		"availability": []map[string]any{{"topic": a.topics.status,
			"payload_available": subjects.PresenceOnline, "payload_not_available": subjects.PresenceOffline}},
		"cmps": cmps,
	}
}

// haDiagnostic is a diagnostic sensor of the device itself.
type haDiagnostic struct {
	key, name, unit, deviceClass, stateTopic, valueTemplate string
}

// haDiagnostics lists the device's diagnostic sensors. The firmware
// version is a constant: its sensor reads the retained status topic and
// renders the version, so it needs no topic of its own. Figures the agent
// publishes as retained JSON (resource use, signal) belong here too, each
// with its topic and a template extracting the figure.
func (a *Agent) haDiagnostics() []haDiagnostic {
	fw, _ := json.Marshal(FirmwareVersion) // a JSON string is a Jinja string literal
	return []haDiagnostic{
		{key: haFirmwareKey, name: "Firmware", stateTopic: a.topics.status, valueTemplate: "{{ " + string(fw) + " }}"},
	}
}

// haUnit maps a sensor's unit to the one Home Assistant expects for its
// device class.
func haUnit(u string) string {
	if u == "%RH" {
		return "%"
	}
	return u
}

// publishDiscovery publishes the retained discovery config. Components
// that were published before and left the manifest are removed first as
// Home Assistant documents it: one update where such a component keeps
// only its platform ("p"), then the config without it.
func (a *Agent) publishDiscovery() {
	if !a.haEnabled() {
		return
	}
	cfg := a.DiscoveryConfig()
	cmps := cfg["cmps"].(map[string]haComponent)
	a.ha.mu.Lock()
	defer a.ha.mu.Unlock()
	topic := a.haTopics().config
	var gone []string
	for key := range a.ha.published {
		if _, ok := cmps[key]; !ok {
			gone = append(gone, key)
		}
	}
	slices.Sort(gone)
	if len(gone) > 0 {
		removal := maps.Clone(cfg)
		rc := maps.Clone(cmps)
		for _, key := range gone {
			rc[key] = haComponent{"p": a.ha.published[key]}
		}
		removal["cmps"] = rc
		if err := a.publishJSON(topic, removal); err != nil {
			a.logDiscoveryErr(err)
			return // try again on the next occasion, still knowing what is gone
		}
		a.log.Info("removed from Home Assistant", "components", gone)
	}
	if err := a.publishJSON(topic, cfg); err != nil {
		a.logDiscoveryErr(err)
		return
	}
	a.ha.published = map[string]string{}
	for key, c := range cmps {
		a.ha.published[key], _ = c["p"].(string)
	}
}

func (a *Agent) logDiscoveryErr(err error) {
	if !errors.Is(err, errNotConnected) {
		a.log.Warn("publish the Home Assistant discovery config", logErr, err)
	}
}

// publishJSON publishes v as JSON, retained, QoS 1.
func (a *Agent) publishJSON(topic string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return a.publishRaw(topic, 1, true, b)
}
