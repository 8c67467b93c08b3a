package jotunheim

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/hardware"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Features is what this agent implements of the protocol; "ha_discovery"
// is added when Home Assistant discovery is on.
var Features = []string{"commands", "telemetry", "events", "tool_calls", "config", "budgets", "store_and_forward"}

// sensorMeta is what the manifest says of each sensor kind: Home Assistant
// device class, value type and the BME280's measuring range.
var sensorMeta = map[string]struct {
	class, valueType string
	min, max         *float64
}{
	hardware.KindTemperature: {"temperature", "number", proto.Float64(-40), proto.Float64(85)},
	hardware.KindHumidity:    {"humidity", "number", proto.Float64(0), proto.Float64(100)},
	hardware.KindPressure:    {"atmospheric_pressure", "number", proto.Float64(300), proto.Float64(1100)},
	hardware.KindMotion:      {"motion", "boolean", nil, nil},
}

// actuatorMeta is what the manifest says of each actuator kind.
var actuatorMeta = map[string]struct {
	class   string
	accepts []string
}{
	hardware.KindLED:   {"light", []string{"boolean", "number 0..1", `string "on"|"off"|"toggle"`}},
	hardware.KindRelay: {"switch", []string{"boolean", "number 0|1", `string "on"|"off"|"toggle"`}},
	hardware.KindMotor: {"fan", []string{"number -1..1", `object {speed 0..1, direction "forward"|"reverse"}`, "boolean", `string "on"|"off"|"toggle"`}},
}

// Manifest returns the manifest the agent announces, built from its board
// and settings (reason and request_id unset).
func (a *Agent) Manifest() *jv1.Manifest {
	dev := a.hw.device()
	bc, info := dev.Config(), dev.Info()
	set := a.Settings()
	name := a.cfg.Device.Name
	if name == "" {
		name = a.cfg.Device.ID
	}
	m := &jv1.Manifest{
		DeviceId:        a.cfg.Device.ID,
		Name:            name,
		Model:           a.cfg.Device.Model,
		FirmwareVersion: FirmwareVersion,
		Protocol:        proto.Clone(wire.Version).(*jv1.ProtocolVersion),
		Features:        features(a.cfg),
		Limits: &jv1.Limits{
			MaxMessageBytes:   uint32(a.cfg.Limits.MaxMessageBytes),
			MaxQueuedCommands: uint32(a.cfg.Limits.MaxQueuedCommands),
			MemoryBytes:       uint64(a.cfg.Limits.MemoryMax),
			MemoryWarnBytes:   uint64(a.cfg.Limits.MemoryWarn),
			// The agent's system memory figures and budgets, as configured.
			SystemMemoryWarnBytes:  uint64(a.cfg.Limits.SystemMemoryWarn),
			SystemMemoryMinBytes:   uint64(a.cfg.Limits.SystemMemoryMin),
			BandwidthBudgetBytes:   uint64(a.cfg.Limits.BandwidthBudget),
			BandwidthWindowSeconds: uint32(a.cfg.Limits.BandwidthWindow / time.Second),
			SpoolMaxMessages:       uint32(a.cfg.Telemetry.SpoolMaxMessages),
			SpoolMaxBytes:          uint64(a.cfg.Telemetry.SpoolMaxBytes),
		},
		HeartbeatSeconds: set.HeartbeatSeconds,
		TelemetrySeconds: set.TelemetrySeconds,
		Streams:          a.streamSources(),
	}
	if m.Model == "" {
		m.Model = "jotunheim-" + bc.Backend
	}
	ifaces := map[string]bool{}
	for _, p := range info.Pins {
		m.Pins = append(m.Pins, &jv1.Pin{Name: p.Name, Number: int32(p.Number), Mode: p.Mode})
		ifaces["gpio"] = true
	}
	for _, s := range info.Sensors {
		meta := sensorMeta[s.Kind]
		vt := meta.valueType
		if vt == "" {
			vt = "number"
		}
		m.Sensors = append(m.Sensors, &jv1.Sensor{Name: s.Name, Kind: s.Kind, Unit: s.Unit,
			DeviceClass: meta.class, ValueType: vt, Min: meta.min, Max: meta.max})
		if s.Driver == hardware.DriverBME280 || s.Driver == hardware.DriverBMP280 {
			ifaces["i2c"] = true
		}
	}
	for _, s := range diagSensors { // the agent's own figures (budget.go)
		m.Sensors = append(m.Sensors, proto.Clone(s).(*jv1.Sensor))
	}
	for _, ac := range bc.Actuators {
		meta := actuatorMeta[ac.Kind]
		m.Actuators = append(m.Actuators, &jv1.Actuator{Name: ac.Name, Kind: ac.Kind, Accepts: meta.accepts, DeviceClass: meta.class})
		if ac.Kind != hardware.KindRelay {
			ifaces["pwm"] = true
		}
	}
	for _, i := range []string{"gpio", "i2c", "pwm"} {
		if ifaces[i] {
			m.Interfaces = append(m.Interfaces, i)
		}
	}
	return m
}

