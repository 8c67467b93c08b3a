package jormungandr_test

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natsrv/tlstest"
	"github.com/loki-iot/loki/services/jormungandr"
)

// TestLocalMQTTTLS: when Loki's own MQTT listener uses TLS, a tool reaches
// it with tcp://, ssl:// and mqtts:// alike, verifying the listener against
// its own certificate file and presenting local_mqtt_cert_file when the
// listener wants client certificates; without one there it gets a clear
// FAILED_PRECONDITION instead of a handshake error.
func TestLocalMQTTTLS(t *testing.T) {
	dir := t.TempDir()
	files := tlstest.Write(t, dir)
	// The server certificate followed by its CA, as a fullchain file is.
	chain := filepath.Join(dir, "fullchain.pem")
	writeCat(t, chain, files.ServerCert, files.CA)
	tests := []struct {
		name     string
		certFile string // the listener's certificate file
		clientCA bool   // the listener requires client certificates
		withCert bool   // local_mqtt_cert_file is set
		want     fault.Code
	}{
		{name: "server certificate", certFile: files.ServerCert},
		{name: "server certificate chain", certFile: chain},
		{name: "client certificates", certFile: files.ServerCert, clientCA: true, withCert: true},
		{name: "client certificate nobody asked for", certFile: files.ServerCert, withCert: true},
		{name: "client certificates, none configured", certFile: files.ServerCert, clientCA: true, want: fault.FailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := setupFencedWith(t, fencedTools, func(sc *natsrv.Config, jc *jormungandr.Config) {
				sc.TLS = &natsrv.TLSConfig{CertFile: tc.certFile, KeyFile: files.ServerKey}
				if tc.clientCA {
					sc.TLS.ClientCAFile = files.CA
				}
				if tc.withCert {
					// Relative to the directory LocalMQTTTLS is given.
					jc.LocalMQTTCertFile, jc.LocalMQTTKeyFile = filepath.Base(files.ClientCert), filepath.Base(files.ClientKey)
				}
				tlsCfg, err := jc.LocalMQTTTLS(tc.certFile, sc.TLS.ClientCAFile, dir)
				if err != nil {
					t.Fatal(err)
				}
				jc.LocalMQTT.TLS, jc.LocalMQTT.ClientCertRequired = tlsCfg, tc.clientCA
			})
			port := strconv.Itoa(portOf(t, f.broker))
			for _, scheme := range []string{"tcp", "ssl", "mqtts"} {
				args := map[string]any{"broker": scheme + "://127.0.0.1:" + port, "topic": "readings/" + scheme, "qos": 1}
				if tc.want != "" {
					_, err := f.call(t, "fenced_pub", args)
					wantCode(t, err, tc.want)
					if !strings.Contains(err.Error(), "local_mqtt_cert_file") {
						t.Fatalf("%s: got %v, want it to name local_mqtt_cert_file", scheme, err)
					}
					continue
				}
				f.arrives(t, "readings."+scheme, func() {
					if _, err := f.call(t, "fenced_pub", args); err != nil {
						t.Fatalf("%s: %v", scheme, err)
					}
				})
			}
		})
	}
}

// TestLocalMQTTTLSUntrusted: the listener's certificate is verified, against
// the roots LocalMQTTTLS was given and nothing else.
func TestLocalMQTTTLSUntrusted(t *testing.T) {
	dir := t.TempDir()
	files := tlstest.Write(t, dir)
	other := tlstest.Write(t, t.TempDir())
	f := setupFencedWith(t, fencedTools, func(sc *natsrv.Config, jc *jormungandr.Config) {
		sc.TLS = &natsrv.TLSConfig{CertFile: files.ServerCert, KeyFile: files.ServerKey}
		// Trusting another CA's server certificate: the listener's fails.
		tlsCfg, err := jc.LocalMQTTTLS(other.ServerCert, "", dir)
		if err != nil {
			t.Fatal(err)
		}
		jc.LocalMQTT.TLS = tlsCfg
	})
	_, err := f.call(t, "fenced_pub", map[string]any{"topic": "readings/x"})
	wantCode(t, err, fault.Unavailable)
	if !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("got %v, want a certificate error", err)
	}
}

