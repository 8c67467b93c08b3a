package gateway

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/loki-iot/loki/internal/metrics"
)

// Config configures the gateway. It is decoded from TOML; zero durations
// and sizes take DefaultConfig's values in New.
type Config struct {
	// Tokens are the bearer tokens of the client role: a caller holding one
	// may do over gRPC what a client identity may do over NATS (call, list
	// and get tools, read capabilities, watch events, ask for status).
	// AdminTokens are those of the admin role, which may also register and
	// unregister tools. With neither, calls need no token and every caller
	// has the client role; with either, a call without one of them
	// ("authorization: Bearer <token>") is refused with UNAUTHENTICATED.
	// A token may be in one list only.
	Tokens      []string `toml:"tokens"`
	AdminTokens []string `toml:"admin_tokens"`
	// TLSCertFile and TLSKeyFile (PEM) turn on TLS; both or neither. In a
	// loki service config, relative paths are relative to that file, and
	// the pair is loaded when the file is (before anything starts).
	TLSCertFile string `toml:"tls_cert_file"`
	TLSKeyFile  string `toml:"tls_key_file"`
	// AuthHealthAndReflection makes the health and reflection services ask
	// for a token too. Off by default, so load balancers and grpcurl
	// describe work without one.
	AuthHealthAndReflection bool `toml:"auth_health_and_reflection"`
	// StatusWindow is how long GetChildrenStatus collects $SRV.STATS replies
	// when the request sets no window.
	StatusWindow time.Duration `toml:"status_window"`
	// ShutdownTimeout bounds the graceful stop: calls still running after it
	// are cancelled.
	ShutdownTimeout time.Duration `toml:"shutdown_timeout"`
	// DeviceCalls are globs (path.Match syntax) of the tools a device
	// principal (a device login, DeviceLink) may run with ExecuteScript,
	// StreamScriptExecution and the per-tool RPCs; empty lets it run none.
	// Not a [gateway] key: loki sets it from [jotunheim] device_calls, so
	// one setting governs devices on MQTT and on gRPC.
	DeviceCalls []string `toml:"-"`
	// DeviceMaxFrameBytes caps the payload of a frame a device sends on its
	// link; a larger one ends the link with RESOURCE_EXHAUSTED. The default
	// is MaxDeviceFrameBytes, the largest message the MQTT listener passes
	// on, so the platform applies the protocol's own caps (64 KiB, 256 KiB
	// for a manifest) to devices on either transport alike.
	DeviceMaxFrameBytes int `toml:"device_max_frame_bytes"`
	// DeviceReverify is how often a live device link checks its device
	// login again, so that a revoked login ends it (UNAUTHENTICATED). A
	// verified login is also remembered for at most this long (and 10s).
	DeviceReverify time.Duration `toml:"device_reverify"`
	// Keepalive is how long a connection may be idle before the gateway
	// pings it; KeepaliveTimeout how long it waits for the answer before
	// closing the connection. A device link on a connection that stops
	// answering ends with it, and its device goes offline after at most
	// Keepalive + KeepaliveTimeout (default 30s + 10s).
	Keepalive        time.Duration `toml:"keepalive"`
	KeepaliveTimeout time.Duration `toml:"keepalive_timeout"`
	// Metrics, when not nil, receives every RPC by method and gRPC code with
	// its duration (docs/METRICS.md), and a readiness check that passes
	// once Ready is closed. Set by the caller, never decoded.
	Metrics *metrics.Registry `toml:"-"`
}

// Limits on configured and requested durations.
const (
	// MaxStatusWindow caps the window of GetChildrenStatus.
	MaxStatusWindow = 10 * time.Second
	// MaxDeviceFrameBytes caps device_max_frame_bytes: a frame becomes one
	// NATS message, 1 MiB at most by default.
	MaxDeviceFrameBytes = 1 << 20
)