// publishManifest sends the manifest with reason (and the request id of a
// caps request).
func (a *Agent) publishManifest(reason jv1.Manifest_Reason, requestID string) error {
	m := a.Manifest()
	m.Reason, m.RequestId = reason, requestID
	if err := wire.ValidateManifest(a.cfg.Device.ID, m); err != nil {
		return err // a board the platform would refuse: say so here
	}
	return a.publish(a.topics.manifest, 1, false, m)
}

// UpdateBoard replaces the agent's board with bc (a sensor or actuator
// added or removed), republishes the manifest with reason UPDATE and the
// new board's states, and clears the retained states of entities that are
// gone. Outputs of the new board start in their configured state. If bc
// cannot be opened the old board is kept and the error returned.
func (a *Agent) UpdateBoard(bc hardware.BoardConfig) error {
	if err := checkDiagNames(bc); err != nil {
		return fmt.Errorf("update board: %w", err)
	}
	before := a.entities()
	if err := a.hw.replace(bc); err != nil {
		return fmt.Errorf("update board: %w", err)
	}
	after := a.entities()
	for e := range before {
		if !after[e] {
			a.clearState(e)
		}
	}
	a.log.Info("board updated", "board", bc.Name)
	if !a.online.Load() {
		return nil // the next connect announces it
	}
	if err := a.publishManifest(jv1.Manifest_REASON_UPDATE, ""); err != nil {
		return fmt.Errorf("update board: publish manifest: %w", err)
	}
	a.publishDiscovery()
	a.publishStates(true)
	return nil
}

// entities returns the names of the board's sensors and actuators.
func (a *Agent) entities() map[string]bool {
	bc := a.hw.device().Config()
	out := map[string]bool{}
	for _, s := range bc.Sensors {
		out[s.Name] = true
	}
	for _, ac := range bc.Actuators {
		out[ac.Name] = true
	}
	return out
}

// clearState deletes entity's retained state (an empty retained message).
func (a *Agent) clearState(entity string) {
	a.mu.Lock()
	delete(a.states, entity)
	a.mu.Unlock()
	topic, err := subjects.DeviceTopic(a.cfg.Device.ID, subjects.DeviceState, entity)
	if err != nil {
		return
	}
	if err := a.publishRaw(topic, 0, true, nil); err != nil && err != errNotConnected {
		a.log.Warn("clear retained state", logEntity, entity, logErr, err)
	}
}

// publishStates publishes the state of every entity; with force, also
// those whose value did not change since the last publication.
func (a *Agent) publishStates(force bool) {
	dev := a.hw.device()
	for _, s := range dev.Config().Sensors {
		r, err := dev.ReadSensor(s.Name)
		if err != nil {
			a.log.Warn("read sensor", logEntity, s.Name, logErr, err)
			continue
		}
		a.publishState(s.Name, r.Value, r.Unit, r.At, force)
	}
	for _, st := range dev.Info().Actuators {
		a.publishState(st.Name, st, "", unixNow(), force)
	}
	a.publishDiagStates(force)
}

// publishState publishes entity's value (retained) if it changed or force.
func (a *Agent) publishState(entity string, value any, unit string, at float64, force bool) {
	v, err := toValue(value)
	if err != nil {
		a.log.Warn("state value", logEntity, entity, logErr, err)
		return
	}
	key, _ := json.Marshal(value)
	a.mu.Lock()
	same := a.states[entity] == string(key)
	a.states[entity] = string(key)
	a.mu.Unlock()
	if same && !force {
		return
	}
	topic, err := subjects.DeviceTopic(a.cfg.Device.ID, subjects.DeviceState, entity)
	if err != nil {
		a.log.Warn("state topic", logEntity, entity, logErr, err)
		return
	}
	// Telemetry: spooled while offline, throttled over the bandwidth budget.
	a.emit(topic, 0, true, &jv1.State{Entity: entity, Value: v, Unit: unit, At: at}, true)
}

// publishEvent publishes an event (QoS 1) as telemetry: spooled while
// offline, throttled over the bandwidth budget (spool.go).
func (a *Agent) publishEvent(kind, entity string, data any) {
	a.emitEvent(kind, entity, data, true)
}

// toValue converts v to a protobuf Value through its JSON form, so structs
// with JSON tags (hardware states) keep their field names.
func toValue(v any) (*structpb.Value, error) {
	switch x := v.(type) {
	case nil:
		return structpb.NewNullValue(), nil
	case bool:
		return structpb.NewBoolValue(x), nil
	case float64:
		return structpb.NewNumberValue(x), nil
	case string:
		return structpb.NewStringValue(x), nil
	case *structpb.Value:
		return x, nil
	}
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	var generic any
	if err := json.Unmarshal(b, &generic); err != nil {
		return nil, err
	}
	return structpb.NewValue(generic)
}

func unixNow() float64 { return float64(time.Now().UnixNano()) / 1e9 }

func features(cfg Config) []string {
	f := append([]string(nil), Features...)
	if cfg.HomeAssistant.Enabled {
		f = append(f, "ha_discovery")
	}
	if cfg.OTA.Dir != "" {
		f = append(f, "ota")
	}
	return f
}
