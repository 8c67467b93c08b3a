package auth_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/helbucket"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The tables below spell subjects and topics literally, as a user of the
// bus sees them: they check the wire, not the constants.

// op is what a case tries.
type op string

const (
	pub     op = "publish"       // subject; an admin subscriber must (not) get it
	sub     op = "subscribe"     // subject; an admin publish must (not) reach it
	req     op = "request"       // subject, served by the identity in by
	kvPut   op = "KV put"        // subject is the bucket; what kv.Put publishes
	jsAPI   op = "JetStream API" // subject is the $JS.API subject, body the request
	mqttPub op = "MQTT publish"  // subject is the topic
	mqttSub op = "MQTT subscribe"
)

// permCase is one thing an identity tries. In subjects, {me} stands for
// the identity's own inbox token (subjects.InboxToken of its public key), {admin} for the admin's.
type permCase struct {
	name    string
	op      op
	subject string
	allowed bool
	by      string // req: the built-in identity that serves the subject
	body    string // jsAPI: the request body
}

// The stores every table runs against, made by their owners.
const (
	registryKey = "add"
	registryVal = "registered tool"
	helBucket   = "hel_kv_x"
	helKey      = "k"
	helVal      = "hel value"
	evilStream  = "EVIL"
)

// seedStores creates the tool registry (as Loki) and a Hel KV bucket (as
// an admin, marked as Hel's as the bucket broker marks it: Hel may not
// create streams), and puts one entry in each as its owner.
func seedStores(t *testing.T, b *bus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	for _, s := range []struct {
		creator, owner, bucket, key, val string
		md                               map[string]string
	}{
		{"loki", "loki", "loki_tools", registryKey, registryVal, nil},
		{"admin", "hel", helBucket, helKey, helVal, helbucket.Mark(nil)},
	} {
		_, err := mustJS(t, b.connect(t, s.creator)).CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: s.bucket, History: 5, Metadata: s.md})
		if err != nil {
			t.Fatalf("%s creates %s: %v", s.creator, s.bucket, err)
		}
		kv, err := mustJS(t, b.connect(t, s.owner)).KeyValue(ctx, s.bucket)
		if err != nil {
			t.Fatalf("%s opens %s: %v", s.owner, s.bucket, err)
		}
		if _, err := kv.Put(ctx, s.key, []byte(s.val)); err != nil {
			t.Fatalf("%s puts into %s: %v", s.owner, s.bucket, err)
		}
	}
}

// storesIntact fails the test unless the seeded entries are still there,
// alone, and no stream named EVIL exists: nothing an identity was refused
// had an effect (an admin deletes the EVIL it creates).
func storesIntact(t *testing.T, b *bus) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	js := mustJS(t, b.adminConn(t))
	for _, s := range []struct{ bucket, key, val string }{
		{"loki_tools", registryKey, registryVal},
		{helBucket, helKey, helVal},
	} {
		kv, err := js.KeyValue(ctx, s.bucket)
		if err != nil {
			t.Fatalf("bucket %s: %v", s.bucket, err)
		}
		e, err := kv.Get(ctx, s.key)
		if err != nil || string(e.Value()) != s.val {
			t.Fatalf("%s/%s: got %v, %v, want %q", s.bucket, s.key, e, err, s.val)
		}
		keys, err := kv.Keys(ctx)
		if err != nil || len(keys) != 1 {
			t.Fatalf("%s: got keys %v, %v, want only %s", s.bucket, keys, err, s.key)
		}
	}
	if _, err := js.Stream(ctx, evilStream); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("stream %s: got %v, want %v", evilStream, err, jetstream.ErrStreamNotFound)
	}
}

// publicKey is the inbox token of the identity named name.
func publicKey(t *testing.T, a *auth.Authority, name string) string {
	t.Helper()
	id, err := a.Get(name)
	if err != nil {
		t.Fatal(err)
	}
	return id.PublicKey
}

// probe is a subject that subject (perhaps a wildcard) matches.
func probe(subject string) string {
	toks := strings.Split(subject, ".")
	for i, tok := range toks {
		if tok == "*" || tok == ">" {
			toks[i] = "x"
		}
	}
	return strings.Join(toks, ".")
}

// runNATSCase tries tc as actor and checks the outcome for real: an
// allowed operation has its effect, a refused one is reported to actor as
// a permission violation and has none.
func runNATSCase(t *testing.T, b *bus, actor *client, tc permCase) {
	t.Helper()
	admin := b.adminConn(t)
	subject := strings.NewReplacer("{me}", subjects.InboxToken(publicKey(t, b.a, actor.name)), "{admin}", subjects.InboxToken(publicKey(t, b.a, "admin"))).Replace(tc.subject)
	payload := []byte(t.Name())
	switch tc.op {
	case pub:
		s, err := admin.SubscribeSync(subject)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Unsubscribe()
		if err := admin.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := actor.Publish(subject, payload); err != nil {
			t.Fatal(err)
		}
		if !tc.allowed {
			actor.wantDenied(t, "Publish", subject)
			nothingPending(t, actor, admin, s)
			return
		}
		m, err := s.NextMsg(bound)
		if err != nil || !bytes.Equal(m.Data, payload) {
			t.Fatalf("admin subscriber: got %v, %v, want %q", m, err, payload)
		}
		actor.noPermissionErr(t)

	case sub:
		s, err := actor.SubscribeSync(subject)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Unsubscribe()
		if err := actor.Flush(); err != nil {
			t.Fatal(err)
		}
		if !tc.allowed {
			actor.wantDenied(t, "Subscription", subject)
			if err := admin.Publish(probe(subject), payload); err != nil {
				t.Fatal(err)
			}
			nothingPending(t, admin, actor, s)
			return
		}
		if err := admin.Publish(probe(subject), payload); err != nil {
			t.Fatal(err)
		}
		m, err := s.NextMsg(bound)
		if err != nil || !bytes.Equal(m.Data, payload) {
			t.Fatalf("got %v, %v, want %q on %s", m, err, payload, probe(subject))
		}
		actor.noPermissionErr(t)

	case req:
		server := b.connect(t, tc.by)
		s, err := server.SubscribeSync(subject)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Unsubscribe()
		server.noPermissionErr(t)
		if !tc.allowed {
			if err := actor.PublishRequest(subject, actor.NewInbox(), payload); err != nil {
				t.Fatal(err)
			}
			actor.wantDenied(t, "Publish", subject)
			nothingPending(t, actor, server, s)
			return
		}
		answer := []byte("served by " + tc.by)
		go func() {
			if m, err := s.NextMsg(bound); err == nil {
				_ = m.Respond(answer)
			}
		}()
		m, err := actor.Request(subject, payload, bound)
		if err != nil || !bytes.Equal(m.Data, answer) {
			t.Fatalf("got %v, %v, want %q", m, err, answer)
		}
		actor.noPermissionErr(t)

	case kvPut:
		const key = "probe"
		subject = "$KV." + subject + "." + key
		fut, err := mustJS(t, actor).PublishAsync(subject, payload)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), bound)
		defer cancel()
		kv, err := mustJS(t, admin).KeyValue(ctx, tc.subject)
		if err != nil {
			t.Fatal(err)
		}
		if !tc.allowed {
			actor.wantDenied(t, "Publish", subject)
			if err := actor.Flush(); err != nil {
				t.Fatal(err)
			}
			if e, err := kv.Get(ctx, key); !errors.Is(err, jetstream.ErrKeyNotFound) {
				t.Fatalf("%s/%s: got %v, %v, want %v", tc.subject, key, e, err, jetstream.ErrKeyNotFound)
			}
			return
		}
		select {
		case <-fut.Ok():
		case err := <-fut.Err():
			t.Fatalf("put: %v", err)
		case <-time.After(bound):
			t.Fatal("put: no acknowledgement")
		}
		e, err := kv.Get(ctx, key)
		if err != nil || !bytes.Equal(e.Value(), payload) {
			t.Fatalf("%s/%s: got %v, %v, want %q", tc.subject, key, e, err, payload)
		}
		if err := kv.Purge(ctx, key); err != nil {
			t.Fatal(err)
		}
		actor.noPermissionErr(t)

	case jsAPI:
		if !tc.allowed {
			if err := actor.PublishRequest(subject, actor.NewInbox(), []byte(tc.body)); err != nil {
				t.Fatal(err)
			}
			actor.wantDenied(t, "Publish", subject)
			return
		}
		m, err := actor.Request(subject, []byte(tc.body), bound)
		if err != nil {
			t.Fatalf("got %v, want an answer", err)
		}
		if st := m.Header.Get("Status"); st != "" && st >= "400" {
			t.Fatalf("got status %s %s, want success", st, m.Header.Get("Description"))
		}
		var r struct {
			Error *struct {
				Description string `json:"description"`
			} `json:"error"`
		}
		if json.Unmarshal(m.Data, &r) == nil && r.Error != nil {
			t.Fatalf("got JetStream error %q, want success", r.Error.Description)
		}
		actor.noPermissionErr(t)

	default:
		t.Fatalf("op %q is not a NATS operation", tc.op)
	}
}

