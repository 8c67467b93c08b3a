package subjects_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/micro"
)

func TestMQTTFilterSubjects(t *testing.T) {
	tests := []struct {
		name, filter string
		want         []string // nil: refused with ErrInvalidToken
	}{
		{name: "multi-level", filter: "readings/#", want: []string{"readings", "readings.>"}},
		{name: "one level", filter: "readings", want: []string{"readings"}},
		{name: "topic", filter: "readings/kitchen/temperature", want: []string{"readings.kitchen.temperature"}},
		{name: "single-level wildcard", filter: "a/+/b", want: []string{"a.*.b"}},
		{name: "trailing single-level", filter: "a/+", want: []string{"a.*"}},
		{name: "both wildcards", filter: "a/+/#", want: []string{"a.*", "a.*.>"}},
		{name: "dot", filter: "a.b/c", want: []string{"a//b.c"}},
		{name: "dots", filter: "a/b.c.d", want: []string{"a.b//c//d"}},
		{name: "unicode", filter: "café/+", want: []string{"café.*"}},
		{name: "dollar inside", filter: "a/$KV", want: []string{"a.$KV"}},
		{name: "internal root below the first level", filter: "a/loki/#", want: []string{"a.loki", "a.loki.>"}},
		{name: "home assistant discovery", filter: "homeassistant/+/config", want: []string{"homeassistant.*.config"}},

		{name: "empty", filter: ""},
		{name: "every topic", filter: "#"},
		{name: "every one-level topic", filter: "+"},
		{name: "every topic below a wildcard", filter: "+/#"},
		{name: "first level wildcard", filter: "+/temperature"},
		{name: "first two levels wildcards", filter: "+/+/#"},
		{name: "system", filter: "$SYS/x"},
		{name: "JetStream", filter: "$JS/API/#"},
		{name: "dollar alone", filter: "$"},
		{name: "hash not last", filter: "a/#/b"},
		{name: "plus inside a level", filter: "a/b+"},
		{name: "hash inside a level", filter: "a/b#"},
		{name: "NATS single wildcard", filter: "a/*"},
		{name: "NATS full wildcard", filter: "a/>"},
		{name: "NATS wildcard inside a level", filter: "a/b*c"},
		{name: "empty level", filter: "a//b"},
		{name: "leading slash", filter: "/a"},
		{name: "trailing slash", filter: "a/"},
		{name: "space", filter: "a b"},
		{name: "tab", filter: "a\tb"},
		{name: "newline", filter: "a\nb"},
		{name: "null", filter: "a\x00b"},
		{name: "DEL", filter: "a\x7f"},
		{name: "no-break space", filter: "a\u00a0b"},
		{name: "invalid UTF-8", filter: "a/\xff"},
		{name: "tool calls", filter: "loki/exec/add"},
		{name: "Loki root", filter: "loki"},
		{name: "Loki tree", filter: "loki/#"},
		{name: "inboxes", filter: "_INBOX/x"},
		{name: "devices", filter: "jotunheim/x"},
		{name: "Hel", filter: "hel/#"},
		{name: "Fenrir", filter: "fenrir/+/actuator/set"},
		{name: "Jormungandr", filter: "jormungandr/#"},
		{name: "bench", filter: "_loki_bench/echo"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := subjects.MQTTFilterSubjects(tc.filter)
			if tc.want == nil {
				if !errors.Is(err, subjects.ErrInvalidToken) {
					t.Fatalf("MQTTFilterSubjects(%q): got %q, %v, want %v", tc.filter, got, err, subjects.ErrInvalidToken)
				}
				return
			}
			if err != nil || !slices.Equal(got, tc.want) {
				t.Fatalf("MQTTFilterSubjects(%q): got %q, %v, want %q", tc.filter, got, err, tc.want)
			}
		})
	}
}

