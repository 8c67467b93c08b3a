package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/client"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// buildAgentVersion builds cmd/jotunheim reporting firmware version v.
func buildAgentVersion(t *testing.T, dir, v string) string {
	t.Helper()
	out := filepath.Join(dir, "jotunheim-"+v)
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags",
		"-X github.com/loki-iot/loki/devices/jotunheim.FirmwareVersion="+v, "-o", out, "../jotunheim")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", v, err, b)
	}
	return out
}

// TestOTARolloutToARealAgent is the operator story end to end, with
// real processes: an operator signs and publishes a release with the loki
// CLI, rolls it out to a device running the agent binary v1 from its
// install directory, and the device downloads it over its own MQTT
// connection, restarts into v2, commits, and shows up with firmware v2.
func TestOTARolloutToARealAgent(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the agent twice")
	}
	dir := t.TempDir()
	var v1, v2 string
	var wg sync.WaitGroup
	wg.Go(func() { v1 = buildAgentVersion(t, dir, "v1") })
	wg.Go(func() { v2 = buildAgentVersion(t, dir, "v2") })
	wg.Wait()
	if t.Failed() {
		return
	}
	key := filepath.Join(dir, "operator")
	if _, err := cli(t, "ota", "keygen", "--out", key); err != nil {
		t.Fatal(err)
	}
	svc := filepath.Join(dir, "service.toml")
	if err := os.WriteFile(svc, []byte("[jotunheim]\nota_keys = [\"operator.pub\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(dir, "data")
	url, stop, banner := startUpOut(t, data, "--service-config", svc)
	defer stop()
	mqtt := mqttLine.FindStringSubmatch(banner)
	if mqtt == nil {
		t.Fatalf("no MQTT listener in the banner:\n%s", banner)
	}
	if _, _, err := cliAll("auth", "add-device", "demo", "--nats-url", url); err != nil {
		t.Fatal(err)
	}

	// The device: v1 installed as ota/current, the operator's key pinned.
	otaDir := filepath.Join(dir, "device", "ota")
	if err := os.MkdirAll(otaDir, 0o755); err != nil {
		t.Fatal(err)
	}
	b1, err := os.ReadFile(v1)
	if err != nil {
		t.Fatal(err)
	}
	current := filepath.Join(otaDir, "current")
	if err := os.WriteFile(current, b1, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "device", "agent.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[device]
id = "demo"
model = "e2e"
[transport]
broker = "tcp://%s"
[board]
sim = true
[resilience]
backoff_base = "100ms"
backoff_cap = "500ms"
[ota]
dir = "ota"
public_key_file = %q
health_window = "30s"
`, mqtt[1], key+".pub")), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := startAgent(t, current, data, "--config", cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent output:\n%s", agent.out.String())
		}
	})
	firmware := func(v string) func(*jv1.Device) bool {
		return func(d *jv1.Device) bool { return d.GetOnline() && d.GetManifest().GetFirmwareVersion() == v }
	}
	waitDevice(t, url, "demo", "online with v1", firmware("v1"))

	// The operator: sign, publish, roll out.
	target := "linux/" + runtime.GOARCH + "/e2e"
	if _, err := cli(t, "ota", "sign", "--key", key+".key", "--version", "v2", "--target", target,
		"--security-counter", "1", "--out", v2+".ota.json", v2); err != nil {
		t.Fatal(err)
	}
	if out, err := cli(t, "ota", "publish", "--nats-url", url, v2+".ota.json", v2); err != nil {
		t.Fatalf("publish: %q %v", out, err)
	}
	out, err := cli(t, "ota", "rollout", "--nats-url", url, "jotunheim@v2", "--devices", "demo")
	if err != nil {
		t.Fatalf("rollout: %q %v", out, err)
	}

	// The device restarts into v2 and commits.
	waitDevice(t, url, "demo", "online with v2", firmware("v2"))
	deadline := time.Now().Add(deviceBound)
	for {
		out, err = cli(t, "ota", "status", "--nats-url", url)
		if err == nil && strings.Contains(out, "committed") && strings.Contains(out, "completed") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ota status: got %q, %v; want demo committed and the rollout completed", out, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The same through the gateway's Devices service.
	gc, err := client.Dial(grpcLine.FindStringSubmatch(banner)[1], client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer gc.Close()
	st, err := lokiv1.NewDevicesClient(gc.Conn()).GetRolloutStatus(context.Background(), &lokiv1.GetRolloutStatusRequest{})
	if b, _ := protojson.Marshal(st.GetRollouts()); err != nil || !strings.Contains(string(b), "committed") {
		t.Fatalf("GetRolloutStatus: got %s, %v; want demo committed", b, err)
	}
	got, err := os.ReadFile(current)
	if err != nil {
		t.Fatal(err)
	}
	b2, _ := os.ReadFile(v2)
	if string(got) != string(b2) {
		t.Fatal("ota/current is not the v2 binary")
	}
	show, err := cli(t, "devices", "show", "demo", "--json", "--nats-url", url)
	d := &jv1.Device{}
	if err != nil || protojson.Unmarshal([]byte(show), d) != nil || !strings.Contains(strings.Join(d.GetManifest().GetFeatures(), ","), "ota") {
		t.Fatalf("devices show: got %s %v; want the ota feature", show, err)
	}
}