// Cases every component but an admin is refused. What a component may
// publish to (inboxes) or subscribe to differs, and its own table says so.
var componentDenied = []permCase{
	{name: "read another's inbox", op: sub, subject: "_INBOX.{admin}.>"},
	{name: "read every inbox", op: sub, subject: "_INBOX.>"},
	{name: "read everything", op: sub, subject: ">"},
	{name: "manage identities", op: req, subject: "loki.auth.add", by: "auth"},
	{name: "ask the bucket broker", op: req, subject: "loki.auth.hel.bucket", by: "auth"},
	{name: "create a stream", op: jsAPI, subject: "$JS.API.STREAM.CREATE.EVIL", body: `{"name":"EVIL","subjects":["evil.>"],"storage":"memory"}`},
	{name: "delete the registry stream", op: jsAPI, subject: "$JS.API.STREAM.DELETE.KV_loki_tools"},
	{name: "purge the registry stream", op: jsAPI, subject: "$JS.API.STREAM.PURGE.KV_loki_tools", body: "{}"},
	{name: "delete a registry entry", op: jsAPI, subject: "$JS.API.STREAM.MSG.DELETE.KV_loki_tools", body: `{"seq":1}`},
	{name: "command a device", op: pub, subject: "jotunheim.kitchen.cmd.light"},
	{name: "read devices", op: sub, subject: "jotunheim.>"},
	{name: "system account", op: pub, subject: "$SYS.REQ.SERVER.PING"},
	{name: "MQTT sessions", op: jsAPI, subject: "$JS.API.STREAM.PURGE.$MQTT_sess", body: "{}"},
}

