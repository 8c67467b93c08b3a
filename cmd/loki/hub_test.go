package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// hubSite is a one-node hub with JetStream domain "hub" that accepts leaf
// nodes on a fixed port, authenticating them as an nkey user.
type hubSite struct {
	cfg  natsrv.Config
	srv  *natsrv.Server
	seed string // the edge's credential file
}

func startHub(t *testing.T) *hubSite {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	h := &hubSite{seed: filepath.Join(t.TempDir(), "site.nk")}
	if err := os.WriteFile(h.seed, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	leafPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	h.cfg = natsrv.Config{Name: "hub", DataDir: t.TempDir(), Port: -1, Domain: "hub", LeafPort: leafPort,
		Nkeys: []*server.NkeyUser{{Nkey: pub}}}
	h.start(t, true)
	t.Cleanup(func() {
		if h.srv != nil {
			h.srv.Shutdown()
		}
	})
	return h
}

// start runs the hub, accepting leaf nodes or not (the uplink cut at the hub).
func (h *hubSite) start(t *testing.T, leaf bool) {
	t.Helper()
	cfg := h.cfg
	if !leaf {
		cfg.LeafPort = 0
	}
	srv, err := natsrv.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	h.srv = srv
}

func (h *hubSite) stop() {
	h.srv.Shutdown()
	h.srv = nil
}

func (h *hubSite) conn(t *testing.T) *nats.Conn {
	t.Helper()
	opt, err := nats.NkeyOptionFromSeed(h.seed)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(h.srv.ClientURL(), opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// register puts a tool named name, returning its name as a string, in the
// hub's registry.
func (h *hubSite) register(t *testing.T, name string) {
	t.Helper()
	src := fmt.Sprintf("[[tools]]\nname = %q\nreturns = \"string\"\nscript = \"return '%s'\"\n", name, name)
	tools, err := loki.ParseTools("hub.toml", []byte(src), fstest.MapFS{})
	if err != nil {
		t.Fatal(err)
	}
	nc := h.conn(t)
	defer nc.Close()
	reg, err := loki.OpenRegistry(context.Background(), nc, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(context.Background(), tools...); err != nil {
		t.Fatal(err)
	}
}

// retry30 retries f for up to 30s (the leaf link reconnects every
// second and sourcing catches up after it), failing with its last error.
func retry30(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still failing after 30s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func callWant(t *testing.T, url, want string, args ...string) func() error {
	return func() error {
		got, err := cli(t, append(append([]string{"call"}, args...), "--nats-url", url, "--timeout", "3s")...)
		if err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("got %s, want %s", got, want)
		}
		return nil
	}
}

// TestEdgeSiteFollowsHub: an edge `loki up --hub` serves hub tools, keeps
// working with the uplink cut, and catches up on tools registered at the
// hub meanwhile once the link returns; script events reach the hub.
func TestEdgeSiteFollowsHub(t *testing.T) {
	hub := startHub(t)
	hub.register(t, "from_hub")
	events := make(chan *nats.Msg, 64)
	evSubj, err := subjects.ScriptEvents("", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hub.conn(t).ChanSubscribe(evSubj, events); err != nil {
		t.Fatal(err)
	}

	edge, stop := startUp(t, t.TempDir(), "--hub", hub.srv.LeafURL(), "--hub-creds", hub.seed, "--domain", "edge1")
	defer stop()
	// A hub tool reaches the edge; local tools are served as usual.
	retry30(t, "hub tool at the edge", callWant(t, edge, `"from_hub"`, "from_hub"))
	retry30(t, "local call", callWant(t, edge, "3", "add", "a=1", "b=2"))
	// Script events of the edge flow up while the link is up.
	select {
	case m := <-events:
		if !strings.Contains(m.Subject, ".") {
			t.Errorf("event subject %q", m.Subject)
		}
	case <-time.After(10 * time.Second):
		t.Error("no script event of the edge reached the hub")
	}

	// Uplink cut: the hub runs on without accepting the edge.
	hub.stop()
	hub.start(t, false)
	retry30(t, "local call with the uplink down", callWant(t, edge, "3", "add", "a=1", "b=2"))
	for i := 1; i <= 2; i++ { // local storage (Hel KV on the edge's JetStream)
		retry30(t, "local storage with the uplink down", callWant(t, edge, fmt.Sprint(i), "count", "name=offline"))
	}
	retry30(t, "hub tool with the uplink down", callWant(t, edge, `"from_hub"`, "from_hub"))
	hub.register(t, "while_cut")

	// The link returns: the tool registered meanwhile appears at the edge.
	hub.stop()
	hub.start(t, true)
	retry30(t, "tool registered while the link was cut", callWant(t, edge, `"while_cut"`, "while_cut"))
	retry30(t, "local storage after the link returns", callWant(t, edge, "3", "count", "name=offline"))
}

// TestNATSReplicasSetting: [nats] replicas reaches every component that
// creates a bucket, and a component's own key may not contradict it.
func TestNATSReplicasSetting(t *testing.T) {
	tests := []struct {
		name    string
		src     string
		want    int
		wantErr string
	}{
		{name: "default", src: "", want: 1},
		{name: "cluster", src: "[nats]\nreplicas = 3\n", want: 3},
		{name: "agreeing component key", src: "[nats]\nreplicas = 3\n[hel]\nreplicas = 3\n", want: 3},
		{name: "contradicting component key", src: "[nats]\nreplicas = 3\n[jotunheim]\nreplicas = 1\n", wantErr: "[jotunheim] replicas = 1 contradicts [nats] replicas = 3"},
		{name: "out of range", src: "[nats]\nreplicas = 7\n", wantErr: "replicas = 7"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.src != "" {
				path = filepath.Join(t.TempDir(), "service.toml")
				if err := os.WriteFile(path, []byte(tc.src), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg, err := loadServiceConfig(path, t.TempDir())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []int{cfg.Hel.Replicas, cfg.Jotunheim.Replicas, cfg.registry().Replicas}
			for i, g := range got {
				if g != tc.want {
					t.Errorf("replicas of %s: got %d, want %d", []string{"hel", "jotunheim", "the registry"}[i], g, tc.want)
				}
			}
		})
	}
}

// TestUpTopologyFlags: without --hub, `loki up` stays a lone site; with it,
// the site gets a domain of its own.
func TestUpTopologyFlags(t *testing.T) {
	lone, err := upTopology("", "", "hub", "", 0)
	if err != nil || lone.hub != nil || lone.domain != "" {
		t.Errorf("no --hub: got %+v, %v, want a lone site without a domain", lone, err)
	}
	edge, err := upTopology("nats-leaf://a:7422,nats-leaf://b:7422", "", "hub", "", 0)
	if err != nil || edge.hub == nil || len(edge.hub.URLs) != 2 || !strings.HasPrefix(edge.domain, "site-") {
		t.Errorf("--hub: got %+v, %v, want two URLs and a site- domain", edge, err)
	}
	for _, tc := range []struct{ hub, creds, domain, want string }{
		{"", "creds.nk", "", "--hub-creds needs --hub"},
		{"nats-leaf://a:7422", "", "hub", "is the hub's"},
		{"nats-leaf://a:7422", filepath.Join(t.TempDir(), "gone.nk"), "", "--hub-creds"},
	} {
		if _, err := upTopology(tc.hub, tc.creds, "hub", tc.domain, 0); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("upTopology(%q, %q, %q): got %v, want %q", tc.hub, tc.creds, tc.domain, err, tc.want)
		}
	}
}
