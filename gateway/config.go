package gateway

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/loki-iot/loki/internal/metrics"
)

// Config configures the gateway. It is decoded from TOML; zero durations
// take DefaultConfig's values in New.
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
	// Metrics, when not nil, receives every RPC by method and gRPC code with
	// its duration (docs/METRICS.md), and a readiness check that passes
	// once Ready is closed. Set by the caller, never decoded.
	Metrics *metrics.Registry `toml:"-"`
}

// Limits on configured and requested durations.
const (
	// MaxStatusWindow caps the window of GetChildrenStatus.
	MaxStatusWindow = 10 * time.Second
)

// DefaultConfig is no tokens, no TLS, a 250ms status window and a 10s
// graceful stop.
func DefaultConfig() Config {
	return Config{StatusWindow: 250 * time.Millisecond, ShutdownTimeout: 10 * time.Second}
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
	return c
}
