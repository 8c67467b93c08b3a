package jormungandr_test

import (
	"encoding/json"
	"errors"
	"io/fs"
	"strconv"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/examples"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/jormungandr"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/nats-io/nats.go"
)

// fencedTools use the MQTT listener of a server with authentication.
const fencedTools = `
[[tools]]
name = "fenced_pub"
returns = "boolean"
grants = ["net.mqtt:127.0.0.1/readings"]
script = '''
local h = net.mqtt.connect{broker = broker, client_id = client_id, username = username, password = password}
h:publish(topic, "v", qos)
h:close()
return true
'''
  [[tools.params]]
  name = "broker"
  type = "string"
  required = true
  [[tools.params]]
  name = "topic"
  type = "string"
  required = true
  [[tools.params]]
  name = "qos"
  type = "integer"
  default = 0
  [[tools.params]]
  name = "client_id"
  type = "string"
  default = ""
  [[tools.params]]
  name = "username"
  type = "string"
  default = ""
  [[tools.params]]
  name = "password"
  type = "string"
  default = ""

[[tools]]
name = "fenced_sub"
returns = "any"
grants = ["net.mqtt:127.0.0.1/readings"]
script = '''
local h = net.mqtt.connect{broker = broker}
h:subscribe(filter)
h:publish("readings/rt", "hello")
local m = h:receive(20)
h:close()
return m
'''
  [[tools.params]]
  name = "broker"
  type = "string"
  required = true
  [[tools.params]]
  name = "filter"
  type = "string"
  required = true

[[tools]]
name = "any_topic"
returns = "boolean"
grants = ["net.mqtt"]
script = 'net.mqtt.connect{broker = broker} return true'
  [[tools.params]]
  name = "broker"
  type = "string"
  required = true

[[tools]]
name = "internal_topic"
returns = "boolean"
grants = ["net.mqtt:127.0.0.1/jotunheim"]
script = 'net.mqtt.connect{broker = broker} return true'
  [[tools.params]]
  name = "broker"
  type = "string"
  required = true
`

// fenced is `loki up` in small: a server with authentication and an MQTT
// listener, Jörmungandr fencing scripts on it, Loki, and an admin.
type fenced struct {
	srv    *natsrv.Server
	auth   *auth.Authority
	admin  *nats.Conn
	loki   *loki.Client
	lokiNC *nats.Conn          // Loki's identity, which may call Jörmungandr
	c      *jormungandr.Client // on lokiNC
	broker string
}

func setupFenced(t *testing.T, tools string) *fenced {
	t.Helper()
	return setupFencedWith(t, tools, nil)
}

