package gateway_test

import (
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/loki-iot/loki/gateway"
)

func TestConfigValidate(t *testing.T) {
	ok := gateway.DefaultConfig()
	tests := []struct {
		name    string
		edit    func(c *gateway.Config)
		wantErr string
	}{
		{name: "default", edit: func(*gateway.Config) {}},
		{name: "tokens and TLS", edit: func(c *gateway.Config) {
			c.Tokens = []string{"a", "b"}
			c.TLSCertFile, c.TLSKeyFile = "c.pem", "k.pem"
		}},
		{name: "empty token", edit: func(c *gateway.Config) { c.Tokens = []string{"a", ""} }, wantErr: "tokens[1]"},
		{name: "token with space", edit: func(c *gateway.Config) { c.Tokens = []string{"a b"} }, wantErr: "tokens[0]"},
		{name: "cert without key", edit: func(c *gateway.Config) { c.TLSCertFile = "c.pem" }, wantErr: "tls_key_file"},
		{name: "key without cert", edit: func(c *gateway.Config) { c.TLSKeyFile = "k.pem" }, wantErr: "tls_cert_file"},
		{name: "zero window", edit: func(c *gateway.Config) { c.StatusWindow = 0 }, wantErr: "status_window"},
		{name: "huge window", edit: func(c *gateway.Config) { c.StatusWindow = time.Minute }, wantErr: "status_window"},
		{name: "negative shutdown", edit: func(c *gateway.Config) { c.ShutdownTimeout = -1 }, wantErr: "shutdown_timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.edit(&c)
			err := c.Validate()
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("got %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("got %v, want an error naming %s", err, tc.wantErr)
			}
		})
	}
}

func TestConfigTOML(t *testing.T) {
	const src = `
tokens = ["s3cret"]
tls_cert_file = "cert.pem"
tls_key_file = "key.pem"
auth_health_and_reflection = true
status_window = "500ms"
shutdown_timeout = "3s"
`
	cfg := gateway.DefaultConfig()
	md, err := toml.Decode(src, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(md.Undecoded()) > 0 {
		t.Fatalf("undecoded keys %v", md.Undecoded())
	}
	want := gateway.Config{Tokens: []string{"s3cret"}, TLSCertFile: "cert.pem", TLSKeyFile: "key.pem",
		AuthHealthAndReflection: true, StatusWindow: 500 * time.Millisecond, ShutdownTimeout: 3 * time.Second}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got %+v, want %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Error(err)
	}
}
