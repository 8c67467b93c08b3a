package jotunheim_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/natsrv"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
)

// The agent logs in as its device identity, with the login file
// `loki auth add-device ID --json` prints, on a server that requires it.
func TestDeviceLogin(t *testing.T) {
	dir := t.TempDir()
	a, err := auth.Open(filepath.Join(dir, "auth"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	cred, err := a.AddDevice("kitchen")
	if err != nil {
		t.Fatal(err)
	}
	nk, users, err := a.ServerUsers()
	if err != nil {
		t.Fatal(err)
	}
	s := startServer(t, func(c *natsrv.Config) { c.Nkeys, c.Users = nk, users })
	opts, err := auth.ConnectOptions(auth.SeedFile(filepath.Join(dir, "auth"), string(subjects.RoleAdmin)))
	if err != nil {
		t.Fatal(err)
	}
	p := newPlatform(t, s, "kitchen", opts...)

	login, _ := json.Marshal(jotunheim.Login{Username: cred.Username, Password: cred.Password})
	cfg := testConfig(t, s, "kitchen")
	cfg.Transport.LoginFile = filepath.Join(dir, "kitchen.json")
	if err := os.WriteFile(cfg.Transport.LoginFile, login, 0o600); err != nil {
		t.Fatal(err)
	}
	runAgent(t, cfg)
	p.waitManifest(0, jv1.Manifest_REASON_CONNECT)
	p.waitState(0, "led", anyValue)
	if r := p.command(jotunheim.CmdPing, "", nil, 0); !r.GetOk() {
		t.Fatalf("ping: got %v", r)
	}
}
