package main

import (
	"bytes"
	"os"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/encoding/protojson"
	"path/filepath"
	"strings"
	"testing"
)

func TestOTAKeygenSignPublish(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "operator")
	if _, err := cli(t, "ota", "keygen", "--out", key); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(key + ".key"); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key: %v, %v; want mode 0600", fi, err)
	}
	if _, err := cli(t, "ota", "keygen", "--out", key); exitCode(err) != 1 {
		t.Fatalf("keygen over existing files: got %v, want exit 1", err)
	}
	other := filepath.Join(dir, "other")
	if _, err := cli(t, "ota", "keygen", "--out", other); err != nil {
		t.Fatal(err)
	}
	svc := filepath.Join(dir, "service.toml")
	if err := os.WriteFile(svc, []byte("[jotunheim]\nota_keys = [\"operator.pub\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "jotunheim-v2")
	if err := os.WriteFile(bin, []byte(strings.Repeat("firmware ", 10000)), 0o755); err != nil {
		t.Fatal(err)
	}
	sign := func(k, out string) {
		t.Helper()
		if _, err := cli(t, "ota", "sign", "--key", k+".key", "--version", "v2.0.0", "--target", "linux/arm/pi-zero",
			"--security-counter", "3", "--out", out, bin); err != nil {
			t.Fatal(err)
		}
	}
	sign(key, bin+".ota.json")
	sign(other, bin+".other.json")
	if _, err := cli(t, "ota", "sign", "--version", "v2", bin); exitCode(err) != 2 {
		t.Fatalf("sign without --key: got %v, want exit 2", err)
	}

	url, stop, banner := startUpOut(t, filepath.Join(dir, "data"), "--service-config", svc)
	defer stop()
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantMsg  string
	}{
		{name: "other key", args: []string{bin + ".other.json", bin}, wantCode: 1, wantMsg: "does not verify"},
		{name: "as a client", args: []string{bin + ".ota.json", bin, "--creds", filepath.Join(dir, "data", "auth", "client.nk")}, wantCode: 1, wantMsg: "PERMISSION_DENIED"},
		{name: "signed", args: []string{bin + ".ota.json", bin}, wantMsg: "published jotunheim@v2.0.0 for linux/arm/pi-zero"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := cli(t, append([]string{"ota", "publish", "--nats-url", url}, tc.args...)...)
			if exitCode(err) != tc.wantCode {
				t.Fatalf("got %v, want exit %d", err, tc.wantCode)
			}
			if msg := out + errText(err); !strings.Contains(msg, tc.wantMsg) {
				t.Fatalf("got %q, want %q", msg, tc.wantMsg)
			}
		})
	}
	out, err := cli(t, "ota", "releases", "--nats-url", url)
	if err != nil || !strings.Contains(out, "jotunheim@v2.0.0") || strings.Count(out, "\n") != 0 {
		t.Fatalf("releases: got %q, %v; want the one release", out, err)
	}
	if _, err := cli(t, "ota", "rollout", "--nats-url", url, "jotunheim@v2.0.0", "--all"); exitCode(err) != 1 || !strings.Contains(err.Error(), "FAILED_PRECONDITION") {
		t.Fatalf("rollout to no devices: got %v, want FAILED_PRECONDITION", err)
	}
	if out, err := cli(t, "ota", "status", "--nats-url", url); err != nil || out != "" {
		t.Fatalf("status: got %q, %v; want no rollouts", out, err)
	}

	// A bare device that reports the update committed at once.
	m := mqttLine.FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("no MQTT listener in the banner:\n%s", banner)
	}
	if _, _, err := cliAll("auth", "add-device", "demo", "--nats-url", url); err != nil {
		t.Fatal(err)
	}
	dev := startPahoDevice(t, m[1], filepath.Join(dir, "data", "auth", "devices", "demo.json"), "demo")
	offers := make(chan *jv1.OTAOffer, 4)
	if err := waitTok(dev.c.Subscribe(topic(t, "demo", subjects.DeviceOTAOffer), 1, func(_ mqtt.Client, msg mqtt.Message) {
		o := &jv1.OTAOffer{}
		if protojson.Unmarshal(msg.Payload(), o) == nil {
			offers <- o
		}
	})); err != nil {
		t.Fatal(err)
	}
	var rollout string
	deadline := time.Now().Add(deviceBound)
	for {
		out, err := cli(t, "ota", "rollout", "--nats-url", url, "jotunheim@v2.0.0", "--devices", "demo")
		if err == nil {
			rollout = strings.Fields(out)[1]
			rollout = strings.TrimSuffix(rollout, ":")
			break
		}
		if time.Now().After(deadline) { // the device's manifest may not be accepted yet
			t.Fatalf("rollout: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var o *jv1.OTAOffer
	select {
	case o = <-offers:
	case <-time.After(deviceBound):
		t.Fatal("no offer")
	}
	if o.GetRolloutId() != rollout {
		t.Fatalf("offer of rollout %q, want %q", o.GetRolloutId(), rollout)
	}
	// The service may read the binary under its own role: a chunk comes back.
	chunks := make(chan *jv1.OTAChunk, 4)
	if err := waitTok(dev.c.Subscribe(topic(t, "demo", subjects.DeviceOTAChunk), 1, func(_ mqtt.Client, msg mqtt.Message) {
		c := &jv1.OTAChunk{}
		if protojson.Unmarshal(msg.Payload(), c) == nil {
			chunks <- c
		}
	})); err != nil {
		t.Fatal(err)
	}
	req, _ := protojson.Marshal(&jv1.OTAChunkRequest{RolloutId: rollout, Offset: 9, Length: 1000})
	if err := waitTok(dev.c.Publish(topic(t, "demo", subjects.DeviceOTAGet), 1, false, req)); err != nil {
		t.Fatal(err)
	}
	select {
	case c := <-chunks:
		want, _ := os.ReadFile(bin)
		if c.GetError() != "" || !bytes.Equal(c.GetData(), want[9:1009]) {
			t.Fatalf("chunk: error %q, %d bytes; want bytes 9 to 1009 of the binary", c.GetError(), len(c.GetData()))
		}
	case <-time.After(deviceBound):
		t.Fatal("no chunk")
	}
	b, _ := protojson.Marshal(&jv1.OTAProgress{RolloutId: rollout, Version: "v2.0.0", Phase: "committed", RunningVersion: "v2.0.0"})
	if err := waitTok(dev.c.Publish(topic(t, "demo", subjects.DeviceOTAProgress), 1, false, b)); err != nil {
		t.Fatal(err)
	}
	out, err = cli(t, "ota", "status", rollout, "--watch", "--interval", "20ms", "--nats-url", url)
	if err != nil || !strings.Contains(out, "completed") || !strings.Contains(out, "demo [####################] 100%  committed") {
		t.Fatalf("status --watch: got %q, %v; want demo committed and the rollout completed", out, err)
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
