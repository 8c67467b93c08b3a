package main

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// buildAgent builds cmd/jotunheim into a temporary directory.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "jotunheim")
	out, err := exec.Command("go", "build", "-o", bin, "../jotunheim").CombinedOutput()
	if err != nil {
		t.Fatalf("build jotunheim: %v\n%s", err, out)
	}
	return bin
}

// freePorts returns n ports free on 127.0.0.1 a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// agentProc is a jotunheim process.
type agentProc struct {
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

func startAgent(t *testing.T, bin, dataDir string, args ...string) *agentProc {
	t.Helper()
	p := &agentProc{cmd: exec.Command(bin, args...), out: &syncBuffer{}, done: make(chan error, 1)}
	p.cmd.Env = append(os.Environ(), "LOKI_DATA_DIR="+dataDir)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		p.done <- nil
	})
	return p
}

// deviceState waits until device id's registry record satisfies ok.
func waitDevice(t *testing.T, url, id, what string, ok func(*jv1.Device) bool) {
	t.Helper()
	deadline := time.Now().Add(deviceBound)
	for {
		out, err := cli(t, "devices", "show", id, "--json", "--nats-url", url)
		d := &jv1.Device{}
		if err == nil && protojson.Unmarshal([]byte(out), d) == nil && ok(d) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("device %s never %s: last %s %v", id, what, out, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func online(d *jv1.Device) bool  { return d.GetOnline() }
func offline(d *jv1.Device) bool { return !d.GetOnline() }

// TestAgentProcess runs the real agent binary against `loki up`, as the
// README's device tour does: its tools answer through NATS and the gateway;
// killed, it is marked offline by its will and its tools answer UNAVAILABLE
// at once; restarted, and then with the server restarted under it, it
// comes back by itself with its LED as it was; SIGTERM ends it cleanly and
// offline.
func TestAgentProcess(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the agent binary")
	}
	bin := buildAgent(t)
	dir := t.TempDir()
	ports := freePorts(t, 3)
	fixed := []string{"--nats-port", fmt.Sprint(ports[0]), "--mqtt-port", fmt.Sprint(ports[1]), "--grpc-port", fmt.Sprint(ports[2])}
	url, stop, banner := startUpOut(t, dir, fixed...)
	defer func() { stop() }()
	grpcAddr := grpcLine.FindStringSubmatch(banner)[1]
	if _, _, err := cliAll("auth", "add-device", "demo", "--nats-url", url); err != nil {
		t.Fatal(err)
	}
	// The agent's own config: short backoff, so the test does not wait out
	// a long random delay after the server restart.
	cfg := filepath.Join(t.TempDir(), "demo.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`[device]
id = "demo"
[transport]
broker = "tcp://127.0.0.1:%d"
[board]
sim = true
[resilience]
backoff_base = "100ms"
backoff_cap = "500ms"
`, ports[1])), 0o600); err != nil {
		t.Fatal(err)
	}
	agent := startAgent(t, bin, dir, "--config", cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent output:\n%s", agent.out.String())
		}
	})
	waitDevice(t, url, "demo", "online", online)
	waitFor := func(what string, f func() (string, error), ok func(string, error) bool) string {
		t.Helper()
		deadline := time.Now().Add(deviceBound)
		for {
			out, err := f()
			if ok(out, err) {
				return out
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: got %q, %v\nagent:\n%s", what, out, err, agent.out.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	noErr := func(_ string, err error) bool { return err == nil }
	temp := waitFor("call demo_temperature", func() (string, error) { return cli(t, "call", "demo_temperature", "--nats-url", url) }, noErr)
	if _, err := fmt.Sscanf(temp, "%f", new(float64)); err != nil {
		t.Fatalf("demo_temperature: got %q, want a number", temp)
	}
	if out, err := cli(t, "call", "demo_temperature", "--grpc", grpcAddr); err != nil {
		t.Fatalf("demo_temperature through the gateway: got %q, %v", out, err)
	}
	// A device's tools are registered in the background after its
	// negotiation, one after another: each becomes callable in turn.
	ledOn := func(out string, err error) bool { return err == nil && strings.Contains(out, `"on":true`) }
	waitFor("demo_led on through the gateway", func() (string, error) {
		return cli(t, "call", "demo_led", "value=true", "--grpc", grpcAddr)
	}, ledOn)
	if out, err := cli(t, "devices", "cmd", "demo", "state", "--entity", "led", "--nats-url", url); !ledOn(out, err) {
		t.Fatalf("led state: got %q, %v, want on", out, err)
	}

	// Killed: the server publishes its will.
	if err := agent.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	waitDevice(t, url, "demo", "offline after a kill", offline)
	_, err := cli(t, "call", "demo_temperature", "--nats-url", url)
	if err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") || !strings.Contains(err.Error(), "device demo is offline") {
		t.Fatalf("call on the killed device: got %v, want UNAVAILABLE naming demo", err)
	}

	// Restarted, then the server restarted under it: it comes back by
	// itself and announces everything again; the LED is as it was.
	agent = startAgent(t, bin, dir, "--config", cfg)
	waitDevice(t, url, "demo", "online after its restart", online)
	waitFor("led on after the agent's restart", func() (string, error) {
		return cli(t, "call", "demo_led", "value=true", "--nats-url", url)
	}, ledOn)
	stop()
	url, stop, _ = startUpOut(t, dir, fixed...)
	waitDevice(t, url, "demo", "online after the server's restart", online)
	waitFor("led after the server's restart", func() (string, error) {
		return cli(t, "devices", "cmd", "demo", "state", "--entity", "led", "--nats-url", url)
	}, ledOn)

	// SIGTERM: a clean exit, and offline at once (no keepalive to wait out).
	if err := agent.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-agent.done:
		agent.done <- err
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		if err != nil {
			t.Fatalf("agent after SIGTERM: got %v, want exit 0\n%s", err, agent.out.String())
		}
	case <-time.After(deviceBound):
		t.Fatal("agent did not stop on SIGTERM")
	}
	waitDevice(t, url, "demo", "offline after SIGTERM", offline)
	if !strings.Contains(agent.out.String(), "offline") {
		t.Errorf("agent did not log going offline:\n%s", agent.out.String())
	}
}

// TestAgentStreamOverGRPC: the real agent binary on the gateway's device
// link (`jotunheim --sim --gateway ...`, as the README's tour says) shows
// its stream sources, and `loki devices stream` reads one: exactly the
// bytes asked for, the sim pattern's (byte i is i mod 251); an unknown
// source is NOT_FOUND.
func TestAgentStreamOverGRPC(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the agent binary")
	}
	bin := buildAgent(t)
	dir := t.TempDir()
	url, stop, banner := startUpOut(t, dir)
	defer stop()
	grpcAddr := grpcLine.FindStringSubmatch(banner)[1]
	if _, _, err := cliAll("auth", "add-device", "demo", "--nats-url", url); err != nil {
		t.Fatal(err)
	}
	startAgent(t, bin, dir, "--sim", "--id", "demo", "--gateway", grpcAddr)
	waitDevice(t, url, "demo", "online", online)
	show, err := cli(t, "devices", "show", "demo", "--nats-url", url)
	if err != nil || !strings.Contains(show, "pattern (") || !strings.Contains(show, "sine (") {
		t.Fatalf("devices show: got %q, %v; want the sim's streams", show, err)
	}
	out := filepath.Join(t.TempDir(), "pattern.bin")
	if _, _, err := cliAll("devices", "stream", "demo", "pattern", "--bytes", "200000", "-o", out, "--nats-url", url); err != nil {
		t.Fatalf("devices stream: %v", err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 200000 {
		t.Fatalf("got %d bytes, want 200000", len(b))
	}
	for i, c := range b {
		if c != byte(i%251) {
			t.Fatalf("byte %d: got %d, want %d", i, c, i%251)
		}
	}
	_, _, err = cliAll("devices", "stream", "demo", "nope", "--bytes", "10", "--nats-url", url)
	if err == nil || !strings.Contains(err.Error(), "NOT_FOUND") || !strings.Contains(err.Error(), "pattern") {
		t.Fatalf("unknown source: got %v; want NOT_FOUND naming the sources there are", err)
	}
}