func TestRolePermissionsRefuses(t *testing.T) {
	const key = "UABC"
	tests := []struct {
		name  string
		role  subjects.Role
		inbox string
		scope []string
	}{
		{name: "unknown role", role: "root", inbox: key},
		{name: "empty role", role: "", inbox: key},
		{name: "no inbox", role: subjects.RoleClient, inbox: ""},
		{name: "inbox with a dot", role: subjects.RoleClient, inbox: "a.b"},
		{name: "inbox wildcard", role: subjects.RoleLoki, inbox: ">"},
		{name: "inbox star", role: subjects.RoleAdmin, inbox: "*"},
		{name: "device without id", role: subjects.RoleDevice},
		{name: "device with two ids", role: subjects.RoleDevice, scope: []string{"a", "b"}},
		{name: "device id wildcard", role: subjects.RoleDevice, scope: []string{"*"}},
		{name: "device id full wildcard", role: subjects.RoleDevice, scope: []string{">"}},
		{name: "device id with a dot", role: subjects.RoleDevice, scope: []string{"kitchen.light"}},
		{name: "device id with a slash", role: subjects.RoleDevice, scope: []string{"kitchen/light"}},
		{name: "device id empty", role: subjects.RoleDevice, scope: []string{""}},
		{name: "device id too long", role: subjects.RoleDevice, scope: []string{strings.Repeat("a", 65)}},
		{name: "script without filters", role: subjects.RoleScriptMQTT},
		{name: "script with a bad filter", role: subjects.RoleScriptMQTT, scope: []string{"readings/#", "#"}},
		{name: "script with an internal filter", role: subjects.RoleScriptMQTT, scope: []string{"jotunheim/kitchen/#"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := subjects.RolePermissions(tc.role, tc.inbox, tc.scope...)
			if !errors.Is(err, subjects.ErrInvalidToken) {
				t.Fatalf("got %+v, %v, want %v", p, err, subjects.ErrInvalidToken)
			}
		})
	}
	if subjects.Role("root").Valid() || subjects.Role("").Valid() {
		t.Fatal("unknown role reported valid")
	}
}