// setupFencedWith is setupFenced with change, if not nil, applied to the
// server's config before it starts and to Jörmungandr's before it is built.
func setupFencedWith(t *testing.T, tools string, change func(*natsrv.Config, *jormungandr.Config)) *fenced {
	t.Helper()
	a, err := auth.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	nkeys, users, err := a.ServerUsers()
	if err != nil {
		t.Fatal(err)
	}
	cfg := testConfig()
	srv := natstest.Start(t, func(c *natsrv.Config) {
		c.MQTTPort, c.Nkeys, c.Users = -1, nkeys, users
		if change != nil {
			change(c, &cfg)
		}
	})
	a.OnChange(srv.SetUsers)
	as := func(name string) *nats.Conn {
		opts, err := auth.ConnectOptions(auth.SeedFile(a.Dir(), name))
		if err != nil {
			t.Fatal(err)
		}
		nc, err := srv.Connect(name, opts...)
		if err != nil {
			t.Fatalf("connect as %s: %v", name, err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	if err := cfg.Policy.AllowAddr(srv.MQTTAddr()); err != nil {
		t.Fatal(err)
	}
	cfg.LocalMQTT.Addr, cfg.LocalMQTT.Login = srv.MQTTAddr(), a.ScriptMQTT
	svc, err := jormungandr.New(cfg, as("jormungandr"), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)

	admin := as("admin")
	reg, err := loki.OpenRegistry(ctxT(t), admin, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(ctxT(t), lokitest.Parse(t, tools)...); err != nil {
		t.Fatal(err)
	}
	lnc := as("loki")
	ls, err := loki.New(loki.Config{Modules: []engine.Module{jormungandr.NewModule(lnc)}}, lnc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, ls)
	return &fenced{srv: srv, auth: a, admin: admin, loki: loki.NewClient(as("client")),
		lokiNC: lnc, c: jormungandr.NewClient(lnc), broker: "tcp://" + srv.MQTTAddr()}
}

func (f *fenced) call(t *testing.T, tool string, args map[string]any) (any, error) {
	t.Helper()
	if args["broker"] == nil {
		args["broker"] = f.broker
	}
	b, err := json.Marshal(args)
	if err != nil {
		t.Fatal(err)
	}
	return lokitest.Call(t, f.loki, tool, string(b))
}

// watch subscribes the admin to NATS subjects; got reports what arrived.
func (f *fenced) watch(t *testing.T, subjects ...string) (got func() []string) {
	t.Helper()
	ch := make(chan *nats.Msg, 64)
	for _, s := range subjects {
		sub, err := f.admin.ChanSubscribe(s, ch)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sub.Unsubscribe() })
	}
	if err := f.admin.Flush(); err != nil {
		t.Fatal(err)
	}
	return func() []string {
		var out []string
		for {
			select {
			case m := <-ch:
				out = append(out, m.Subject)
			default:
				return out
			}
		}
	}
}

// arrives runs publish and waits until a message arrives on subject, as
// the admin sees it.
func (f *fenced) arrives(t *testing.T, subject string, publish func()) {
	t.Helper()
	sub, err := f.admin.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := f.admin.Flush(); err != nil {
		t.Fatal(err)
	}
	publish()
	if _, err := sub.NextMsg(20 * time.Second); err != nil {
		t.Fatalf("nothing arrived on %s: %v", subject, err)
	}
}

// TestLocalMQTTFence: on Loki's own MQTT listener a tool publishes and
// subscribes only within the topics of its grants, whatever login it
// passes, and never reaches Loki's internal subjects.
func TestLocalMQTTFence(t *testing.T) {
	f := setupFenced(t, fencedTools)
	internal := f.watch(t, "loki.exec.add", "jotunheim.dev1.cmd", "hel.>", "$KV.>")

	t.Run("publish within the grant", func(t *testing.T) {
		f.arrives(t, "readings.x", func() {
			if _, err := f.call(t, "fenced_pub", map[string]any{"topic": "readings/x", "qos": 1}); err != nil {
				t.Fatal(err)
			}
		})
	})
	for _, topic := range []string{"loki/exec/add", "jotunheim/dev1/cmd", "hel/kv/get", "readingsx", "other/readings/x"} {
		t.Run("publish to "+topic, func(t *testing.T) {
			_, err := f.call(t, "fenced_pub", map[string]any{"topic": topic})
			wantCode(t, err, fault.PermissionDenied)
			if !strings.Contains(err.Error(), "readings/#") {
				t.Fatalf("got %v, want it to name the topics the grant allows", err)
			}
		})
	}
	t.Run("subscribe", func(t *testing.T) {
		got, err := f.call(t, "fenced_sub", map[string]any{"filter": "readings/+"})
		if want := map[string]any{"topic": "readings/rt", "payload": "hello"}; err != nil || !equalJSON(got, want) {
			t.Fatalf("got %v, %v, want %v", got, err, want)
		}
		for _, filter := range []string{"#", "+/exec/add", "loki/#", "+/#"} {
			_, err := f.call(t, "fenced_sub", map[string]any{"filter": filter})
			if fault.CodeOf(err) != fault.PermissionDenied {
				t.Errorf("subscribe to %s: got %v, want PERMISSION_DENIED", filter, err)
			}
		}
	})
	t.Run("the script's own login is ignored", func(t *testing.T) {
		dev, err := f.auth.AddDevice("dev1")
		if err != nil {
			t.Fatal(err)
		}
		for _, login := range [][2]string{{dev.Username, dev.Password}, {"nobody", "wrong"}, {"admin", ""}} {
			args := map[string]any{"topic": "readings/own", "username": login[0], "password": login[1]}
			// A device may not publish readings.own, nor anyone without a
			// valid login: that it arrives shows the fenced identity was used.
			f.arrives(t, "readings.own", func() {
				if _, err := f.call(t, "fenced_pub", args); err != nil {
					t.Fatalf("login %s: %v", login[0], err)
				}
			})
			args["topic"] = "jotunheim/dev1/cmd"
			_, err := f.call(t, "fenced_pub", args)
			wantCode(t, err, fault.PermissionDenied)
		}
	})
	t.Run("a grant without a topic does not reach the listener", func(t *testing.T) {
		_, err := f.call(t, "any_topic", map[string]any{})
		wantCode(t, err, fault.PermissionDenied)
		if !strings.Contains(err.Error(), `grant such as "net.mqtt:127.0.0.1/<topic>"`) {
			t.Fatalf("got %v, want it to name the grant to add", err)
		}
	})
	t.Run("a grant of an internal topic", func(t *testing.T) {
		_, err := f.call(t, "internal_topic", map[string]any{})
		wantCode(t, err, fault.ScriptError)
		if !strings.Contains(err.Error(), "belong to Loki itself") {
			t.Fatalf("got %v, want it to say why", err)
		}
	})
	t.Run("Go clients are fenced too", func(t *testing.T) {
		ctx := ctxT(t)
		for _, topics := range [][]string{nil, {"#"}, {"loki/#"}, {"$MQTT/#"}, {"+/#"}, {"+/+/#"}, {"readings/#", "+/exec/add"}} {
			_, err := f.c.ConnectMQTT(ctx, jormungandr.MQTTConnectRequest{Broker: f.broker, Topics: topics, Username: "admin"})
			if fault.CodeOf(err) != fault.PermissionDenied {
				t.Errorf("topics %q: got %v, want PERMISSION_DENIED", topics, err)
			}
		}
	})
	if got := internal(); len(got) != 0 {
		t.Fatalf("messages reached internal subjects: %v", got)
	}
}

// TestExampleNetToolsFenced: publish_reading of examples/net.toml works on
// a listener that fences it (QoS 1, retained), as under loki up.
func TestExampleNetToolsFenced(t *testing.T) {
	data, err := fs.ReadFile(examples.FS, "net.toml")
	if err != nil {
		t.Fatal(err)
	}
	f := setupFenced(t, string(data))
	f.arrives(t, "readings.kitchen.reading", func() {
		got, err := f.call(t, "publish_reading", map[string]any{"sensor": "kitchen", "value": 21.5})
		if want := map[string]any{"topic": "readings/kitchen/reading", "value": 21.5}; err != nil || !equalJSON(got, want) {
			t.Fatalf("got %v, %v, want %v", got, err, want)
		}
	})
	_, err = f.call(t, "publish_reading", map[string]any{"sensor": "kitchen", "value": 1, "prefix": "jotunheim/dev1"})
	wantCode(t, err, fault.PermissionDenied)
}

// TestMQTTGrantSyntax runs a script through the engine with grants in
// every form of <host>[:<port>][/<topic filter>], ports and # included.
func TestMQTTGrantSyntax(t *testing.T) {
	f := setupFenced(t, fencedTools)
	port := strconv.Itoa(portOf(t, f.broker))
	prog, err := engine.Compile("pub", `
local h = net.mqtt.connect{broker = broker}
h:publish(topic, "v")
h:close()
return true`)
	if err != nil {
		t.Fatal(err)
	}
	en := engine.New(engine.Config{Modules: []engine.Module{jormungandr.NewModule(f.lokiNC)}}, quietLog())
	for _, tc := range []struct {
		grants []string
		topic  string
		code   fault.Code
		msg    string
	}{
		{grants: []string{"net.mqtt:127.0.0.1:" + port + "/readings/#"}, topic: "readings/a"},
		{grants: []string{"net.mqtt:127.0.0.1:" + port + "/readings"}, topic: "readings/a/b"},
		{grants: []string{"net.mqtt:127.0.0.1/readings/+/t"}, topic: "readings/k/t"},
		{grants: []string{"net.mqtt:127.0.0.1/readings/+/t"}, topic: "readings/k/u", code: fault.PermissionDenied, msg: "readings/+/t/#"},
		{grants: []string{"net.mqtt:*/readings"}, topic: "readings/a"},
		{grants: []string{"net.mqtt:127.0.0.1/a", "net.mqtt:127.0.0.1/readings"}, topic: "readings/a"},
		{grants: []string{"net.mqtt", "net.mqtt:127.0.0.1/readings"}, topic: "readings/a"},
		{grants: []string{"net:127.0.0.1", "net.mqtt:127.0.0.1/readings"}, topic: "readings/a"},
		{grants: []string{"net.mqtt:127.0.0.1:1/readings"}, topic: "readings/a", code: fault.PermissionDenied, msg: "no grant for net.mqtt:127.0.0.1 (port " + port + ")"},
		{grants: []string{"net.mqtt:localhost/readings"}, topic: "readings/a", code: fault.PermissionDenied, msg: "no grant for net.mqtt:127.0.0.1"},
		{grants: []string{"net.mqtt:127.0.0.1:" + port}, topic: "readings/a", code: fault.PermissionDenied, msg: `"net.mqtt:127.0.0.1/<topic>"`},
		{grants: []string{"net.mqtt:127.0.0.1/readings/#", "net.mqtt:127.0.0.1/x"}, topic: "loki/exec/add", code: fault.PermissionDenied, msg: "readings/#, x/#"},
		{grants: []string{"net.mqtt:127.0.0.1/#"}, topic: "loki/exec/add", code: fault.PermissionDenied, msg: "Loki's own MQTT listener"},
		{grants: []string{"net.mqtt:127.0.0.1/+/exec/add"}, topic: "loki/exec/add", code: fault.PermissionDenied, msg: "Loki's own MQTT listener"},
	} {
		t.Run(strings.Join(tc.grants, " ")+" "+tc.topic, func(t *testing.T) {
			var gs engine.Grants
			for _, s := range tc.grants {
				g, _ := parseGrantLoose(s)
				gs = append(gs, g)
			}
			_, err := en.Run(ctxT(t), engine.Exec{Tool: "pub", ExecID: "x", Program: prog, Grants: gs,
				Params: []engine.Param{{Name: "broker", Type: engine.String}, {Name: "topic", Type: engine.String}},
				Args:   map[string]any{"broker": f.broker, "topic": tc.topic}})
			wantCode(t, err, tc.code)
			if err != nil && !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("got %v, want it to contain %q", err, tc.msg)
			}
		})
	}
}

// TestLocalMQTTIdentity: the identity a fenced connection logs in with is
// refused by the server itself outside its topics, so a script that got
// past Jörmungandr's own check would still reach nothing.
func TestLocalMQTTIdentity(t *testing.T) {
	f := setupFenced(t, fencedTools)
	internal := f.watch(t, "loki.>", "jotunheim.>", "hel.>")
	user, pass, err := f.auth.ScriptMQTT([]string{"readings/#"})
	if err != nil {
		t.Fatal(err)
	}
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(f.broker).SetClientID("raw").
		SetUsername(user).SetPassword(pass).SetProtocolVersion(4).SetAutoReconnect(false))
	if tok := cl.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect with the script identity: %v", tok.Error())
	}
	defer cl.Disconnect(0)
	for _, topic := range []string{"loki/exec/add", "jotunheim/dev1/cmd", "hel/kv/get"} {
		cl.Publish(topic, 0, false, "x").WaitTimeout(5 * time.Second)
	}
	f.arrives(t, "readings.raw", func() { cl.Publish("readings/raw", 0, false, "x").WaitTimeout(5 * time.Second) })
	if got := internal(); len(got) != 0 {
		t.Fatalf("the script identity reached %v", got)
	}
}

