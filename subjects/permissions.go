package subjects

import (
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Permissions are what one identity may publish and subscribe to, as NATS
// subject patterns. They are built here, from the same constants and
// functions the components use, so that a renamed subject cannot leave a
// stale permission behind. An empty Allow list allows nothing.
type Permissions struct {
	PubAllow, PubDeny []string
	SubAllow, SubDeny []string
	// MQTTOnly restricts the identity to the MQTT listener.
	MQTTOnly bool
}

// AllowsPublish reports whether p lets its identity publish on every
// subject subj matches (subj may hold wildcards): an allow pattern covers
// all of subj and no deny pattern can match any of it, as nats-server
// decides.
func (p Permissions) AllowsPublish(subj string) bool { return allows(p.PubAllow, p.PubDeny, subj) }

// AllowsSubscribe is AllowsPublish for subscriptions.
func (p Permissions) AllowsSubscribe(subj string) bool { return allows(p.SubAllow, p.SubDeny, subj) }

func allows(allow, deny []string, subj string) bool {
	for _, d := range deny {
		if subjectsCollide(d, subj) {
			return false
		}
	}
	for _, f := range allow {
		if subjectCovers(f, subj) {
			return true
		}
	}
	return false
}

// subjectCovers reports whether the NATS filter matches every subject that
// subj, which may hold wildcards itself, matches.
func subjectCovers(filter, subj string) bool {
	f, s := strings.Split(filter, "."), strings.Split(subj, ".")
	for i, ft := range f {
		if ft == ">" {
			return i < len(s)
		}
		if i >= len(s) || s[i] == ">" {
			return false
		}
		if ft != "*" && ft != s[i] {
			return false
		}
	}
	return len(f) == len(s)
}

// subjectsCollide reports whether some subject matches both a and b.
func subjectsCollide(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(at) && i < len(bt); i++ {
		if at[i] == ">" || bt[i] == ">" {
			return true
		}
		if at[i] != "*" && bt[i] != "*" && at[i] != bt[i] {
			return false
		}
	}
	return len(at) == len(bt)
}

// Role names what an identity is for. Component roles are held by the
// services themselves; client and admin by people and programs; device by
// one Jotunheim device; script-mqtt by one tool's MQTT connection to the
// local listener.
type Role string

// The roles.
const (
	RoleAdmin       Role = "admin"
	RoleClient      Role = "client"
	RoleLoki        Role = "loki"
	RoleHel         Role = "hel"
	RoleFenrir      Role = "fenrir"
	RoleJormungandr Role = "jormungandr"
	RoleGateway     Role = "gateway"
	RoleAuth        Role = "auth"
	RoleJotunheim   Role = "jotunheim"
	RoleDevice      Role = "device"
	// RoleHomeAssistant is Home Assistant's MQTT login: it reads devices'
	// discovery configs, presence and states, and sends their entities'
	// set commands.
	RoleHomeAssistant Role = "homeassistant"
	RoleScriptMQTT    Role = "script-mqtt"
	// RoleLokiWorker is a worker process running isolated calls: it
	// reaches the child services and devices for its scripts' modules, and
	// nothing of Loki's own (no registry, no events, no serving).
	RoleLokiWorker Role = "loki-worker"
)

// ComponentRoles are the roles `loki up` holds one identity of each for.
var ComponentRoles = []Role{RoleLoki, RoleHel, RoleFenrir, RoleJormungandr, RoleGateway, RoleAuth, RoleJotunheim}

// PersonRoles are the roles `loki auth add` issues.
var PersonRoles = []Role{RoleClient, RoleAdmin}

// Valid reports whether r is a known role.
func (r Role) Valid() bool {
	switch r {
	case RoleAdmin, RoleClient, RoleLoki, RoleHel, RoleFenrir, RoleJormungandr, RoleGateway, RoleAuth, RoleJotunheim,
		RoleDevice, RoleScriptMQTT, RoleHomeAssistant, RoleLokiWorker:
		return true
	}
	return false
}

// InboxRoot prefixes every reply inbox. Each identity subscribes only under
// its own _INBOX.<token>, so no identity but an admin can read another
// caller's replies.
const InboxRoot = "_INBOX"

// InboxTokenLen is how much of an identity's public key its inbox token
// keeps. An nkey public key is 'U' and 55 base32 characters; 16 of them
// (75 random bits) keep identities apart — internal/auth refuses two
// identities with one token — while every reply subject stays short:
// subject length is paid on every message (see docs/BENCHMARKS.md).
const InboxTokenLen = 16

// Inbox returns the inbox prefix of the identity whose public key (or,
// without one, name) is id: _INBOX.<the first InboxTokenLen characters of
// id>. Connections set it with nats.CustomInboxPrefix.
func Inbox(id string) (string, error) {
	if err := ValidToken(id); err != nil {
		return "", err
	}
	return InboxRoot + "." + InboxToken(id), nil
}

// InboxToken is the token of Inbox(id).
func InboxToken(id string) string {
	if len(id) > InboxTokenLen {
		return id[:InboxTokenLen]
	}
	return id
}

// IsReplyInbox reports whether subj may be a reply subject: one under
// _INBOX. Services answer nothing else, because a reply is published with
// the service's own rights: a request whose reply subject is, say,
// fenrir.sim.actuator.set would otherwise make Loki drive hardware for a
// caller that may not, or forge a script event.
func IsReplyInbox(subj string) bool {
	return len(subj) > len(InboxRoot)+1 && subj[:len(InboxRoot)+1] == InboxRoot+"."
}

// Identity-related subjects: the identity service that `loki up` runs for
// `loki auth`.
const (
	// AuthService is the NATS micro service name of the identity service.
	AuthService = "auth"
	// AuthPrefix prefixes every identity service subject.
	AuthPrefix = "loki.auth"
	// AuthAll matches every identity service subject.
	AuthAll = AuthPrefix + ".>"
	// AuthAdd creates an identity and answers with its credential.
	AuthAdd = AuthPrefix + ".add"
	// AuthList answers with every identity (never a secret).
	AuthList = AuthPrefix + ".list"
	// AuthRevoke deletes an identity and closes its connections.
	AuthRevoke = AuthPrefix + ".revoke"
	// AuthVerifyDevice checks a device login (username and password) and
	// answers with the device id it belongs to: how the gateway
	// authenticates devices on its gRPC device link.
	AuthVerifyDevice = AuthPrefix + ".verify.device"
	// AuthHelBucket is the bucket broker: it creates or updates one of
	// Hel's KV buckets or object stores (a name Hel's rules allow, only the
	// subjects its kind implies, marked as Hel's), so that Hel itself needs
	// no right to create or update streams. See internal/helbucket.
	AuthHelBucket = AuthPrefix + ".hel.bucket"
)

// Device topics (MQTT) and subjects (NATS) of the Jotunheim device protocol.
const (
	// DevicePrefix is the first token of every device subject, and the first
	// level of every device topic.
	DevicePrefix = "jotunheim"
)

// deviceID is the shape of a device id: a NATS token, an MQTT topic level
// and a Home Assistant id.
var deviceID = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidDeviceID returns an error unless id can name a device: 1 to 64 of
// [A-Za-z0-9_-].
func ValidDeviceID(id string) error {
	if !deviceID.MatchString(id) {
		return fmt.Errorf("%w: device id %q must be 1 to 64 of [A-Za-z0-9_-]", ErrInvalidToken, id)
	}
	return nil
}

// DeviceTree returns the subject pattern of everything a device owns,
// jotunheim.<id>.> (MQTT topic jotunheim/<id>/#).
func DeviceTree(id string) (string, error) {
	if err := ValidDeviceID(id); err != nil {
		return "", err
	}
	return DevicePrefix + "." + id + ".>", nil
}

// JetStream names the server uses that no component owns.
var (
	// MQTTStreams are the streams the MQTT listener keeps its sessions,
	// retained and QoS 1/2 messages in; only the server itself touches them.
	MQTTStreams = []string{"$MQTT_msgs", "$MQTT_rmsgs", "$MQTT_sess", "$MQTT_qos2in", "$MQTT_out"}
)

// LeafLocal are the subjects that never cross a leaf-node connection in
// either direction: KV and object-store writes ($KV, $O) and the MQTT
// listener's internal streams ($MQTT). Without this, a write to a bucket
// that exists at both ends (the tool registry, a Hel bucket) would be
// captured by both sites' streams; with it, each site's storage stays
// local and the hub's tools reach an edge only through the edge's sourced
// registry bucket. Everything else (calls, script and device events,
// $SRV) is shared while the link is up.
var LeafLocal = []string{"$KV.>", "$O.>", "$MQTT.>"}

// jsAPI is the JetStream API prefix.
const jsAPI = "$JS.API"

// jsStreamRead is what a component needs to read a stream named stream:
// info, message get, direct get, consumers (watches), acks and flow control.
func jsStreamRead(stream string) []string {
	return []string{
		jsAPI + ".STREAM.INFO." + stream,
		jsAPI + ".STREAM.MSG.GET." + stream,
		jsAPI + ".DIRECT.GET." + stream,
		jsAPI + ".DIRECT.GET." + stream + ".>",
		jsAPI + ".CONSUMER.CREATE." + stream,
		jsAPI + ".CONSUMER.CREATE." + stream + ".>",
		jsAPI + ".CONSUMER.DURABLE.CREATE." + stream + ".>",
		jsAPI + ".CONSUMER.INFO." + stream + ".>",
		jsAPI + ".CONSUMER.DELETE." + stream + ".>",
		jsAPI + ".CONSUMER.MSG.NEXT." + stream + ".>",
		jsAPI + ".CONSUMER.NAMES." + stream,
		jsAPI + ".CONSUMER.LIST." + stream,
		"$JS.ACK." + stream + ".>",
		"$JS.FC." + stream + ".>",
	}
}

// jsStreamUse is what the owner of a stream needs: reading it, creating it
// and updating its settings. It never includes delete or purge.
func jsStreamUse(stream string) []string {
	return append(jsStreamRead(stream), jsAPI+".STREAM.CREATE."+stream, jsAPI+".STREAM.UPDATE."+stream)
}

// jsStreamAll is every JetStream API call on the stream named stream,
// delete and purge included; it is what a component is denied on a stream
// it does not own.
func jsStreamAll(stream string) []string {
	return append(jsStreamUse(stream),
		jsAPI+".STREAM.DELETE."+stream,
		jsAPI+".STREAM.PURGE."+stream,
		jsAPI+".STREAM.MSG.DELETE."+stream,
		jsAPI+".STREAM.SNAPSHOT."+stream,
		jsAPI+".STREAM.RESTORE."+stream,
	)
}

// kvStream is the stream behind JetStream KV bucket b.
func kvStream(b string) string { return "KV_" + b }

// jsAccountInfo is the account info call every JetStream client makes.
const jsAccountInfo = jsAPI + ".INFO"

// srvPrefix and srvVerbs are NATS micro's control subjects
// ($SRV.<verb>[.<name>[.<id>]]), spelled here rather than taken from
// nats.go/micro so that what imports subjects — the device agent — does not
// link a NATS client; a test checks them against micro.ControlSubject.
const srvPrefix = "$SRV"

var srvVerbs = []string{"PING", "INFO", "STATS"}

// srvSubs are the $SRV subjects a micro service named name answers on.
func srvSubs(name string) []string {
	var s []string
	for _, v := range srvVerbs {
		all := srvPrefix + "." + v
		s = append(s, all, all+"."+name, all+"."+name+".*")
	}
	return s
}

// srvAll matches every $SRV request, for identities that may ask every
// service for its status.
var srvAll = srvPrefix + ".>"

// RolePermissions returns the permissions of an identity with role r whose
// inbox token (public key or name) is inbox. RoleDevice takes the device id
// as scope; RoleScriptMQTT the MQTT topic filters its grant names.
func RolePermissions(r Role, inbox string, scope ...string) (Permissions, error) {
	myInbox := ""
	if r != RoleDevice && r != RoleScriptMQTT && r != RoleHomeAssistant {
		in, err := Inbox(inbox)
		if err != nil {
			return Permissions{}, err
		}
		myInbox = in + ".>"
	}
	// Every service replies to requests, including streamed chunks and
	// $SRV requests of any caller: publishing to inboxes reveals nothing.
	replies := InboxRoot + ".>"
	toolsKV := kvStream(ToolsBucket)
	// What a controller may do with devices: list, look, command, watch,
	// follow updates (publishing and rolling them out is for admins).
	devicesUse := []string{DevicesList, DevicesGet, DevicesCmd, DevicesCaps, DevicesOTAStatus}
	// And read device streams (streams.go).
	streamCtl, streamData := deviceStreamSubjects()
	devicesUse = append(devicesUse, streamCtl)
	switch r {
	case RoleAdmin:
		return Permissions{PubAllow: []string{">"}, SubAllow: []string{">"}}, nil
	case RoleClient:
		return Permissions{
			PubAllow: append([]string{LokiExecAll, LokiToolsList, LokiToolsGet, LokiCapabilities, LokiCancel, srvAll}, devicesUse...),
			SubAllow: []string{LokiEventsAll, ConfigReloadAll, DevicesEventsAll, streamData, myInbox},
		}, nil
	case RoleLoki:
		// DevicesCmd: the jotunheim Lua module.
		pub := []string{LokiEventsAll, ConfigReloadAll, replies, HelAll, FenrirAll, JormungandrAll, DevicesCmd, streamCtl,
			jsAccountInfo, "$KV." + ToolsBucket + ".>"}
		// Create, never update: an update could add subjects (say
		// _INBOX.>) to the registry's stream and capture others' replies.
		pub = append(pub, jsStreamRead(toolsKV)...)
		pub = append(pub, jsAPI+".STREAM.CREATE."+toolsKV)
		sub := []string{LokiExecAll, LokiToolsList, LokiToolsGet, LokiToolsRegister, LokiToolsUnregister,
			LokiCapabilities, LokiCancel, streamData, myInbox}
		return Permissions{PubAllow: pub, SubAllow: append(sub, srvSubs(LokiService)...)}, nil
	case RoleLokiWorker:
		// What the scripts' modules call (hel, fenrir, jormungandr,
		// jotunheim), as Loki does; the replica that supervises the worker
		// keeps the registry, the events and the exec subjects.
		return Permissions{PubAllow: []string{HelAll, FenrirAll, JormungandrAll, DevicesCmd, streamCtl},
			SubAllow: []string{streamData, myInbox}}, nil
	case RoleHel:
		// Hel never creates, updates or deletes a stream: it asks the
		// bucket broker (AuthHelBucket), which creates or updates only
		// streams of Hel's names, with only the subjects their kind
		// implies, marked as Hel's. A stream capturing, say, loki.exec.>
		// is therefore out of its reach. Hel's bucket names are
		// user-chosen (hel_kv_<name>, ...) and a NATS permission cannot
		// match part of a token, so Hel may read, write and purge every
		// stream but those it must not touch: the tool registry, the
		// device registry, OTA's and the MQTT listener's. It must purge:
		// the object store client purges an object's chunks from Hel's
		// connection when it deletes or replaces the object.
		pub := []string{replies, jsAccountInfo, AuthHelBucket, "$KV.*.>", "$O.*.>",
			jsAPI + ".STREAM.PURGE.*", jsAPI + ".STREAM.NAMES"} // NAMES: the total quota sums Hel's streams (not LIST: it would show the components' streams too)
		pub = append(pub, jsStreamRead("*")...)
		deny := []string{"$KV." + ToolsBucket + ".>", "$KV." + DevicesBucket + ".>", "$KV." + OTABucket + ".>", "$O." + FirmwareBucket + ".>"}
		for _, s := range append([]string{toolsKV, kvStream(DevicesBucket), kvStream(OTABucket), "OBJ_" + FirmwareBucket}, MQTTStreams...) {
			deny = append(deny, jsStreamAll(s)...)
		}
		return Permissions{PubAllow: pub, PubDeny: deny,
			SubAllow: append([]string{HelAll, myInbox}, srvSubs(HelService)...)}, nil
	case RoleFenrir:
		// Fenrir asks fenrir.<board>.board.list at start-up to find another
		// owner of its boards.
		return Permissions{PubAllow: []string{replies, FenrirAll},
			SubAllow: append([]string{FenrirAll, myInbox}, srvSubs(FenrirService)...)}, nil
	case RoleJormungandr:
		return Permissions{PubAllow: []string{replies},
			SubAllow: append([]string{JormungandrAll, myInbox}, srvSubs(JormungandrService)...)}, nil
	case RoleGateway:
		// The gateway watches the registry (read only) to serve one RPC per tool.
		pub := []string{LokiExecAll, LokiToolsList, LokiToolsGet, LokiToolsRegister, LokiToolsUnregister,
			LokiCapabilities, LokiCancel, srvAll, jsAccountInfo}
		pub = append(pub, devicesUse...)
		// The gRPC device link: it checks device logins with the identity
		// service, puts what devices send on their uplink subjects and hears
		// their downlink subjects. It lets each device act only as itself.
		// Gateways claim a device's link to each other (one link per
		// device across gateways).
		sub := []string{LokiEventsAll, ConfigReloadAll, DevicesEventsAll, streamData, DeviceLinkClaimAll, myInbox}
		pub = append(pub, AuthVerifyDevice, DeviceLinkClaimAll)
		for _, k := range DeviceUplinkKinds {
			s, _ := DeviceSubjectAll(k)
			pub = append(pub, s)
		}
		for _, k := range DeviceDownlinkKinds {
			s, _ := DeviceSubjectAll(k)
			sub = append(sub, s)
		}
		return Permissions{PubAllow: append(pub, jsStreamRead(toolsKV)...), SubAllow: sub}, nil
	case RoleJotunheim:
		// The device service hears what devices publish, answers them on
		// the topics they subscribe to, keeps device tools in the registry
		// through Loki, runs the tools devices call, and owns its bucket.
		var sub, pub []string
		// Every uplink kind, and every downlink kind but set (Home
		// Assistant's commands go to the device directly).
		for _, k := range DeviceUplinkKinds {
			s, _ := DeviceSubjectAll(k)
			sub = append(sub, s)
		}
		for _, k := range DeviceDownlinkKinds {
			if k == DeviceSet {
				continue
			}
			s, _ := DeviceSubjectAll(k)
			pub = append(pub, s)
		}
		pub = append(pub, replies, DevicesEventsAll, LokiExecAll, LokiToolsList, LokiToolsGet, LokiToolsRegister,
			LokiToolsUnregister, jsAccountInfo, "$KV."+DevicesBucket+".>")
		pub = append(pub, jsStreamUse(kvStream(DevicesBucket))...)
		// OTA: its release and rollout bucket, and the firmware object store
		// (read: binaries are put there by an admin, then published).
		pub = append(pub, "$KV."+OTABucket+".>", "$O."+FirmwareBucket+".>")
		pub = append(pub, jsStreamUse(kvStream(OTABucket))...)
		pub = append(pub, jsStreamUse("OBJ_"+FirmwareBucket)...)
		// DevicesEventsAll: devices.caps hears a refusal another replica saw.
		sub = append(sub, DevicesPrefix+".*", DevicesPrefix+".ota.*", DevicesEventsAll, myInbox)
		return Permissions{PubAllow: pub, SubAllow: append(sub, srvSubs(JotunheimService)...)}, nil
	case RoleAuth:
		// The bucket broker creates and updates Hel's streams (it checks
		// their names and subjects itself); never the other components'.
		pub := []string{replies, jsAccountInfo, jsAPI + ".STREAM.CREATE.*", jsAPI + ".STREAM.UPDATE.*", jsAPI + ".STREAM.INFO.*"}
		var deny []string
		for _, s := range append([]string{toolsKV, kvStream(DevicesBucket), kvStream(OTABucket), "OBJ_" + FirmwareBucket}, MQTTStreams...) {
			deny = append(deny, jsStreamAll(s)...)
		}
		return Permissions{PubAllow: pub, PubDeny: deny,
			SubAllow: append([]string{AuthAll, myInbox}, srvSubs(AuthService)...)}, nil
	case RoleDevice:
		if len(scope) != 1 {
			return Permissions{}, fmt.Errorf("%w: a device identity needs exactly one device id", ErrInvalidToken)
		}
		tree, err := DeviceTree(scope[0])
		if err != nil {
			return Permissions{}, err
		}
		// The MQTT filter jotunheim/<id>/# matches jotunheim/<id> too, and
		// the server subscribes to that parent level along with the tree:
		// without it a device's subscription to its own tree is refused.
		own := []string{DevicePrefix + "." + scope[0], tree}
		// Its own Home Assistant discovery config, and Home Assistant's
		// status (to resend discovery when Home Assistant starts).
		haConfig, _ := HADeviceConfigTopic(HADiscoveryPrefix, scope[0])
		haStatus, _ := HAStatusTopic(HADiscoveryPrefix)
		return Permissions{PubAllow: append(own, mqttSubject(haConfig)), SubAllow: append(own, mqttSubject(haStatus)),
			MQTTOnly: true}, nil
	case RoleHomeAssistant:
		ha := []string{HADiscoveryPrefix, HADiscoveryPrefix + ".>"}
		status, _ := DeviceSubjectAll(DeviceStatus)
		state, _ := DeviceSubjectAll(DeviceState)
		set, _ := DeviceSubjectAll(DeviceSet)
		return Permissions{PubAllow: append(ha, set), SubAllow: append(ha, status, state), MQTTOnly: true}, nil
	case RoleScriptMQTT:
		if len(scope) == 0 {
			return Permissions{}, fmt.Errorf("%w: a script MQTT identity needs at least one topic filter", ErrInvalidToken)
		}
		var subs []string
		for _, f := range scope {
			s, err := MQTTFilterSubjects(f)
			if err != nil {
				return Permissions{}, err
			}
			subs = append(subs, s...)
		}
		deny := internalTrees()
		return Permissions{PubAllow: subs, PubDeny: deny, SubAllow: subs, SubDeny: deny, MQTTOnly: true}, nil
	}
	return Permissions{}, fmt.Errorf("%w: unknown role %q", ErrInvalidToken, r)
}

// InternalRoots are the first tokens of the subjects Loki's components,
// devices and inboxes use. No MQTT topic grant may reach them.
var InternalRoots = []string{"loki", HelPrefix, FenrirPrefix, JormungandrPrefix, DevicePrefix, DevicesPrefix, InboxRoot, "_loki_bench"}

func internalTrees() []string {
	var d []string
	for _, r := range InternalRoots {
		d = append(d, r, r+".>")
	}
	return d
}

// MQTTFilterSubjects returns the NATS subjects an MQTT topic filter covers,
// mapped the way the NATS server's MQTT listener maps topics: '/' to '.',
// '.' to "//", '+' to '*' and '#' to '>'. A trailing '#' also matches its
// parent level, as in MQTT, so "a/#" gives "a" and "a.>". No grant may
// reach the server's or Loki's own subjects, so a filter is refused when it
// is empty, holds a space, a control character or invalid UTF-8, starts
// with '$' or one of InternalRoots, holds a wildcard inside a level or an
// empty level, or has a wildcard as its first level: "+/#" would be "*"
// and "*.>", which match $JS.API.STREAM.DELETE.KV_loki_tools, since an MQTT
// client may publish to any topic its permissions allow, '$' ones included.
func MQTTFilterSubjects(filter string) ([]string, error) {
	if filter == "" || strings.HasPrefix(filter, "$") || !utf8.ValidString(filter) ||
		strings.ContainsFunc(filter, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) {
		return nil, fmt.Errorf("%w: MQTT topic filter %q", ErrInvalidToken, filter)
	}
	levels := strings.Split(filter, "/")
	for _, r := range InternalRoots {
		if levels[0] == r {
			return nil, fmt.Errorf("%w: MQTT topic filter %q: topics under %q/ belong to Loki itself", ErrInvalidToken, filter, r)
		}
	}
	if levels[0] == "+" || levels[0] == "#" {
		return nil, fmt.Errorf("%w: MQTT topic filter %q: the first level must be a name, not a wildcard (it would reach the server's $ subjects)", ErrInvalidToken, filter)
	}
	toks := make([]string, 0, len(levels))
	for i, l := range levels {
		switch {
		case l == "#":
			if i != len(levels)-1 {
				return nil, fmt.Errorf("%w: MQTT topic filter %q: '#' must be the last level", ErrInvalidToken, filter)
			}
			parent := strings.Join(toks, ".")
			return []string{parent, parent + ".>"}, nil
		case l == "+":
			toks = append(toks, "*")
		case l == "":
			return nil, fmt.Errorf("%w: MQTT topic filter %q has an empty level", ErrInvalidToken, filter)
		case strings.ContainsAny(l, "+#*>"):
			return nil, fmt.Errorf("%w: MQTT topic filter %q: wildcard inside level %q", ErrInvalidToken, filter, l)
		default:
			toks = append(toks, strings.ReplaceAll(l, ".", "//"))
		}
	}
	return []string{strings.Join(toks, ".")}, nil
}

// mqttSubject maps an MQTT topic without wildcards to its NATS subject.
func mqttSubject(topic string) string { return topicToSubject.Replace(topic) }

var topicToSubject = strings.NewReplacer("/", ".", ".", "//")