// matches reports whether the NATS subject pattern p matches the literal
// subject s.
// TestRolePermissionsConsequences checks, on the lists themselves, the
// consequences the bus tests (internal/auth) check on a real server.
func TestRolePermissionsConsequences(t *testing.T) {
	const key = "UKEY"
	perms := map[subjects.Role]subjects.Permissions{}
	for _, r := range append(append([]subjects.Role{}, subjects.ComponentRoles...), subjects.PersonRoles...) {
		p, err := subjects.RolePermissions(r, key)
		if err != nil {
			t.Fatalf("%s: %v", r, err)
		}
		if p.MQTTOnly {
			t.Errorf("%s: MQTT only, want NATS", r)
		}
		perms[r] = p
	}
	dev, err := subjects.RolePermissions(subjects.RoleDevice, "", "kitchen")
	if err != nil {
		t.Fatal(err)
	}
	perms[subjects.RoleDevice] = dev
	script, err := subjects.RolePermissions(subjects.RoleScriptMQTT, "", "readings/#")
	if err != nil {
		t.Fatal(err)
	}
	perms[subjects.RoleScriptMQTT] = script
	ha, err := subjects.RolePermissions(subjects.RoleHomeAssistant, "")
	if err != nil {
		t.Fatal(err)
	}
	perms[subjects.RoleHomeAssistant] = ha
	if !dev.MQTTOnly || !script.MQTTOnly || !ha.MQTTOnly {
		t.Fatal("device and script-mqtt must be MQTT only")
	}

	tests := []struct {
		name    string
		sub     bool // subscribe, else publish
		subject string
		who     []subjects.Role // every role allowed; all others refused
	}{
		{"write the registry", false, "$KV.loki_tools.add", []subjects.Role{subjects.RoleAdmin, subjects.RoleLoki}},
		{"publish script events", false, "loki.events.add.completed", []subjects.Role{subjects.RoleAdmin, subjects.RoleLoki}},
		{"call Hel", false, "hel.kv.put", []subjects.Role{subjects.RoleAdmin, subjects.RoleLoki}},
		{"call Jormungandr", false, "jormungandr.http.request", []subjects.Role{subjects.RoleAdmin, subjects.RoleLoki}},
		{"call Fenrir", false, "fenrir.sim.actuator.set", []subjects.Role{subjects.RoleAdmin, subjects.RoleLoki, subjects.RoleFenrir}},
		{"manage identities", false, "loki.auth.add", []subjects.Role{subjects.RoleAdmin}},
		{"register a tool", false, "loki.tools.register", []subjects.Role{subjects.RoleAdmin, subjects.RoleGateway, subjects.RoleJotunheim}},
		{"call a tool", false, "loki.exec.add", []subjects.Role{subjects.RoleAdmin, subjects.RoleClient, subjects.RoleGateway, subjects.RoleJotunheim}},
		{"delete the registry", false, "$JS.API.STREAM.DELETE.KV_loki_tools", []subjects.Role{subjects.RoleAdmin}},
		{"purge the registry", false, "$JS.API.STREAM.PURGE.KV_loki_tools", []subjects.Role{subjects.RoleAdmin}},
		{"delete a Hel bucket", false, "$JS.API.STREAM.DELETE.KV_hel_kv_x", []subjects.Role{subjects.RoleAdmin}},
		{"create a stream", false, "$JS.API.STREAM.CREATE.EVIL", []subjects.Role{subjects.RoleAdmin, subjects.RoleAuth}},
		{"create a Hel bucket's stream", false, "$JS.API.STREAM.CREATE.KV_hel_kv_x", []subjects.Role{subjects.RoleAdmin, subjects.RoleAuth}},
		{"update a Hel bucket's stream", false, "$JS.API.STREAM.UPDATE.KV_hel_kv_x", []subjects.Role{subjects.RoleAdmin, subjects.RoleAuth}},
		{"ask the bucket broker", false, "loki.auth.hel.bucket", []subjects.Role{subjects.RoleAdmin, subjects.RoleHel}},
		{"create the registry stream", false, "$JS.API.STREAM.CREATE.KV_loki_tools", []subjects.Role{subjects.RoleAdmin, subjects.RoleLoki}},
		{"purge a Hel bucket", false, "$JS.API.STREAM.PURGE.KV_hel_kv_x", []subjects.Role{subjects.RoleAdmin, subjects.RoleHel}},
		{"write a Hel bucket", false, "$KV.hel_kv_x.k", []subjects.Role{subjects.RoleAdmin, subjects.RoleHel}},
		{"write Hel's cache", false, "$KV.hel_cache.k", []subjects.Role{subjects.RoleAdmin, subjects.RoleHel}},
		{"write a Hel object", false, "$O.hel_obj_x.C.abc", []subjects.Role{subjects.RoleAdmin, subjects.RoleHel}},
		{"read a Hel object", false, "$JS.API.CONSUMER.CREATE.OBJ_hel_obj_x.c.$O.hel_obj_x.C.abc", []subjects.Role{subjects.RoleAdmin, subjects.RoleHel}},
		{"read Hel's cache", false, "$JS.API.DIRECT.GET.KV_hel_cache.$KV.hel_cache.k", []subjects.Role{subjects.RoleAdmin, subjects.RoleHel}},
		{"update the registry stream", false, "$JS.API.STREAM.UPDATE.KV_loki_tools", []subjects.Role{subjects.RoleAdmin}},
		{"read the registry", false, "$JS.API.DIRECT.GET.KV_loki_tools.$KV.loki_tools.add", []subjects.Role{subjects.RoleAdmin, subjects.RoleLoki, subjects.RoleGateway}},
		{"touch MQTT sessions", false, "$JS.API.STREAM.INFO.$MQTT_sess", []subjects.Role{subjects.RoleAdmin}},
		{"command a device", false, "jotunheim.kitchen.cmd.light", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice}},
		{"as another device", false, "jotunheim.garage.status", []subjects.Role{subjects.RoleAdmin, subjects.RoleGateway}},
		{"command a device's agent", false, "jotunheim.kitchen.cmd", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleJotunheim}},
		{"answer a device's tool call", false, "jotunheim.kitchen.call.result", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleJotunheim}},
		{"forge a device's manifest", false, "jotunheim.kitchen.manifest", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleGateway}},
		{"verify a device login", false, "loki.auth.verify.device", []subjects.Role{subjects.RoleAdmin, subjects.RoleGateway}},
		{"send a device's stream data", false, "jotunheim.kitchen.stream.data", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleGateway}},
		{"command through the device service", false, "devices.cmd", []subjects.Role{subjects.RoleAdmin, subjects.RoleClient, subjects.RoleGateway, subjects.RoleLoki}},
		{"forge a device event", false, "devices.events.kitchen.online", []subjects.Role{subjects.RoleAdmin, subjects.RoleJotunheim}},
		{"write the device registry", false, "$KV.jotunheim_devices.kitchen", []subjects.Role{subjects.RoleAdmin, subjects.RoleJotunheim}},
		{"delete the device registry", false, "$JS.API.STREAM.DELETE.KV_jotunheim_devices", []subjects.Role{subjects.RoleAdmin}},
		{"publish a device's discovery config", false, "homeassistant.device.kitchen.config", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleHomeAssistant}},
		{"publish another device's discovery config", false, "homeassistant.device.garage.config", []subjects.Role{subjects.RoleAdmin, subjects.RoleHomeAssistant}},
		{"switch an entity from Home Assistant", false, "jotunheim.kitchen.set.led", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleHomeAssistant}},
		{"offer a device an update", false, "jotunheim.kitchen.ota.offer", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleJotunheim}},
		{"write the firmware store", false, "$O.jotunheim_firmware.C.abc", []subjects.Role{subjects.RoleAdmin, subjects.RoleJotunheim}},
		{"write the rollouts", false, "$KV.jotunheim_ota.rollout.r1", []subjects.Role{subjects.RoleAdmin, subjects.RoleJotunheim}},
		{"device root", false, "jotunheim.kitchen", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice}},
		{"read every inbox", true, "_INBOX.>", []subjects.Role{subjects.RoleAdmin}},
		{"read another's inbox", true, "_INBOX.UOTHER.x", []subjects.Role{subjects.RoleAdmin}},
		{"read calls", true, "loki.exec.add", []subjects.Role{subjects.RoleAdmin, subjects.RoleLoki}},
		{"read devices", true, "jotunheim.kitchen.status", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleJotunheim, subjects.RoleHomeAssistant}},
		{"hear Home Assistant start", true, "homeassistant.status", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleHomeAssistant}},
		{"read a device's states", true, "jotunheim.kitchen.state.led", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleJotunheim, subjects.RoleHomeAssistant}},
		{"read commands to a device", true, "jotunheim.kitchen.cmd", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleGateway}},
		{"read Home Assistant's commands to a device", true, "jotunheim.kitchen.set.*", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleGateway}},
		{"serve devices", true, "devices.cmd", []subjects.Role{subjects.RoleAdmin, subjects.RoleJotunheim}},
		{"serve OTA", true, "devices.ota.rollout", []subjects.Role{subjects.RoleAdmin, subjects.RoleJotunheim}},
		{"hear update progress", true, "jotunheim.kitchen.ota.progress", []subjects.Role{subjects.RoleAdmin, subjects.RoleDevice, subjects.RoleJotunheim}},
		{"watch devices", true, "devices.events.kitchen.online", []subjects.Role{subjects.RoleAdmin, subjects.RoleClient, subjects.RoleGateway, subjects.RoleJotunheim}},
		{"read readings", true, "readings.kitchen", []subjects.Role{subjects.RoleAdmin, subjects.RoleScriptMQTT}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for r, p := range perms {
				got := p.AllowsPublish(tc.subject)
				if tc.sub {
					got = p.AllowsSubscribe(tc.subject)
				}
				if want := slices.Contains(tc.who, r); got != want {
					t.Errorf("%s on %s: got allowed=%v, want %v", r, tc.subject, got, want)
				}
			}
		})
	}
	// Every NATS identity but admin subscribes to replies only under its own inbox.
	for r, p := range perms {
		if r == subjects.RoleAdmin || p.MQTTOnly {
			continue
		}
		for _, s := range p.SubAllow {
			if strings.HasPrefix(s, subjects.InboxRoot) && s != subjects.InboxRoot+"."+key+".>" {
				t.Errorf("%s subscribes to %s, want only its own inbox", r, s)
			}
		}
	}
}

