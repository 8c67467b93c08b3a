package grpclink_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/jotunheim/grpclink"
	"github.com/loki-iot/loki/internal/natsrv/tlstest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Over TLS the agent's config is enough: ca_file trusts the gateway,
// cert_file and key_file answer a gateway that asks for a client
// certificate, and the login rides along.
func TestTLSFromTheAgentsConfig(t *testing.T) {
	files := tlstest.Write(t, t.TempDir())
	pem, err := os.ReadFile(files.CA)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	cert, err := tls.LoadX509KeyPair(files.ServerCert, files.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	g := startGateway(t, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert},
		ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12})))

	dir := t.TempDir()
	conf := filepath.Join(dir, "dev.toml")
	data := "[device]\nid = \"d1\"\n[transport]\nkind = \"grpc\"\ngateway = \"" + g.addr + "\"\n" +
		"ca_file = \"" + files.CA + "\"\ncert_file = \"" + files.ClientCert + "\"\nkey_file = \"" + files.ClientKey + "\"\n" +
		"password = \"" + login.Password + "\"\nusername = \"" + login.Username + "\"\n[board]\nsim = true\n"
	if err := os.WriteFile(conf, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := jotunheim.LoadConfig(conf)
	if err != nil {
		t.Fatal(err)
	}
	lc, err := grpclink.FromAgent(cfg, testLog())
	if err != nil {
		t.Fatal(err)
	}
	tr, err := grpclink.New(lc)
	if err != nil {
		t.Fatal(err)
	}
	lost := make(chan error, 1)
	conn, err := tr.Connect(context.Background(), jotunheim.Message{}, func(err error) { lost <- err })
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect(time.Second)
	if err := wait(t, conn.Publish("jotunheim/d1/status", 1, true, []byte("online"))); err != nil {
		t.Fatal(err)
	}
	g.frame(0, "status", nil)
	g.mu.Lock()
	p, _ := peer.FromContext(g.cur.Context())
	g.mu.Unlock()
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 || ti.State.PeerCertificates[0].Subject.CommonName != "loki-test-client" {
		t.Fatalf("the gateway saw %v, want the client certificate", p.AuthInfo)
	}
	select {
	case err := <-lost:
		t.Fatalf("lost: %v", err)
	default:
	}
}