// TestLocalMQTTClientID: a script cannot take over a device's MQTT session
// by using its client id.
func TestLocalMQTTClientID(t *testing.T) {
	f := setupFenced(t, fencedTools)
	dev, err := f.auth.AddDevice("dev1")
	if err != nil {
		t.Fatal(err)
	}
	lost := make(chan error, 1)
	cl := mqtt.NewClient(mqtt.NewClientOptions().AddBroker(f.broker).SetClientID("dev1").
		SetUsername(dev.Username).SetPassword(dev.Password).SetProtocolVersion(4).SetAutoReconnect(false).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { lost <- err }))
	if tok := cl.Connect(); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
		t.Fatalf("connect as the device: %v", tok.Error())
	}
	defer cl.Disconnect(0)
	if _, err := f.call(t, "fenced_pub", map[string]any{"topic": "readings/x", "client_id": "dev1"}); err != nil {
		t.Fatal(err)
	}
	f.arrives(t, "jotunheim.dev1.status", func() {
		if tok := cl.Publish("jotunheim/dev1/status", 1, false, "online"); !tok.WaitTimeout(20*time.Second) || tok.Error() != nil {
			t.Fatalf("the device's publish after the script connected: %v", tok.Error())
		}
	})
	select {
	case err := <-lost:
		t.Fatalf("the device lost its connection: %v", err)
	default:
	}
}