// TestSubjectMatching checks the matching behind AllowsPublish and
// AllowsSubscribe (which the gateway uses to turn role permissions into
// rights over RPCs) against the NATS server's own.
func TestSubjectMatching(t *testing.T) {
	subjs := []string{
		"loki.exec.*", "loki.exec.add", "loki.exec", "loki.exec.add.x", "loki.>", "loki.*", ">", "*",
		"loki.tools.register", "loki.tools.*", "loki.*.register", "$SRV.STATS", "$SRV.STATS.*", "$SRV.>",
		"loki.events.>", "loki.events.add.started", "loki.events.*.*", "hel.kv.get",
	}
	for _, a := range subjs {
		for _, b := range subjs {
			if got, want := subjects.SubjectCovers(a, b), server.SubjectMatchesFilter(b, a); got != want {
				t.Errorf("covers(%q, %q): got %v, want %v", a, b, got, want)
			}
			if got, want := subjects.SubjectsCollide(a, b), server.SubjectsCollide(a, b); got != want {
				t.Errorf("collide(%q, %q): got %v, want %v", a, b, got, want)
			}
		}
	}
}

// TestSrvSubsAreMicros: the $SRV subjects spelled in subjects are the ones
// nats.go/micro answers on.
func TestSrvSubsAreMicros(t *testing.T) {
	got := subjects.SrvSubs("loki")
	var want []string
	for _, v := range []micro.Verb{micro.PingVerb, micro.InfoVerb, micro.StatsVerb} {
		all, _ := micro.ControlSubject(v, "", "")
		byName, _ := micro.ControlSubject(v, "loki", "")
		want = append(want, all, byName, byName+".*")
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}
