package auth_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"
	"github.com/nats-io/nuid"
	"golang.org/x/crypto/bcrypt"
)

// bound is how long a test waits for something that must happen. It only
// bounds a failure: every wait returns as soon as the awaited event occurs.
const bound = 10 * time.Second

// bus is a real in-process nats-server whose users come from an Authority
// in a temporary directory, wired as `loki up` wires them: Open,
// ServerUsers, natsrv.Start with the MQTT listener on, OnChange(SetUsers).
type bus struct {
	root string
	a    *auth.Authority
	srv  *natsrv.Server

	mu     sync.Mutex
	admin  *client // shared admin connection, for probes
	closed bool
}

// startBus starts a bus in a fresh temporary directory.
func startBus(t *testing.T) *bus {
	t.Helper()
	return openBus(t, t.TempDir())
}

// openBus starts a bus on root, reusing the identities and JetStream data
// a previous bus left there.
func openBus(t *testing.T, root string) *bus {
	t.Helper()
	a, err := auth.Open(filepath.Join(root, "auth"))
	if err != nil {
		t.Fatalf("open authority: %v", err)
	}
	nk, users, err := a.ServerUsers()
	if err != nil {
		_ = a.Close()
		t.Fatalf("server users: %v", err)
	}
	srv, err := natsrv.Start(natsrv.Config{Name: "loki", DataDir: filepath.Join(root, "data"),
		Port: -1, MQTTPort: -1, Nkeys: nk, Users: users}, nil)
	if err != nil {
		_ = a.Close()
		t.Fatalf("start server: %v", err)
	}
	a.OnChange(srv.SetUsers)
	b := &bus{root: root, a: a, srv: srv}
	t.Cleanup(b.stop)
	return b
}

// stop shuts the server down and releases the identity directory. It may
// be called more than once.
func (b *bus) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return
	}
	b.closed = true
	if b.admin != nil {
		b.admin.Close()
	}
	b.srv.Shutdown()
	_ = b.a.Close()
}

// client is a NATS connection that records what the server refuses.
type client struct {
	*nats.Conn
	name   string
	errs   chan error    // asynchronous errors: permission violations
	closed chan struct{} // closed when the connection is closed for good
}

// dialSeed connects as the identity whose nkey seed file is path: in
// process as `loki up` connects its components, or over TCP as a person or
// program does. A lost connection is not retried, so a closed connection
// stays closed.
func (b *bus) dialSeed(name, path string, tcp bool) (*client, error) {
	creds, err := auth.ConnectOptions(path)
	if err != nil {
		return nil, err
	}
	c := &client{name: name, errs: make(chan error, 1024), closed: make(chan struct{})}
	opts := append(c.options(), creds...)
	if tcp {
		c.Conn, err = nats.Connect(b.srv.ClientURL(), opts...)
	} else {
		c.Conn, err = b.srv.Connect(name, opts...)
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

func (c *client) options() []nats.Option {
	return []nats.Option{
		nats.Name(c.name),
		nats.NoReconnect(),
		nats.PermissionErrOnSubscribe(true),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case c.errs <- err:
			default: // a test that floods errors checks none of them
			}
		}),
		nats.ClosedHandler(func(*nats.Conn) { close(c.closed) }),
	}
}

// connect connects in process as the built-in identity name (loki, hel,
// fenrir, jormungandr, gateway, auth, client, admin) with its seed file.
func (b *bus) connect(t *testing.T, name string) *client {
	t.Helper()
	c, err := b.dialSeed(name, auth.SeedFile(b.a.Dir(), name), false)
	if err != nil {
		t.Fatalf("connect as %s: %v", name, err)
	}
	t.Cleanup(c.Close)
	return c
}

// add creates a client or admin identity and connects with its credential
// over TCP.
func (b *bus) add(t *testing.T, name string, role subjects.Role) (*client, auth.Credential) {
	t.Helper()
	cred, err := b.a.Add(name, role)
	if err != nil {
		t.Fatalf("add %s: %v", name, err)
	}
	path := writeSeed(t, cred)
	c, err := b.dialSeed(name, path, true)
	if err != nil {
		t.Fatalf("connect as %s: %v", name, err)
	}
	t.Cleanup(c.Close)
	return c, cred
}