func TestCheckGrant(t *testing.T) {
	for _, tc := range []struct {
		grant string
		ok    bool
	}{
		{"net", true},
		{"net:*", true},
		{"net.http:api.example.com", true},
		{"net.ws:127.0.0.1", true},
		{"net.mqtt", true},
		{"net.mqtt:127.0.0.1", true},
		{"net.mqtt:127.0.0.1:1883", true},
		{"net.mqtt:127.0.0.1/readings", true},
		{"net.mqtt:127.0.0.1/readings/#", true},
		{"net.mqtt:127.0.0.1:1883/readings/#", true},
		{"net.mqtt:127.0.0.1:1883/readings/+/temp", true},
		{"net.mqtt:broker.example.com/a.b/c", true},
		{"net.mqtt:[::1]:1883/readings", true},
		{"net.mqtt:[::1]", true},
		{"net.mqtt:*/readings", true},
		{"hel.kv:anything/goes", true}, // not net's business
		{"net.smtp:example.com", false},
		{"net.http:example.com/path", false},
		{"net.http:example.com:8080", false},
		{"net:127.0.0.1/readings", false},
		{"net.mqtt:127.0.0.1:0/readings", false},
		{"net.mqtt:127.0.0.1:99999", false},
		{"net.mqtt:127.0.0.1/", false},
		{"net.mqtt:127.0.0.1/a//b", false},
		{"net.mqtt:127.0.0.1/a/#/b", false},
		{"net.mqtt:127.0.0.1/a+", false},
		{"net.mqtt:127.0.0.1/loki/#", false},
		{"net.mqtt:broker.example.com/jotunheim/dev1", false},
		{"net.mqtt:127.0.0.1/_INBOX", false},
		{"net.mqtt:[example.com]/x", false},
		{"net.mqtt:2130706433/x", false},
		{"net.mqtt:[::ffff:127.0.0.1]/x", false},
	} {
		t.Run(tc.grant, func(t *testing.T) {
			g, err := parseGrantLoose(tc.grant)
			if err != nil {
				t.Fatal(err)
			}
			if err := jormungandr.CheckGrant(g); (err == nil) != tc.ok {
				t.Fatalf("got %v, want ok = %v", err, tc.ok)
			}
		})
	}
}

