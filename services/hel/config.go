package hel

import (
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sort"
	"time"

	"github.com/loki-iot/loki/internal/metrics"
	"github.com/loki-iot/loki/subjects"
)

// Config configures a Hel replica. It decodes from TOML (the keys are the
// toml tags); start from DefaultConfig so that omitted keys keep their
// defaults. Every replica sharing a NATS account should use the same
// KV, Objects and Cache settings: each replica applies them to the buckets
// it touches.
type Config struct {
	// Metrics, when not nil, receives the service's request counts and
	// latencies (see docs/METRICS.md). Wiring, not TOML.
	Metrics *metrics.Registry `toml:"-"`
	// Workers is how many requests of one kind (one subject) run at once per
	// replica; Queue how many more may wait before RESOURCE_EXHAUSTED.
	Workers int `toml:"workers"`
	Queue   int `toml:"queue"`
	// RequestTimeout bounds a request that carries no Hel-Timeout header;
	// MaxRequestTimeout caps the header.
	RequestTimeout    time.Duration `toml:"request_timeout"`
	MaxRequestTimeout time.Duration `toml:"max_request_timeout"`
	// DrainTimeout bounds how long Run waits for running requests at shutdown.
	DrainTimeout time.Duration `toml:"drain_timeout"`
	// Storage is the JetStream storage of Hel's buckets: "file" or "memory".
	Storage string `toml:"storage"`
	// Replicas is the JetStream replica count of Hel's buckets (1 to 5).
	Replicas int `toml:"replicas"`
	// MaxTotalBytes bounds everything Hel stores together: every KV bucket
	// and object bucket (as JetStream counts their bytes) and every file
	// namespace on this replica's disk, however many of them grants without
	// a scope create. A write that would pass it is refused with
	// RESOURCE_EXHAUSTED before any byte moves. The cache is bounded by
	// cache.max_bytes on its own. See "Quotas" in docs/HEL.md.
	MaxTotalBytes int64 `toml:"max_total_bytes"`

	KV      KVConfig      `toml:"kv"`
	Objects ObjectsConfig `toml:"objects"`
	Files   FilesConfig   `toml:"files"`
	Cache   CacheConfig   `toml:"cache"`
}

// Quota overrides the byte quota of one bucket or namespace.
type Quota struct {
	MaxBytes int64 `toml:"max_bytes"`
}

// KVConfig configures the KV buckets. A bucket is created on its first
// write, as JetStream KV bucket subjects.HelKVBucketPrefix+name.
type KVConfig struct {
	// MaxBytes is each bucket's quota (all kept revisions count); a write
	// past it is refused with RESOURCE_EXHAUSTED.
	MaxBytes int64 `toml:"max_bytes"`
	// MaxValueBytes caps one value.
	MaxValueBytes int32 `toml:"max_value_bytes"`
	// History is how many revisions of each key are kept (1 to 64).
	History uint8 `toml:"history"`
	// LimitMarkerTTL is how long the marker of a key removed by its TTL is
	// kept; it enables per-key TTLs (kv.create with a TTL). It is also the
	// shortest per-key TTL: the server raises shorter ones to it (buckets
	// keeping more than one revision), so Hel refuses them. At least 1s.
	LimitMarkerTTL time.Duration `toml:"limit_marker_ttl"`
	// MaxListKeys caps the keys one kv.keys answer lists.
	MaxListKeys int `toml:"max_list_keys"`
	// Buckets overrides the quota of named buckets.
	Buckets map[string]Quota `toml:"buckets"`
}

// ObjectsConfig configures the object buckets, created on first upload as
// object stores subjects.HelObjBucketPrefix+name.
type ObjectsConfig struct {
	// MaxBytes is each bucket's quota.
	MaxBytes int64 `toml:"max_bytes"`
	// ChunkSize is the size of the chunks an object is stored and sent in.
	// It must fit in a NATS message with room for headers.
	ChunkSize int `toml:"chunk_size"`
	// Window is how many chunks of a transfer may be unacknowledged.
	Window int `toml:"window"`
	// IdleTimeout aborts a transfer when the other side sends nothing for this long.
	IdleTimeout time.Duration `toml:"idle_timeout"`
	// Transfers is how many uploads, and separately downloads, run at once per replica.
	Transfers int `toml:"transfers"`
	// MaxTransferTime bounds one transfer that carries no Hel-Timeout.
	MaxTransferTime time.Duration `toml:"max_transfer_time"`
	// MaxList caps the objects one obj.list answer lists.
	MaxList int `toml:"max_list"`
	// Buckets overrides the quota of named buckets.
	Buckets map[string]Quota `toml:"buckets"`
}