// writeSeed writes cred's seed to a 0600 file, as `loki auth add -o` does.
func writeSeed(t *testing.T, cred auth.Credential) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), cred.Identity.Name+".nk")
	if err := os.WriteFile(path, []byte(cred.Seed), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// adminConn is the bus's shared admin connection, which sees everything.
func (b *bus) adminConn(t *testing.T) *client {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.admin == nil {
		c, err := b.dialSeed("admin", auth.SeedFile(b.a.Dir(), "admin"), false)
		if err != nil {
			t.Fatalf("connect as admin: %v", err)
		}
		b.admin = c
	}
	return b.admin
}

// permissionErr waits for the server to refuse verb ("Publish" or
// "Subscription") on subject, reported to c's error handler.
func (c *client) permissionErr(verb, subject string) error {
	want := fmt.Sprintf("%s to %q", verb, subject)
	timeout := time.NewTimer(bound)
	defer timeout.Stop()
	for {
		select {
		case err := <-c.errs:
			if errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), want) {
				return nil
			}
		case <-c.closed:
			return fmt.Errorf("%s: connection closed (%v) before a permission error for %s", c.name, c.LastError(), want)
		case <-timeout.C:
			return fmt.Errorf("%s: no permission error for %s within %s", c.name, want, bound)
		}
	}
}

// wantDenied fails the test unless the server refuses verb on subject.
func (c *client) wantDenied(t *testing.T, verb, subject string) {
	t.Helper()
	if err := c.permissionErr(verb, subject); err != nil {
		t.Fatal(err)
	}
}

// noPermissionErr fails the test if the server refused anything of c so
// far. Flush makes the server's answer to everything c sent arrive first.
func (c *client) noPermissionErr(t *testing.T) {
	t.Helper()
	if err := c.Flush(); err != nil {
		t.Fatalf("%s: flush: %v", c.name, err)
	}
	// The error handler runs after the read loop has seen the error, which
	// came before the flush's PONG; LastError is set by the read loop itself.
	if err := c.LastError(); errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("%s: got %v, want no permission error", c.name, err)
	}
}

// nothingPending fails the test if sub received a message. Flushing first
// the publisher then the subscriber orders the check after any delivery:
// the server queues a message for the subscriber before it answers the
// publisher's PING, and the subscriber's PONG after that message.
func nothingPending(t *testing.T, pub, subConn *client, sub *nats.Subscription) {
	t.Helper()
	for _, c := range []*client{pub, subConn} {
		if c.IsClosed() {
			continue
		}
		if err := c.Flush(); err != nil {
			t.Fatalf("%s: flush: %v", c.name, err)
		}
	}
	if n, _, err := sub.Pending(); err != nil || n != 0 {
		m, _ := sub.NextMsg(0)
		var got string
		if m != nil {
			got = m.Subject + " " + string(m.Data)
		}
		t.Fatalf("subscriber on %s: got %d messages (%s), want none", sub.Subject, n, got)
	}
}

// mqttClient is a paho MQTT 3.1.1 client of the bus's MQTT listener.
type mqttClient struct {
	mqtt.Client
	lost chan error // receives the error when the connection is lost
}

// dialMQTT connects to the MQTT listener as user/pass (anonymous when user
// is empty) and returns the CONNECT error, if any.
func (b *bus) dialMQTT(t *testing.T, user, pass string, opts ...func(*mqtt.ClientOptions)) (*mqttClient, error) {
	t.Helper()
	m := &mqttClient{lost: make(chan error, 1)}
	o := mqtt.NewClientOptions().
		AddBroker("tcp://" + b.srv.MQTTAddr()).
		SetClientID("t-" + nuid.Next()).
		SetProtocolVersion(4).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetCleanSession(true).
		SetConnectTimeout(bound).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case m.lost <- err:
			default:
			}
		})
	if user != "" {
		o.SetUsername(user).SetPassword(pass)
	}
	for _, f := range opts {
		f(o)
	}
	m.Client = mqtt.NewClient(o)
	tok := m.Connect()
	if !tok.WaitTimeout(bound) {
		return nil, errors.New("MQTT connect: no CONNACK")
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { m.Disconnect(0) })
	return m, nil
}