// parseGrantLoose splits a grant as engine.ParseGrant does, without its
// character rules: CheckGrant judges the scope.
func parseGrantLoose(s string) (engine.Grant, error) {
	head, scope, _ := strings.Cut(s, ":")
	mod, area, _ := strings.Cut(head, ".")
	return engine.Grant{Module: mod, Area: area, Scope: scope}, nil
}

func TestTopicMatches(t *testing.T) {
	for _, tc := range []struct {
		filter, topic string
		want          bool
	}{
		{"readings/#", "readings", true},
		{"readings/#", "readings/x", true},
		{"readings/#", "readings/x/y", true},
		{"readings/#", "readings/+", true},
		{"readings/#", "readings/#", true},
		{"readings/#", "readingsx", false},
		{"readings/#", "#", false},
		{"readings/#", "+/x", false},
		{"readings/+/t/#", "readings/k/t", true},
		{"readings/+/t/#", "readings/+/t/x", true},
		{"readings/+/t/#", "readings/k/u", false},
		{"readings/+/t/#", "readings/k", false},
		{"readings/+/t/#", "readings/#", false},
		{"a/b", "a/b", true},
		{"a/b", "a/b/c", false},
		{"#", "$SYS/x", false},
		{"+/#", "$SYS/x", false},
		{"$SYS/#", "$SYS/x", true},
	} {
		if got := jormungandr.TopicMatches(tc.filter, tc.topic); got != tc.want {
			t.Errorf("TopicMatches(%q, %q): got %v, want %v", tc.filter, tc.topic, got, tc.want)
		}
	}
}

