package client_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/client"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// tlsListener accepts TLS connections with a self-signed certificate and
// completes their handshakes, as a gateway with TLS would.
func tlsListener(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_ = c.(*tls.Conn).Handshake()
			}()
		}
	}()
	return lis.Addr().String()
}

func TestPlaintextAgainstTLSHints(t *testing.T) {
	addr := tlsListener(t)
	c, err := client.Dial(addr, client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, call := range []struct {
		name string
		do   func() error
	}{
		{"unary", func() error { _, _, err := c.Execute(ctx, "add", nil); return err }},
		{"stream", func() error { _, _, err := c.Stream(ctx, "add", nil, nil); return err }},
	} {
		err := call.do()
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("%s: got %v, want UNAVAILABLE", call.name, err)
		}
		if want := "the gateway at " + addr + " may require TLS: pass --ca-file"; !strings.Contains(err.Error(), want) {
			t.Fatalf("%s: got %v, want it to say %q", call.name, err, want)
		}
	}
}
