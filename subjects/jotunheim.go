package subjects

import (
	"fmt"
	"strings"
)

// Device message kinds: the levels after jotunheim/<id>/ of a device's MQTT
// topics, and after jotunheim.<id>. of their NATS subjects. docs/DEVICES.md
// gives each one's direction, QoS, retain flag and payload.
const (
	// DeviceStatus carries presence: "online" (retained, on connect) or
	// "offline" (the will, and on a clean stop).
	DeviceStatus = "status"
	// DeviceManifest carries the device's Manifest.
	DeviceManifest = "manifest"
	// DeviceNegotiation carries the platform's Negotiation.
	DeviceNegotiation = "negotiation"
	// DeviceCapsGet carries the platform's CapsRequest.
	DeviceCapsGet = "caps/get"
	// DeviceCmd carries commands to the device.
	DeviceCmd = "cmd"
	// DeviceResult carries the device's CommandResults.
	DeviceResult = "result"
	// DeviceState prefixes state/<entity>, an entity's retained State.
	DeviceState = "state"
	// DeviceEvent carries the device's Events.
	DeviceEvent = "event"
	// DeviceHeartbeat carries the device's Heartbeats.
	DeviceHeartbeat = "heartbeat"
	// DeviceCall carries the device's ToolCalls.
	DeviceCall = "call"
	// DeviceCallResult carries the platform's ToolResults.
	DeviceCallResult = "call/result"
	// DeviceSet prefixes set/<entity>: a plain command payload for one
	// entity ("ON", "OFF", "PRESS", a number), as Home Assistant sends it
	// on an entity's command topic.
	DeviceSet = "set"
	// DeviceOTAOffer carries the platform's OTAOffer.
	DeviceOTAOffer = "ota/offer"
	// DeviceOTAGet carries the device's OTAChunkRequests.
	DeviceOTAGet = "ota/get"
	// DeviceOTAChunk carries the platform's OTAChunks.
	DeviceOTAChunk = "ota/chunk"
	// DeviceOTAProgress carries the device's OTAProgress reports.
	DeviceOTAProgress = "ota/progress"
	// DeviceStreamCtl carries the platform's StreamControls (open, credit,
	// close) for the device's stream sources.
	DeviceStreamCtl = "stream/ctl"
	// DeviceStreamData carries the device's StreamChunks.
	DeviceStreamData = "stream/data"
)

// Presence payloads on a device's status topic.
const (
	PresenceOnline  = "online"
	PresenceOffline = "offline"
)

// deviceKinds are the kinds a device topic may end in (state takes an entity).
var deviceKinds = []string{DeviceStatus, DeviceManifest, DeviceNegotiation, DeviceCapsGet, DeviceCmd,
	DeviceResult, DeviceState, DeviceEvent, DeviceHeartbeat, DeviceCall, DeviceCallResult, DeviceSet,
	DeviceOTAOffer, DeviceOTAGet, DeviceOTAChunk, DeviceOTAProgress, DeviceStreamCtl, DeviceStreamData}

// DeviceUplinkKinds are the kinds a device publishes (device to platform),
// and DeviceDownlinkKinds those it subscribes to (platform to device): the
// jotunheim service's permissions, and what the gateway's device link lets
// a device send and forwards to it, are built from these two lists.
var (
	DeviceUplinkKinds = []string{DeviceStatus, DeviceManifest, DeviceResult, DeviceState, DeviceEvent,
		DeviceHeartbeat, DeviceCall, DeviceOTAGet, DeviceOTAProgress, DeviceStreamData}
	DeviceDownlinkKinds = []string{DeviceNegotiation, DeviceCapsGet, DeviceCmd, DeviceCallResult, DeviceSet,
		DeviceOTAOffer, DeviceOTAChunk, DeviceStreamCtl}
)

// Device link claims: when a device's gRPC link opens on a gateway, the
// gateway publishes a claim on DeviceLinkClaim(id), and every gateway
// closes an older link of that device, as the MQTT listener closes an
// older session of a client id cluster-wide: a device has one link across
// all gateways, and a stale link that ends late does not mark it offline.
const (
	DeviceLinkClaimPrefix = "loki.gateway.link"
	// DeviceLinkClaimAll is what every gateway subscribes to.
	DeviceLinkClaimAll = DeviceLinkClaimPrefix + ".*"
)

// DeviceLinkClaim returns the claim subject of device id's link.
func DeviceLinkClaim(id string) (string, error) {
	if err := ValidDeviceID(id); err != nil {
		return "", err
	}
	return DeviceLinkClaimPrefix + "." + id, nil
}

// entityKind reports whether topics of kind end in an entity.
func entityKind(kind string) bool { return kind == DeviceState || kind == DeviceSet }

func validDeviceKind(kind string) error {
	for _, k := range deviceKinds {
		if k == kind {
			return nil
		}
	}
	return fmt.Errorf("%w: unknown device message kind %q", ErrInvalidToken, kind)
}

// ValidEntity returns an error unless name can name a device's sensor or
// actuator: 1 to 64 of [A-Za-z0-9_-], like a device id.
func ValidEntity(name string) error {
	if !deviceID.MatchString(name) {
		return fmt.Errorf("%w: entity name %q must be 1 to 64 of [A-Za-z0-9_-]", ErrInvalidToken, name)
	}
	return nil
}