// DefaultConfig is no tokens, no TLS, a 250ms status window, a 10s
// graceful stop, device frames up to the protocol's largest message, and
// device logins checked again every 15s.
func DefaultConfig() Config {
	return Config{StatusWindow: 250 * time.Millisecond, ShutdownTimeout: 10 * time.Second,
		DeviceMaxFrameBytes: MaxDeviceFrameBytes, DeviceReverify: 15 * time.Second,
		Keepalive: 30 * time.Second, KeepaliveTimeout: 10 * time.Second}
}

// Validate reports the first unusable setting. It does not read the TLS
// files; New does.
func (c Config) Validate() error {
	if err := validTokens("tokens", c.Tokens); err != nil {
		return err
	}
	if err := validTokens("admin_tokens", c.AdminTokens); err != nil {
		return err
	}
	for i, a := range c.AdminTokens {
		if j := slices.Index(c.Tokens, a); j >= 0 {
			// The token itself is a secret: name its places, not its value.
			return fmt.Errorf("admin_tokens[%d]: the same token is tokens[%d]; a token has one role", i, j)
		}
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		return errors.New("tls_cert_file and tls_key_file: set both or neither")
	}
	if c.StatusWindow <= 0 || c.StatusWindow > MaxStatusWindow {
		return fmt.Errorf("status_window %s: must be above 0 and at most %s", c.StatusWindow, MaxStatusWindow)
	}
	if c.ShutdownTimeout <= 0 {
		return fmt.Errorf("shutdown_timeout %s: must be positive", c.ShutdownTimeout)
	}
	if c.DeviceMaxFrameBytes < 1 || c.DeviceMaxFrameBytes > MaxDeviceFrameBytes {
		return fmt.Errorf("device_max_frame_bytes %d: must be 1 to %d", c.DeviceMaxFrameBytes, MaxDeviceFrameBytes)
	}
	if c.DeviceReverify < time.Second/10 {
		return fmt.Errorf("device_reverify %s: must be at least 100ms", c.DeviceReverify)
	}
	if c.Keepalive < time.Second || c.KeepaliveTimeout < time.Second {
		return fmt.Errorf("keepalive %s, keepalive_timeout %s: each must be at least 1s", c.Keepalive, c.KeepaliveTimeout)
	}
	// The same rules as [jotunheim] device_calls, whose value this is.
	for i, g := range c.DeviceCalls {
		if g == "" {
			return fmt.Errorf("device_calls[%d]: empty pattern", i)
		}
		if _, err := path.Match(g, "x"); err != nil {
			return fmt.Errorf("device_calls[%d] = %q: %v", i, g, err)
		}
	}
	return nil
}

// validTokens checks the tokens of the list named field.
func validTokens(field string, tokens []string) error {
	for i, t := range tokens {
		if t == "" {
			return fmt.Errorf("%s[%d]: empty token", field, i)
		}
		if strings.IndexFunc(t, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0 {
			return fmt.Errorf("%s[%d]: a token may not contain spaces or control characters", field, i)
		}
	}
	return nil
}

// hasTokens reports whether any token is configured, of either role.
func (c Config) hasTokens() bool { return len(c.Tokens)+len(c.AdminTokens) > 0 }

// withDefaults fills zero durations from DefaultConfig.
func (c Config) withDefaults() Config {
	def := DefaultConfig()
	if c.StatusWindow == 0 {
		c.StatusWindow = def.StatusWindow
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = def.ShutdownTimeout
	}
	if c.DeviceMaxFrameBytes == 0 {
		c.DeviceMaxFrameBytes = def.DeviceMaxFrameBytes
	}
	if c.DeviceReverify == 0 {
		c.DeviceReverify = def.DeviceReverify
	}
	if c.Keepalive == 0 {
		c.Keepalive = def.Keepalive
	}
	if c.KeepaliveTimeout == 0 {
		c.KeepaliveTimeout = def.KeepaliveTimeout
	}
	return c
}