func TestLocalMQTTTLSConfig(t *testing.T) {
	dir := t.TempDir()
	files := tlstest.Write(t, dir)
	other := tlstest.Write(t, t.TempDir())
	empty := filepath.Join(dir, "empty.pem")
	if err := os.WriteFile(empty, []byte("not PEM\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "gone.pem")
	tests := []struct {
		name               string
		serverCert, client string // client: the CA file the listener wants client certificates from
		cert, key          string // local_mqtt_cert_file, local_mqtt_key_file
		want               []string
	}{
		{name: "no client certificate", serverCert: files.ServerCert},
		{name: "client certificate", serverCert: files.ServerCert, client: files.CA, cert: "client.pem", key: "client-key.pem"},
		{name: "absolute paths", serverCert: files.ServerCert, client: files.CA, cert: files.ClientCert, key: files.ClientKey},
		{name: "client certificate, no key", serverCert: files.ServerCert, cert: "client.pem", want: []string{"local_mqtt_key_file", "both"}},
		{name: "missing server certificate", serverCert: missing, want: []string{"tls_cert_file", missing}},
		{name: "no certificate in server file", serverCert: empty, want: []string{"tls_cert_file", "no PEM certificate"}},
		{name: "missing client certificate", serverCert: files.ServerCert, cert: "gone.pem", key: "client-key.pem", want: []string{"local_mqtt_cert_file", missing}},
		{name: "key of another certificate", serverCert: files.ServerCert, cert: "client.pem", key: "server-key.pem", want: []string{"local_mqtt_key_file", "private key does not match"}},
		{name: "signed by another CA", serverCert: files.ServerCert, client: files.CA, cert: other.ClientCert, key: other.ClientKey,
			want: []string{"local_mqtt_cert_file", other.ClientCert, "tls_client_ca_file", files.CA}},
		{name: "a server certificate", serverCert: files.ServerCert, client: files.CA, cert: "server.pem", key: "server-key.pem",
			want: []string{"local_mqtt_cert_file", "tls_client_ca_file"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := jormungandr.DefaultConfig()
			cfg.LocalMQTTCertFile, cfg.LocalMQTTKeyFile = tc.cert, tc.key
			tlsCfg, err := cfg.LocalMQTTTLS(tc.serverCert, tc.client, dir)
			if len(tc.want) == 0 {
				if err != nil || tlsCfg == nil || tlsCfg.RootCAs == nil || len(tlsCfg.Certificates) != btoi(tc.cert != "") {
					t.Fatalf("got %+v, %v, want roots and %d certificate(s)", tlsCfg, err, btoi(tc.cert != ""))
				}
				return
			}
			if !errors.Is(err, jormungandr.ErrConfig) {
				t.Fatalf("got %v, want ErrConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestLocalMQTTTLSValidate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*jormungandr.Config)
		key    string
	}{
		{"cert without key", func(c *jormungandr.Config) { c.LocalMQTTCertFile = "c.pem" }, "local_mqtt_key_file"},
		{"key without cert", func(c *jormungandr.Config) { c.LocalMQTTKeyFile = "k.pem" }, "local_mqtt_cert_file"},
		{"client certificates without TLS", func(c *jormungandr.Config) {
			c.LocalMQTT = jormungandr.LocalMQTT{Addr: "127.0.0.1:1883", Login: func([]string) (string, string, error) { return "", "", nil },
				ClientCertRequired: true}
		}, "ClientCertRequired"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := jormungandr.DefaultConfig()
			tc.change(&cfg)
			err := cfg.Validate()
			if !errors.Is(err, jormungandr.ErrConfig) || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("got %v, want an ErrConfig naming %s", err, tc.key)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// writeCat writes the contents of files, one after another, to path.
func writeCat(t *testing.T, path string, files ...string) {
	t.Helper()
	var all []byte
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	if err := os.WriteFile(path, all, 0o600); err != nil {
		t.Fatal(err)
	}
}