// mustMQTT connects as user/pass or fails the test.
func (b *bus) mustMQTT(t *testing.T, user, pass string, opts ...func(*mqtt.ClientOptions)) *mqttClient {
	t.Helper()
	m, err := b.dialMQTT(t, user, pass, opts...)
	if err != nil {
		t.Fatalf("MQTT connect as %q: %v", user, err)
	}
	return m
}

// wait waits for an MQTT token and returns its error.
func wait(tok mqtt.Token) error {
	if !tok.WaitTimeout(bound) {
		return errors.New("MQTT: no answer from the server")
	}
	return tok.Error()
}

// subAck subscribes to topic and returns the granted QoS from the SUBACK,
// 0x80 when the server refused the subscription.
func (m *mqttClient) subAck(t *testing.T, topic string, qos byte, h mqtt.MessageHandler) byte {
	t.Helper()
	tok := m.Subscribe(topic, qos, h)
	if err := wait(tok); err != nil {
		t.Fatalf("MQTT subscribe %s: %v", topic, err)
	}
	got, ok := tok.(*mqtt.SubscribeToken).Result()[topic]
	if !ok {
		t.Fatalf("MQTT subscribe %s: no result in SUBACK", topic)
	}
	return got
}

// mqttFailure is the SUBACK return code of a refused subscription.
const mqttFailure = 0x80