// FilesConfig configures file storage: namespace ns lives in Root/ns.
// Files are local to the replica's disk; see docs/HEL.md.
type FilesConfig struct {
	Root string `toml:"root"`
	// MaxBytes is each namespace's quota.
	MaxBytes int64 `toml:"max_bytes"`
	// MaxReadBytes caps one files.read answer; read larger files in ranges.
	MaxReadBytes int `toml:"max_read_bytes"`
	// MaxListEntries caps the entries one files.list answer lists.
	MaxListEntries int `toml:"max_list_entries"`
	// Namespaces overrides the quota of named namespaces.
	Namespaces map[string]Quota `toml:"namespaces"`
}

// CacheConfig configures the shared cache (JetStream KV bucket
// subjects.HelCacheBucket).
type CacheConfig struct {
	// MaxBytes bounds the cache; past it the oldest entries are evicted.
	MaxBytes int64 `toml:"max_bytes"`
	// MaxValueBytes caps one value.
	MaxValueBytes int32 `toml:"max_value_bytes"`
	// ScopeMaxBytes is what the entries of one scope (the part of a key
	// before its first '/') may hold; a scope over it evicts its own oldest
	// entries, never another scope's. 0 means max_bytes / 16 (at least one
	// value of max_value_bytes). At most max_bytes / 2.
	ScopeMaxBytes int64 `toml:"scope_max_bytes"`
	// DefaultTTL applies when cache.set gives no TTL; MaxTTL caps it.
	DefaultTTL time.Duration `toml:"default_ttl"`
	MaxTTL     time.Duration `toml:"max_ttl"`
}

// DefaultConfig returns the defaults, with files under dataDir/hel/files.
func DefaultConfig(dataDir string) Config {
	n := runtime.GOMAXPROCS(0)
	return Config{
		Workers:           8 * n,
		Queue:             128 * n,
		RequestTimeout:    5 * time.Second,
		MaxRequestTimeout: 10 * time.Minute,
		DrainTimeout:      10 * time.Second,
		Storage:           "file",
		Replicas:          1,
		MaxTotalBytes:     4 << 30,
		KV: KVConfig{
			MaxBytes:       64 << 20,
			MaxValueBytes:  512 << 10,
			History:        5,
			LimitMarkerTTL: time.Second,
			MaxListKeys:    10000,
		},
		Objects: ObjectsConfig{
			MaxBytes:        1 << 30,
			ChunkSize:       128 << 10,
			Window:          8,
			IdleTimeout:     30 * time.Second,
			Transfers:       8,
			MaxTransferTime: time.Hour,
			MaxList:         10000,
		},
		Files: FilesConfig{
			Root:           filepath.Join(dataDir, "hel", "files"),
			MaxBytes:       256 << 20,
			MaxReadBytes:   512 << 10,
			MaxListEntries: 10000,
		},
		Cache: CacheConfig{
			MaxBytes:      64 << 20,
			MaxValueBytes: 512 << 10,
			DefaultTTL:    5 * time.Minute,
			MaxTTL:        24 * time.Hour,
		},
	}
}

// ErrConfig is wrapped by every error of Validate.
var ErrConfig = errors.New("invalid hel config")

