package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natsrv/tlstest"
)

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestServiceConfigNATS(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs")
	if err := os.MkdirAll(certs, 0o750); err != nil {
		t.Fatal(err)
	}
	files := tlstest.Write(t, certs)
	missing := filepath.Join(dir, "certs", "gone.pem")
	tests := []struct {
		name     string
		src      string
		wantErr  []string // substrings of the error; none: no error
		wantSync string   // "always" or the interval
		wantTLS  bool
	}{
		{name: "defaults", src: "", wantSync: "always"},
		{name: "sync interval", src: "[nats]\nsync = \"2m\"\n", wantSync: "2m0s"},
		{name: "sync always", src: "[nats]\nsync = \"always\"\n", wantSync: "always"},
		{name: "sync nonsense", src: "[nats]\nsync = \"soon\"\n", wantErr: []string{"[nats]", `sync = "soon"`}},
		{name: "sync negative", src: "[nats]\nsync = \"-1s\"\n", wantErr: []string{`sync = "-1s"`}},
		{name: "unknown key", src: "[nats]\ntls_cert = \"x\"\n", wantErr: []string{"nats.tls_cert"}},
		{name: "relative to the config file", src: "[nats]\ntls_cert_file = \"certs/server.pem\"\ntls_key_file = \"certs/server-key.pem\"\ntls_client_ca_file = \"certs/ca.pem\"\n",
			wantSync: "always", wantTLS: true},
		{name: "missing file named with its key", src: "[nats]\ntls_cert_file = \"certs/server.pem\"\ntls_key_file = \"certs/gone.pem\"\n",
			wantErr: []string{"[nats]", "tls_key_file", missing}},
		{name: "missing client CA", src: "[nats]\ntls_cert_file = \"certs/server.pem\"\ntls_key_file = \"certs/server-key.pem\"\ntls_client_ca_file = \"certs/gone.pem\"\n",
			wantErr: []string{"tls_client_ca_file", missing}},
		{name: "key of another certificate", src: "[nats]\ntls_cert_file = \"certs/server.pem\"\ntls_key_file = \"certs/client-key.pem\"\n",
			wantErr: []string{"tls_key_file", "private key does not match"}},
		{name: "certificate without key", src: "[nats]\ntls_cert_file = \"certs/server.pem\"\n", wantErr: []string{"tls_key_file"}},
		{name: "client CA alone", src: "[nats]\ntls_client_ca_file = \"certs/ca.pem\"\n", wantErr: []string{"tls_cert_file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := ""
			if tc.src != "" {
				path = filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".toml")
				writeFile(t, path, tc.src)
			}
			cfg, err := loadServiceConfig(path, t.TempDir())
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatal("got no error")
				}
				for _, want := range tc.wantErr {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("error %q does not mention %q", err, want)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			srv := cfg.NATS.server(natsrv.Config{})
			gotSync := "always"
			if !srv.SyncAlways {
				gotSync = srv.SyncInterval.String()
			}
			if gotSync != tc.wantSync {
				t.Errorf("sync: got %s, want %s", gotSync, tc.wantSync)
			}
			if got := srv.TLS != nil; got != tc.wantTLS {
				t.Fatalf("TLS on: got %v, want %v", got, tc.wantTLS)
			}
			if tc.wantTLS && (srv.TLS.CertFile != files.ServerCert || srv.TLS.KeyFile != files.ServerKey || srv.TLS.ClientCAFile != files.CA) {
				t.Errorf("got %+v, want the files in %s", *srv.TLS, certs)
			}
		})
	}
}

// TestUpTLS: with [nats] TLS and client certificates, `loki up` serves
// tls:// and ssl://, and the CLI connects with --tls-ca, --tls-cert and
// --tls-key (as the local client identity) and not without them.
func TestUpTLS(t *testing.T) {
	dir := t.TempDir()
	files := tlstest.Write(t, t.TempDir())
	svc := filepath.Join(dir, "service.toml")
	writeFile(t, svc, "[nats]\ntls_cert_file = "+quote(files.ServerCert)+"\ntls_key_file = "+quote(files.ServerKey)+
		"\ntls_client_ca_file = "+quote(files.CA)+"\nsync = \"always\"\n")
	dataDir := filepath.Join(dir, "data")
	t.Setenv("LOKI_DATA_DIR", dataDir)
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"up", "--data-dir", dataDir, "--service-config", svc, "--nats-port", "-1", "--grpc-port", "0",
			"--mqtt-port", "-1", "--log-level", "warn"}, &out, &errOut)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("loki up: got %v, want clean exit", err)
		}
	}()
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), "Loki is up") {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("loki up exited: %v\n%s", err, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("loki up not ready; stderr:\n%s", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	banner := out.String()
	m := regexp.MustCompile(`NATS\s+(tls://127\.0\.0\.1:\d+)`).FindStringSubmatch(banner)
	if m == nil || !regexp.MustCompile(`MQTT\s+ssl://127\.0\.0\.1:\d+`).MatchString(banner) {
		t.Fatalf("banner does not show tls:// and ssl:// URLs:\n%s", banner)
	}
	url := m[1]
	ca, cert, key := "--tls-ca="+files.CA, "--tls-cert="+files.ClientCert, "--tls-key="+files.ClientKey
	got, err := cli(t, "call", "add", "a=1", "b=2", "--nats-url", url, ca, cert, key)
	if err != nil || got != "3" {
		t.Fatalf("call over TLS with a client certificate: got %q, %v", got, err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no client certificate", []string{ca}, "TLS with NATS"},
		{"CA not trusted", []string{cert, key}, "TLS with NATS"},
		{"certificate without key", []string{ca, cert}, "--tls-cert and --tls-key go together"},
		{"missing CA file", []string{"--tls-ca=" + filepath.Join(dir, "nope.pem"), cert, key}, "--tls-ca"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := cli(t, append([]string{"call", "add", "a=1", "b=2", "--nats-url", url}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}

func quote(s string) string { return `"` + strings.ReplaceAll(s, `\`, `\\`) + `"` }