// mustJS returns a JetStream context for c.
func mustJS(t *testing.T, c *client) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(c.Conn)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func TestOpenCreatesBuiltInsOnce(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]subjects.Role{}
	for _, r := range auth.BuiltIns {
		want[string(r)] = r
	}
	keys := map[string]string{}
	for _, id := range a.List() {
		r, ok := want[id.Name]
		if !ok || id.Role != r || !id.BuiltIn || id.PublicKey == "" || id.PasswordHash != "" {
			t.Errorf("identity %+v: want built-in %s with a public key", id, r)
		}
		keys[id.Name] = id.PublicKey
		fi, err := os.Stat(auth.SeedFile(dir, id.Name))
		if err != nil {
			t.Fatalf("seed of %s: %v", id.Name, err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("seed of %s: got mode %v, want 0600", id.Name, fi.Mode().Perm())
		}
	}
	if len(keys) != len(want) {
		t.Fatalf("got %d identities, want %d built-ins", len(keys), len(want))
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("identity dir: got mode %v, want 0700", fi.Mode().Perm())
	}
	// The store holds no secret: no built-in's seed.
	b, err := os.ReadFile(filepath.Join(dir, "identities.json"))
	if err != nil {
		t.Fatal(err)
	}
	for name := range keys {
		seed, err := os.ReadFile(auth.SeedFile(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), seedLine(string(seed))) {
			t.Fatalf("identities.json holds the seed of %s", name)
		}
	}

	// A second Open while the first holds the directory is refused.
	if _, err := auth.Open(dir); !errors.Is(err, auth.ErrLocked) {
		t.Fatalf("second Open: got %v, want %v", err, auth.ErrLocked)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	a, err = auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for _, id := range a.List() {
		if keys[id.Name] != id.PublicKey {
			t.Errorf("%s: public key changed on reopen: got %s, want %s", id.Name, id.PublicKey, keys[id.Name])
		}
	}
}

func TestOpenRecreatesDamagedSeed(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := a.Get("hel")
	oldLoki, _ := a.Get("loki")
	_ = a.Close()
	if err := os.WriteFile(auth.SeedFile(dir, "hel"), []byte("not a seed"), 0o600); err != nil {
		t.Fatal(err)
	}
	a, err = auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	hel, _ := a.Get("hel")
	if hel.PublicKey == old.PublicKey || hel.PublicKey == "" {
		t.Fatalf("hel: got public key %s, want a new one", hel.PublicKey)
	}
	if l, _ := a.Get("loki"); l.PublicKey != oldLoki.PublicKey {
		t.Fatalf("loki: got public key %s, want unchanged %s", l.PublicKey, oldLoki.PublicKey)
	}
	if _, err := auth.ConnectOptions(auth.SeedFile(dir, "hel")); err != nil {
		t.Fatalf("recreated seed: %v", err)
	}
}

func TestAuthorityErrors(t *testing.T) {
	a, err := auth.Open(filepath.Join(t.TempDir(), "auth"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if _, err := a.Add("alice", subjects.RoleClient); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddDevice("kitchen"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		do      func() error
		wantErr error
	}{
		{"add existing", func() error { _, err := a.Add("alice", subjects.RoleClient); return err }, auth.ErrExists},
		{"add over a built-in", func() error { _, err := a.Add("loki", subjects.RoleAdmin); return err }, auth.ErrExists},
		{"add device over a person", func() error { _, err := a.AddDevice("alice"); return err }, auth.ErrExists},
		{"add bad name", func() error { _, err := a.Add("a.b", subjects.RoleClient); return err }, auth.ErrInvalid},
		{"add empty name", func() error { _, err := a.Add("", subjects.RoleClient); return err }, auth.ErrInvalid},
		{"add component role", func() error { _, err := a.Add("bob", subjects.RoleLoki); return err }, auth.ErrInvalid},
		{"add device role", func() error { _, err := a.Add("bob", subjects.RoleDevice); return err }, auth.ErrInvalid},
		{"add unknown role", func() error { _, err := a.Add("bob", "root"); return err }, auth.ErrInvalid},
		{"add bad device id", func() error { _, err := a.AddDevice("kitchen/1"); return err }, auth.ErrInvalid},
		{"add wildcard device id", func() error { _, err := a.AddDevice("*"); return err }, auth.ErrInvalid},
		{"revoke unknown", func() error { return a.Revoke("nobody") }, auth.ErrNotFound},
		{"revoke built-in", func() error { return a.Revoke("loki") }, auth.ErrBuiltIn},
		{"revoke built-in admin", func() error { return a.Revoke("admin") }, auth.ErrBuiltIn},
		{"get unknown", func() error { _, err := a.Get("nobody"); return err }, auth.ErrNotFound},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.do(); !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
		})
	}
	// Nothing was half-applied: alice and kitchen are as added, nobody else.
	if n := len(a.List()); n != len(auth.BuiltIns)+2 {
		t.Fatalf("got %d identities, want %d", n, len(auth.BuiltIns)+2)
	}
}

func TestCredentialsHoldTheirSecretOnce(t *testing.T) {
	a, err := auth.Open(filepath.Join(t.TempDir(), "auth"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	c, err := a.Add("alice", subjects.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	d, err := a.AddDevice("kitchen")
	if err != nil {
		t.Fatal(err)
	}
	if c.Seed == "" || c.Password != "" || d.Password == "" || d.Username != "kitchen" || d.Seed != "" {
		t.Fatalf("got credentials %+v and %+v, want a seed for alice and a password for kitchen", c, d)
	}
	b, err := os.ReadFile(filepath.Join(a.Dir(), "identities.json"))
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{d.Password, seedLine(c.Seed)} {
		if strings.Contains(string(b), secret) {
			t.Fatalf("identities.json holds the secret %q", secret)
		}
	}
	// The printed seed works with nats tools: ConnectOptions reads it.
	if _, err := auth.ConnectOptions(writeSeed(t, c)); err != nil {
		t.Fatalf("ConnectOptions of an added seed: %v", err)
	}
}

// seedLine is the seed itself out of a decorated seed file.
func seedLine(decorated string) string {
	for l := range strings.Lines(decorated) {
		if l = strings.TrimSpace(l); strings.HasPrefix(l, "SU") {
			return l
		}
	}
	return "no seed in the file"
}

func TestUnauthenticatedRefused(t *testing.T) {
	b := startBus(t)
	t.Run("NATS without credentials", func(t *testing.T) {
		nc, err := nats.Connect(b.srv.ClientURL(), nats.NoReconnect())
		if err == nil {
			nc.Close()
		}
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Fatalf("got %v, want %v", err, nats.ErrAuthorization)
		}
	})
	t.Run("NATS with an unknown nkey", func(t *testing.T) {
		other, err := auth.Open(filepath.Join(t.TempDir(), "auth"))
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		_, err = b.dialSeed("stranger", auth.SeedFile(other.Dir(), "admin"), true)
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Fatalf("got %v, want %v", err, nats.ErrAuthorization)
		}
	})
	t.Run("MQTT without credentials", func(t *testing.T) {
		if _, err := b.dialMQTT(t, "", ""); err == nil {
			t.Fatal("anonymous MQTT client connected, want refused")
		}
	})
	d, err := b.a.AddDevice("kitchen")
	if err != nil {
		t.Fatal(err)
	}
	t.Run("MQTT with a wrong password", func(t *testing.T) {
		if _, err := b.dialMQTT(t, "kitchen", d.Password+"x"); err == nil {
			t.Fatal("MQTT client with a wrong password connected, want refused")
		}
	})
	t.Run("MQTT as a NATS identity's name", func(t *testing.T) {
		if _, err := b.dialMQTT(t, "admin", d.Password); err == nil {
			t.Fatal("MQTT client as admin connected, want refused")
		}
	})
	t.Run("NATS with a device's login", func(t *testing.T) {
		// Devices are MQTT only: their username and password do not open NATS.
		nc, err := nats.Connect(b.srv.ClientURL(), nats.UserInfo("kitchen", d.Password), nats.NoReconnect())
		if err == nil {
			nc.Close()
		}
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Fatalf("got %v, want %v", err, nats.ErrAuthorization)
		}
	})
	t.Run("MQTT with the device's login", func(t *testing.T) {
		b.mustMQTT(t, "kitchen", d.Password)
	})
}

func TestRevokeClosesNATSConnection(t *testing.T) {
	b := startBus(t)
	alice, cred := b.add(t, "alice", subjects.RoleClient)
	bob, _ := b.add(t, "bob", subjects.RoleClient)
	if err := alice.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := b.a.Revoke("alice"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-alice.closed:
	case <-time.After(bound):
		t.Fatalf("alice's connection still open %s after Revoke", bound)
	}
	if _, err := b.a.Get("alice"); !errors.Is(err, auth.ErrNotFound) {
		t.Fatalf("Get after Revoke: got %v, want %v", err, auth.ErrNotFound)
	}
	_, err := b.dialSeed("alice", writeSeed(t, cred), true)
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("reconnect after Revoke: got %v, want %v", err, nats.ErrAuthorization)
	}
	// Other identities' connections are untouched.
	if err := bob.Flush(); err != nil || bob.IsClosed() {
		t.Fatalf("bob after revoking alice: got %v (closed %v), want connected", err, bob.IsClosed())
	}
}