// Validate reports the first unusable setting, naming its TOML key.
func (c Config) Validate() error {
	bad := func(key string, v any, want string) error {
		return fmt.Errorf("%w: %s = %v: %s", ErrConfig, key, v, want)
	}
	type check struct {
		ok   bool
		key  string
		v    any
		want string
	}
	for _, k := range []check{
		{c.Workers >= 1, "workers", c.Workers, "must be at least 1"},
		{c.Queue >= 0, "queue", c.Queue, "must not be negative"},
		{c.RequestTimeout > 0, "request_timeout", c.RequestTimeout, "must be positive"},
		{c.MaxRequestTimeout >= c.RequestTimeout, "max_request_timeout", c.MaxRequestTimeout, "must be at least request_timeout"},
		{c.DrainTimeout > 0, "drain_timeout", c.DrainTimeout, "must be positive"},
		{c.Storage == "file" || c.Storage == "memory", "storage", c.Storage, `must be "file" or "memory"`},
		{c.Replicas >= 1 && c.Replicas <= 5, "replicas", c.Replicas, "must be 1 to 5"},
		{c.MaxTotalBytes > 0, "max_total_bytes", c.MaxTotalBytes, "must be positive"},
		{c.KV.MaxBytes > 0, "kv.max_bytes", c.KV.MaxBytes, "must be positive"},
		{c.KV.MaxValueBytes > 0 && int64(c.KV.MaxValueBytes) <= c.KV.MaxBytes, "kv.max_value_bytes", c.KV.MaxValueBytes, "must be positive and at most kv.max_bytes"},
		{c.KV.History >= 1 && c.KV.History <= 64, "kv.history", c.KV.History, "must be 1 to 64"},
		{c.KV.LimitMarkerTTL >= time.Second, "kv.limit_marker_ttl", c.KV.LimitMarkerTTL, "must be at least 1s"},
		{c.KV.MaxListKeys >= 1, "kv.max_list_keys", c.KV.MaxListKeys, "must be at least 1"},
		{c.Objects.MaxBytes > 0, "objects.max_bytes", c.Objects.MaxBytes, "must be positive"},
		{c.Objects.ChunkSize >= 1024 && c.Objects.ChunkSize <= 8<<20, "objects.chunk_size", c.Objects.ChunkSize, "must be 1 KiB to 8 MiB"},
		{c.Objects.Window >= 1 && c.Objects.Window <= 1024, "objects.window", c.Objects.Window, "must be 1 to 1024"},
		{c.Objects.IdleTimeout > 0, "objects.idle_timeout", c.Objects.IdleTimeout, "must be positive"},
		{c.Objects.Transfers >= 1, "objects.transfers", c.Objects.Transfers, "must be at least 1"},
		{c.Objects.MaxTransferTime > 0, "objects.max_transfer_time", c.Objects.MaxTransferTime, "must be positive"},
		{c.Objects.MaxList >= 1, "objects.max_list", c.Objects.MaxList, "must be at least 1"},
		{c.Files.Root != "", "files.root", c.Files.Root, "must name a directory"},
		{c.Files.MaxBytes > 0, "files.max_bytes", c.Files.MaxBytes, "must be positive"},
		{c.Files.MaxReadBytes >= 1, "files.max_read_bytes", c.Files.MaxReadBytes, "must be at least 1"},
		{c.Files.MaxListEntries >= 1, "files.max_list_entries", c.Files.MaxListEntries, "must be at least 1"},
		{c.Cache.MaxBytes > 0, "cache.max_bytes", c.Cache.MaxBytes, "must be positive"},
		{c.Cache.MaxValueBytes > 0 && int64(c.Cache.MaxValueBytes) <= c.Cache.MaxBytes, "cache.max_value_bytes", c.Cache.MaxValueBytes, "must be positive and at most cache.max_bytes"},
		{c.Cache.ScopeMaxBytes == 0 || (c.Cache.ScopeMaxBytes >= minScopeBytes(c.Cache) && c.Cache.ScopeMaxBytes <= c.Cache.MaxBytes/2),
			"cache.scope_max_bytes", c.Cache.ScopeMaxBytes, "must be 0 (max_bytes / 16) or hold one value of max_value_bytes, and be at most max_bytes / 2"},
		{c.Cache.DefaultTTL >= time.Millisecond, "cache.default_ttl", c.Cache.DefaultTTL, "must be at least 1ms"},
		{c.Cache.MaxTTL >= c.Cache.DefaultTTL && c.Cache.MaxTTL <= 365*24*time.Hour, "cache.max_ttl", c.Cache.MaxTTL, "must be at least cache.default_ttl and at most 8760h"},
	} {
		if !k.ok {
			return bad(k.key, k.v, k.want)
		}
	}
	for _, q := range []struct {
		table string
		m     map[string]Quota
	}{{"kv.buckets", c.KV.Buckets}, {"objects.buckets", c.Objects.Buckets}, {"files.namespaces", c.Files.Namespaces}} {
		names := make([]string, 0, len(q.m))
		for name := range q.m {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			if err := subjects.ValidHelName(name); err != nil {
				return fmt.Errorf("%w: [%s.%s]: name must be 1 to 64 of [A-Za-z0-9_-]", ErrConfig, q.table, name)
			}
			if q.m[name].MaxBytes <= 0 {
				return bad(q.table+"."+name+".max_bytes", q.m[name].MaxBytes, "must be positive")
			}
		}
	}
	return nil
}

// minScopeBytes is the least a cache scope may hold: one entry of the
// largest value, its key and overhead.
func minScopeBytes(c CacheConfig) int64 {
	return int64(c.MaxValueBytes) + MaxCacheKeyBytes*2 + cacheHeaderLen + cacheEntryOverhead
}

// scopeBudget is ScopeMaxBytes with its default applied.
func (c CacheConfig) scopeBudget() int64 {
	if c.ScopeMaxBytes > 0 {
		return c.ScopeMaxBytes
	}
	return max(c.MaxBytes/16, minScopeBytes(c))
}

// quota returns the quota of name in overrides, or def.
func quota(overrides map[string]Quota, name string, def int64) int64 {
	if q, ok := overrides[name]; ok {
		return q.MaxBytes
	}
	return def
}
