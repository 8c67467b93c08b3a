package jormungandr_test

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/jormungandr"
)

func TestConfigValidate(t *testing.T) {
	if err := jormungandr.DefaultConfig().Validate(); err != nil {
		t.Fatalf("default config: got %v, want nil", err)
	}
	tests := []struct {
		name   string
		change func(*jormungandr.Config)
		key    string
	}{
		{"workers", func(c *jormungandr.Config) { c.Workers = 0 }, "workers"},
		{"timeouts", func(c *jormungandr.Config) { c.MaxRequestTimeout = c.RequestTimeout - 1 }, "max_request_timeout"},
		{"redirects", func(c *jormungandr.Config) { c.HTTP.MaxRedirects = 21 }, "http.max_redirects"},
		{"idle", func(c *jormungandr.Config) { c.Handles.IdleTimeout = 0 }, "handles.idle_timeout"},
		{"backoff", func(c *jormungandr.Config) { c.Handles.ReconnectMax = c.Handles.ReconnectMin - 1 }, "handles.reconnect_max"},
		{"port", func(c *jormungandr.Config) { c.Policy.AllowPorts = []int{80, 70000} }, "policy.allow_ports[1]"},
		{"host", func(c *jormungandr.Config) { c.Policy.AllowHosts = []string{"ok.example", "bad host"} }, "policy.allow_hosts[1]"},
		{"numeric host", func(c *jormungandr.Config) { c.Policy.AllowHosts = []string{"2130706433"} }, "policy.allow_hosts[0]"},
		{"host port", func(c *jormungandr.Config) { c.Policy.AllowHosts = []string{"example.com:0"} }, "policy.allow_hosts[0]"},
		{"mapped address", func(c *jormungandr.Config) { c.Policy.AllowHosts = []string{"::ffff:127.0.0.1"} }, "policy.allow_hosts[0]"},
		{"cidr", func(c *jormungandr.Config) { c.Policy.AllowCIDRs = []string{"10.0.0.0/33"} }, "policy.allow_cidrs[0]"},
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

func TestConfigTOML(t *testing.T) {
	cfg := jormungandr.DefaultConfig()
	md, err := toml.Decode(`
request_timeout = "5s"
[http]
max_redirects = 2
[handles]
idle_timeout = "1m"
[policy]
allow_hosts = ["api.example.com", "*.example.org", "192.0.2.7:8443"]
allow_cidrs = ["10.1.0.0/16"]
allow_ports = [443]
`, &cfg)
	if err != nil || len(md.Undecoded()) != 0 {
		t.Fatalf("got %v, undecoded %v", err, md.Undecoded())
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		url  string
		want fault.Code
	}{
		{"https://api.example.com/", ""},
		{"https://API.Example.com./", ""},
		{"http://api.example.com/", fault.PermissionDenied}, // port 80 not listed
		{"https://a.b.example.org/", ""},
		{"https://example.org/", fault.PermissionDenied},
		{"https://192.0.2.7:8443/", ""},
		{"https://192.0.2.7/", fault.PermissionDenied},
		{"https://10.1.2.3/", ""},
		{"https://10.2.0.1/", fault.PermissionDenied},
		{"https://other.example.net/", fault.PermissionDenied},
	}
	for _, tc := range tests {
		_, _, err := jormungandr.CheckHTTPURL(cfg.Policy, tc.url)
		if fault.CodeOf(err) != tc.want {
			t.Errorf("%s: got %v, want code %q", tc.url, err, tc.want)
		}
	}
}

func TestDialedAddr(t *testing.T) {
	p := jormungandr.Policy{AllowHosts: []string{"*", "127.0.0.1:1883"}, AllowCIDRs: []string{"10.9.0.0/16"}, AllowPorts: []int{443}}
	tests := []struct {
		addr string
		port int
		want fault.Code
	}{
		{"93.184.215.14", 443, ""},
		{"127.0.0.1", 1883, ""},
		{"::ffff:127.0.0.1", 1883, ""}, // the same address, as a dual-stack socket reports it
		{"127.0.0.1", 443, fault.PermissionDenied},
		{"::1", 1883, fault.PermissionDenied},
		{"10.9.1.1", 443, ""},
		{"10.8.1.1", 443, fault.PermissionDenied},
		{"192.168.1.1", 443, fault.PermissionDenied},
		{"169.254.169.254", 443, fault.PermissionDenied},
		{"fe80::1", 443, fault.PermissionDenied},
		{"fd00:ec2::254", 443, fault.PermissionDenied},
		{"100.64.0.1", 443, fault.PermissionDenied},
		{"64:ff9b::7f00:1", 443, fault.PermissionDenied},
		{"0.0.0.0", 443, fault.PermissionDenied},
		{"224.0.0.1", 443, fault.PermissionDenied},
	}
	for _, tc := range tests {
		err := jormungandr.CheckDialedAddr(p, netip.MustParseAddr(tc.addr), tc.port)
		if fault.CodeOf(err) != tc.want {
			t.Errorf("%s port %d: got %v, want code %q", tc.addr, tc.port, err, tc.want)
		}
	}
}

func TestAllowUnspecified(t *testing.T) {
	var p jormungandr.Policy
	if err := p.AllowAddr("0.0.0.0:1883"); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"127.0.0.1", "::1"} {
		if err := jormungandr.CheckDialedAddr(p, netip.MustParseAddr(a), 1883); err != nil {
			t.Errorf("%s: got %v, want allowed", a, err)
		}
	}
	if err := p.AllowAddr("nonsense"); !errors.Is(err, jormungandr.ErrConfig) {
		t.Fatalf("got %v, want ErrConfig", err)
	}
}
