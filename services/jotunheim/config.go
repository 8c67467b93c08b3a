package jotunheim

import (
	"errors"
	"fmt"
	"path"
	"runtime"
	"strings"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/metrics"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
)

// Config configures a device service replica. It decodes from TOML (the
// keys are the toml tags); start from DefaultConfig so omitted keys keep
// their defaults.
type Config struct {
	// Metrics, when not nil, receives the service's request counts and
	// latencies and its count of refused device messages. Wiring, not TOML.
	Metrics *metrics.Registry `toml:"-"`

	// HeartbeatMisses is how many heartbeat periods (the manifest's
	// heartbeat_seconds) may pass without any message from a device before
	// it is marked offline ("heartbeat missed").
	HeartbeatMisses int `toml:"heartbeat_misses"`
	// CommandTimeout bounds a command whose caller sets no deadline;
	// MaxCommandTimeout caps every command's wait.
	CommandTimeout    time.Duration `toml:"command_timeout"`
	MaxCommandTimeout time.Duration `toml:"max_command_timeout"`
	// CapsTimeout bounds how long devices.caps waits for the device's
	// manifest.
	CapsTimeout time.Duration `toml:"caps_timeout"`
	// DeviceCalls are globs (path.Match syntax: *, ?, [a-z]) of the Loki
	// tools devices may call; empty (the default) lets them call none.
	DeviceCalls []string `toml:"device_calls"`
	// Workers is how many requests of one endpoint other than devices.cmd
	// and devices.caps are handled at once; Queue how many more may wait.
	Workers int `toml:"workers"`
	Queue   int `toml:"queue"`
	// Commands is how many devices.cmd requests may wait for their devices
	// at once, each on a goroutine of its own (a few KiB); Queue more may
	// wait for a turn. A controller switching every device of
	// a fleet at once must fit in it.
	Commands int `toml:"commands"`
	// MessageWorkers is how many device messages are handled at once (each
	// device's in order), and MessageQueue how many more may wait before
	// they are dropped and counted. A fleet reconnecting at once sends a
	// status, a manifest and every state per device within a second.
	MessageWorkers int `toml:"message_workers"`
	MessageQueue   int `toml:"message_queue"`
	// DrainTimeout bounds how long Run waits for running requests at
	// shutdown.
	DrainTimeout time.Duration `toml:"drain_timeout"`
	// Replicas of the registry bucket when it is created (an existing
	// bucket keeps its own); more than 1 needs a JetStream cluster.
	Replicas int `toml:"replicas"`
	// OTAKeys are the public key files ('loki ota keygen') of the
	// operators whose signed releases devices.ota.publish accepts; none
	// refuses every release. loki resolves relative paths against the
	// service config's directory.
	OTAKeys []string `toml:"ota_keys"`
	// OTAChunkBytes is the largest chunk of a binary sent to a device: in
	// protojson's base64 it must stay under a device's 64 KiB message limit.
	OTAChunkBytes int `toml:"ota_chunk_bytes"`
	// OTAMaxReleaseBytes caps a release's binary, which a replica holds in
	// memory while devices download it.
	OTAMaxReleaseBytes int64 `toml:"ota_max_release_bytes"`
}

// MaxOTAChunkBytes is the largest ota_chunk_bytes: its base64 and the
// chunk's other fields fit a device's 64 KiB message.
const MaxOTAChunkBytes = 46 << 10

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	n := runtime.GOMAXPROCS(0)
	return Config{
		HeartbeatMisses:    3,
		CommandTimeout:     10 * time.Second,
		MaxCommandTimeout:  10 * time.Minute,
		CapsTimeout:        5 * time.Second,
		Workers:            4 * n,
		Queue:              64 * n,
		Commands:           1024,
		MessageWorkers:     32 * n,
		MessageQueue:       16384,
		DrainTimeout:       10 * time.Second,
		Replicas:           1,
		OTAChunkBytes:      32 << 10,
		OTAMaxReleaseBytes: 256 << 20,
	}
}

// ErrConfig is wrapped by every error of Validate.
var ErrConfig = errors.New("invalid jotunheim config")

// Validate reports the first unusable setting, naming its TOML key.
func (c Config) Validate() error {
	for _, k := range []struct {
		ok   bool
		key  string
		v    any
		want string
	}{
		{c.HeartbeatMisses >= 1, "heartbeat_misses", c.HeartbeatMisses, "must be at least 1"},
		{c.CommandTimeout > 0, "command_timeout", c.CommandTimeout, "must be positive"},
		{c.MaxCommandTimeout >= c.CommandTimeout, "max_command_timeout", c.MaxCommandTimeout, "must be at least command_timeout"},
		{c.CapsTimeout > 0, "caps_timeout", c.CapsTimeout, "must be positive"},
		{c.Workers >= 1, "workers", c.Workers, "must be at least 1"},
		{c.Queue >= 0, "queue", c.Queue, "must not be negative"},
		{c.Commands >= 1, "commands", c.Commands, "must be at least 1"},
		{c.MessageWorkers >= 1, "message_workers", c.MessageWorkers, "must be at least 1"},
		{c.MessageQueue >= 0, "message_queue", c.MessageQueue, "must not be negative"},
		{c.DrainTimeout > 0, "drain_timeout", c.DrainTimeout, "must be positive"},
		{c.Replicas >= 1 && c.Replicas <= 5, "replicas", c.Replicas, "must be 1 to 5"},
		{c.OTAChunkBytes >= 1 && c.OTAChunkBytes <= MaxOTAChunkBytes, "ota_chunk_bytes", c.OTAChunkBytes, fmt.Sprintf("must be 1 to %d", MaxOTAChunkBytes)},
		{c.OTAMaxReleaseBytes >= 1, "ota_max_release_bytes", c.OTAMaxReleaseBytes, "must be at least 1"},
	} {
		if !k.ok {
			return fmt.Errorf("%w: %s = %v: %s", ErrConfig, k.key, k.v, k.want)
		}
	}
	for i, g := range c.DeviceCalls {
		if g == "" {
			return fmt.Errorf("%w: device_calls[%d]: empty pattern", ErrConfig, i)
		}
		if _, err := path.Match(g, "x"); err != nil {
			return fmt.Errorf("%w: device_calls[%d] = %q: %v", ErrConfig, i, g, err)
		}
	}
	return nil
}

// DeviceMayCall returns nil when tool matches a glob of patterns (the
// device_calls setting), else PERMISSION_DENIED naming the setting. The
// device service checks a device's tool calls with it over MQTT, and the
// gateway a device's calls over gRPC, so one setting means one thing.
func DeviceMayCall(patterns []string, device, tool string) error {
	for _, g := range patterns {
		if ok, _ := path.Match(g, tool); ok {
			return nil
		}
	}
	return fault.New(fault.PermissionDenied,
		"device %s may not call tool %q: it matches no pattern of the device service's device_calls setting", device, tool)
}

// NotAnotherDevicesTool returns PERMISSION_DENIED when def is a tool made
// of another device's entity: device_calls = ["*"] must not let one
// device drive another.
func NotAnotherDevicesTool(device string, def *lokiv1.Tool) error {
	if o := def.GetOwner(); strings.HasPrefix(o, ownerPrefix) && o != owner(device) {
		return fault.New(fault.PermissionDenied, "tool %q belongs to %s: a device may not call another device's tools", def.GetName(), o)
	}
	return nil
}
