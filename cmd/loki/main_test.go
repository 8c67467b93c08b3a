package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var (
	natsURL  = regexp.MustCompile(`nats://127\.0\.0\.1:\d+`)
	grpcLine = regexp.MustCompile(`gRPC\s+(127\.0\.0\.1:\d+)`)
)

// startUp runs `loki up` on a random port and returns its NATS URL and a stop
// function that waits for a clean exit.
func startUp(t *testing.T, dataDir string, extra ...string) (string, func()) {
	t.Helper()
	url, stop, _ := startUpOut(t, dataDir, extra...)
	return url, stop
}

// startUpOut is startUp that also returns what `loki up` printed.
func startUpOut(t *testing.T, dataDir string, extra ...string) (string, func(), string) {
	t.Helper()
	// The CLI finds the local credential in the default data dir, as after
	// a plain `loki up`.
	t.Setenv("LOKI_DATA_DIR", dataDir)
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan error, 1)
	args := append([]string{"up", "--data-dir", dataDir, "--nats-port", "-1", "--grpc-port", "-1", "--mqtt-port", "-1", "--log-level", "warn"}, extra...)
	go func() { done <- run(ctx, args, &out, &errOut) }()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), "Loki is up") {
		select {
		case err := <-done:
			t.Fatalf("loki up exited: %v\n%s", err, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("loki up not ready; stderr:\n%s", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	url := natsURL.FindString(out.String())
	if url == "" {
		t.Fatalf("no NATS URL in output:\n%s", out.String())
	}
	return url, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("loki up: got %v, want clean exit", err)
		}
	}, out.String()
}

func cli(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	return strings.TrimSpace(out.String()), err
}

func TestUpCallToolsAndRestart(t *testing.T) {
	dir := t.TempDir()
	url, stop := startUp(t, dir)
	got, err := cli(t, "call", "add", "a=1", "b=2", "--nats-url", url)
	if err != nil || got != "3" {
		t.Fatalf("call add: got %q, %v, want 3", got, err)
	}
	got, err = cli(t, "call", "--nats-url", url, "slugify", "text=42 Answers")
	if err != nil || got != `"42-answers"` {
		t.Fatalf("call slugify with a numeric-looking string: got %q, %v", got, err)
	}
	got, err = cli(t, "call", "summarize", "--json", `{"readings":[{"sensor":"a","value":1}]}`, "--nats-url", url)
	if err != nil || !strings.Contains(got, `"mean":1`) {
		t.Fatalf("call --json: got %q, %v", got, err)
	}
	got, err = cli(t, "call", "countdown", "n=2", "--stream", "--nats-url", url)
	if err != nil || got != "{\"remaining\":2}\n{\"remaining\":1}\n\"liftoff\"" {
		t.Fatalf("call --stream: got %q, %v", got, err)
	}
	_, err = cli(t, "call", "add", "a=x", "--nats-url", url)
	if err == nil || !strings.Contains(err.Error(), "INVALID_ARGUMENT") {
		t.Fatalf("bad arg: got %v, want INVALID_ARGUMENT", err)
	}
	if ee, ok := err.(*exitError); !ok || ee.code != 1 {
		t.Fatalf("bad arg: got %#v, want exit code 1", err)
	}
	_, err = cli(t, "call", "nope", "--nats-url", url)
	if err == nil || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Fatalf("unknown tool: got %v, want NOT_FOUND", err)
	}
	got, err = cli(t, "tools", "--nats-url", url)
	if err != nil || !strings.Contains(got, "countdown") || !strings.Contains(got, "a:number") {
		t.Fatalf("tools: got %q, %v", got, err)
	}
	stop()

	// Restart on the same data dir with a config that has only a new tool:
	// the examples registered before are still there.
	cfg := filepath.Join(t.TempDir(), "tools.toml")
	if err := os.WriteFile(cfg, []byte("[[tools]]\nname = \"hello\"\nreturns = \"string\"\nscript = \"return 'hi'\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	url, stop = startUp(t, dir, "--config", cfg)
	defer stop()
	for tool, want := range map[string]string{"hello": `"hi"`, "add": "5"} {
		got, err := cli(t, "call", tool, "a=2", "b=3", "--nats-url", url)
		if tool == "hello" {
			got, err = cli(t, "call", tool, "--nats-url", url)
		}
		if err != nil || got != want {
			t.Fatalf("after restart, %s: got %q, %v, want %s", tool, got, err, want)
		}
	}
}

// TestCallThroughGateway: `loki call --grpc` reaches the same tools through
// the gateway `loki up` starts, with the same output and error codes.
func TestCallThroughGateway(t *testing.T) {
	dir := t.TempDir()
	_, stop, out := startUpOut(t, dir)
	defer stop()
	m := grpcLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no gRPC address in output:\n%s", out)
	}
	addr := m[1]
	tests := []struct {
		name    string
		args    []string
		want    string
		wantErr string
	}{
		{name: "call", args: []string{"call", "add", "a=1", "b=2"}, want: "3"},
		{name: "string param", args: []string{"call", "slugify", "text=42 Answers"}, want: `"42-answers"`},
		{name: "stream", args: []string{"call", "countdown", "n=2", "--stream"}, want: "{\"remaining\":2}\n{\"remaining\":1}\n\"liftoff\""},
		{name: "bad arg", args: []string{"call", "add", "--json", `{"a":"x"}`}, wantErr: "INVALID_ARGUMENT"},
		{name: "unknown tool", args: []string{"call", "nope"}, wantErr: "NOT_FOUND"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cli(t, append(tc.args, "--grpc", addr)...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %q, %v, want %s", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v, want %q", got, err, tc.want)
			}
		})
	}
	if _, err := cli(t, "call", "add", "a=1", "--grpc", "127.0.0.1:1", "--timeout", "2s"); err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("no gateway: got %v, want UNAVAILABLE", err)
	}
}

