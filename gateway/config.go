package gateway

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Config configures the gateway. It is decoded from TOML; zero durations
// take DefaultConfig's values in New.
type Config struct {
	// Tokens are the accepted bearer tokens. With none, calls need no token;
	// with some, a call without one of them ("authorization: Bearer <token>")
	// is refused with UNAUTHENTICATED.
	Tokens []string `toml:"tokens"`
	// TLSCertFile and TLSKeyFile (PEM) turn on TLS; both or neither.
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
	for i, t := range c.Tokens {
		if t == "" {
			return fmt.Errorf("tokens[%d]: empty token", i)
		}
		if strings.IndexFunc(t, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0 {
			return fmt.Errorf("tokens[%d]: a token may not contain spaces or control characters", i)
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
