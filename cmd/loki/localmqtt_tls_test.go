package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/natsrv/tlstest"
	"github.com/nats-io/nats.go"
)

// TestUpLocalMQTTTLS: with [nats] TLS, the example publish_reading reaches
// the local MQTT listener with broker=tcp:// and ssl:// alike, and an admin
// on the bus gets the reading; when the listener wants client certificates,
// Jörmungandr presents [jormungandr] local_mqtt_cert_file, and without one a
// script is told which keys to set.
func TestUpLocalMQTTTLS(t *testing.T) {
	dir := t.TempDir()
	certs := filepath.Join(dir, "certs") // next to the configs, for the relative paths below
	if err := os.MkdirAll(certs, 0o750); err != nil {
		t.Fatal(err)
	}
	files := tlstest.Write(t, certs)
	server := "[nats]\ntls_cert_file = \"certs/server.pem\"\ntls_key_file = \"certs/server-key.pem\"\n"
	clientCA := "tls_client_ca_file = \"certs/ca.pem\"\n"
	localCert := "[jormungandr]\nlocal_mqtt_cert_file = \"certs/client.pem\"\nlocal_mqtt_key_file = \"certs/client-key.pem\"\n"
	tests := []struct {
		name     string
		config   string
		wantErr  string // "": the reading arrives
		wantCode string
	}{
		{name: "server certificate", config: server},
		{name: "client certificates", config: server + clientCA + localCert},
		{name: "client certificates, none for scripts", config: server + clientCA, wantErr: "local_mqtt_cert_file", wantCode: "FAILED_PRECONDITION"},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc := filepath.Join(dir, "service"+string(rune('a'+i))+".toml")
			writeFile(t, svc, tc.config)
			dataDir := t.TempDir()
			natsURL, mqttAddr, stop := startUpTLS(t, dataDir, svc)
			defer stop()
			tlsArgs := []string{"--nats-url", natsURL, "--tls-ca=" + files.CA, "--tls-cert=" + files.ClientCert, "--tls-key=" + files.ClientKey}

			credOpts, err := auth.ConnectOptions(auth.SeedFile(filepath.Join(dataDir, "auth"), "admin"))
			if err != nil {
				t.Fatal(err)
			}
			admin, err := nats.Connect(natsURL, append(credOpts, nats.RootCAs(files.CA), nats.ClientCert(files.ClientCert, files.ClientKey))...)
			if err != nil {
				t.Fatal(err)
			}
			defer admin.Close()
			for _, scheme := range []string{"tcp", "ssl"} {
				sensor := "kitchen_" + scheme
				sub, err := admin.SubscribeSync("readings." + sensor + ".reading")
				if err != nil {
					t.Fatal(err)
				}
				if err := admin.Flush(); err != nil {
					t.Fatal(err)
				}
				got, err := cli(t, append([]string{"call", "publish_reading", "sensor=" + sensor, "value=21.5",
					"broker=" + scheme + "://" + mqttAddr}, tlsArgs...)...)
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.wantCode) {
						t.Fatalf("%s://: got %q, %v, want %s naming %s", scheme, got, err, tc.wantCode, tc.wantErr)
					}
					_ = sub.Unsubscribe()
					continue
				}
				if want := `{"topic":"readings/` + sensor + `/reading","value":21.5}`; err != nil || got != want {
					t.Fatalf("%s://: got %q, %v, want %s", scheme, got, err, want)
				}
				m, err := sub.NextMsg(20 * time.Second)
				if err != nil || !strings.Contains(string(m.Data), `"value":21.5`) {
					t.Fatalf("%s://: the admin got %v, %v, want the reading", scheme, m, err)
				}
				_ = sub.Unsubscribe()
			}
		})
	}
}

// TestUpLocalMQTTTLSRefusesWrongCert: a [jormungandr] local_mqtt_cert_file
// the listener would refuse stops `loki up` at start-up, naming the file.
func TestUpLocalMQTTTLSRefusesWrongCert(t *testing.T) {
	dir := t.TempDir()
	files := tlstest.Write(t, t.TempDir())
	other := tlstest.Write(t, t.TempDir())
	svc := filepath.Join(dir, "service.toml")
	writeFile(t, svc, "[nats]\ntls_cert_file = "+quote(files.ServerCert)+"\ntls_key_file = "+quote(files.ServerKey)+
		"\ntls_client_ca_file = "+quote(files.CA)+
		"\n[jormungandr]\nlocal_mqtt_cert_file = "+quote(other.ClientCert)+"\nlocal_mqtt_key_file = "+quote(other.ClientKey)+"\n")
	// Bounded, so that a `loki up` that starts regardless fails the test
	// instead of running until the test binary's timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out, errOut syncBuffer
	err := run(ctx, []string{"up", "--data-dir", t.TempDir(), "--service-config", svc, "--nats-port", "-1", "--grpc-port", "0",
		"--mqtt-port", "-1", "--log-level", "warn"}, &out, &errOut)
	if strings.Contains(out.String(), "Loki is up") {
		t.Fatalf("loki up started with a client certificate the listener refuses (exit: %v)", err)
	}
	if err == nil || !strings.Contains(err.Error(), "local_mqtt_cert_file") || !strings.Contains(err.Error(), other.ClientCert) {
		t.Fatalf("got %v, want an error naming local_mqtt_cert_file and %s", err, other.ClientCert)
	}
}

// startUpTLS runs `loki up` with the service config svc, whose [nats]
// turns TLS on, and returns its tls:// NATS URL, the MQTT listener's
// host:port and a function that stops it and waits for a clean exit.
func startUpTLS(t *testing.T, dataDir, svc string) (natsURL, mqttAddr string, stop func()) {
	t.Helper()
	t.Setenv("LOKI_DATA_DIR", dataDir)
	ctx, cancel := context.WithCancel(context.Background())
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"up", "--data-dir", dataDir, "--service-config", svc, "--nats-port", "-1", "--grpc-port", "0",
			"--mqtt-port", "-1", "--log-level", "warn"}, &out, &errOut)
	}()
	stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("loki up: got %v, want clean exit", err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for !strings.Contains(out.String(), "Loki is up") {
		select {
		case err := <-done:
			cancel()
			t.Fatalf("loki up exited: %v\n%s", err, errOut.String())
		default:
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("loki up not ready; stderr:\n%s", errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	n := regexp.MustCompile(`NATS\s+(tls://127\.0\.0\.1:\d+)`).FindStringSubmatch(out.String())
	m := regexp.MustCompile(`MQTT\s+ssl://(127\.0\.0\.1:\d+)`).FindStringSubmatch(out.String())
	if n == nil || m == nil {
		stop()
		t.Fatalf("banner does not show tls:// and ssl:// URLs:\n%s", out.String())
	}
	return n[1], m[1], stop
}
