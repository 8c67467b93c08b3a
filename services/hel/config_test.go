package hel_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/hel"
)

func TestConfigValidate(t *testing.T) {
	if err := hel.DefaultConfig("/var/lib/loki").Validate(); err != nil {
		t.Fatalf("default config: got %v, want nil", err)
	}
	tests := []struct {
		name    string
		change  func(*hel.Config)
		wantKey string
	}{
		{"no workers", func(c *hel.Config) { c.Workers = 0 }, "workers"},
		{"bad storage", func(c *hel.Config) { c.Storage = "disk" }, "storage"},
		{"too many replicas", func(c *hel.Config) { c.Replicas = 7 }, "replicas"},
		{"zero kv quota", func(c *hel.Config) { c.KV.MaxBytes = 0 }, "kv.max_bytes"},
		{"history over 64", func(c *hel.Config) { c.KV.History = 65 }, "kv.history"},
		{"short marker ttl", func(c *hel.Config) { c.KV.LimitMarkerTTL = time.Millisecond }, "kv.limit_marker_ttl"},
		{"tiny chunk", func(c *hel.Config) { c.Objects.ChunkSize = 10 }, "objects.chunk_size"},
		{"no files root", func(c *hel.Config) { c.Files.Root = "" }, "files.root"},
		{"cache max below default", func(c *hel.Config) { c.Cache.MaxTTL = time.Second }, "cache.max_ttl"},
		{"bad bucket override name", func(c *hel.Config) { c.KV.Buckets = map[string]hel.Quota{"a.b": {MaxBytes: 1}} }, "kv.buckets.a.b"},
		{"zero namespace quota", func(c *hel.Config) { c.Files.Namespaces = map[string]hel.Quota{"ns": {}} }, "files.namespaces.ns.max_bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := hel.DefaultConfig("/data")
			tc.change(&cfg)
			err := cfg.Validate()
			if !errors.Is(err, hel.ErrConfig) || !strings.Contains(err.Error(), tc.wantKey) {
				t.Fatalf("got %v, want an ErrConfig naming %s", err, tc.wantKey)
			}
		})
	}
}

// TestConfigTOML decodes a config the way cmd does: over DefaultConfig, so
// omitted keys keep their defaults.
func TestConfigTOML(t *testing.T) {
	cfg := hel.DefaultConfig("/data")
	md, err := toml.Decode(`
workers = 4
request_timeout = "2s"
[kv]
max_bytes = 1048576
[kv.buckets.sensors]
max_bytes = 4096
[objects]
chunk_size = 65536
[files]
root = "/srv/hel"
[cache]
default_ttl = "30s"
`, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		t.Fatalf("undecoded keys %v", und)
	}
	def := hel.DefaultConfig("/data")
	if cfg.Workers != 4 || cfg.RequestTimeout != 2*time.Second || cfg.KV.MaxBytes != 1<<20 ||
		cfg.KV.Buckets["sensors"].MaxBytes != 4096 || cfg.Objects.ChunkSize != 64<<10 ||
		cfg.Files.Root != "/srv/hel" || cfg.Cache.DefaultTTL != 30*time.Second {
		t.Fatalf("got %+v, want the TOML values", cfg)
	}
	if cfg.KV.History != def.KV.History || cfg.Cache.MaxTTL != def.Cache.MaxTTL {
		t.Fatalf("omitted keys: got history %d max_ttl %s, want the defaults", cfg.KV.History, cfg.Cache.MaxTTL)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestNewRefusesChunksOverMaxPayload(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	cfg := hel.DefaultConfig(t.TempDir())
	cfg.Objects.ChunkSize = int(nc.MaxPayload())
	if _, err := hel.New(cfg, nc, nil); !errors.Is(err, hel.ErrConfig) {
		t.Fatalf("got %v, want ErrConfig", err)
	}
}
