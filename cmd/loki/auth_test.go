package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// cliAll runs the CLI and returns what it printed on stdout and stderr.
func cliAll(args ...string) (stdout, stderr string, err error) {
	var out, errOut bytes.Buffer
	err = run(context.Background(), args, &out, &errOut)
	return out.String(), errOut.String(), err
}

// exitCode is the code main exits with for err.
func exitCode(err error) int {
	var ee *exitError
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ee):
		return ee.code
	}
	return 1
}

// seedLine is the secret line of a decorated nkey seed.
func seedLine(t *testing.T, decorated string) string {
	t.Helper()
	for _, l := range strings.Split(decorated, "\n") {
		if strings.HasPrefix(l, "SU") {
			return l
		}
	}
	t.Fatalf("no seed in %q", decorated)
	return ""
}

var mqttLine = regexp.MustCompile(`MQTT\s+tcp://(127\.0\.0\.1:\d+)`)

func dialMQTT(addr, user, pass string) error {
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + addr).
		SetClientID(fmt.Sprintf("t%d", time.Now().UnixNano())).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
		SetUsername(user).SetPassword(pass))
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return errors.New("no CONNACK")
	}
	if err := tok.Error(); err != nil {
		return err
	}
	c.Disconnect(0)
	return nil
}

// TestAuthLive: while `loki up` runs, `loki auth` changes its identities
// over NATS and they apply at once.
func TestAuthLive(t *testing.T) {
	dir := t.TempDir()
	url, stop, banner := startUpOut(t, dir)
	defer stop()

	seed := filepath.Join(t.TempDir(), "alice.nk")
	_, hint, err := cliAll("auth", "add", "alice", "-o", seed, "--nats-url", url)
	if err != nil {
		t.Fatalf("auth add: %v", err)
	}
	if fi, err := os.Stat(seed); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credential file: got %v, %v, want mode 0600", fi.Mode(), err)
	}
	for _, want := range []string{"--creds " + seed, "nats context save alice", "--nkey " + seed, "--inbox-prefix _INBOX.U"} {
		if !strings.Contains(hint, want) {
			t.Errorf("add's hint %q lacks %q", hint, want)
		}
	}
	seedBytes, _ := os.ReadFile(seed)
	secret := seedLine(t, string(seedBytes))

	got, err := cli(t, "call", "add", "a=1", "b=2", "--creds", seed, "--nats-url", url)
	if err != nil || got != "3" {
		t.Fatalf("call with the new credential: got %q, %v, want 3", got, err)
	}

	// The seed on stdout is the same kind of credential.
	printed, _, err := cliAll("auth", "add", "bob", "--nats-url", url)
	if err != nil || !strings.Contains(printed, "BEGIN USER NKEY SEED") {
		t.Fatalf("auth add to stdout: got %q, %v", printed, err)
	}
	if _, _, err := cliAll("auth", "add", "alice", "--nats-url", url); exitCode(err) != 1 || !strings.Contains(err.Error(), "ALREADY_EXISTS") {
		t.Fatalf("auth add of a taken name: got %v, want ALREADY_EXISTS, exit 1", err)
	}
	// Only admins manage identities.
	if _, _, err := cliAll("auth", "add", "mallory", "--creds", seed, "--nats-url", url); err == nil || !strings.Contains(err.Error(), "PERMISSION_DENIED") {
		t.Fatalf("auth add as a client: got %v, want PERMISSION_DENIED", err)
	}

	devOut, devHint, err := cliAll("auth", "add-device", "greenhouse-1", "--json", "--nats-url", url)
	if err != nil {
		t.Fatalf("auth add-device: %v", err)
	}
	var dev struct{ Username, Password string }
	if err := json.Unmarshal([]byte(devOut), &dev); err != nil || dev.Username != "greenhouse-1" || dev.Password == "" {
		t.Fatalf("auth add-device --json: got %q, %v", devOut, err)
	}
	// Saved for an agent on this host, in the data dir `loki up` holds.
	loginFile := checkDeviceLogin(t, dir, "greenhouse-1", dev.Password)
	if !strings.Contains(devHint, loginFile) {
		t.Errorf("add-device's message %q does not name %s", devHint, loginFile)
	}
	m := mqttLine.FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("no MQTT listener in the banner:\n%s", banner)
	}
	if err := dialMQTT(m[1], dev.Username, dev.Password); err != nil {
		t.Fatalf("device login on the MQTT listener: %v", err)
	}
	if err := dialMQTT(m[1], dev.Username, dev.Password+"x"); err == nil {
		t.Fatal("a wrong device password was accepted")
	}

	list, err := cli(t, "auth", "list", "--nats-url", url)
	if err != nil {
		t.Fatalf("auth list: %v", err)
	}
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`(?m)^NAME\s+ROLE\s+KIND\s+CREATED\s+BUILT-IN$`),
		regexp.MustCompile(`(?m)^alice\s+client\s+nkey\s+\S+\s+no$`),
		regexp.MustCompile(`(?m)^greenhouse-1\s+device\s+mqtt\s+\S+\s+no$`),
		regexp.MustCompile(`(?m)^loki\s+loki\s+nkey\s+\S+\s+yes$`),
	} {
		if !want.MatchString(list) {
			t.Errorf("auth list does not match %s:\n%s", want, list)
		}
	}
	asJSON, err := cli(t, "auth", "list", "--json", "--nats-url", url)
	if err != nil {
		t.Fatalf("auth list --json: %v", err)
	}
	for _, out := range []string{list, asJSON} {
		for _, s := range []string{secret, dev.Password, "$2a$", "SEED"} {
			if strings.Contains(out, s) {
				t.Errorf("auth list shows %q:\n%s", s, out)
			}
		}
	}

	// Export while up runs: a configuration nats-server reads.
	conf := filepath.Join(t.TempDir(), auth.ExportFile)
	if _, _, err := cliAll("auth", "export", "-o", conf, "--nats-url", url); err != nil {
		t.Fatalf("auth export: %v", err)
	}
	opts := loadExport(t, conf)
	if want := len(auth.BuiltIns) + 2; len(opts.Nkeys) != want || len(opts.Users) != 1 {
		t.Fatalf("export: got %d nkey users and %d users, want %d (built-ins, alice, bob) and 1 (the device)", len(opts.Nkeys), len(opts.Users), want)
	}

	// A connection alice holds is closed by her revocation.
	credOpts, err := auth.ConnectOptions(seed)
	if err != nil {
		t.Fatal(err)
	}
	closed := make(chan struct{})
	held, err := nats.Connect(url, append(credOpts, nats.NoReconnect(),
		nats.ClosedHandler(func(*nats.Conn) { close(closed) }),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))...)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	_, out, err := cliAll("auth", "revoke", "alice", "--nats-url", url)
	if err != nil || !strings.Contains(out, "revoked") {
		t.Fatalf("auth revoke: got %q, %v", out, err)
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("alice's connection still open after her revocation")
	}
	_, err = cli(t, "call", "add", "a=1", "b=2", "--creds", seed, "--nats-url", url)
	if err == nil || !strings.Contains(err.Error(), "UNAUTHENTICATED") {
		t.Fatalf("call after revoke: got %v, want UNAUTHENTICATED", err)
	}
	if list, _ := cli(t, "auth", "list", "--nats-url", url); strings.Contains(list, "alice") {
		t.Fatalf("alice still listed after revoke:\n%s", list)
	}

	_, out, err = cliAll("auth", "revoke", "greenhouse-1", "--nats-url", url)
	if err != nil || !strings.Contains(out, loginFile) {
		t.Fatalf("auth revoke of a device: got %q, %v, want its login file named", out, err)
	}
	if _, err := os.Stat(loginFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("device login after revoke: %v, want it gone", err)
	}

	_, _, err = cliAll("auth", "revoke", "loki", "--nats-url", url)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), "built-in") {
		t.Fatalf("revoke loki: got %v, want a refusal of a built-in identity, exit 1", err)
	}
	if got, err := cli(t, "call", "add", "a=2", "b=2", "--nats-url", url); err != nil || got != "4" {
		t.Fatalf("after refusing to revoke loki: got %q, %v", got, err)
	}

	// The directory is held: a NATS server that is not there is reported as such.
	_, _, err = cliAll("auth", "list", "--nats-url", "nats://127.0.0.1:1")
	want := fmt.Sprintf("loki up holds %s; could not reach it at nats://127.0.0.1:1", filepath.Join(dir, "auth"))
	if exitCode(err) != 1 || !strings.Contains(err.Error(), want) {
		t.Fatalf("auth list, up unreachable: got %v, want %q", err, want)
	}
}