func TestRevokeClosesMQTTConnection(t *testing.T) {
	b := startBus(t)
	d, err := b.a.AddDevice("kitchen")
	if err != nil {
		t.Fatal(err)
	}
	m := b.mustMQTT(t, "kitchen", d.Password)
	if err := b.a.Revoke("kitchen"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-m.lost:
	case <-time.After(bound):
		t.Fatalf("kitchen's MQTT connection still open %s after Revoke", bound)
	}
	if _, err := b.dialMQTT(t, "kitchen", d.Password); err == nil {
		t.Fatal("revoked device reconnected, want refused")
	}
}

func TestRestartKeepsIdentities(t *testing.T) {
	root := t.TempDir()
	b := openBus(t, root)
	before := map[string]string{}
	for _, id := range b.a.List() {
		before[id.Name] = id.PublicKey
	}
	_, cred := b.add(t, "alice", subjects.RoleClient)
	dev, err := b.a.AddDevice("kitchen")
	if err != nil {
		t.Fatal(err)
	}
	seed := writeSeed(t, cred)
	b.stop()

	b = openBus(t, root)
	for _, id := range b.a.List() {
		if id.Name == "alice" || id.Name == "kitchen" {
			continue
		}
		if before[id.Name] != id.PublicKey {
			t.Errorf("%s: got public key %s after restart, want %s", id.Name, id.PublicKey, before[id.Name])
		}
	}
	alice, err := b.dialSeed("alice", seed, true)
	if err != nil {
		t.Fatalf("alice after restart: %v", err)
	}
	defer alice.Close()
	// alice still holds a client's rights: she may call a tool and is
	// refused the registry.
	loki := b.connect(t, "loki")
	sub, err := loki.Subscribe("loki.exec.add", func(m *nats.Msg) { _ = m.Respond([]byte("3")) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := loki.Flush(); err != nil {
		t.Fatal(err)
	}
	reply, err := alice.Request("loki.exec.add", []byte(`{"a":1,"b":2}`), bound)
	if err != nil || string(reply.Data) != "3" {
		t.Fatalf("alice calls add after restart: got %v, %v, want 3", reply, err)
	}
	if err := alice.Publish("$KV.loki_tools.evil", nil); err != nil {
		t.Fatal(err)
	}
	alice.wantDenied(t, "Publish", "$KV.loki_tools.evil")
	// Built-in components connect with their unchanged seeds.
	for _, name := range []string{"hel", "fenrir", "jormungandr", "gateway", "auth", "client", "admin"} {
		c := b.connect(t, name)
		if err := c.Flush(); err != nil {
			t.Fatalf("%s after restart: %v", name, err)
		}
	}
	b.mustMQTT(t, "kitchen", dev.Password)
}

func TestOnChangeFailureUndoes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Add("alice", subjects.RoleClient); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("server refused the users")
	a.OnChange(func([]*server.NkeyUser, []*server.User) error { return boom })
	if _, err := a.Add("bob", subjects.RoleAdmin); !errors.Is(err, boom) {
		t.Fatalf("Add: got %v, want %v", err, boom)
	}
	if err := a.Revoke("alice"); !errors.Is(err, boom) {
		t.Fatalf("Revoke: got %v, want %v", err, boom)
	}
	if _, _, err := a.ScriptMQTT([]string{"readings/#"}); !errors.Is(err, boom) {
		t.Fatalf("ScriptMQTT: got %v, want %v", err, boom)
	}
	check := func(a *auth.Authority) {
		t.Helper()
		if _, err := a.Get("bob"); !errors.Is(err, auth.ErrNotFound) {
			t.Fatalf("bob: got %v, want %v", err, auth.ErrNotFound)
		}
		if _, err := a.Get("alice"); err != nil {
			t.Fatalf("alice: got %v, want her kept", err)
		}
	}
	check(a)
	_ = a.Close()
	// Nor was the file left changed.
	a, err = auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	check(a)
}

func TestOpenRefusesDamagedStore(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	userKey, _ := kp.PublicKey()
	acc, err := nkeys.CreateAccount()
	if err != nil {
		t.Fatal(err)
	}
	accountKey, _ := acc.PublicKey()
	hash, err := bcrypt.GenerateFromPassword([]byte("pw"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	entry := func(fields string) string { return `{"identities":[` + fields + `]}` }
	tests := []struct {
		name, store string
		wantErr     error // nil: Open succeeds, unless failure is set
		failure     bool  // Open fails with an error that wraps no sentinel
	}{
		{"empty store", `{"identities":[]}`, nil, false},
		{"a client", entry(`{"name":"alice","role":"client","public_key":"` + userKey + `"}`), nil, false},
		{"a device", entry(`{"name":"kitchen","role":"device","device_id":"kitchen","password_hash":"` + string(hash) + `"}`), nil, false},
		{"not JSON", `{"identities":[`, nil, true},
		{"unknown role", entry(`{"name":"alice","role":"root","public_key":"` + userKey + `"}`), auth.ErrInvalid, false},
		{"bad name", entry(`{"name":"a.b","role":"client","public_key":"` + userKey + `"}`), auth.ErrInvalid, false},
		{"client without a key", entry(`{"name":"alice","role":"client"}`), auth.ErrInvalid, false},
		{"client with an account key", entry(`{"name":"alice","role":"client","public_key":"` + accountKey + `"}`), auth.ErrInvalid, false},
		{"admin over MQTT", entry(`{"name":"ops","role":"admin","password_hash":"` + string(hash) + `"}`), auth.ErrInvalid, false},
		{"device over NATS", entry(`{"name":"kitchen","role":"device","device_id":"kitchen","public_key":"` + userKey + `"}`), auth.ErrInvalid, false},
		{"device speaking for another", entry(`{"name":"kitchen","role":"device","device_id":"garage","password_hash":"` + string(hash) + `"}`), auth.ErrInvalid, false},
		{"device with a plain password", entry(`{"name":"kitchen","role":"device","device_id":"kitchen","password_hash":"secret"}`), auth.ErrInvalid, false},
		{"device without an id", entry(`{"name":"kitchen","role":"device","password_hash":"` + string(hash) + `"}`), auth.ErrInvalid, false},
		{"stored script login", entry(`{"name":"s","role":"script-mqtt","password_hash":"` + string(hash) + `"}`), auth.ErrInvalid, false},
		{"listed twice", entry(`{"name":"alice","role":"client","public_key":"` + userKey + `"},{"name":"alice","role":"admin","public_key":"` + userKey + `"}`), auth.ErrInvalid, false},
		{"shared key", entry(`{"name":"alice","role":"client","public_key":"` + userKey + `"},{"name":"bob","role":"admin","public_key":"` + userKey + `"}`), auth.ErrInvalid, false},
		{"fake built-in", entry(`{"name":"alice","role":"client","built_in":true,"public_key":"` + userKey + `"}`), auth.ErrInvalid, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "identities.json"), []byte(tc.store), 0o600); err != nil {
				t.Fatal(err)
			}
			a, err := auth.Open(dir)
			if !tc.failure && !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if err != nil || tc.failure {
				if err == nil || !strings.Contains(err.Error(), "identities.json") {
					t.Fatalf("got %v, want an error naming identities.json", err)
				}
				return
			}
			defer a.Close()
			if _, _, err := a.ServerUsers(); err != nil {
				t.Fatalf("ServerUsers after a good Open: %v", err)
			}
		})
	}
}

