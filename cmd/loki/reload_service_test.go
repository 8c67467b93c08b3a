package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// startUpHUP runs `loki up` with extra flags and a SIGHUP channel, and
// returns the channel, its stderr and the gRPC address. It stops at cleanup.
func startUpHUP(t *testing.T, dataDir string, extra ...string) (chan<- os.Signal, *syncBuffer, string, string) {
	t.Helper()
	t.Setenv("LOKI_DATA_DIR", dataDir)
	hup := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(withReloadSignal(context.Background(), hup))
	var out, errOut syncBuffer
	done := make(chan error, 1)
	args := append([]string{"up", "--data-dir", dataDir, "--nats-port", "-1", "--grpc-port", "-1", "--mqtt-port", "-1"}, extra...)
	go func() { done <- run(ctx, args, &out, &errOut) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("loki up: got %v, want clean exit", err)
		}
	})
	eventually(t, "loki up ready", func() string {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("loki up exited: %v\n%s", err, errOut.String())
		default:
		}
		if strings.Contains(out.String(), "Loki is up") {
			return ""
		}
		return "not up; stderr: " + errOut.String()
	})
	url := natsURL.FindString(out.String())
	m := grpcLine.FindStringSubmatch(out.String())
	if url == "" || m == nil {
		t.Fatalf("no NATS URL or gRPC address in output:\n%s", out.String())
	}
	return hup, &errOut, url, m[1]
}

// TestServiceConfigReloadOnSIGHUP: SIGHUP applies the egress policy,
// gateway tokens and log level of an edited --service-config to a running
// `loki up`, names what needs a restart, and a bad edit changes nothing.
func TestServiceConfigReloadOnSIGHUP(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"a":1}`))
	}))
	defer api.Close()
	host := strings.TrimPrefix(api.URL, "http://") // 127.0.0.1:PORT
	svcFile := filepath.Join(t.TempDir(), "service.toml")
	write := func(s string) {
		t.Helper()
		saveLikeAnEditor(t, svcFile, s)
	}
	const start = "[log]\nlevel = \"warn\"\n\n[gateway]\ntokens = [\"old\"]\n"
	write(start)
	hup, errOut, url, grpcAddr := startUpHUP(t, t.TempDir(), "--service-config", svcFile, "--log-level", "info")
	if strings.Contains(errOut.String(), "level=INFO") {
		t.Errorf("[log] level = \"warn\" did not override --log-level info:\n%s", errOut.String())
	}

	fetch := func(t *testing.T) (string, error) {
		return cli(t, "call", "fetch_fields", "url="+api.URL+"/", `fields=["a"]`, "--nats-url", url)
	}
	viaGRPC := func(token string) []string { return []string{"--grpc", grpcAddr, "--token", token} }
	// reloaded sends SIGHUP and waits for the reload's log line.
	reloaded := func(t *testing.T, line string) {
		t.Helper()
		n := strings.Count(errOut.String(), line)
		hup <- syscall.SIGHUP
		eventually(t, "reload logged", func() string {
			if strings.Count(errOut.String(), line) > n {
				return ""
			}
			return "no " + line + " line; stderr:\n" + errOut.String()
		})
	}

	if _, err := fetch(t); err == nil || !strings.Contains(err.Error(), "PERMISSION_DENIED") {
		t.Fatalf("fetch before allowing %s: got %v, want PERMISSION_DENIED", host, err)
	}
	eventually(t, "old token", callsAgree(t, 1, "add", "3", "", append(viaGRPC("old"), "a=1", "b=2")...))

	allowed := "[log]\nlevel = \"info\"\n\n[loki]\nconcurrency = 3\n\n[gateway]\ntokens = [\"new\"]\n\n" +
		"[jormungandr.policy]\nallow_hosts = [\"" + host + "\"]\n"
	write(allowed)
	reloaded(t, "msg=\"service config reloaded\"")
	log := errOut.String()
	for _, want := range []string{`applied="[log] level, [jormungandr] policy, [gateway] tokens"`, `restart_needed="[loki] concurrency"`} {
		if !strings.Contains(log, want) {
			t.Errorf("reload log does not mention %s:\n%s", want, log)
		}
	}
	got, err := fetch(t)
	if err != nil || got != `{"fields":{"a":1},"status":200}` {
		t.Fatalf("fetch after allowing %s: got %q, %v", host, got, err)
	}
	eventually(t, "old token refused", callsAgree(t, 1, "add", "", "UNAUTHENTICATED", append(viaGRPC("old"), "a=1", "b=2")...))
	eventually(t, "new token", callsAgree(t, 1, "add", "3", "", append(viaGRPC("new"), "a=1", "b=2")...))
	// Scripts still reach the local MQTT listener.
	if _, err := cli(t, "call", "publish_reading", "sensor=k", "value=1", "--nats-url", url); err != nil {
		t.Errorf("publish_reading after the reload: got %v, want the local MQTT listener still allowed", err)
	}

	for _, bad := range []struct{ name, config, want string }{
		{"bad host", allowed + "allow_cidrs = [\"nope\"]\n", "allow_cidrs[0]"},
		{"bad TOML", "[gateway]\ntokens = [\"x\"\n", svcFile},
		{"bad level", "[log]\nlevel = \"loud\"\n", `level = \"loud\"`},
	} {
		t.Run(bad.name, func(t *testing.T) {
			write(bad.config)
			reloaded(t, "msg=\"service config reload refused")
			if !strings.Contains(errOut.String(), bad.want) {
				t.Errorf("refusal does not mention %s:\n%s", bad.want, errOut.String())
			}
			if got, err := fetch(t); err != nil || !strings.Contains(got, `"a":1`) {
				t.Errorf("fetch after a refused reload: got %q, %v, want the policy kept", got, err)
			}
			eventually(t, "new token kept", callsAgree(t, 1, "add", "3", "", append(viaGRPC("new"), "a=1", "b=2")...))
		})
	}

	// Back to the start: [log] level warn now hides the INFO line.
	write(start)
	hup <- syscall.SIGHUP
	eventually(t, "denied again", func() string {
		if _, err := fetch(t); err == nil || !strings.Contains(err.Error(), "PERMISSION_DENIED") {
			return "fetch: got " + errString(err) + ", want PERMISSION_DENIED"
		}
		return ""
	})
	eventually(t, "old token again", callsAgree(t, 1, "add", "3", "", append(viaGRPC("old"), "a=1", "b=2")...))
}