func TestClientPermissions(t *testing.T) {
	cases := []permCase{
		{name: "call a tool", op: req, subject: "loki.exec.add", by: "loki", allowed: true},
		{name: "list tools", op: req, subject: "loki.tools.list", by: "loki", allowed: true},
		{name: "get a tool", op: req, subject: "loki.tools.get", by: "loki", allowed: true},
		{name: "capabilities", op: req, subject: "loki.capabilities", by: "loki", allowed: true},
		{name: "cancel", op: req, subject: "loki.cancel", by: "loki", allowed: true},
		{name: "ping services", op: req, subject: "$SRV.PING", by: "loki", allowed: true},
		{name: "service info", op: req, subject: "$SRV.INFO.hel", by: "hel", allowed: true},
		{name: "watch script events", op: sub, subject: "loki.events.>", allowed: true},
		{name: "own inbox", op: sub, subject: "_INBOX.{me}.>", allowed: true},

		{name: "register a tool", op: req, subject: "loki.tools.register", by: "loki"},
		{name: "unregister a tool", op: req, subject: "loki.tools.unregister", by: "loki"},
		{name: "forge a script event", op: pub, subject: "loki.events.add.completed"},
		{name: "read others' calls", op: sub, subject: "loki.exec.*"},
		{name: "serve a tool", op: sub, subject: "loki.exec.add"},
		{name: "Hel directly", op: req, subject: "hel.kv.get", by: "hel"},
		{name: "Hel write", op: req, subject: "hel.files.write", by: "hel"},
		{name: "Fenrir directly", op: req, subject: "fenrir.sim.actuator.set", by: "fenrir"},
		{name: "Jormungandr directly", op: req, subject: "jormungandr.http.request", by: "jormungandr"},
		{name: "list identities", op: req, subject: "loki.auth.list", by: "auth"},
		{name: "revoke an identity", op: req, subject: "loki.auth.revoke", by: "auth"},
		{name: "listen as Hel", op: sub, subject: "hel.>"},
		{name: "registry put", op: kvPut, subject: "loki_tools"},
		{name: "Hel bucket put", op: kvPut, subject: helBucket},
		{name: "registry info", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_loki_tools"},
		{name: "registry read", op: jsAPI, subject: "$JS.API.DIRECT.GET.KV_loki_tools.$KV.loki_tools.add"},
		{name: "registry watch", op: jsAPI, subject: "$JS.API.CONSUMER.CREATE.KV_loki_tools", body: `{"stream_name":"KV_loki_tools","config":{"deliver_subject":"x"}}`},
		{name: "account info", op: jsAPI, subject: "$JS.API.INFO"},
		{name: "purge Hel's bucket", op: jsAPI, subject: "$JS.API.STREAM.PURGE.KV_hel_kv_x", body: "{}"},
	}
	cases = append(cases, componentDenied...)
	t.Run("built-in", func(t *testing.T) {
		b := startBus(t)
		seedStores(t, b)
		runTable(t, b, func(t *testing.T) *client { return b.connect(t, "client") }, cases)
		storesIntact(t, b)
	})
	t.Run("added over TCP", func(t *testing.T) {
		b := startBus(t)
		seedStores(t, b)
		n := 0
		runTable(t, b, func(t *testing.T) *client {
			n++
			c, _ := b.add(t, fmt.Sprintf("alice%d", n), subjects.RoleClient)
			return c
		}, cases)
		storesIntact(t, b)
	})
}

// runTable runs each case with a fresh connection from actor, so that no
// case sees another's permission errors.
func runTable(t *testing.T, b *bus, actor func(*testing.T) *client, cases []permCase) {
	t.Helper()
	for _, tc := range cases {
		verdict := "refused"
		if tc.allowed {
			verdict = "allowed"
		}
		t.Run(verdict+"/"+tc.name, func(t *testing.T) {
			runNATSCase(t, b, actor(t), tc)
		})
	}
}

func TestLokiPermissions(t *testing.T) {
	cases := []permCase{
		{name: "call Hel", op: req, subject: "hel.kv.get", by: "hel", allowed: true},
		{name: "call Fenrir", op: req, subject: "fenrir.sim.board.list", by: "fenrir", allowed: true},
		{name: "call Jormungandr", op: req, subject: "jormungandr.http.request", by: "jormungandr", allowed: true},
		{name: "publish script events", op: pub, subject: "loki.events.add.completed", allowed: true},
		{name: "serve tools", op: sub, subject: "loki.exec.*", allowed: true},
		{name: "serve registration", op: sub, subject: "loki.tools.register", allowed: true},
		{name: "serve cancel", op: sub, subject: "loki.cancel", allowed: true},
		{name: "serve $SRV", op: sub, subject: "$SRV.PING.loki", allowed: true},
		{name: "own inbox", op: sub, subject: "_INBOX.{me}.>", allowed: true},
		{name: "answer any caller", op: pub, subject: "_INBOX.{admin}.x", allowed: true},
		{name: "registry put", op: kvPut, subject: "loki_tools", allowed: true},
		{name: "registry info", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_loki_tools", allowed: true},
		{name: "registry read", op: jsAPI, subject: "$JS.API.DIRECT.GET.KV_loki_tools.$KV.loki_tools.add", allowed: true},
		{name: "account info", op: jsAPI, subject: "$JS.API.INFO", allowed: true},

		{name: "Hel bucket put", op: kvPut, subject: helBucket},
		{name: "Hel bucket info", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_hel_kv_x"},
		{name: "Hel bucket read", op: jsAPI, subject: "$JS.API.DIRECT.GET.KV_hel_kv_x.$KV.hel_kv_x.k"},
		{name: "purge Hel's bucket", op: jsAPI, subject: "$JS.API.STREAM.PURGE.KV_hel_kv_x", body: "{}"},
		{name: "Hel object store", op: pub, subject: "$O.hel_obj_x.C.x"},
		{name: "serve Hel", op: sub, subject: "hel.>"},
		{name: "watch its own events", op: sub, subject: "loki.events.>"},
	}
	cases = append(cases, componentDenied...)
	b := startBus(t)
	seedStores(t, b)
	runTable(t, b, func(t *testing.T) *client { return b.connect(t, "loki") }, cases)
	storesIntact(t, b)
}

func TestHelPermissions(t *testing.T) {
	cases := []permCase{
		{name: "serve Hel", op: sub, subject: "hel.>", allowed: true},
		{name: "serve $SRV", op: sub, subject: "$SRV.INFO.hel", allowed: true},
		{name: "own inbox", op: sub, subject: "_INBOX.{me}.>", allowed: true},
		{name: "answer any caller", op: pub, subject: "_INBOX.{admin}.x", allowed: true},
		{name: "own bucket put", op: kvPut, subject: helBucket, allowed: true},
		{name: "own bucket info", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_hel_kv_x", allowed: true},
		{name: "own bucket read", op: jsAPI, subject: "$JS.API.DIRECT.GET.KV_hel_kv_x.$KV.hel_kv_x.k", allowed: true},
		{name: "ask the bucket broker", op: req, subject: "loki.auth.hel.bucket", by: "auth", allowed: true},

		// Streams are made by the bucket broker, never by Hel itself: a
		// stream of Hel's could otherwise capture loki.exec.>.
		{name: "create a bucket directly", op: jsAPI, subject: "$JS.API.STREAM.CREATE.KV_hel_kv_y", body: `{"name":"KV_hel_kv_y","subjects":["$KV.hel_kv_y.>"],"storage":"memory"}`},
		{name: "create a stream of another name", op: jsAPI, subject: "$JS.API.STREAM.CREATE.OTHER", body: `{"name":"OTHER","subjects":["loki.exec.>"],"storage":"memory"}`},
		{name: "update own bucket's subjects", op: jsAPI, subject: "$JS.API.STREAM.UPDATE.KV_hel_kv_x", body: `{"name":"KV_hel_kv_x","subjects":["$KV.hel_kv_x.>","loki.exec.>"]}`},
		{name: "purge the device registry", op: jsAPI, subject: "$JS.API.STREAM.PURGE.KV_jotunheim_devices", body: "{}"},
		{name: "delete the device registry", op: jsAPI, subject: "$JS.API.STREAM.DELETE.KV_jotunheim_devices"},
		{name: "purge the firmware store", op: jsAPI, subject: "$JS.API.STREAM.PURGE.OBJ_jotunheim_firmware", body: "{}"},
		{name: "delete a stream of another name", op: jsAPI, subject: "$JS.API.STREAM.DELETE.OTHER"},

		{name: "registry put", op: kvPut, subject: "loki_tools"},
		{name: "registry info", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_loki_tools"},
		{name: "registry read", op: jsAPI, subject: "$JS.API.DIRECT.GET.KV_loki_tools.$KV.loki_tools.add"},
		{name: "registry update", op: jsAPI, subject: "$JS.API.STREAM.UPDATE.KV_loki_tools", body: `{"name":"KV_loki_tools","subjects":["$KV.loki_tools.>","_INBOX.>"]}`},
		{name: "registry watch", op: jsAPI, subject: "$JS.API.CONSUMER.CREATE.KV_loki_tools", body: `{"stream_name":"KV_loki_tools","config":{"deliver_subject":"x"}}`},
		{name: "delete own bucket", op: jsAPI, subject: "$JS.API.STREAM.DELETE.KV_hel_kv_x"},
		{name: "MQTT messages", op: jsAPI, subject: "$JS.API.STREAM.INFO.$MQTT_msgs"},
		{name: "MQTT retained", op: jsAPI, subject: "$JS.API.CONSUMER.CREATE.$MQTT_rmsgs", body: "{}"},
		{name: "MQTT subjects", op: pub, subject: "$MQTT.sess.x"},
		{name: "call a tool", op: req, subject: "loki.exec.add", by: "loki"},
		{name: "call Fenrir", op: req, subject: "fenrir.sim.board.list", by: "fenrir"},
		{name: "publish script events", op: pub, subject: "loki.events.add.completed"},
		{name: "read others' calls", op: sub, subject: "loki.exec.*"},
	}
	for _, c := range componentDenied {
		if c.name != "ask the bucket broker" { // allowed above
			cases = append(cases, c)
		}
	}
	b := startBus(t)
	seedStores(t, b)
	runTable(t, b, func(t *testing.T) *client { return b.connect(t, "hel") }, cases)
	storesIntact(t, b)
	startBroker(t, b)
	brokerCases(t, b)
	storesIntact(t, b)
}

// The device service (Jotunheim) writes its own registry, answers devices
// on their downlink topics and calls tools through Loki; it is refused
// the tool registry, Hel's buckets, stream deletion, script events, and
// speaking as a device on uplink topics.
func TestJotunheimPermissions(t *testing.T) {
	cases := []permCase{
		{name: "serve devices", op: sub, subject: "devices.list", allowed: true},
		{name: "serve $SRV", op: sub, subject: "$SRV.INFO.jotunheim", allowed: true},
		{name: "own inbox", op: sub, subject: "_INBOX.{me}.>", allowed: true},
		{name: "answer any caller", op: pub, subject: "_INBOX.{admin}.x", allowed: true},
		{name: "hear device status", op: sub, subject: "jotunheim.*.status", allowed: true},
		{name: "hear device states", op: sub, subject: "jotunheim.*.state.*", allowed: true},
		{name: "hear device tool calls", op: sub, subject: "jotunheim.*.call", allowed: true},
		{name: "command a device (downlink)", op: pub, subject: "jotunheim.kitchen.cmd", allowed: true},
		{name: "negotiate with a device (downlink)", op: pub, subject: "jotunheim.kitchen.negotiation", allowed: true},
		{name: "ask a device for its manifest (downlink)", op: pub, subject: "jotunheim.kitchen.caps.get", allowed: true},
		{name: "answer a device's tool call (downlink)", op: pub, subject: "jotunheim.kitchen.call.result", allowed: true},
		{name: "offer an update (downlink)", op: pub, subject: "jotunheim.kitchen.ota.offer", allowed: true},
		{name: "publish device events", op: pub, subject: "devices.events.kitchen.online", allowed: true},
		{name: "call a tool", op: req, subject: "loki.exec.add", by: "loki", allowed: true},
		{name: "register device tools", op: req, subject: "loki.tools.register", by: "loki", allowed: true},
		{name: "device registry put", op: kvPut, subject: "jotunheim_devices", allowed: true},
		{name: "device registry info", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_jotunheim_devices", allowed: true},
		{name: "account info", op: jsAPI, subject: "$JS.API.INFO", allowed: true},

		{name: "registry put", op: kvPut, subject: "loki_tools"},
		{name: "registry info", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_loki_tools"},
		{name: "registry watch", op: jsAPI, subject: "$JS.API.CONSUMER.CREATE.KV_loki_tools", body: `{"stream_name":"KV_loki_tools","config":{"deliver_subject":"x"}}`},
		{name: "Hel bucket put", op: kvPut, subject: helBucket},
		{name: "Hel bucket info", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_hel_kv_x"},
		{name: "Hel bucket read", op: jsAPI, subject: "$JS.API.DIRECT.GET.KV_hel_kv_x.$KV.hel_kv_x.k"},
		{name: "Hel object store", op: pub, subject: "$O.hel_obj_x.C.x"},
		{name: "purge Hel's bucket", op: jsAPI, subject: "$JS.API.STREAM.PURGE.KV_hel_kv_x", body: "{}"},
		{name: "delete its own registry stream", op: jsAPI, subject: "$JS.API.STREAM.DELETE.KV_jotunheim_devices"},
		{name: "purge its own registry stream", op: jsAPI, subject: "$JS.API.STREAM.PURGE.KV_jotunheim_devices", body: "{}"},
		{name: "delete Hel's bucket", op: jsAPI, subject: "$JS.API.STREAM.DELETE.KV_hel_kv_x"},
		{name: "publish script events", op: pub, subject: "loki.events.add.completed"},
		{name: "watch script events", op: sub, subject: "loki.events.>"},
		{name: "uplink status as a device", op: pub, subject: "jotunheim.kitchen.status"},
		{name: "uplink state as a device", op: pub, subject: "jotunheim.kitchen.state.temp"},
		{name: "uplink a result as a device", op: pub, subject: "jotunheim.kitchen.result"},
		{name: "uplink a tool call as a device", op: pub, subject: "jotunheim.kitchen.call"},
		{name: "uplink an event as a device", op: pub, subject: "jotunheim.kitchen.event"},
		{name: "set an entity (Home Assistant's)", op: pub, subject: "jotunheim.kitchen.set.light"},
		{name: "call Hel", op: req, subject: "hel.kv.get", by: "hel"},
		{name: "call Fenrir", op: req, subject: "fenrir.sim.actuator.set", by: "fenrir"},
		{name: "call Jormungandr", op: req, subject: "jormungandr.http.request", by: "jormungandr"},
		{name: "read others' calls", op: sub, subject: "loki.exec.*"},
	}
	cases = append(cases, componentDenied...)
	b := startBus(t)
	seedStores(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	// Its registry, made as the service makes it at start-up.
	if _, err := mustJS(t, b.connect(t, "jotunheim")).CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "jotunheim_devices", History: 1}); err != nil {
		t.Fatalf("jotunheim creates its registry: %v", err)
	}
	runTable(t, b, func(t *testing.T) *client { return b.connect(t, "jotunheim") }, cases)
	storesIntact(t, b)
}

func TestLokiWorkerPermissions(t *testing.T) {
	cases := []permCase{
		{name: "call Hel", op: req, subject: "hel.kv.get", by: "hel", allowed: true},
		{name: "call Fenrir", op: req, subject: "fenrir.sim.board.list", by: "fenrir", allowed: true},
		{name: "call Jormungandr", op: req, subject: "jormungandr.http.request", by: "jormungandr", allowed: true},
		{name: "command a device", op: req, subject: "devices.cmd", by: "jotunheim", allowed: true},
		{name: "own inbox", op: sub, subject: "_INBOX.{me}.>", allowed: true},

		{name: "publish script events", op: pub, subject: "loki.events.add.completed"},
		{name: "serve tools", op: sub, subject: "loki.exec.*"},
		{name: "call a tool", op: req, subject: "loki.exec.add", by: "loki"},
		{name: "register a tool", op: req, subject: "loki.tools.register", by: "loki"},
		{name: "registry put", op: kvPut, subject: "loki_tools"},
		{name: "registry read", op: jsAPI, subject: "$JS.API.DIRECT.GET.KV_loki_tools.$KV.loki_tools.add"},
		{name: "Hel bucket put", op: kvPut, subject: helBucket},
		{name: "account info", op: jsAPI, subject: "$JS.API.INFO"},
		{name: "answer another caller", op: pub, subject: "_INBOX.{admin}.x"},
		{name: "serve Hel", op: sub, subject: "hel.>"},
	}
	cases = append(cases, componentDenied...)
	b := startBus(t)
	seedStores(t, b)
	runTable(t, b, func(t *testing.T) *client { return b.connect(t, string(subjects.RoleLokiWorker)) }, cases)
	storesIntact(t, b)
}

func TestFenrirPermissions(t *testing.T) {
	cases := []permCase{
		{name: "serve boards", op: sub, subject: "fenrir.>", allowed: true},
		{name: "serve $SRV", op: sub, subject: "$SRV.PING.fenrir", allowed: true},
		{name: "own inbox", op: sub, subject: "_INBOX.{me}.>", allowed: true},
		{name: "answer any caller", op: pub, subject: "_INBOX.{admin}.x", allowed: true},
		{name: "find another owner of its board", op: req, subject: "fenrir.sim.board.list", by: "fenrir", allowed: true},

		{name: "call Hel", op: req, subject: "hel.kv.get", by: "hel"},
		{name: "call a tool", op: req, subject: "loki.exec.add", by: "loki"},
		{name: "call Jormungandr", op: req, subject: "jormungandr.http.request", by: "jormungandr"},
		{name: "publish script events", op: pub, subject: "loki.events.add.completed"},
		{name: "registry put", op: kvPut, subject: "loki_tools"},
		{name: "Hel bucket put", op: kvPut, subject: helBucket},
		{name: "account info", op: jsAPI, subject: "$JS.API.INFO"},
		{name: "serve Hel", op: sub, subject: "hel.>"},
	}
	cases = append(cases, componentDenied...)
	b := startBus(t)
	seedStores(t, b)
	runTable(t, b, func(t *testing.T) *client { return b.connect(t, "fenrir") }, cases)
	storesIntact(t, b)
}

func TestJormungandrPermissions(t *testing.T) {
	cases := []permCase{
		{name: "serve the network", op: sub, subject: "jormungandr.>", allowed: true},
		{name: "serve $SRV", op: sub, subject: "$SRV.STATS.jormungandr", allowed: true},
		{name: "own inbox", op: sub, subject: "_INBOX.{me}.>", allowed: true},
		{name: "answer any caller", op: pub, subject: "_INBOX.{admin}.x", allowed: true},

		{name: "call itself", op: req, subject: "jormungandr.http.request", by: "jormungandr"},
		{name: "call Hel", op: req, subject: "hel.kv.get", by: "hel"},
		{name: "call Fenrir", op: req, subject: "fenrir.sim.actuator.set", by: "fenrir"},
		{name: "call a tool", op: req, subject: "loki.exec.add", by: "loki"},
		{name: "publish script events", op: pub, subject: "loki.events.add.completed"},
		{name: "registry put", op: kvPut, subject: "loki_tools"},
		{name: "Hel bucket put", op: kvPut, subject: helBucket},
		{name: "account info", op: jsAPI, subject: "$JS.API.INFO"},
	}
	cases = append(cases, componentDenied...)
	b := startBus(t)
	seedStores(t, b)
	runTable(t, b, func(t *testing.T) *client { return b.connect(t, "jormungandr") }, cases)
	storesIntact(t, b)
}

func TestGatewayPermissions(t *testing.T) {
	cases := []permCase{
		{name: "call a tool", op: req, subject: "loki.exec.add", by: "loki", allowed: true},
		{name: "list tools", op: req, subject: "loki.tools.list", by: "loki", allowed: true},
		{name: "register for an admin token", op: req, subject: "loki.tools.register", by: "loki", allowed: true},
		{name: "unregister for an admin token", op: req, subject: "loki.tools.unregister", by: "loki", allowed: true},
		{name: "cancel", op: req, subject: "loki.cancel", by: "loki", allowed: true},
		{name: "service status", op: req, subject: "$SRV.PING", by: "loki", allowed: true},
		{name: "watch script events", op: sub, subject: "loki.events.>", allowed: true},
		{name: "own inbox", op: sub, subject: "_INBOX.{me}.>", allowed: true},
		{name: "registry info", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_loki_tools", allowed: true},
		{name: "registry read", op: jsAPI, subject: "$JS.API.DIRECT.GET.KV_loki_tools.$KV.loki_tools.add", allowed: true},
		{name: "account info", op: jsAPI, subject: "$JS.API.INFO", allowed: true},

		{name: "verify a device login", op: req, subject: "loki.auth.verify.device", by: "auth", allowed: true},
		{name: "a linked device's status", op: pub, subject: "jotunheim.kitchen.status", allowed: true},
		{name: "a linked device's state", op: pub, subject: "jotunheim.kitchen.state.led", allowed: true},
		{name: "hear a linked device's commands", op: sub, subject: "jotunheim.kitchen.cmd", allowed: true},
		{name: "hear a linked device's set commands", op: sub, subject: "jotunheim.kitchen.set.*", allowed: true},

		{name: "command a device's agent", op: pub, subject: "jotunheim.kitchen.cmd"},
		{name: "read a device's status", op: sub, subject: "jotunheim.kitchen.status"},
		{name: "read a device's whole tree", op: sub, subject: "jotunheim.kitchen.>"},
		{name: "registry put", op: kvPut, subject: "loki_tools"},
		{name: "registry update", op: jsAPI, subject: "$JS.API.STREAM.UPDATE.KV_loki_tools", body: `{"name":"KV_loki_tools","subjects":["$KV.loki_tools.>"]}`},
		{name: "Hel bucket put", op: kvPut, subject: helBucket},
		{name: "Hel bucket info", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_hel_kv_x"},
		{name: "call Hel", op: req, subject: "hel.kv.get", by: "hel"},
		{name: "call Fenrir", op: req, subject: "fenrir.sim.actuator.set", by: "fenrir"},
		{name: "publish script events", op: pub, subject: "loki.events.add.completed"},
		{name: "read others' calls", op: sub, subject: "loki.exec.*"},
		{name: "answer others", op: pub, subject: "_INBOX.{admin}.x"},
	}
	cases = append(cases, componentDenied...)
	b := startBus(t)
	seedStores(t, b)
	runTable(t, b, func(t *testing.T) *client { return b.connect(t, "gateway") }, cases)
	storesIntact(t, b)
}

func TestAuthServicePermissions(t *testing.T) {
	cases := []permCase{
		{name: "serve identities", op: sub, subject: "loki.auth.>", allowed: true},
		{name: "serve $SRV", op: sub, subject: "$SRV.INFO.auth", allowed: true},
		{name: "own inbox", op: sub, subject: "_INBOX.{me}.>", allowed: true},
		{name: "answer an admin", op: pub, subject: "_INBOX.{admin}.x", allowed: true},

		{name: "call a tool", op: req, subject: "loki.exec.add", by: "loki"},
		{name: "call Hel", op: req, subject: "hel.kv.get", by: "hel"},
		{name: "registry put", op: kvPut, subject: "loki_tools"},
		{name: "publish script events", op: pub, subject: "loki.events.add.completed"},
		// The bucket broker: it makes and updates streams (checking their
		// names and subjects itself) and reads their settings, never their
		// data, and never the other components' streams.
		{name: "create a Hel bucket (the broker)", op: jsAPI, subject: "$JS.API.STREAM.CREATE.KV_hel_kv_y", body: `{"name":"KV_hel_kv_y","subjects":["$KV.hel_kv_y.>"],"storage":"memory"}`, allowed: true},
		{name: "Hel bucket info (the broker)", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_hel_kv_x", allowed: true},
		{name: "Hel bucket put", op: kvPut, subject: helBucket},
		{name: "Hel bucket read", op: jsAPI, subject: "$JS.API.DIRECT.GET.KV_hel_kv_x.$KV.hel_kv_x.k"},
		{name: "purge Hel's bucket", op: jsAPI, subject: "$JS.API.STREAM.PURGE.KV_hel_kv_x", body: "{}"},
		{name: "delete Hel's bucket", op: jsAPI, subject: "$JS.API.STREAM.DELETE.KV_hel_kv_x"},
		{name: "registry update", op: jsAPI, subject: "$JS.API.STREAM.UPDATE.KV_loki_tools", body: `{"name":"KV_loki_tools","subjects":["$KV.loki_tools.>","_INBOX.>"]}`},
		{name: "registry info", op: jsAPI, subject: "$JS.API.STREAM.INFO.KV_loki_tools"},
		{name: "device registry update", op: jsAPI, subject: "$JS.API.STREAM.UPDATE.KV_jotunheim_devices", body: `{"name":"KV_jotunheim_devices","subjects":[">"]}`},
	}
	// The identity service serves loki.auth.>; "manage identities" from
	// componentDenied is its own subject. "create a stream" is the bucket
	// broker's right (documented in docs/SECURITY.md: stream names cannot
	// be matched in part, so the broker checks them).
	for _, c := range componentDenied {
		if c.by != "auth" && c.name != "create a stream" {
			cases = append(cases, c)
		}
	}
	b := startBus(t)
	seedStores(t, b)
	runTable(t, b, func(t *testing.T) *client { return b.connect(t, "auth") }, cases)
	storesIntact(t, b)
}

func TestAdminPermissions(t *testing.T) {
	cases := []permCase{
		{name: "call a tool", op: req, subject: "loki.exec.add", by: "loki", allowed: true},
		{name: "register a tool", op: req, subject: "loki.tools.register", by: "loki", allowed: true},
		{name: "Hel directly", op: req, subject: "hel.kv.get", by: "hel", allowed: true},
		{name: "Fenrir directly", op: req, subject: "fenrir.sim.actuator.set", by: "fenrir", allowed: true},
		{name: "Jormungandr directly", op: req, subject: "jormungandr.http.request", by: "jormungandr", allowed: true},
		{name: "manage identities", op: req, subject: "loki.auth.add", by: "auth", allowed: true},
		{name: "read every inbox", op: sub, subject: "_INBOX.>", allowed: true},
		{name: "command a device", op: pub, subject: "jotunheim.kitchen.cmd.light", allowed: true},
		{name: "publish script events", op: pub, subject: "loki.events.add.completed", allowed: true},
		{name: "registry put", op: kvPut, subject: "loki_tools", allowed: true},
		{name: "Hel bucket put", op: kvPut, subject: helBucket, allowed: true},
		{name: "create a stream", op: jsAPI, subject: "$JS.API.STREAM.CREATE.EVIL", body: `{"name":"EVIL","subjects":["evil.>"],"storage":"memory"}`, allowed: true},
		{name: "purge a stream", op: jsAPI, subject: "$JS.API.STREAM.PURGE.EVIL", body: "{}", allowed: true},
		{name: "delete a stream", op: jsAPI, subject: "$JS.API.STREAM.DELETE.EVIL", allowed: true},
	}
	t.Run("built-in", func(t *testing.T) {
		b := startBus(t)
		seedStores(t, b)
		runTable(t, b, func(t *testing.T) *client { return b.connect(t, "admin") }, cases)
		storesIntact(t, b)
	})
	t.Run("added over TCP", func(t *testing.T) {
		b := startBus(t)
		seedStores(t, b)
		n := 0
		runTable(t, b, func(t *testing.T) *client {
			n++
			c, _ := b.add(t, fmt.Sprintf("ops%d", n), subjects.RoleAdmin)
			return c
		}, cases)
		storesIntact(t, b)
	})
}

// Components use their stores through the jetstream library, which makes
// more calls than the tables: the permissions must cover all of them.
func TestComponentsUseTheirStores(t *testing.T) {
	b := startBus(t)
	seedStores(t, b)
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()

	t.Run("loki opens, watches and writes the registry", func(t *testing.T) {
		loki := b.connect(t, "loki")
		kv, err := mustJS(t, loki).KeyValue(ctx, "loki_tools")
		if err != nil {
			t.Fatal(err)
		}
		w, err := kv.WatchAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		if e := <-w.Updates(); e == nil || e.Key() != registryKey {
			t.Fatalf("watch: got %v, want %s", e, registryKey)
		}
		if e := <-w.Updates(); e != nil {
			t.Fatalf("watch: got %v, want the end of initial values", e.Key())
		}
		if _, err := kv.Put(ctx, "echo", []byte("v")); err != nil {
			t.Fatal(err)
		}
		if e := <-w.Updates(); e == nil || e.Key() != "echo" {
			t.Fatalf("watch: got %v, want echo", e)
		}
		if err := kv.Delete(ctx, "echo"); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.History(ctx, registryKey); err != nil {
			t.Fatal(err)
		}
		if err := kv.Purge(ctx, "echo"); err != nil {
			t.Fatal(err)
		}
		// Opening again at start-up creates nothing and changes nothing.
		if _, err := mustJS(t, loki).CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "loki_tools", History: 5}); err != nil {
			t.Fatalf("create the registry again with the same settings: %v", err)
		}
		loki.noPermissionErr(t)
	})

	t.Run("gateway watches the registry read only", func(t *testing.T) {
		gw := b.connect(t, "gateway")
		kv, err := mustJS(t, gw).KeyValue(ctx, "loki_tools")
		if err != nil {
			t.Fatal(err)
		}
		e, err := kv.Get(ctx, registryKey)
		if err != nil || string(e.Value()) != registryVal {
			t.Fatalf("get: got %v, %v, want %q", e, err, registryVal)
		}
		w, err := kv.WatchAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Stop()
		if e := <-w.Updates(); e == nil || e.Key() != registryKey {
			t.Fatalf("watch: got %v, want %s", e, registryKey)
		}
		gw.noPermissionErr(t)
		put := make(chan error, 1)
		putCtx, putCancel := context.WithCancel(ctx)
		defer putCancel()
		go func() { _, err := kv.Put(putCtx, "evil", []byte("x")); put <- err }()
		gw.wantDenied(t, "Publish", "$KV.loki_tools.evil")
		putCancel()
		if err := <-put; err == nil {
			t.Fatal("gateway put into the registry, want refused")
		}
	})

	t.Run("hel runs KV, objects and its cache", func(t *testing.T) {
		startBroker(t, b)
		hel := b.connect(t, "hel")
		js := mustJS(t, hel)
		// Hel's buckets are made by the bucket broker.
		for _, body := range []string{`{"kv":{"bucket":"hel_kv_notes","history":3}}`,
			`{"kv":{"bucket":"hel_cache","ttl":3600000000000},"discard_old":true}`, `{"object":{"bucket":"hel_obj_fw"}}`} {
			if code, msg := askBroker(t, hel, body); code != "" {
				t.Fatalf("bucket broker %s: got %s %s", body, code, msg)
			}
		}
		kv, err := js.KeyValue(ctx, "hel_kv_notes")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Create(ctx, "a", []byte("1")); err != nil {
			t.Fatal(err)
		}
		e, err := kv.Get(ctx, "a")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Update(ctx, "a", []byte("2"), e.Revision()); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Keys(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := kv.History(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		cache, err := js.KeyValue(ctx, "hel_cache")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cache.Put(ctx, "c", []byte("v")); err != nil {
			t.Fatal(err)
		}
		if err := cache.PurgeDeletes(ctx); err != nil {
			t.Fatal(err)
		}
		obs, err := js.ObjectStore(ctx, "hel_obj_fw")
		if err != nil {
			t.Fatal(err)
		}
		blob := bytes.Repeat([]byte("firmware"), 40_000) // several chunks
		if _, err := obs.PutBytes(ctx, "image.bin", blob); err != nil {
			t.Fatal(err)
		}
		got, err := obs.GetBytes(ctx, "image.bin")
		if err != nil || !bytes.Equal(got, blob) {
			t.Fatalf("get object: got %d bytes, %v, want %d", len(got), err, len(blob))
		}
		if _, err := obs.List(ctx); err != nil {
			t.Fatal(err)
		}
		if err := obs.Delete(ctx, "image.bin"); err != nil {
			t.Fatal(err)
		}
		if _, err := obs.GetInfo(ctx, "image.bin"); !errors.Is(err, jetstream.ErrObjectNotFound) {
			t.Fatalf("deleted object: got %v, want %v", err, jetstream.ErrObjectNotFound)
		}
		hel.noPermissionErr(t)
	})
	storesIntact(t, b)
}

// Hel's bucket stays Hel's: the other identities' jetstream libraries
// cannot open it. (The identity service, which runs the bucket broker,
// reads streams' settings but never their data: TestAuthServicePermissions.)
func TestOnlyHelOpensHelBuckets(t *testing.T) {
	b := startBus(t)
	seedStores(t, b)
	for _, name := range []string{"loki", "client", "gateway", "fenrir", "jormungandr", "jotunheim"} {
		t.Run(name, func(t *testing.T) {
			c := b.connect(t, name)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { _, err := mustJS(t, c).KeyValue(ctx, helBucket); done <- err }()
			c.wantDenied(t, "Publish", "$JS.API.STREAM.INFO.KV_hel_kv_x")
			cancel()
			if err := <-done; err == nil {
				t.Fatalf("%s opened %s, want refused", name, helBucket)
			}
		})
	}
}

// mqttSubject is the NATS subject of an MQTT topic without empty levels,
// as the server maps it.
func mqttSubject(topic string) string {
	levels := strings.Split(topic, "/")
	for i, l := range levels {
		levels[i] = strings.ReplaceAll(l, ".", "//")
	}
	return strings.Join(levels, ".")
}

// runMQTTCase tries tc as the MQTT client m. marker is a topic m may
// publish to: a refused publish is followed by one on marker, and the
// admin subscriber must see the marker first, since the server handles one
// connection's packets in order. A refusal leaves the connection open, so
// a table shares one: each login costs a bcrypt check.
func runMQTTCase(t *testing.T, b *bus, m *mqttClient, marker string, tc permCase) {
	t.Helper()
	admin := b.adminConn(t)
	if !m.IsConnectionOpen() {
		t.Fatal("MQTT connection closed by an earlier case")
	}
	payload := t.Name()
	switch tc.op {
	case mqttPub:
		subject := mqttSubject(tc.subject)
		if tc.allowed {
			s, err := admin.SubscribeSync(subject)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Unsubscribe()
			if err := admin.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := wait(m.Publish(tc.subject, 0, false, payload)); err != nil {
				t.Fatal(err)
			}
			got, err := s.NextMsg(bound)
			if err != nil || string(got.Data) != payload {
				t.Fatalf("admin subscriber on %s: got %v, %v, want %q", subject, got, err, payload)
			}
			return
		}
		ch := make(chan *nats.Msg, 16)
		for _, subj := range []string{subject, mqttSubject(marker)} {
			s, err := admin.ChanSubscribe(subj, ch)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Unsubscribe()
		}
		if err := admin.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := wait(m.Publish(tc.subject, 0, false, payload)); err != nil {
			t.Fatal(err)
		}
		if err := wait(m.Publish(marker, 0, false, "marker")); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-ch:
			if got.Subject != mqttSubject(marker) {
				t.Fatalf("admin subscriber: got %q on %s, want it refused", got.Data, got.Subject)
			}
		case <-time.After(bound):
			t.Fatalf("marker on %s never arrived: the connection is %v", marker, m.IsConnected())
		}

	case mqttSub:
		got := make(chan mqtt.Message, 16)
		code := m.subAck(t, tc.subject, 0, func(_ mqtt.Client, msg mqtt.Message) { got <- msg })
		if !tc.allowed {
			if code != mqttFailure {
				t.Fatalf("SUBACK: got %#x, want %#x (refused)", code, mqttFailure)
			}
			return
		}
		if code == mqttFailure {
			t.Fatalf("SUBACK: got %#x (refused), want granted", code)
		}
		defer func() { _ = wait(m.Unsubscribe(tc.subject)) }()
		p := probe(mqttSubject(strings.NewReplacer("+", "*", "#", ">").Replace(tc.subject)))
		if err := admin.Publish(p, []byte(payload)); err != nil {
			t.Fatal(err)
		}
		select {
		case msg := <-got:
			if string(msg.Payload()) != payload {
				t.Fatalf("got %q on %s, want %q", msg.Payload(), msg.Topic(), payload)
			}
		case <-time.After(bound):
			t.Fatalf("nothing arrived from %s", p)
		}
	default:
		t.Fatalf("op %q is not an MQTT operation", tc.op)
	}
}

// mqttDenied are topics no device or script may publish or subscribe to.
var mqttDenied = []permCase{
	{name: "call a tool", op: mqttPub, subject: "loki/exec/add"},
	{name: "forge a script event", op: mqttPub, subject: "loki/events/add/completed"},
	{name: "register a tool", op: mqttPub, subject: "loki/tools/register"},
	{name: "Hel", op: mqttPub, subject: "hel/kv/put"},
	{name: "Fenrir", op: mqttPub, subject: "fenrir/sim/actuator/set"},
	{name: "Jormungandr", op: mqttPub, subject: "jormungandr/http/request"},
	{name: "registry put", op: mqttPub, subject: "$KV/loki_tools/evil"},
	{name: "registry purge", op: mqttPub, subject: "$JS/API/STREAM/PURGE/KV_loki_tools"},
	{name: "registry delete", op: mqttPub, subject: "$JS/API/STREAM/DELETE/KV_loki_tools"},
	{name: "answer a caller", op: mqttPub, subject: "_INBOX/x/y"},
	{name: "system", op: mqttPub, subject: "$SYS/REQ/SERVER/PING"},
	{name: "everything", op: mqttSub, subject: "#"},
	{name: "every top level", op: mqttSub, subject: "+"},
	{name: "every second level", op: mqttSub, subject: "+/#"},
	{name: "calls", op: mqttSub, subject: "loki/#"},
	{name: "inboxes", op: mqttSub, subject: "_INBOX/#"},
	{name: "KV", op: mqttSub, subject: "$KV/#"},
	{name: "JetStream", op: mqttSub, subject: "$JS/#"},
	{name: "others' QoS 1 deliveries", op: mqttSub, subject: "$MQTT/sub/#"},
	{name: "every device", op: mqttSub, subject: "jotunheim/#"},
}

func TestDevicePermissions(t *testing.T) {
	b := startBus(t)
	seedStores(t, b)
	d, err := b.a.AddDevice("kitchen")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.a.AddDevice("garage"); err != nil {
		t.Fatal(err)
	}
	cases := []permCase{
		{name: "status", op: mqttPub, subject: "jotunheim/kitchen/status", allowed: true},
		{name: "state", op: mqttPub, subject: "jotunheim/kitchen/state/temperature", allowed: true},
		{name: "dotted entity", op: mqttPub, subject: "jotunheim/kitchen/state/temp.inside", allowed: true},
		{name: "own tree", op: mqttSub, subject: "jotunheim/kitchen/#", allowed: true},
		{name: "own commands", op: mqttSub, subject: "jotunheim/kitchen/cmd/#", allowed: true},
		{name: "one level of commands", op: mqttSub, subject: "jotunheim/kitchen/cmd/+", allowed: true},

		{name: "as another device", op: mqttPub, subject: "jotunheim/garage/state/door"},
		{name: "another device's status", op: mqttPub, subject: "jotunheim/garage/status"},
		{name: "a prefix of its id", op: mqttPub, subject: "jotunheim/kitche/status"},
		{name: "an extension of its id", op: mqttPub, subject: "jotunheim/kitchen2/status"},
		{name: "device root", op: mqttPub, subject: "jotunheim/status"},
		{name: "another device's commands", op: mqttSub, subject: "jotunheim/garage/cmd/#"},
		{name: "every device's commands", op: mqttSub, subject: "jotunheim/+/cmd/#"},
		{name: "other topics", op: mqttPub, subject: "readings/kitchen"},
	}
	cases = append(cases, mqttDenied...)
	m := b.mustMQTT(t, "kitchen", d.Password)
	for _, tc := range cases {
		t.Run(verdict(tc)+"/"+tc.name, func(t *testing.T) {
			runMQTTCase(t, b, m, "jotunheim/kitchen/marker", tc)
		})
	}
	storesIntact(t, b)
}

func TestHomeAssistantPermissions(t *testing.T) {
	b := startBus(t)
	seedStores(t, b)
	ha, err := b.a.AddHomeAssistant("hass")
	if err != nil {
		t.Fatal(err)
	}
	if ha.Username != "hass" || ha.Password == "" || ha.Identity.Role != subjects.RoleHomeAssistant {
		t.Fatalf("credential: got %+v", ha)
	}
	cases := []permCase{
		{name: "discovery config", op: mqttPub, subject: "homeassistant/device/x/config", allowed: true},
		{name: "its own status", op: mqttPub, subject: "homeassistant/status", allowed: true},
		{name: "discovery prefix", op: mqttSub, subject: "homeassistant/#", allowed: true},
		{name: "command an LED through its set topic", op: mqttPub, subject: "jotunheim/x/set/led", allowed: true},
		{name: "devices' status", op: mqttSub, subject: "jotunheim/+/status", allowed: true},
		{name: "devices' states", op: mqttSub, subject: "jotunheim/+/state/+", allowed: true},
		{name: "one state", op: mqttSub, subject: "jotunheim/x/state/led", allowed: true},

		{name: "a device's commands", op: mqttPub, subject: "jotunheim/x/cmd"},
		{name: "forge a state", op: mqttPub, subject: "jotunheim/x/state/led"},
		{name: "forge a status", op: mqttPub, subject: "jotunheim/x/status"},
		{name: "forge a manifest", op: mqttPub, subject: "jotunheim/x/manifest"},
		{name: "read a device's commands", op: mqttSub, subject: "jotunheim/x/cmd"},
		{name: "read results", op: mqttSub, subject: "jotunheim/+/result"},
	}
	cases = append(cases, mqttDenied...)
	m := b.mustMQTT(t, "hass", ha.Password)
	for _, tc := range cases {
		t.Run(verdict(tc)+"/"+tc.name, func(t *testing.T) {
			runMQTTCase(t, b, m, "homeassistant/marker", tc)
		})
	}
	storesIntact(t, b)
	// Revoked, it cannot log in again.
	if err := b.a.Revoke("hass"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.a.Get("hass"); !errors.Is(err, auth.ErrNotFound) {
		t.Fatalf("after revoke: got %v, want ErrNotFound", err)
	}
}

func verdict(tc permCase) string {
	if tc.allowed {
		return "allowed"
	}
	return "refused"
}

func TestScriptMQTTPermissions(t *testing.T) {
	b := startBus(t)
	seedStores(t, b)
	user, pass, err := b.a.ScriptMQTT([]string{"readings/#", "homeassistant/+/config"})
	if err != nil {
		t.Fatal(err)
	}
	// The same grant gets the same login; the order of filters is no matter.
	u2, p2, err := b.a.ScriptMQTT([]string{"homeassistant/+/config", "readings/#", "readings/#"})
	if err != nil || u2 != user || p2 != pass {
		t.Fatalf("same filters again: got %s, %v, want the same login %s", u2, err, user)
	}
	cases := []permCase{
		{name: "under its filter", op: mqttPub, subject: "readings/kitchen/temperature", allowed: true},
		{name: "its filter's parent level", op: mqttPub, subject: "readings", allowed: true},
		{name: "dotted level", op: mqttPub, subject: "readings/a.b", allowed: true},
		{name: "single-level filter", op: mqttPub, subject: "homeassistant/sensor/config", allowed: true},
		{name: "its filter", op: mqttSub, subject: "readings/#", allowed: true},
		{name: "narrower than its filter", op: mqttSub, subject: "readings/+/temperature", allowed: true},
		{name: "its single-level filter", op: mqttSub, subject: "homeassistant/+/config", allowed: true},

		{name: "outside its filters", op: mqttPub, subject: "other/x"},
		{name: "beside its single-level filter", op: mqttPub, subject: "homeassistant/sensor/state"},
		{name: "below its single-level filter", op: mqttPub, subject: "homeassistant/sensor/config/x"},
		{name: "command a device", op: mqttPub, subject: "jotunheim/kitchen/cmd/light"},
		{name: "as a device", op: mqttPub, subject: "jotunheim/kitchen/status"},
		{name: "wider than its filter", op: mqttSub, subject: "homeassistant/#"},
		{name: "devices", op: mqttSub, subject: "jotunheim/kitchen/#"},
	}
	cases = append(cases, mqttDenied...)
	m := b.mustMQTT(t, user, pass)
	for _, tc := range cases {
		t.Run(verdict(tc)+"/"+tc.name, func(t *testing.T) {
			runMQTTCase(t, b, m, "readings/marker", tc)
		})
	}
	t.Run("NATS with the script's login", func(t *testing.T) {
		nc, err := nats.Connect(b.srv.ClientURL(), nats.UserInfo(user, pass), nats.NoReconnect())
		if err == nil {
			nc.Close()
		}
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Fatalf("got %v, want %v", err, nats.ErrAuthorization)
		}
	})
	storesIntact(t, b)
}

// A grant that would reach the server's own subjects is refused before any
// login exists: '+' or '#' as the first level would match $JS, $KV, $SYS.
func TestScriptMQTTRefusesBroadFilters(t *testing.T) {
	a, err := auth.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, filters := range [][]string{
		{"#"}, {"+"}, {"+/#"}, {"+/+/#"}, {"+/temperature"}, {"readings/#", "+/#"},
		{"$SYS/#"}, {"$JS/API/#"}, {"loki/#"}, {"jotunheim/kitchen/#"}, {"_INBOX/#"},
		{"hel/#"}, {"a/#/b"}, {"a/b#"}, {""}, {},
	} {
		if u, _, err := a.ScriptMQTT(filters); !errors.Is(err, subjects.ErrInvalidToken) {
			t.Errorf("ScriptMQTT(%q): got %q, %v, want %v", filters, u, err, subjects.ErrInvalidToken)
		}
	}
}

// QoS 1 subscriptions are JetStream consumers delivering on $MQTT.sub.<id>,
// which nats-server (v2.15) allows every MQTT client implicitly: a
// restricted device and script need no permission beyond their topics.
func TestMQTTQoS1UnderRestrictedUsers(t *testing.T) {
	b := startBus(t)
	d, err := b.a.AddDevice("kitchen")
	if err != nil {
		t.Fatal(err)
	}
	user, pass, err := b.a.ScriptMQTT([]string{"readings/#"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, user, pass, filter, topic string }{
		{"device", "kitchen", d.Password, "jotunheim/kitchen/cmd/#", "jotunheim/kitchen/cmd/light"},
		{"script", user, pass, "readings/#", "readings/kitchen"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			subscriber := b.mustMQTT(t, tc.user, tc.pass)
			got := make(chan mqtt.Message, 1)
			if code := subscriber.subAck(t, tc.filter, 1, func(_ mqtt.Client, m mqtt.Message) { got <- m }); code != 1 {
				t.Fatalf("SUBACK: got %#x, want QoS 1 granted", code)
			}
			publisher := b.mustMQTT(t, tc.user, tc.pass)
			if err := wait(publisher.Publish(tc.topic, 1, false, "on")); err != nil {
				t.Fatalf("QoS 1 publish: %v", err)
			}
			select {
			case m := <-got:
				if string(m.Payload()) != "on" || m.Qos() != 1 {
					t.Fatalf("got %q at QoS %d, want \"on\" at QoS 1", m.Payload(), m.Qos())
				}
			case <-time.After(bound):
				t.Fatal("QoS 1 message never arrived")
			}
		})
	}
}

// A device announces itself as the field notes say: a retained will on
// its status, QoS 1, and a retained "online".
func TestDeviceWillAndRetainedStatus(t *testing.T) {
	b := startBus(t)
	d, err := b.a.AddDevice("kitchen")
	if err != nil {
		t.Fatal(err)
	}
	m := b.mustMQTT(t, "kitchen", d.Password, func(o *mqtt.ClientOptions) {
		o.SetWill("jotunheim/kitchen/status", "offline", 1, true)
	})
	if err := wait(m.Publish("jotunheim/kitchen/status", 1, true, "online")); err != nil {
		t.Fatal(err)
	}
	// A second connection of the device sees its retained status.
	got := make(chan mqtt.Message, 1)
	other := b.mustMQTT(t, "kitchen", d.Password)
	if code := other.subAck(t, "jotunheim/kitchen/status", 1, func(_ mqtt.Client, m mqtt.Message) { got <- m }); code == mqttFailure {
		t.Fatal("SUBACK refused its own status")
	}
	select {
	case msg := <-got:
		if string(msg.Payload()) != "online" || !msg.Retained() {
			t.Fatalf("got %q retained=%v, want retained \"online\"", msg.Payload(), msg.Retained())
		}
	case <-time.After(bound):
		t.Fatal("retained status never arrived")
	}
}
