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
		{name: "client and admin tokens", edit: func(c *gateway.Config) {
			c.Tokens = []string{"a", "b"}
			c.AdminTokens = []string{"c"}
		}},
		{name: "admin tokens only", edit: func(c *gateway.Config) { c.AdminTokens = []string{"c"} }},
		{name: "empty token", edit: func(c *gateway.Config) { c.Tokens = []string{"a", ""} }, wantErr: "tokens[1]: empty"},
		{name: "token with space", edit: func(c *gateway.Config) { c.Tokens = []string{"a b"} }, wantErr: "tokens[0]"},
		{name: "token with tab", edit: func(c *gateway.Config) { c.Tokens = []string{"a\tb"} }, wantErr: "tokens[0]"},
		{name: "token with no-break space", edit: func(c *gateway.Config) { c.Tokens = []string{"a\u00a0b"} }, wantErr: "tokens[0]"},
		{name: "empty admin token", edit: func(c *gateway.Config) { c.AdminTokens = []string{"a", ""} }, wantErr: "admin_tokens[1]: empty"},
		{name: "admin token with space", edit: func(c *gateway.Config) { c.AdminTokens = []string{" a"} }, wantErr: "admin_tokens[0]"},
		{name: "token in both lists", edit: func(c *gateway.Config) {
			c.Tokens = []string{"a", "b"}
			c.AdminTokens = []string{"c", "b"}
		}, wantErr: "admin_tokens[1]: the same token is tokens[1]"},
		{name: "cert without key", edit: func(c *gateway.Config) { c.TLSCertFile = "c.pem" }, wantErr: "tls_key_file"},
		{name: "key without cert", edit: func(c *gateway.Config) { c.TLSKeyFile = "k.pem" }, wantErr: "tls_cert_file"},
		{name: "zero window", edit: func(c *gateway.Config) { c.StatusWindow = 0 }, wantErr: "status_window"},
		{name: "huge window", edit: func(c *gateway.Config) { c.StatusWindow = time.Minute }, wantErr: "status_window"},
		{name: "negative shutdown", edit: func(c *gateway.Config) { c.ShutdownTimeout = -1 }, wantErr: "shutdown_timeout"},
		{name: "device calls", edit: func(c *gateway.Config) { c.DeviceCalls = []string{"kitchen_*", "add"} }},
		{name: "empty device call pattern", edit: func(c *gateway.Config) { c.DeviceCalls = []string{"add", ""} }, wantErr: "device_calls[1]: empty"},
		{name: "bad device call pattern", edit: func(c *gateway.Config) { c.DeviceCalls = []string{"[a-"} }, wantErr: "device_calls[0]"},
		{name: "frame too large", edit: func(c *gateway.Config) { c.DeviceMaxFrameBytes = 2 << 20 }, wantErr: "device_max_frame_bytes"},
		{name: "negative frame", edit: func(c *gateway.Config) { c.DeviceMaxFrameBytes = -1 }, wantErr: "device_max_frame_bytes"},
		{name: "keepalive too short", edit: func(c *gateway.Config) { c.Keepalive = time.Millisecond }, wantErr: "keepalive"},
		{name: "reverify too often", edit: func(c *gateway.Config) { c.DeviceReverify = time.Millisecond }, wantErr: "device_reverify"},
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
admin_tokens = ["adm1n", "adm2n"]
tls_cert_file = "cert.pem"
tls_key_file = "key.pem"
auth_health_and_reflection = true
status_window = "500ms"
shutdown_timeout = "3s"
device_max_frame_bytes = 65536
device_reverify = "30s"
keepalive = "20s"
keepalive_timeout = "5s"
`
	cfg := gateway.DefaultConfig()
	md, err := toml.Decode(src, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(md.Undecoded()) > 0 {
		t.Fatalf("undecoded keys %v", md.Undecoded())
	}
	want := gateway.Config{Tokens: []string{"s3cret"}, AdminTokens: []string{"adm1n", "adm2n"}, TLSCertFile: "cert.pem", TLSKeyFile: "key.pem",
		AuthHealthAndReflection: true, StatusWindow: 500 * time.Millisecond, ShutdownTimeout: 3 * time.Second,
		DeviceMaxFrameBytes: 64 << 10, DeviceReverify: 30 * time.Second, Keepalive: 20 * time.Second, KeepaliveTimeout: 5 * time.Second}
	if !reflect.DeepEqual(cfg, want) {
		t.Errorf("got %+v, want %+v", cfg, want)
	}
	if err := cfg.Validate(); err != nil {
		t.Error(err)
	}
}

func TestConfigErrorsHideTokens(t *testing.T) {
	c := gateway.DefaultConfig()
	c.Tokens = []string{"shared-s3cret"}
	c.AdminTokens = []string{"shared-s3cret"}
	err := c.Validate()
	if err == nil {
		t.Fatal("got nil, want an error")
	}
	if strings.Contains(err.Error(), "shared-s3cret") {
		t.Errorf("got %q, want an error that does not show the token", err)
	}
}