// DeviceTopic returns the MQTT topic jotunheim/<id>/<kind>; for
// DeviceState, entity names the entity (jotunheim/<id>/state/<entity>).
func DeviceTopic(id, kind string, entity ...string) (string, error) {
	levels, err := deviceLevels(id, kind, entity)
	if err != nil {
		return "", err
	}
	return strings.Join(levels, "/"), nil
}

// DeviceSubject returns the NATS subject of DeviceTopic(id, kind, entity...),
// as the server's MQTT listener maps it: jotunheim.<id>.<kind>.
func DeviceSubject(id, kind string, entity ...string) (string, error) {
	levels, err := deviceLevels(id, kind, entity)
	if err != nil {
		return "", err
	}
	return strings.Join(levels, "."), nil
}

func deviceLevels(id, kind string, entity []string) ([]string, error) {
	if err := ValidDeviceID(id); err != nil {
		return nil, err
	}
	if err := validDeviceKind(kind); err != nil {
		return nil, err
	}
	levels := append([]string{DevicePrefix, id}, strings.Split(kind, "/")...)
	switch {
	case entityKind(kind) && len(entity) == 1:
		if err := ValidEntity(entity[0]); err != nil {
			return nil, err
		}
		return append(levels, entity[0]), nil
	case entityKind(kind):
		return nil, fmt.Errorf("%w: a %s topic needs one entity", ErrInvalidToken, kind)
	case len(entity) > 0:
		return nil, fmt.Errorf("%w: only state and set topics take an entity", ErrInvalidToken)
	}
	return levels, nil
}

// DeviceSubjectAll returns the subscription subject of kind for every
// device: jotunheim.*.<kind> (jotunheim.*.state.* for DeviceState).
func DeviceSubjectAll(kind string) (string, error) {
	if err := validDeviceKind(kind); err != nil {
		return "", err
	}
	s := DevicePrefix + ".*." + strings.ReplaceAll(kind, "/", ".")
	if entityKind(kind) {
		s += ".*"
	}
	return s, nil
}

// DeviceSubscription returns the subscription subject of kind for device
// id alone: jotunheim.<id>.<kind> (jotunheim.<id>.state.* for DeviceState,
// jotunheim.<id>.set.* for DeviceSet).
func DeviceSubscription(id, kind string) (string, error) {
	if err := ValidDeviceID(id); err != nil {
		return "", err
	}
	if err := validDeviceKind(kind); err != nil {
		return "", err
	}
	s := DevicePrefix + "." + id + "." + strings.ReplaceAll(kind, "/", ".")
	if entityKind(kind) {
		s += ".*"
	}
	return s, nil
}

// DeviceTopicSubject maps topic, a topic relative to device id's tree as a
// gRPC device link carries it ("status", "state/led", "call/result"), to
// its NATS subject, kind and entity. It refuses what DeviceSubject would
// not build: an unknown kind, a bad entity, wildcards, empty levels.
func DeviceTopicSubject(id, topic string) (subj, kind, entity string, err error) {
	if err := ValidDeviceID(id); err != nil {
		return "", "", "", err
	}
	if topic == "" || strings.ContainsAny(topic, ".*> \t") {
		return "", "", "", fmt.Errorf("%w: device topic %q", ErrInvalidToken, topic)
	}
	subj = DevicePrefix + "." + id + "." + strings.ReplaceAll(topic, "/", ".")
	if _, kind, entity, err = ParseDeviceSubject(subj); err != nil {
		return "", "", "", err
	}
	return subj, kind, entity, nil
}

// ParseDeviceSubject splits a device subject into the device id, the kind
// and, for state, the entity. It refuses anything DeviceSubject would not
// build, so the id it returns is the one the server let publish there.
func ParseDeviceSubject(subj string) (id, kind, entity string, err error) {
	toks := strings.Split(subj, ".")
	if len(toks) < 3 || toks[0] != DevicePrefix {
		return "", "", "", fmt.Errorf("%w: %q is not a device subject", ErrInvalidToken, subj)
	}
	id, kind = toks[1], strings.Join(toks[2:], "/")
	if len(toks) == 4 && entityKind(toks[2]) {
		kind, entity = toks[2], toks[3]
		if err := ValidEntity(entity); err != nil {
			return "", "", "", err
		}
	} else if entityKind(kind) {
		return "", "", "", fmt.Errorf("%w: %q: a %s subject needs one entity", ErrInvalidToken, subj, kind)
	}
	if err := ValidDeviceID(id); err != nil {
		return "", "", "", err
	}
	if err := validDeviceKind(kind); err != nil {
		return "", "", "", err
	}
	return id, kind, entity, nil
}