// checkDeviceLogin checks the login file `loki auth add-device` saved for
// device id in dataDir: mode 0600 in a 0700 directory, exactly
// {"username": id, "password": pass}. It returns the file's path.
func checkDeviceLogin(t *testing.T, dataDir, id, pass string) string {
	t.Helper()
	path := filepath.Join(dataDir, "auth", "devices", id+".json")
	for p, want := range map[string]os.FileMode{filepath.Dir(path): 0o700, path: 0o600} {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("device login: %v", err)
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
	if err := json.Unmarshal(b, &login); err != nil || len(login) != 2 || login["username"] != id || login["password"] != pass {
		t.Fatalf("device login %s: got %s (%v), want username %s and the printed password", path, b, err, id)
	}
	return path
}

// loadExport reads an exported file through a server configuration that
// includes it, as nats-server would.
func loadExport(t *testing.T, exported string) *server.Options {
	t.Helper()
	d := filepath.Dir(exported)
	conf := filepath.Join(d, "server.conf")
	body := fmt.Sprintf("listen: 127.0.0.1:-1\njetstream {\n  store_dir: %q\n}\ninclude ./%s\n", filepath.Join(d, "js"), filepath.Base(exported))
	if err := os.WriteFile(conf, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		b, _ := os.ReadFile(exported)
		t.Fatalf("nats-server rejects the export: %v\n%s", err, b)
	}
	return opts
}

// TestAuthOffline: with no `loki up` running, `loki auth` edits the data
// dir, and the next `loki up` honours the change.
func TestAuthOffline(t *testing.T) {
	dir := t.TempDir()
	_, stop := startUp(t, dir)
	stop()

	seed := filepath.Join(t.TempDir(), "carol.nk")
	_, hint, err := cliAll("auth", "add", "carol", "--role", "admin", "-o", seed, "--data-dir", dir, "--nats-url", "nats://127.0.0.1:1")
	if err != nil {
		t.Fatalf("offline auth add: %v", err)
	}
	if !strings.Contains(hint, "no loki up holds the data dir") {
		t.Errorf("offline add's hint does not say where the change went: %q", hint)
	}
	daveSeed, _, err := cliAll("auth", "add", "dave", "--data-dir", dir)
	if err != nil {
		t.Fatalf("offline auth add dave: %v", err)
	}
	dave := filepath.Join(t.TempDir(), "dave.nk")
	if err := os.WriteFile(dave, []byte(daveSeed), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := cliAll("auth", "revoke", "dave", "--data-dir", dir); err != nil {
		t.Fatalf("offline auth revoke: %v", err)
	}
	devOut, _, err := cliAll("auth", "add-device", "shed", "--data-dir", dir)
	if err != nil {
		t.Fatalf("offline auth add-device: %v", err)
	}
	pass := regexp.MustCompile(`(?m)^password: (\S+)$`).FindStringSubmatch(devOut)
	if pass == nil {
		t.Fatalf("offline auth add-device printed %q, want a password line", devOut)
	}
	shedLogin := checkDeviceLogin(t, dir, "shed", pass[1])
	if _, _, err := cliAll("auth", "revoke", "shed", "--data-dir", dir); err != nil {
		t.Fatalf("offline auth revoke of a device: %v", err)
	}
	if _, err := os.Stat(shedLogin); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("device login after an offline revoke: %v, want it gone", err)
	}
	list, err := cli(t, "auth", "list", "--data-dir", dir)
	if err != nil || !regexp.MustCompile(`(?m)^carol\s+admin\s+nkey`).MatchString(list) || strings.Contains(list, "dave") {
		t.Fatalf("offline auth list: got %q, %v, want carol and not dave", list, err)
	}
	conf := filepath.Join(t.TempDir(), auth.ExportFile)
	if _, _, err := cliAll("auth", "export", "-o", conf, "--data-dir", dir); err != nil {
		t.Fatalf("offline auth export: %v", err)
	}
	if opts, want := loadExport(t, conf), len(auth.BuiltIns)+1; len(opts.Nkeys) != want {
		t.Fatalf("offline export: got %d nkey users, want %d (built-ins and carol)", len(opts.Nkeys), want)
	}

	url, stop := startUp(t, dir)
	defer stop()
	got, err := cli(t, "call", "add", "a=1", "b=2", "--creds", seed, "--nats-url", url)
	if err != nil || got != "3" {
		t.Fatalf("after restart, call with the offline credential: got %q, %v, want 3", got, err)
	}
	// carol is an admin: she may manage identities of the running Loki.
	if _, _, err := cliAll("auth", "list", "--creds", seed, "--nats-url", url); err != nil {
		t.Fatalf("auth list as carol: %v", err)
	}
	_, err = cli(t, "call", "add", "a=1", "b=2", "--creds", dave, "--nats-url", url)
	if err == nil || !strings.Contains(err.Error(), "UNAUTHENTICATED") {
		t.Fatalf("after restart, call as dave, revoked offline: got %v, want UNAUTHENTICATED", err)
	}
}

// TestAuthContext: the printed nats CLI command names the built-in
// identity's seed, by absolute path, and its own inbox prefix; a client
// context becomes the default, an admin one never does.
func TestAuthContext(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		args    []string
		want    string
		selects bool
	}{
		{name: "client", args: nil, want: "nats context save loki --server nats://h:4 --nkey " + filepath.Join(dir, "auth", "client.nk") + " --inbox-prefix _INBOX.U", selects: true},
		{name: "admin", args: []string{"--role", "admin"}, want: "nats context save loki-admin --server nats://h:4 --nkey " + filepath.Join(dir, "auth", "admin.nk") + " --inbox-prefix _INBOX.U"},
		{name: "named", args: []string{"--name", "home"}, want: "nats context save home ", selects: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cli(t, append([]string{"auth", "context", "--data-dir", dir, "--nats-url", "nats://h:4"}, tc.args...)...)
			if err != nil || !strings.HasPrefix(got, tc.want) || strings.HasSuffix(got, " --select") != tc.selects {
				t.Fatalf("got %q, %v, want %q...", got, err, tc.want)
			}
		})
	}
	// The inbox prefix is the identity's own: its public key.
	ids, err := cli(t, "auth", "list", "--json", "--data-dir", dir)
	if err != nil {
		t.Fatal(err)
	}
	var list []auth.Identity
	if err := json.Unmarshal([]byte(ids), &list); err != nil {
		t.Fatal(err)
	}
	got, _ := cli(t, "auth", "context", "--data-dir", dir)
	for _, id := range list {
		if id.Name == "client" && !strings.Contains(got, "--inbox-prefix _INBOX."+subjects.InboxToken(id.PublicKey)+" ") {
			t.Fatalf("got %q, want the inbox prefix of %s", got, id.PublicKey)
		}
	}
}

