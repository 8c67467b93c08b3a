package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// The agent must stay small: no NATS server, no Lua, and no NATS client
// either (a device speaks MQTT or gRPC). The default build carries the gRPC
// transport; built with -tags mqttonly it carries no gRPC at all.
func TestFootprint(t *testing.T) {
	for _, tc := range []struct {
		name     string
		tags     []string
		wantGRPC bool
	}{
		{"default", nil, true},
		{"mqttonly", []string{"-tags", "mqttonly"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"list", "-deps"}, tc.tags...), ".")
			out, err := exec.Command("go", args...).CombinedOutput()
			if err != nil {
				t.Fatalf("go list -deps: %v\n%s", err, out)
			}
			grpc := false
			for _, pkg := range strings.Fields(string(out)) {
				if imports(pkg, "google.golang.org/grpc") {
					grpc = true
				}
				for _, banned := range []string{"github.com/nats-io/nats-server", "github.com/nats-io/nats.go", "github.com/yuin/gopher-lua"} {
					if imports(pkg, banned) {
						t.Errorf("cmd/jotunheim imports %s", pkg)
					}
				}
			}
			if grpc != tc.wantGRPC {
				t.Errorf("imports google.golang.org/grpc: got %v, want %v", grpc, tc.wantGRPC)
			}
		})
	}
}

func imports(pkg, path string) bool { return pkg == path || strings.HasPrefix(pkg, path+"/") }

func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"help", []string{"--help"}, 0, "jotunheim --sim"},
		{"version", []string{"--version"}, 0, "jotunheim dev"},
		{"stray argument", []string{"run"}, 2, `unexpected argument "run"`},
		{"sim and board", []string{"--sim", "--board", "b.toml"}, 2, "choose one"},
		{"broker and gateway", []string{"--sim", "--broker", "tcp://h:1883", "--gateway", "h:50051"}, 2, "choose one"},
		{"no id", []string{"--board", "b.toml"}, 2, "device.id"},
		{"bad level", []string{"--sim", "--log-level", "loud"}, 2, "--log-level"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if code := run(tc.args, &out); code != tc.code || !strings.Contains(out.String(), tc.want) {
				t.Fatalf("got %d, %q, want %d and %q", code, out.String(), tc.code, tc.want)
			}
		})
	}
}

// Without a login anywhere, the agent says how to get one.
func TestNoLoginSaysHowToGetOne(t *testing.T) {
	t.Setenv("LOKI_DATA_DIR", t.TempDir())
	var out bytes.Buffer
	if code := run([]string{"--sim", "--id", "porch"}, &out); code != 2 || !strings.Contains(out.String(), "loki auth add-device porch") {
		t.Fatalf("got %d, %q, want 2 and the add-device hint", code, out.String())
	}
}