// The device service's own subjects, on a root of its own so that no
// device id can collide with them.
const (
	// JotunheimService is the NATS micro service name of the device service.
	JotunheimService = "jotunheim"
	// DevicesPrefix prefixes every device service subject.
	DevicesPrefix = "devices"
	// DevicesList answers with a DeviceList of every known device.
	DevicesList = DevicesPrefix + ".list"
	// DevicesGet answers with the Device named by a DeviceRequest.
	DevicesGet = DevicesPrefix + ".get"
	// DevicesCmd sends a CommandRequest's command to its device and answers
	// with the result's data, or the device's error.
	DevicesCmd = DevicesPrefix + ".cmd"
	// DevicesCaps asks an online device for its manifest again and answers
	// with the updated Device.
	DevicesCaps = DevicesPrefix + ".caps"
	// DevicesRemove forgets a device: its record and its tools.
	DevicesRemove = DevicesPrefix + ".remove"
	// DevicesOTAPublish records a signed release whose binary an admin put
	// in the firmware object store, after checking its signature.
	DevicesOTAPublish = DevicesPrefix + ".ota.publish"
	// DevicesOTAReleases answers the published releases.
	DevicesOTAReleases = DevicesPrefix + ".ota.releases"
	// DevicesOTARollout starts a rollout of a release to devices.
	DevicesOTARollout = DevicesPrefix + ".ota.rollout"
	// DevicesOTAStatus answers a rollout's state, or every rollout's.
	DevicesOTAStatus = DevicesPrefix + ".ota.status"
	// FirmwareBucket is the JetStream object store of release binaries.
	FirmwareBucket = "jotunheim_firmware"
	// OTABucket is the KV bucket of releases and rollouts (with each
	// device's state in them).
	OTABucket = "jotunheim_ota"
	// DevicesEventsPrefix prefixes devices.events.<id>.<kind>.
	DevicesEventsPrefix = DevicesPrefix + ".events"
	// DevicesEventsAll matches every device event.
	DevicesEventsAll = DevicesEventsPrefix + ".>"
	// DevicesBucket is the JetStream KV bucket of the device registry,
	// keyed by device id.
	DevicesBucket = "jotunheim_devices"
)

// DeviceEventKinds are the kinds of device events the service publishes.
var DeviceEventKinds = []string{"online", "offline", "manifest", "refused", "state", "event", "ota"}

// DeviceEventSubject returns devices.events.<id>.<kind>.
func DeviceEventSubject(id, kind string) (string, error) {
	if err := ValidDeviceID(id); err != nil {
		return "", err
	}
	for _, k := range DeviceEventKinds {
		if k == kind {
			return DevicesEventsPrefix + "." + id + "." + kind, nil
		}
	}
	return "", fmt.Errorf("%w: unknown device event kind %q", ErrInvalidToken, kind)
}

// DeviceEvents returns the subscription subject for device events filtered
// by device and kind; an empty id or kind matches all.
func DeviceEvents(id, kind string) (string, error) {
	d, k := "*", "*"
	if id != "" {
		if err := ValidDeviceID(id); err != nil {
			return "", err
		}
		d = id
	}
	if kind != "" {
		s, err := DeviceEventSubject("x", kind)
		if err != nil {
			return "", err
		}
		k = s[strings.LastIndexByte(s, '.')+1:]
	}
	return DevicesEventsPrefix + "." + d + "." + k, nil
}

// DeviceToolName returns the name of the Loki tool made from entity of
// device id: the id lower-cased with '-' as '_', then '_' and the entity
// likewise. It fails when that is not a valid tool name (an id that starts
// with a digit, or a name over 64 characters).
func DeviceToolName(id, entity string) (string, error) {
	if err := ValidDeviceID(id); err != nil {
		return "", err
	}
	if err := ValidEntity(entity); err != nil {
		return "", err
	}
	norm := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "-", "_") }
	name := norm(id) + "_" + norm(entity)
	if err := ValidToolName(name); err != nil {
		return "", fmt.Errorf("device %q entity %q: %w", id, entity, err)
	}
	return name, nil
}

// Home Assistant MQTT discovery (device-based): each device publishes one
// retained config under the discovery prefix, and Home Assistant announces
// itself on <prefix>/status.
const (
	// HADiscoveryPrefix is Home Assistant's default discovery prefix, the
	// one device logins may publish under.
	HADiscoveryPrefix = "homeassistant"
	// HAOnline is what Home Assistant publishes on its status topic when it
	// starts: devices then send their discovery config and states again.
	HAOnline = "online"
)

// HADeviceConfigTopic returns <prefix>/device/<id>/config, where device id
// publishes its retained discovery config.
func HADeviceConfigTopic(prefix, id string) (string, error) {
	if err := validHAPrefix(prefix); err != nil {
		return "", err
	}
	if err := ValidDeviceID(id); err != nil {
		return "", err
	}
	return prefix + "/device/" + id + "/config", nil
}

// HAStatusTopic returns <prefix>/status, Home Assistant's birth and will.
func HAStatusTopic(prefix string) (string, error) {
	if err := validHAPrefix(prefix); err != nil {
		return "", err
	}
	return prefix + "/status", nil
}

func validHAPrefix(prefix string) error {
	if !deviceID.MatchString(prefix) {
		return fmt.Errorf("%w: discovery prefix %q must be 1 to 64 of [A-Za-z0-9_-]", ErrInvalidToken, prefix)
	}
	return nil
}