func TestLocalMQTTConfig(t *testing.T) {
	login := func([]string) (string, string, error) { return "", "", nil }
	for _, tc := range []struct {
		name string
		l    jormungandr.LocalMQTT
		ok   bool
	}{
		{"none", jormungandr.LocalMQTT{}, true},
		{"ip", jormungandr.LocalMQTT{Addr: "127.0.0.1:1883", Login: login}, true},
		{"unspecified", jormungandr.LocalMQTT{Addr: "0.0.0.0:1883", Login: login}, true},
		{"ipv6", jormungandr.LocalMQTT{Addr: "[::1]:1883", Login: login}, true},
		{"no login", jormungandr.LocalMQTT{Addr: "127.0.0.1:1883"}, false},
		{"no addr", jormungandr.LocalMQTT{Login: login}, false},
		{"no port", jormungandr.LocalMQTT{Addr: "127.0.0.1", Login: login}, false},
		{"a name", jormungandr.LocalMQTT{Addr: "mqtt.example.com:1883", Login: login}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := jormungandr.DefaultConfig()
			cfg.LocalMQTT = tc.l
			if err := cfg.Validate(); (err == nil) != tc.ok {
				t.Fatalf("got %v, want ok = %v", err, tc.ok)
			}
		})
	}
}

func equalJSON(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}

// The tool loader (TOML and register) asks the net module about its grants,
// so a grant that would reach Loki's own topics never loads.
func TestToolLoaderChecksNetGrants(t *testing.T) {
	mods := []engine.Module{jormungandr.NewModule(nil)}
	tool := func(grant string) []*loki.Compiled {
		return lokitest.Parse(t, "[[tools]]\nname = \"g\"\nreturns = \"any\"\nscript = \"return 1\"\ngrants = ["+strconv.Quote(grant)+"]\n")
	}
	tests := []struct {
		name, grant string
		wantErr     bool
	}{
		{name: "issue's form", grant: "net.mqtt:127.0.0.1:1883/readings/#"},
		{name: "single-level wildcard", grant: "net.mqtt:127.0.0.1/readings/+/temp"},
		{name: "any topic of an external broker", grant: "net.mqtt:broker.example.com"},
		{name: "Loki's own topics", grant: "net.mqtt:127.0.0.1/loki/exec/#", wantErr: true},
		{name: "device topics", grant: "net.mqtt:127.0.0.1/jotunheim/dev1/#", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := loki.CheckGrantModules(tool(tc.grant), mods)
			if (err != nil) != tc.wantErr {
				t.Fatalf("grant %q: got %v, want error %v", tc.grant, err, tc.wantErr)
			}
			if err != nil && (!errors.Is(err, loki.ErrInvalidTool) || !strings.Contains(err.Error(), tc.grant)) {
				t.Fatalf("grant %q: got %v, want ErrInvalidTool naming the grant", tc.grant, err)
			}
		})
	}
}

const localBrokerTools = `
[[tools]]
name = "local_pub"
returns = "boolean"
grants = ["net.mqtt:127.0.0.1/readings"]
script = '''
local h = net.mqtt.connect{broker = broker}
h:publish("readings/local", "hi", 1)
h:close()
return true
'''
  [[tools.params]]
  name = "broker"
  type = "string"
  required = true

[[tools]]
name = "local_pinned"
returns = "boolean"
grants = ["net.mqtt:127.0.0.1:1/readings"]
script = 'net.mqtt.connect{broker = broker} return true'
  [[tools.params]]
  name = "broker"
  type = "string"
  required = true
`

// TestLocalBroker checks broker "local" reaches Loki's own listener on
// whatever port it has, fenced, with the grants that name no port.
func TestLocalBroker(t *testing.T) {
	f := setupFenced(t, localBrokerTools)
	f.arrives(t, "readings.local", func() {
		if _, err := f.call(t, "local_pub", map[string]any{"broker": jormungandr.LocalBroker}); err != nil {
			t.Fatal(err)
		}
	})
	_, err := f.call(t, "local_pinned", map[string]any{"broker": jormungandr.LocalBroker})
	wantCode(t, err, fault.PermissionDenied)
	if !strings.Contains(err.Error(), "no port") {
		t.Fatalf("got %v, want it to say the grant must name no port", err)
	}
}
