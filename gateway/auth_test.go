package gateway_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/gateway"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

func TestAuth(t *testing.T) {
	type call func(t *testing.T, c *client.Client) error
	execute := func(t *testing.T, c *client.Client) error {
		_, _, err := c.Execute(ctxT(t), "add", map[string]any{"a": 1})
		return err
	}
	stream := func(t *testing.T, c *client.Client) error {
		_, _, err := c.Stream(ctxT(t), "count", nil, nil)
		return err
	}
	dynamic := func(t *testing.T, c *client.Client) error {
		// No descriptor needed to be refused; with a token, an empty
		// request reaches Loki and is refused for the missing param.
		err := c.Conn().Invoke(ctxT(t), "/"+gateway.ScriptsService+"/Script_add", &healthpb.HealthCheckRequest{}, &healthpb.HealthCheckResponse{})
		if code := status.Code(err); code == codes.InvalidArgument {
			return nil
		}
		return err
	}
	health := func(t *testing.T, c *client.Client) error {
		_, err := healthpb.NewHealthClient(c.Conn()).Check(ctxT(t), &healthpb.HealthCheckRequest{})
		return err
	}
	reflect := func(t *testing.T, c *client.Client) error {
		_, err := newReflector(t, c.Conn()).services()
		return err
	}
	tests := []struct {
		name     string
		cfg      gateway.Config
		token    string
		call     call
		wantCode codes.Code
	}{
		{name: "no tokens configured", call: execute},
		{name: "no tokens configured, any token", token: "whatever", call: execute},
		{name: "valid token", cfg: gateway.Config{Tokens: []string{"s3cret", "other"}}, token: "s3cret", call: execute},
		{name: "second token", cfg: gateway.Config{Tokens: []string{"s3cret", "other"}}, token: "other", call: execute},
		{name: "no token", cfg: gateway.Config{Tokens: []string{"s3cret"}}, call: execute, wantCode: codes.Unauthenticated},
		{name: "wrong token", cfg: gateway.Config{Tokens: []string{"s3cret"}}, token: "s3cre", call: execute, wantCode: codes.Unauthenticated},
		{name: "token prefix", cfg: gateway.Config{Tokens: []string{"s3cret"}}, token: "s3cretX", call: execute, wantCode: codes.Unauthenticated},
		{name: "stream without token", cfg: gateway.Config{Tokens: []string{"s3cret"}}, call: stream, wantCode: codes.Unauthenticated},
		{name: "stream with token", cfg: gateway.Config{Tokens: []string{"s3cret"}}, token: "s3cret", call: stream},
		{name: "dynamic without token", cfg: gateway.Config{Tokens: []string{"s3cret"}}, call: dynamic, wantCode: codes.Unauthenticated},
		{name: "dynamic with token", cfg: gateway.Config{Tokens: []string{"s3cret"}}, token: "s3cret", call: dynamic},
		{name: "health open by default", cfg: gateway.Config{Tokens: []string{"s3cret"}}, call: health},
		{name: "reflection open by default", cfg: gateway.Config{Tokens: []string{"s3cret"}}, call: reflect},
		{name: "health guarded", cfg: gateway.Config{Tokens: []string{"s3cret"}, AuthHealthAndReflection: true}, call: health, wantCode: codes.Unauthenticated},
		{name: "reflection guarded", cfg: gateway.Config{Tokens: []string{"s3cret"}, AuthHealthAndReflection: true}, call: reflect, wantCode: codes.Unauthenticated},
		{name: "guarded health with token", cfg: gateway.Config{Tokens: []string{"s3cret"}, AuthHealthAndReflection: true}, token: "s3cret", call: health},
		{name: "guarded reflection with client token", cfg: gateway.Config{Tokens: []string{"s3cret"}, AuthHealthAndReflection: true}, token: "s3cret", call: reflect},
		{name: "guarded health with admin token", cfg: gateway.Config{AdminTokens: []string{"adm1n"}, AuthHealthAndReflection: true}, token: "adm1n", call: health},
		{name: "guarded health with no token, admin tokens only", cfg: gateway.Config{AdminTokens: []string{"adm1n"}, AuthHealthAndReflection: true}, call: health, wantCode: codes.Unauthenticated},
		{name: "health open with admin tokens only", cfg: gateway.Config{AdminTokens: []string{"adm1n"}}, call: health},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := start(t, tc.cfg)
			var opts []client.Option
			if tc.token != "" {
				opts = append(opts, client.WithToken(tc.token))
			}
			err := tc.call(t, e.dial(t, opts...))
			if got := status.Code(err); got != tc.wantCode {
				t.Errorf("got %v (%v), want %v", got, err, tc.wantCode)
			}
		})
	}
}