// A built-in entry whose role was changed in the file is remade, not
// trusted: holding the seed is not enough to hold another role.
func TestOpenRemakesBuiltInWithAnotherRole(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	old, _ := a.Get("gateway")
	_ = a.Close()
	path := filepath.Join(dir, "identities.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Identities []map[string]any `json:"identities"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	for _, id := range f.Identities {
		if id["name"] == "gateway" {
			id["role"] = "admin"
		}
	}
	if b, err = json.Marshal(f); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	a, err = auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	gw, _ := a.Get("gateway")
	if gw.Role != subjects.RoleGateway || gw.PublicKey == old.PublicKey {
		t.Fatalf("gateway: got role %s key %s, want role gateway with a new key", gw.Role, gw.PublicKey)
	}
}

// TestOpenAddsBuiltInsOfNewRoles opens an identity directory made by a
// version of Loki that had fewer component roles (here: before the device
// service's, jotunheim): Open adds the missing built-in with its seed and
// keeps every identity that was there, keys unchanged.
func TestOpenAddsBuiltInsOfNewRoles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Add("alice", subjects.RoleClient); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddDevice("kitchen"); err != nil {
		t.Fatal(err)
	}
	before := map[string]auth.Identity{}
	for _, id := range a.List() {
		before[id.Name] = id
	}
	_ = a.Close()

	// What the older version left: no jotunheim entry and no seed.
	path := filepath.Join(dir, "identities.json")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Identities []json.RawMessage `json:"identities"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	var kept []json.RawMessage
	for _, raw := range f.Identities {
		var id auth.Identity
		if err := json.Unmarshal(raw, &id); err != nil {
			t.Fatal(err)
		}
		if id.Role != subjects.RoleJotunheim {
			kept = append(kept, raw)
		}
	}
	if len(kept) != len(f.Identities)-1 {
		t.Fatalf("the store had %d jotunheim identities, want 1", len(f.Identities)-len(kept))
	}
	f.Identities = kept
	if b, err = json.Marshal(f); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(auth.SeedFile(dir, string(subjects.RoleJotunheim))); err != nil {
		t.Fatal(err)
	}

	a, err = auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	j, err := a.Get(string(subjects.RoleJotunheim))
	if err != nil {
		t.Fatalf("after the upgrade: %v", err)
	}
	if j.Role != subjects.RoleJotunheim || !j.BuiltIn || j.PublicKey == "" {
		t.Errorf("got %+v, want a built-in jotunheim identity with a public key", j)
	}
	if _, err := auth.ConnectOptions(auth.SeedFile(dir, string(subjects.RoleJotunheim))); err != nil {
		t.Errorf("jotunheim seed: %v", err)
	}
	for name, old := range before {
		if name == string(subjects.RoleJotunheim) {
			continue
		}
		got, err := a.Get(name)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got.PublicKey != old.PublicKey || got.PasswordHash != old.PasswordHash || got.Role != old.Role {
			t.Errorf("%s changed in the upgrade: got %+v, want %+v", name, got, old)
		}
	}
	// The new identity is one the server lets in with its role's rights.
	nk, _, err := a.ServerUsers()
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, u := range nk {
		found = found || u.Nkey == j.PublicKey
	}
	if !found {
		t.Errorf("jotunheim's key %s is not among the server's nkey users", j.PublicKey)
	}
}

func TestDeviceLoginFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cred, err := a.AddDevice("demo")
	if err != nil {
		t.Fatal(err)
	}
	path, err := auth.SaveDeviceLogin(dir, cred)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "devices", "demo.json"); path != want || auth.DeviceLoginFile(dir, "demo") != want {
		t.Errorf("got path %s, want %s", path, want)
	}
	for p, want := range map[string]os.FileMode{filepath.Dir(path): 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: got mode %v, want %v", p, fi.Mode().Perm(), want)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var login map[string]string
	if err := json.Unmarshal(b, &login); err != nil {
		t.Fatal(err)
	}
	if len(login) != 2 || login["username"] != "demo" || login["password"] != cred.Password {
		t.Errorf("got %v, want exactly username demo and the credential's password", login)
	}
	// The saved password is the one the server accepts.
	id, _ := a.Get("demo")
	if bcrypt.CompareHashAndPassword([]byte(id.PasswordHash), []byte(login["password"])) != nil {
		t.Error("the saved password does not match the stored hash")
	}
	// Saving again replaces the file, leaving no temporary file behind.
	cred.Password = "second"
	if _, err := auth.SaveDeviceLogin(dir, cred); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("got %d files in the devices dir, want 1", len(entries))
	}

	removed, err := auth.RemoveDeviceLogin(dir, "demo")
	if err != nil || !removed {
		t.Fatalf("remove: got %v, %v; want true, nil", removed, err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("after remove: %v, want the file gone", err)
	}
	for _, name := range []string{"demo", "../identities", "alice"} {
		if removed, err := auth.RemoveDeviceLogin(dir, name); err != nil || removed {
			t.Errorf("remove %q: got %v, %v; want false, nil", name, removed, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "identities.json")); err != nil {
		t.Errorf("identities.json: %v", err)
	}

	// Only a device's credential is saved.
	person, err := a.Add("alice", subjects.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := auth.SaveDeviceLogin(dir, person); !errors.Is(err, auth.ErrInvalid) {
		t.Errorf("saving a person's credential: got %v, want %v", err, auth.ErrInvalid)
	}
}