// TestAuthUsage: mistakes in the command line exit 2 and say what was
// wrong before anything is read or changed; --help exits 0.
func TestAuthUsage(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("LOKI_DATA_DIR", dir)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", []string{"auth"}, "name a command"},
		{"unknown command", []string{"auth", "grant"}, `unknown command "grant"`},
		{"add without name", []string{"auth", "add"}, "want one NAME"},
		{"add two names", []string{"auth", "add", "a", "b"}, "want one NAME, got 2"},
		{"add bad name", []string{"auth", "add", "a b"}, `name "a b"`},
		{"add bad role", []string{"auth", "add", "a", "--role", "device"}, `--role "device": want client or admin`},
		{"add-device bad id", []string{"auth", "add-device", "a/b"}, `device id "a/b"`},
		{"add-homeassistant bad name", []string{"auth", "add-homeassistant", "a b"}, `name "a b"`},
		{"add-homeassistant without name", []string{"auth", "add-homeassistant"}, "want one NAME"},
		{"revoke without name", []string{"auth", "revoke"}, "want one NAME"},
		{"list argument", []string{"auth", "list", "x"}, `unexpected argument "x"`},
		{"export argument", []string{"auth", "export", "x"}, `unexpected argument "x"`},
		{"context bad role", []string{"auth", "context", "--role", "loki"}, `--role "loki"`},
		{"unknown flag", []string{"auth", "list", "--frob"}, "unknown flag --frob"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := cliAll(tc.args...)
			if exitCode(err) != 2 {
				t.Fatalf("got %v (exit %d), want exit 2", err, exitCode(err))
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
	if _, err := os.Stat(filepath.Join(dir, "auth")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a usage mistake touched the data dir: %v", err)
	}
	for _, sub := range []string{"add", "add-device", "add-homeassistant", "list", "revoke", "export", "context"} {
		help, _, err := cliAll("auth", sub, "--help")
		if exitCode(err) != 0 || !strings.Contains(help, "Usage: loki auth "+sub) || !strings.Contains(help, "-data-dir") {
			t.Fatalf("auth %s --help: got %v and\n%s", sub, err, help)
		}
	}
}

// haMQTT connects an MQTT client with a login.
func haMQTT(t *testing.T, addr, user, pass string) mqtt.Client {
	t.Helper()
	c := mqtt.NewClient(mqtt.NewClientOptions().AddBroker("tcp://" + addr).
		SetClientID(fmt.Sprintf("%s%d", user, time.Now().UnixNano())).SetProtocolVersion(4).
		SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(10 * time.Second).
		SetUsername(user).SetPassword(pass))
	if tok := c.Connect(); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("MQTT login %s: %v", user, tok.Error())
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c
}

// TestAuthHomeAssistant: `loki auth add-homeassistant` makes an MQTT login
// that may command devices through their set topics and read their states,
// but never reach their cmd topic; revoke deletes it.
func TestAuthHomeAssistant(t *testing.T) {
	dir := t.TempDir()
	url, stop, banner := startUpOut(t, dir)
	defer stop()
	m := mqttLine.FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("no MQTT listener in the banner:\n%s", banner)
	}
	out, hint, err := cliAll("auth", "add-homeassistant", "hass", "--json", "--nats-url", url)
	if err != nil {
		t.Fatalf("auth add-homeassistant: %v", err)
	}
	var login struct{ Username, Password string }
	if err := json.Unmarshal([]byte(out), &login); err != nil || login.Username != "hass" || login.Password == "" {
		t.Fatalf("auth add-homeassistant --json: got %q, %v", out, err)
	}
	if !strings.Contains(hint, "Home Assistant") {
		t.Errorf("add-homeassistant's message %q does not say what the login is for", hint)
	}
	devOut, _, err := cliAll("auth", "add-device", "x", "--json", "--nats-url", url)
	if err != nil {
		t.Fatalf("auth add-device: %v", err)
	}
	var dev struct{ Username, Password string }
	if err := json.Unmarshal([]byte(devOut), &dev); err != nil {
		t.Fatal(err)
	}

	device := haMQTT(t, m[1], dev.Username, dev.Password)
	got := make(chan mqtt.Message, 16)
	if tok := device.Subscribe("jotunheim/x/#", 0, func(_ mqtt.Client, msg mqtt.Message) { got <- msg }); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device subscribe: %v", tok.Error())
	}
	ha := haMQTT(t, m[1], login.Username, login.Password)
	states := make(chan mqtt.Message, 16)
	tok := ha.Subscribe("jotunheim/+/state/+", 0, func(_ mqtt.Client, msg mqtt.Message) { states <- msg })
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil || tok.(*mqtt.SubscribeToken).Result()["jotunheim/+/state/+"] == 0x80 {
		t.Fatalf("Home Assistant subscribe to states: refused (%v)", tok.Error())
	}
	tok = ha.Subscribe("jotunheim/x/cmd", 0, func(mqtt.Client, mqtt.Message) {})
	if !tok.WaitTimeout(10*time.Second) || tok.(*mqtt.SubscribeToken).Result()["jotunheim/x/cmd"] != 0x80 {
		t.Fatalf("Home Assistant subscribe to a device's cmd: got %v, want refused", tok.(*mqtt.SubscribeToken).Result())
	}
	// A refused publish is followed by an allowed one on the same
	// connection: the device sees only the allowed one.
	for _, p := range []struct{ topic, payload string }{{"jotunheim/x/cmd", "forged"}, {"jotunheim/x/set/led", "ON"}} {
		if tok := ha.Publish(p.topic, 0, false, p.payload); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
			t.Fatalf("publish %s: %v", p.topic, tok.Error())
		}
	}
	select {
	case msg := <-got:
		if msg.Topic() != "jotunheim/x/set/led" || string(msg.Payload()) != "ON" {
			t.Fatalf("device got %q on %s, want ON on jotunheim/x/set/led (the cmd refused)", msg.Payload(), msg.Topic())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the set command never reached the device")
	}
	if tok := device.Publish("jotunheim/x/state/led", 0, false, `{"entity":"led"}`); !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Fatalf("device publish state: %v", tok.Error())
	}
	select {
	case msg := <-states:
		if msg.Topic() != "jotunheim/x/state/led" {
			t.Fatalf("Home Assistant got %s, want jotunheim/x/state/led", msg.Topic())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Home Assistant never got the device's state")
	}

	if _, _, err := cliAll("auth", "revoke", "hass", "--nats-url", url); err != nil {
		t.Fatalf("auth revoke: %v", err)
	}
	if err := dialMQTT(m[1], login.Username, login.Password); err == nil {
		t.Fatal("a revoked Home Assistant login still connects")
	}
}
