package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/natsrv/tlstest"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// busyPort listens on a free loopback port until the test ends.
func busyPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	return l.Addr().(*net.TCPAddr).Port
}

func TestUpPortClashNamesEveryFlag(t *testing.T) {
	dir := t.TempDir()
	natsPort, grpcPort := busyPort(t), busyPort(t)
	_, err := cli(t, "up", "--data-dir", dir, "--nats-port", strconv.Itoa(natsPort), "--grpc-port", strconv.Itoa(grpcPort),
		"--mqtt-port", "-1", "--metrics-listen", "off", "--log-level", "warn")
	if err == nil {
		t.Fatal("got a clean start, want the port clash")
	}
	for _, want := range []string{
		"port " + strconv.Itoa(natsPort) + " (--nats-port) is in use",
		"port " + strconv.Itoa(grpcPort) + " (--grpc-port) is in use",
		"move them with those flags (-1 picks a free port)",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("got %q, want it to say %q", err, want)
		}
	}
	// Nothing started: no identities, no JetStream store.
	for _, sub := range []string{"auth", "jetstream"} {
		if _, err := os.Stat(filepath.Join(dir, sub)); err == nil {
			t.Errorf("%s was created, want nothing started", sub)
		}
	}
}

var (
	toolsLine = regexp.MustCompile(`tools\s+(\d+) served: ([^\n]*?)  \(`)
	tryLine   = regexp.MustCompile(`try\s+([^\n]*)`)
)

func TestUpBannerListsServedTools(t *testing.T) {
	dir := t.TempDir()
	first, second := filepath.Join(dir, "first.toml"), filepath.Join(dir, "second.toml")
	writeFile(t, first, toolsTOML([2]string{"alpha", "a"}))
	writeFile(t, second, toolsTOML([2]string{"beta", "b"}))
	_, stop, _ := startUpOut(t, dir, "--config", first, "--metrics-listen", "off")
	stop()
	url, stop, out := startUpOut(t, dir, "--config", second, "--metrics-listen", "off")
	defer stop()
	m := toolsLine.FindStringSubmatch(out)
	if m == nil || m[1] != "2" || m[2] != "alpha, beta" {
		t.Fatalf("got banner\n%s\nwant the tools line to list alpha (registered before the restart) and beta", out)
	}
	try := tryLine.FindStringSubmatch(out)
	if want := "loki call alpha --nats-url " + url; try == nil || try[1] != want {
		t.Fatalf("got banner\n%s\nwant the try line %q", out, want)
	}
	// The try line works as printed.
	args := strings.Fields(try[1])[1:]
	if got, err := cli(t, args...); err != nil || got != `"a"` {
		t.Fatalf("%s: got %q, %v, want \"a\"", try[1], got, err)
	}
}

func TestUpPublishReadingOnAnyMQTTPort(t *testing.T) {
	dir := t.TempDir()
	url, stop := startUp(t, dir, "--metrics-listen", "off") // --mqtt-port -1
	defer stop()
	got, err := cli(t, "call", "publish_reading", "sensor=t1", "value=21.5", "--nats-url", url)
	if err != nil || !strings.Contains(got, `"topic":"readings/t1/reading"`) {
		t.Fatalf("publish_reading with the default broker: got %q, %v", got, err)
	}
}

func TestServiceConfigGatewayTLS(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "certs"), 0o750); err != nil {
		t.Fatal(err)
	}
	files := tlstest.Write(t, filepath.Join(dir, "certs"))
	good := filepath.Join(dir, "good.toml")
	writeFile(t, good, "[gateway]\ntls_cert_file = \"certs/server.pem\"\ntls_key_file = \"certs/server-key.pem\"\n")
	t.Chdir(t.TempDir()) // not the config file's directory
	cfg, err := loadServiceConfig(good, dir)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Gateway.TLSCertFile != files.ServerCert || cfg.Gateway.TLSKeyFile != files.ServerKey {
		t.Fatalf("got %q, %q, want %q, %q", cfg.Gateway.TLSCertFile, cfg.Gateway.TLSKeyFile, files.ServerCert, files.ServerKey)
	}

	bad := filepath.Join(dir, "bad.toml")
	writeFile(t, bad, "[gateway]\ntls_cert_file = \"certs/server.pem\"\ntls_key_file = \"certs/client-key.pem\"\n")
	data := filepath.Join(dir, "data")
	_, err = cli(t, "up", "--data-dir", data, "--service-config", bad, "--nats-port", "-1", "--grpc-port", "-1",
		"--mqtt-port", "-1", "--metrics-listen", "off", "--log-level", "warn")
	if err == nil || !strings.Contains(err.Error(), "[gateway]") || !strings.Contains(err.Error(), "private key does not match") {
		t.Fatalf("got %v, want the [gateway] key pair refused", err)
	}
	// Refused before NATS started, so before any tool was registered.
	if _, err := os.Stat(filepath.Join(data, "jetstream")); err == nil {
		t.Fatal("the JetStream store was created, want the bad certificate refused first")
	}
}

var semverRE = regexp.MustCompile(`^\d+\.\d+\.\d+`)

func TestUpServicesReportVersions(t *testing.T) {
	dir := t.TempDir()
	url, stop := startUp(t, dir, "--metrics-listen", "off")
	defer stop()
	opts, err := auth.ConnectOptions(auth.SeedFile(filepath.Join(dir, "auth"), string(subjects.RoleClient)))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for _, name := range []string{subjects.LokiService, subjects.HelService, subjects.FenrirService, subjects.JormungandrService, subjects.AuthService} {
		subj, err := micro.ControlSubject(micro.InfoVerb, name, "")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		msg, err := nc.RequestWithContext(ctx, subj, nil)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v", subj, err)
		}
		var info micro.Info
		if err := json.Unmarshal(msg.Data, &info); err != nil {
			t.Fatal(err)
		}
		if info.Name != name || !semverRE.MatchString(info.Version) {
			t.Errorf("%s: got name %q version %q, want %q with a semantic version", subj, info.Name, info.Version, name)
		}
	}
}

func TestUpLogsStopped(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("LOKI_DATA_DIR", dir)
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"up", "--data-dir", dir, "--nats-port", "-1", "--grpc-port", "-1", "--mqtt-port", "-1",
			"--metrics-listen", "off", "--log-level", "info"}, &out, &errOut)
	}()
	for !strings.Contains(out.String(), "Loki is up") {
		select {
		case err := <-done:
			t.Fatalf("loki up exited: %v\n%s", err, errOut.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
	if last := lines[len(lines)-1]; !strings.Contains(last, "msg=stopped") || !strings.Contains(last, "took=") {
		t.Fatalf("got last line %q, want the stopped line", last)
	}
}
