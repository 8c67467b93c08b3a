// Package wire is the Jotunheim device protocol as both ends speak it:
// protojson encoding of the proto/jotunheim/v1 messages, strict decoding of
// untrusted payloads with size caps, protocol version negotiation and
// manifest validation. The device agent and the platform's device service
// both use it, so the two ends cannot drift apart; docs/DEVICES.md writes
// the same rules down for firmware authors.
//
// It imports no NATS, MQTT or Lua: only the generated messages, protojson
// and subjects/ for names.
package wire

import (
	"errors"
	"fmt"
	"strings"

	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Version is the protocol version this build speaks.
var Version = &jv1.ProtocolVersion{Major: 1, Minor: 0}

// Size caps on payloads from the other end. A device may announce a lower
// max_message_bytes in its manifest's limits; the platform never sends it
// more.
const (
	// MaxMessageBytes caps every message but a manifest.
	MaxMessageBytes = 64 << 10
	// MaxManifestBytes caps a manifest.
	MaxManifestBytes = 256 << 10
	// MaxEntities caps the sensors plus actuators of one manifest.
	MaxEntities = 256
	// MaxPins caps the pins of one manifest.
	MaxPins = 256
	// maxText caps every free-text field of a manifest.
	maxText = 256
)

// ErrDecode marks a payload that is too big, not protojson of the expected
// message, or fails validation.
var ErrDecode = errors.New("bad device message")

var (
	unmarshal = protojson.UnmarshalOptions{DiscardUnknown: true}
	marshal   = protojson.MarshalOptions{}
)

// Encode returns the protojson of m, the payload of every device message.
func Encode(m proto.Message) ([]byte, error) { return marshal.Marshal(m) }

// Decode decodes the protojson payload data into m, refusing it when it is
// over max bytes (0: MaxMessageBytes) or not m's JSON form: wrong types,
// malformed JSON, duplicate fields. Unknown fields are ignored, so a newer
// minor version of the other end can add fields.
func Decode(data []byte, m proto.Message, max int) error {
	if max <= 0 {
		max = MaxMessageBytes
	}
	if len(data) > max {
		return fmt.Errorf("%w: %s of %d bytes is over the %d-byte limit", ErrDecode, name(m), len(data), max)
	}
	if err := unmarshal.Unmarshal(data, m); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrDecode, name(m), err)
	}
	return nil
}

func name(m proto.Message) string { return string(m.ProtoReflect().Descriptor().Name()) }

// Negotiate decides whether the platform accepts a device speaking
// version dev: a different major version is refused with the reason; a
// different minor one is accepted with a warning.
func Negotiate(dev *jv1.ProtocolVersion) (ok bool, reason string) {
	if dev == nil {
		return false, fmt.Sprintf("the manifest has no protocol version; this platform speaks %s", VersionString(Version))
	}
	if dev.GetMajor() != Version.GetMajor() {
		return false, fmt.Sprintf("protocol %s is not supported: this platform speaks %s (major versions must match)",
			VersionString(dev), VersionString(Version))
	}
	if dev.GetMinor() != Version.GetMinor() {
		return true, fmt.Sprintf("protocol %s differs from this platform's %s in its minor version: features one side lacks are not used",
			VersionString(dev), VersionString(Version))
	}
	return true, ""
}

// VersionString formats v as major.minor.
func VersionString(v *jv1.ProtocolVersion) string {
	return fmt.Sprintf("%d.%d", v.GetMajor(), v.GetMinor())
}

// DecodeManifest decodes and validates a manifest that arrived on device
// id's topic.
func DecodeManifest(id string, data []byte) (*jv1.Manifest, error) {
	m := &jv1.Manifest{}
	if err := Decode(data, m, MaxManifestBytes); err != nil {
		return nil, err
	}
	if err := ValidateManifest(id, m); err != nil {
		return nil, err
	}
	return m, nil
}

