package auth_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// startFromExport exports a's identities next to a configuration file that
// includes them, as an operator would for a server Loki does not run, and
// starts nats-server from that file.
func startFromExport(t *testing.T, a *auth.Authority) (*server.Server, *server.Options) {
	t.Helper()
	confDir := t.TempDir()
	var exported bytes.Buffer
	if err := a.Export(&exported); err != nil {
		t.Fatalf("export: %v", err)
	}
	if err := os.WriteFile(filepath.Join(confDir, auth.ExportFile), exported.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(confDir, "nats-server.conf")
	serverConf := fmt.Sprintf("server_name: \"exported\"\nlisten: 127.0.0.1:-1\njetstream {\n  store_dir: %q\n}\ninclude ./%s\n",
		filepath.Join(confDir, "js"), auth.ExportFile)
	if err := os.WriteFile(conf, []byte(serverConf), 0o644); err != nil {
		t.Fatal(err)
	}
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		t.Fatalf("nats-server rejects the export: %v\n%s", err, exported.String())
	}
	opts.NoSigs, opts.NoLog = true, true
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	go s.Start()
	t.Cleanup(s.Shutdown)
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server from the exported configuration not ready")
	}
	return s, opts
}

// TestExportOnForeignServer: a nats-server that Loki did not start, given
// only the export, grants each identity the rights `loki up` would: a
// client may call tools but not reach Hel, a device may use MQTT only, and
// a stranger cannot connect.
func TestExportOnForeignServer(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	alice, err := a.Add("alice", subjects.RoleClient)
	if err != nil {
		t.Fatal(err)
	}
	aliceSeed := filepath.Join(t.TempDir(), "alice.nk")
	if err := os.WriteFile(aliceSeed, []byte(alice.Seed), 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := a.AddDevice("greenhouse-1")
	if err != nil {
		t.Fatal(err)
	}
	s, opts := startFromExport(t, a)
	url := s.ClientURL()

	t.Run("device is MQTT only, with a bcrypt hash", func(t *testing.T) {
		var found *server.User
		for _, u := range opts.Users {
			if u.Username == "greenhouse-1" {
				found = u
			}
		}
		if found == nil {
			t.Fatalf("device user not in the parsed configuration: %+v", opts.Users)
		}
		if _, ok := found.AllowedConnectionTypes["MQTT"]; !ok || len(found.AllowedConnectionTypes) != 1 {
			t.Fatalf("got connection types %v, want MQTT only", found.AllowedConnectionTypes)
		}
		if !strings.HasPrefix(found.Password, "$2") || found.Password == dev.Password {
			t.Fatalf("got password %q, want the bcrypt hash", found.Password)
		}
		if nc, err := nats.Connect(url, nats.UserInfo(dev.Username, dev.Password)); err == nil {
			nc.Close()
			t.Fatal("a device login connected over plain NATS")
		}
	})

	// Loki's own identity answers tool calls, as `loki serve loki` would.
	lokiOpts, err := auth.ConnectOptions(auth.SeedFile(dir, string(subjects.RoleLoki)))
	if err != nil {
		t.Fatal(err)
	}
	lokiNC, err := nats.Connect(url, lokiOpts...)
	if err != nil {
		t.Fatalf("built-in loki identity: %v", err)
	}
	defer lokiNC.Close()
	if _, err := lokiNC.Subscribe(subjects.LokiExecAll, func(m *nats.Msg) { _ = m.Respond([]byte("3")) }); err != nil {
		t.Fatal(err)
	}
	if err := lokiNC.Flush(); err != nil {
		t.Fatal(err)
	}

	asyncErr := make(chan error, 8)
	clientOpts, err := auth.ConnectOptions(aliceSeed)
	if err != nil {
		t.Fatal(err)
	}
	clientOpts = append(clientOpts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { asyncErr <- err }))
	nc, err := nats.Connect(url, clientOpts...)
	if err != nil {
		t.Fatalf("client identity from Add: %v", err)
	}
	defer nc.Close()

	exec, err := subjects.ToolExec("add")
	if err != nil {
		t.Fatal(err)
	}
	reply, err := nc.Request(exec, []byte(`{"a":1,"b":2}`), 5*time.Second)
	if err != nil || string(reply.Data) != "3" {
		t.Fatalf("client request %s: got %v, %v, want 3", exec, reply, err)
	}

	if err := nc.Publish(subjects.HelKVPut, []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-asyncErr:
		if !errors.Is(err, nats.ErrPermissionViolation) || !strings.Contains(err.Error(), subjects.HelKVPut) {
			t.Fatalf("publish %s: got %v, want a permissions violation", subjects.HelKVPut, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("publish %s by a client: no permissions violation", subjects.HelKVPut)
	}

	if nc, err := nats.Connect(url); err == nil {
		nc.Close()
		t.Fatal("an unauthenticated client connected")
	} else if !errors.Is(err, nats.ErrAuthorization) && !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("unauthenticated client: got %v, want an authorization error", err)
	}

	// A revoked identity is gone from the next export.
	if err := a.Revoke("alice"); err != nil {
		t.Fatal(err)
	}
	var after bytes.Buffer
	if err := a.Export(&after); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(after.String(), alice.Identity.PublicKey) {
		t.Fatal("a revoked identity is still in the export")
	}
}

// TestExportHoldsNoSecret: the export names public keys and hashes, never
// a seed or a password.
func TestExportHoldsNoSecret(t *testing.T) {
	a, err := auth.Open(filepath.Join(t.TempDir(), "auth"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	cred, err := a.Add("bob", subjects.RoleAdmin)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := a.AddDevice("dev-1")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := a.Export(&out); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	var seed string
	for _, line := range strings.Split(cred.Seed, "\n") {
		if strings.HasPrefix(line, "SU") {
			seed = line
		}
	}
	if seed == "" {
		t.Fatalf("no seed in the credential:\n%s", cred.Seed)
	}
	for _, secret := range []string{seed, dev.Password, "BEGIN USER NKEY SEED"} {
		if strings.Contains(got, secret) {
			t.Errorf("export contains %q:\n%s", secret, got)
		}
	}
	for _, want := range []string{cred.Identity.PublicKey, "include ./" + auth.ExportFile, "nats-server --signal reload", `"MQTT"`} {
		if !strings.Contains(got, want) {
			t.Errorf("export lacks %q:\n%s", want, got)
		}
	}
}

func TestExportRefusesIdentityWithoutKey(t *testing.T) {
	err := auth.ExportIdentities(&bytes.Buffer{}, []auth.Identity{{Name: "ghost", Role: subjects.RoleClient}})
	if !errors.Is(err, auth.ErrInvalid) {
		t.Fatalf("got %v, want %v", err, auth.ErrInvalid)
	}
}
