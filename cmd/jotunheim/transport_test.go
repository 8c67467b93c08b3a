package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// An agent built with -tags mqttonly refuses a config that asks for gRPC,
// naming the line and the build tag; the default build takes it.
func TestMQTTOnlyRefusesGRPC(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "dev.toml")
	data := "[device]\nid = \"a\"\n[transport]\nkind = \"grpc\"\ngateway = \"127.0.0.1:1\"\npassword = \"p\"\n[board]\nsim = true\n"
	if err := os.WriteFile(cfg, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "jotunheim")
	if out, err := exec.Command("go", "build", "-tags", "mqttonly", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build -tags mqttonly: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "--config", cfg).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || !strings.Contains(string(out), "dev.toml:4: transport.kind") ||
		!strings.Contains(string(out), "-tags mqttonly") {
		t.Fatalf("got %v, %q, want exit 2 naming dev.toml:4 and the build tag", err, out)
	}
}