// ValidateManifest checks a manifest from device id: its device_id is id,
// every entity and pin is named validly and once, counts and text fields
// are within their caps. The error names the field.
func ValidateManifest(id string, m *jv1.Manifest) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: manifest of device %q: %s", ErrDecode, id, fmt.Sprintf(format, args...))
	}
	if m.GetDeviceId() != id {
		return bad("device_id %q does not match the topic's device id", m.GetDeviceId())
	}
	for field, v := range map[string]string{"name": m.GetName(), "model": m.GetModel(),
		"manufacturer": m.GetManufacturer(), "firmware_version": m.GetFirmwareVersion()} {
		if len(v) > maxText {
			return bad("%s is %d bytes: at most %d", field, len(v), maxText)
		}
	}
	if n := len(m.GetSensors()) + len(m.GetActuators()); n > MaxEntities {
		return bad("%d sensors and actuators: at most %d", n, MaxEntities)
	}
	if len(m.GetPins()) > MaxPins {
		return bad("%d pins: at most %d", len(m.GetPins()), MaxPins)
	}
	if len(m.GetInterfaces())+len(m.GetFeatures()) > MaxPins {
		return bad("too many interfaces and features")
	}
	seen := map[string]string{}
	entity := func(kind, n string, texts ...string) error {
		if err := subjects.ValidEntity(n); err != nil {
			return bad("%s: %v", kind, err)
		}
		if prev, dup := seen[strings.ToLower(n)]; dup {
			return bad("%s %q has the name of %s", kind, n, prev)
		}
		seen[strings.ToLower(n)] = kind + " " + n
		for _, t := range texts {
			if len(t) > maxText {
				return bad("%s %q: a field is %d bytes: at most %d", kind, n, len(t), maxText)
			}
		}
		return nil
	}
	for _, s := range m.GetSensors() {
		if err := entity("sensor", s.GetName(), s.GetKind(), s.GetUnit(), s.GetDeviceClass(), s.GetValueType()); err != nil {
			return err
		}
		if vt := s.GetValueType(); vt != "" && vt != "number" && vt != "boolean" && vt != "string" {
			return bad("sensor %q: value_type %q must be number, boolean or string", s.GetName(), vt)
		}
	}
	for _, a := range m.GetActuators() {
		if err := entity("actuator", a.GetName(), append([]string{a.GetKind(), a.GetDeviceClass()}, a.GetAccepts()...)...); err != nil {
			return err
		}
		if len(a.GetAccepts()) > 16 {
			return bad("actuator %q: %d accepts entries: at most 16", a.GetName(), len(a.GetAccepts()))
		}
	}
	pins := map[string]bool{}
	for _, p := range m.GetPins() {
		if err := subjects.ValidEntity(p.GetName()); err != nil {
			return bad("pin: %v", err)
		}
		if pins[p.GetName()] {
			return bad("pin %q appears twice", p.GetName())
		}
		pins[p.GetName()] = true
	}
	for _, s := range append(append([]string{}, m.GetInterfaces()...), m.GetFeatures()...) {
		if len(s) > 64 {
			return bad("interface or feature %.20q… is over 64 bytes", s)
		}
	}
	return validateStreams(m.GetStreams(), bad)
}

// DecodeCommand decodes a Command from the platform, refusing one without
// an id or a name.
func DecodeCommand(data []byte, max int) (*jv1.Command, error) {
	c := &jv1.Command{}
	if err := Decode(data, c, max); err != nil {
		return nil, err
	}
	if c.GetId() == "" || c.GetName() == "" || len(c.GetId()) > 128 || len(c.GetName()) > 64 {
		return nil, fmt.Errorf("%w: a command needs an id (at most 128 bytes) and a name (at most 64)", ErrDecode)
	}
	return c, nil
}

// DecodeResult decodes a CommandResult from a device, refusing one without
// an id.
func DecodeResult(data []byte) (*jv1.CommandResult, error) {
	r := &jv1.CommandResult{}
	if err := Decode(data, r, 0); err != nil {
		return nil, err
	}
	if r.GetId() == "" || len(r.GetId()) > 128 {
		return nil, fmt.Errorf("%w: a command result needs an id of at most 128 bytes", ErrDecode)
	}
	return r, nil
}

// DecodeToolCall decodes a ToolCall from a device, refusing one without an
// id or a valid tool name.
func DecodeToolCall(data []byte) (*jv1.ToolCall, error) {
	c := &jv1.ToolCall{}
	if err := Decode(data, c, 0); err != nil {
		return nil, err
	}
	if c.GetId() == "" || len(c.GetId()) > 128 {
		return nil, fmt.Errorf("%w: a tool call needs an id of at most 128 bytes", ErrDecode)
	}
	if err := subjects.ValidToolName(c.GetTool()); err != nil {
		return nil, fmt.Errorf("%w: tool call %q: %v", ErrDecode, c.GetId(), err)
	}
	return c, nil
}

// DecodeState decodes a State that arrived on the state topic of entity,
// refusing one whose entity field names another.
func DecodeState(entity string, data []byte) (*jv1.State, error) {
	s := &jv1.State{}
	if err := Decode(data, s, 0); err != nil {
		return nil, err
	}
	if s.GetEntity() != "" && s.GetEntity() != entity {
		return nil, fmt.Errorf("%w: state on the topic of %q names entity %q", ErrDecode, entity, s.GetEntity())
	}
	s.Entity = entity
	return s, nil
}

// DecodeEvent decodes an Event, refusing one without a kind.
func DecodeEvent(data []byte) (*jv1.Event, error) {
	e := &jv1.Event{}
	if err := Decode(data, e, 0); err != nil {
		return nil, err
	}
	if e.GetKind() == "" || len(e.GetKind()) > 64 || len(e.GetEntity()) > 64 {
		return nil, fmt.Errorf("%w: an event needs a kind of at most 64 bytes", ErrDecode)
	}
	return e, nil
}

// Presence parses a status payload: online or offline, nothing else.
func Presence(data []byte) (online bool, err error) {
	switch string(data) {
	case subjects.PresenceOnline:
		return true, nil
	case subjects.PresenceOffline:
		return false, nil
	}
	return false, fmt.Errorf("%w: status %.32q must be %q or %q", ErrDecode, data, subjects.PresenceOnline, subjects.PresenceOffline)
}
