package natsrv_test

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natsrv/tlstest"
	"github.com/nats-io/nats.go"
)

// startTLS starts a server with TLS on the client port and the MQTT
// listener, requiring client certificates when clientCA is true.
func startTLS(t *testing.T, files tlstest.Files, clientCA bool, cfg natsrv.Config) *natsrv.Server {
	t.Helper()
	cfg.TLS = &natsrv.TLSConfig{CertFile: files.ServerCert, KeyFile: files.ServerKey}
	if clientCA {
		cfg.TLS.ClientCAFile = files.CA
	}
	cfg.DataDir, cfg.Port, cfg.MQTTPort = t.TempDir(), -1, -1
	s, err := natsrv.Start(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Shutdown)
	return s
}

// roundTrip checks that nc really works: a request answered by itself.
func roundTrip(t *testing.T, nc *nats.Conn) {
	t.Helper()
	sub, err := nc.Subscribe("tls.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	m, err := nc.Request("tls.echo", []byte("hi"), 2*time.Second)
	if err != nil || string(m.Data) != "hi" {
		t.Fatalf("request over TLS: got %v, %v", m, err)
	}
}

func TestTLSClientPort(t *testing.T) {
	files := tlstest.Write(t, t.TempDir())
	s := startTLS(t, files, false, natsrv.Config{})
	if !strings.HasPrefix(s.ClientURL(), "tls://") || !strings.HasPrefix(s.MQTTURL(), "ssl://") {
		t.Fatalf("got %s and %s, want tls:// and ssl:// URLs", s.ClientURL(), s.MQTTURL())
	}
	hostPort := strings.TrimPrefix(s.ClientURL(), "tls://")

	t.Run("plaintext client refused", func(t *testing.T) {
		c, err := net.Dial("tcp", hostPort)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		r := bufio.NewReader(c)
		info, err := r.ReadString('\n')
		if err != nil || !strings.Contains(info, `"tls_required":true`) {
			t.Fatalf("INFO: got %q, %v; want tls_required", info, err)
		}
		if _, err := c.Write([]byte("CONNECT {}\r\nPING\r\n")); err != nil {
			t.Fatal(err)
		}
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if line, err := r.ReadString('\n'); err == nil && strings.HasPrefix(line, "PONG") {
			t.Fatalf("a plaintext client got %q, want the connection closed", line)
		}
		// nats.go upgrades to TLS on its own, but must not trust an unknown CA.
		if nc, err := nats.Connect("nats://" + hostPort); err == nil {
			nc.Close()
			t.Fatal("a client that does not trust the CA connected")
		}
	})
	t.Run("client trusting the CA", func(t *testing.T) {
		nc, err := nats.Connect(s.ClientURL(), nats.RootCAs(files.CA))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		if !nc.TLSRequired() {
			t.Error("connection does not report TLS")
		}
		roundTrip(t, nc)
	})
	t.Run("in-process connection unaffected", func(t *testing.T) {
		nc, err := s.Connect("in-process")
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		roundTrip(t, nc)
	})
}

func TestTLSClientCertificates(t *testing.T) {
	files := tlstest.Write(t, t.TempDir())
	s := startTLS(t, files, true, natsrv.Config{})
	tests := []struct {
		name   string
		opts   []nats.Option
		wantOK bool
	}{
		{"no certificate", []nats.Option{nats.RootCAs(files.CA)}, false},
		{"server certificate is no client certificate", []nats.Option{nats.RootCAs(files.CA), nats.ClientCert(files.ServerCert, files.ServerKey)}, false},
		{"client certificate", []nats.Option{nats.RootCAs(files.CA), nats.ClientCert(files.ClientCert, files.ClientKey)}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := nats.Connect(s.ClientURL(), append(tc.opts, nats.Timeout(3*time.Second))...)
			if got := err == nil; got != tc.wantOK {
				t.Fatalf("connected: got %v (%v), want %v", got, err, tc.wantOK)
			}
			if err == nil {
				defer nc.Close()
				roundTrip(t, nc)
			}
		})
	}
	nc, err := s.Connect("in-process")
	if err != nil {
		t.Fatalf("in-process connection with client certificates required: %v", err)
	}
	nc.Close()
}

// TestTLSMQTT: a device logs in over TLS with the credential `loki auth
// add-device` would give it, added while the server runs (a reload of the
// users must keep TLS working).
func TestTLSMQTT(t *testing.T) {
	for _, clientCA := range []bool{false, true} {
		name := "server certificate only"
		if clientCA {
			name = "client certificate required"
		}
		t.Run(name, func(t *testing.T) {
			files := tlstest.Write(t, t.TempDir())
			authority, err := auth.Open(filepath.Join(t.TempDir(), "auth"))
			if err != nil {
				t.Fatal(err)
			}
			defer authority.Close()
			nkeys, users, err := authority.ServerUsers()
			if err != nil {
				t.Fatal(err)
			}
			s := startTLS(t, files, clientCA, natsrv.Config{Nkeys: nkeys, Users: users})
			authority.OnChange(s.SetUsers)
			cred, err := authority.AddDevice("d1")
			if err != nil {
				t.Fatal(err)
			}
			attempt := 0
			connect := func(tc *tls.Config) error {
				// A new client id each time: the server jails a client id
				// that reconnects within a second.
				attempt++
				o := mqtt.NewClientOptions().AddBroker(s.MQTTURL()).SetClientID(fmt.Sprintf("d1-%d", attempt)).
					SetUsername(cred.Username).SetPassword(cred.Password).
					SetProtocolVersion(4).SetTLSConfig(tc).SetAutoReconnect(false).
					SetConnectTimeout(5 * time.Second)
				c := mqtt.NewClient(o)
				tok := c.Connect()
				if !tok.WaitTimeout(10 * time.Second) {
					return os.ErrDeadlineExceeded
				}
				if err := tok.Error(); err != nil {
					return err
				}
				defer c.Disconnect(100)
				pub := c.Publish("jotunheim/d1/status", 1, false, "online")
				if !pub.WaitTimeout(5 * time.Second) {
					return os.ErrDeadlineExceeded
				}
				return pub.Error()
			}
			if err := connect(files.ClientConfig(t, true)); err != nil {
				t.Fatalf("MQTT over TLS with a device login: %v", err)
			}
			err = connect(files.ClientConfig(t, false))
			t.Logf("without a client certificate: %v", err)
			if clientCA && err == nil {
				t.Fatal("an MQTT client without a certificate connected")
			}
			if !clientCA && err != nil {
				t.Fatalf("MQTT over TLS without a client certificate: %v", err)
			}
			if err := connect(&tls.Config{MinVersion: tls.VersionTLS12}); err == nil {
				t.Fatal("an MQTT client that does not trust the CA connected")
			}
		})
	}
}

func TestTLSLoadNamesTheFile(t *testing.T) {
	files := tlstest.Write(t, t.TempDir())
	missing := filepath.Join(t.TempDir(), "nope.pem")
	tests := []struct {
		name string
		cfg  natsrv.TLSConfig
		want string
	}{
		{"missing key", natsrv.TLSConfig{CertFile: files.ServerCert, KeyFile: missing}, missing},
		{"key of another certificate", natsrv.TLSConfig{CertFile: files.ServerCert, KeyFile: files.ClientKey}, "private key does not match"},
		{"missing client CA", natsrv.TLSConfig{CertFile: files.ServerCert, KeyFile: files.ServerKey, ClientCAFile: missing}, missing},
		{"no key", natsrv.TLSConfig{CertFile: files.ServerCert}, "both a certificate and a key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.cfg.Load()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error mentioning %q", err, tc.want)
			}
		})
	}
}