// TestEventsCommand: `loki events --tool add` prints add's events as
// protojson lines and nothing of other tools.
func TestEventsCommand(t *testing.T) {
	url, stop := startUp(t, t.TempDir())
	defer stop()
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"events", "--tool", "add", "--nats-url", url}, &out, &errOut) }()
	for wait := time.Now().Add(10 * time.Second); !strings.Contains(errOut.String(), "listening on"); {
		if time.Now().After(wait) {
			t.Fatalf("events never subscribed; stderr: %s", errOut.String())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := cli(t, "call", "slugify", "text=x", "--nats-url", url); err != nil {
		t.Fatal(err)
	}
	if _, err := cli(t, "call", "add", "a=1", "--nats-url", url); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for strings.Count(out.String(), "\n") < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("events: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 || !strings.Contains(lines[0], `"kind":"started"`) || !strings.Contains(lines[1], `"kind":"completed"`) {
		t.Fatalf("got %q, want add's started and completed events", lines)
	}
	if strings.Contains(out.String(), "slugify") {
		t.Fatalf("events of another tool printed: %q", out.String())
	}
	if err := run(context.Background(), []string{"events", "--kind", "exploded", "--nats-url", url}, &out, &errOut); err == nil {
		t.Fatal("an unknown event kind was accepted")
	}
}

func TestUpRefusesBadConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "bad.toml")
	src := "[[tools]]\nname = \"ok\"\nscript = \"return 1\"\n\n[[tools]]\nname = \"broken\"\nscript = \"return +\"\n"
	if err := os.WriteFile(cfg, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"up", "--config", cfg, "--data-dir", t.TempDir(), "--nats-port", "-1"}, &out, &errOut)
	if err == nil {
		t.Fatal("loki up started with a broken config")
	}
	for _, want := range []string{cfg + ":5", `tool "broken"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	if strings.Contains(out.String(), "Loki is up") {
		t.Fatal("loki up reported ready with a broken config")
	}
}

func TestCallWithoutServer(t *testing.T) {
	_, err := cli(t, "call", "add", "a=1", "--nats-url", "nats://127.0.0.1:1")
	if err == nil || !strings.Contains(err.Error(), "UNAVAILABLE") {
		t.Fatalf("got %v, want UNAVAILABLE", err)
	}
}

func TestUsage(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"help"}, &out, &errOut); err != nil || !strings.Contains(out.String(), "loki up") {
		t.Fatalf("help: got %v, %q", err, out.String())
	}
	if err := run(context.Background(), []string{"frobnicate"}, &out, &errOut); err == nil {
		t.Fatal("unknown command accepted")
	}
}

// TestUpChildren: `loki up` runs Fenrir with the simulated board and
// Jörmungandr allowed to reach the local MQTT listener and nothing else, so
// the hardware and MQTT example tools answer on any machine.
func TestUpChildren(t *testing.T) {
	url, stop, out := startUpOut(t, t.TempDir())
	defer stop()
	if !strings.Contains(out, "fenrir, jormungandr") || !strings.Contains(out, "sim (sim)") {
		t.Fatalf("banner does not list fenrir, jormungandr and the sim board:\n%s", out)
	}
	mqtt := regexp.MustCompile(`MQTT\s+(tcp://127\.0\.0\.1:\d+)`).FindStringSubmatch(out)
	if mqtt == nil {
		t.Fatalf("no MQTT listener in the banner:\n%s", out)
	}
	got, err := cli(t, "call", "publish_reading", "sensor=kitchen", "value=21.5", "broker="+mqtt[1], "--nats-url", url)
	if err != nil || got != `{"topic":"readings/kitchen/reading","value":21.5}` {
		t.Fatalf("call publish_reading: got %q, %v", got, err)
	}
	// The default policy allows the MQTT listener only: not even the NATS port next to it.
	_, err = cli(t, "call", "fetch_fields", "url=http://"+strings.TrimPrefix(url, "nats://")+"/", `fields=["a"]`, "--nats-url", url)
	if err == nil || !strings.Contains(err.Error(), "PERMISSION_DENIED") {
		t.Fatalf("fetch from a denied host: got %v, want PERMISSION_DENIED", err)
	}
	got, err = cli(t, "call", "climate", "--nats-url", url)
	if err != nil || !strings.Contains(got, `"temperature":`) || !strings.Contains(got, `"°C"`) {
		t.Fatalf("call climate: got %q, %v", got, err)
	}
	got, err = cli(t, "call", "blink", "times=1", "interval_ms=1", "--nats-url", url)
	if err != nil || got != `{"blinks":1,"stopped_by_button":false}` {
		t.Fatalf("call blink: got %q, %v", got, err)
	}
}

func TestStartRefusesBadInput(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "boards.toml")
	if err := os.WriteFile(bad, []byte("[[boards]]\nname = \"pi\"\nbackend = \"arduino\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	typo := filepath.Join(t.TempDir(), "tools.toml")
	if err := os.WriteFile(typo, []byte("[[tools]]\nname = \"x\"\nreturns = \"any\"\ngrants = [\"hell.kv:a\"]\nscript = \"return 1\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
		code int
	}{
		{"serve without board", []string{"serve", "fenrir", "--nats-url", "nats://127.0.0.1:1"}, "--board FILE is required", 2},
		{"serve board and sim", []string{"serve", "fenrir", "--sim", "--board", bad}, "not both", 2},
		{"serve bad board", []string{"serve", "fenrir", "--board", bad}, `backend "arduino"`, 0},
		{"up bad board", []string{"up", "--board", bad, "--data-dir", t.TempDir()}, bad, 0},
		{"up grant of no module", []string{"up", "--config", typo, "--data-dir", t.TempDir()}, `grant "hell.kv:a": no module "hell"`, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cli(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
			if ee, ok := err.(*exitError); tc.code != 0 && (!ok || ee.code != tc.code) {
				t.Fatalf("got %#v, want exit code %d", err, tc.code)
			}
		})
	}
}

func TestServeHelpPerComponent(t *testing.T) {
	for _, name := range []string{"loki", "hel", "fenrir", "jormungandr", "gateway"} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), []string{"serve", name, "--help"}, &out, &errOut)
		if err != nil {
			t.Fatalf("serve %s --help: got %v, want success", name, err)
		}
		if help := out.String(); !strings.Contains(help, "Usage: loki serve "+name) || !strings.Contains(help, serveHelp[name]) || serveHelp[name] == "" {
			t.Fatalf("serve %s --help printed:\n%s", name, help)
		}
	}
}

// TestUpOneOwnerPerDataDir: a second loki up on a data dir in use is
// refused before it starts anything, and the first keeps serving.
func TestUpOneOwnerPerDataDir(t *testing.T) {
	dir := t.TempDir()
	url, stop := startUp(t, dir)
	defer stop()
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"up", "--data-dir", dir, "--nats-port", "-1", "--grpc-port", "0", "--mqtt-port", "0"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "in use") || strings.Contains(out.String(), "Loki is up") {
		t.Fatalf("second loki up: got %v, printed %q; want refused as in use", err, out.String())
	}
	if got, err := cli(t, "call", "add", "a=1", "b=2", "--nats-url", url); err != nil || got != "3" {
		t.Fatalf("first loki up after the refusal: got %q, %v, want 3", got, err)
	}
}