func TestAuthSchemes(t *testing.T) {
	e := start(t, gateway.Config{Tokens: []string{"s3cret"}})
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tests := []struct {
		name   string
		header []string
		want   codes.Code
	}{
		{name: "lower-case scheme", header: []string{"authorization", "bearer s3cret"}, want: codes.OK},
		{name: "basic scheme", header: []string{"authorization", "Basic s3cret"}, want: codes.Unauthenticated},
		{name: "bare token", header: []string{"authorization", "s3cret"}, want: codes.Unauthenticated},
		{name: "one of several values", header: []string{"authorization", "Bearer nope", "authorization", "Bearer s3cret"}, want: codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := metadata.AppendToOutgoingContext(ctxT(t), tc.header...)
			_, err := lokiv1.NewLokiClient(conn).ListScripts(ctx, &lokiv1.ListScriptsRequest{})
			if got := status.Code(err); got != tc.want {
				t.Errorf("got %v (%v), want %v", got, err, tc.want)
			}
		})
	}
}

func TestTLS(t *testing.T) {
	certFile, keyFile := selfSigned(t)
	e := start(t, gateway.Config{TLSCertFile: certFile, TLSKeyFile: keyFile, Tokens: []string{"s3cret"}})

	c, err := client.Dial(e.addr, client.WithCAFile(certFile), client.WithToken("s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, _, err := c.Execute(ctxT(t), "add", map[string]any{"a": 1}); err != nil {
		t.Fatalf("over TLS: %v", err)
	}
	// Untrusted certificate (system roots only) and plaintext both fail.
	for name, opts := range map[string][]client.Option{
		"system roots": nil,
		"plaintext":    {client.WithInsecure()},
	} {
		t.Run(name, func(t *testing.T) {
			c, err := client.Dial(e.addr, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			_, _, err = c.Execute(ctxT(t), "add", map[string]any{"a": 1})
			if got := status.Code(err); got != codes.Unavailable {
				t.Errorf("got %v (%v), want %v", got, err, codes.Unavailable)
			}
		})
	}
}

func TestTLSConfigErrors(t *testing.T) {
	srvNC := start(t, gateway.Config{}).gwConn
	dir := t.TempDir()
	tests := []struct {
		name string
		cfg  gateway.Config
	}{
		{name: "cert without key", cfg: gateway.Config{TLSCertFile: filepath.Join(dir, "c.pem")}},
		{name: "missing files", cfg: gateway.Config{TLSCertFile: filepath.Join(dir, "c.pem"), TLSKeyFile: filepath.Join(dir, "k.pem")}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := gateway.New(tc.cfg, srvNC, quietLog()); err == nil {
				t.Fatal("got nil, want an error")
			}
		})
	}
}

func TestHealthFollowsNATS(t *testing.T) {
	e := start(t, gateway.Config{})
	h := healthpb.NewHealthClient(e.dial(t).Conn())
	for _, svc := range []string{"", lokiv1.Loki_ServiceDesc.ServiceName, lokiv1.Devices_ServiceDesc.ServiceName, gateway.ScriptsService} {
		resp, err := h.Check(ctxT(t), &healthpb.HealthCheckRequest{Service: svc})
		if err != nil {
			t.Fatal(err)
		}
		if got, want := resp.GetStatus(), healthpb.HealthCheckResponse_SERVING; got != want {
			t.Errorf("%q: got %v, want %v", svc, got, want)
		}
	}
	e.gwConn.Close()
	if err := eventually(5*time.Second, func() error {
		resp, err := h.Check(ctxT(t), &healthpb.HealthCheckRequest{})
		if err == nil && resp.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
			err = errors.New("still serving")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
}

// selfSigned writes a certificate and key for 127.0.0.1.
func selfSigned(t *testing.T) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "loki gateway test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}
