package jormungandr

import (
	"errors"
	"fmt"
	"runtime"
	"time"
)

// Config configures a Jormungandr replica. It decodes from TOML (the keys
// are the toml tags); start from DefaultConfig so that omitted keys keep
// their defaults. The default policy allows nothing: list what scripts may
// reach in Policy.
type Config struct {
	// Workers is how many requests of one kind run at once per replica;
	// Queue how many more may wait before RESOURCE_EXHAUSTED.
	Workers int `toml:"workers"`
	Queue   int `toml:"queue"`
	// RequestTimeout bounds a request that carries no Jormungandr-Timeout
	// header; MaxRequestTimeout caps the header.
	RequestTimeout    time.Duration `toml:"request_timeout"`
	MaxRequestTimeout time.Duration `toml:"max_request_timeout"`
	// DrainTimeout bounds how long Run waits for running requests at shutdown.
	DrainTimeout time.Duration `toml:"drain_timeout"`

	HTTP    HTTPConfig    `toml:"http"`
	Handles HandlesConfig `toml:"handles"`
	Policy  Policy        `toml:"policy"`
}

// HTTPConfig configures HTTP requests.
type HTTPConfig struct {
	// MaxRequestBytes caps a request body; MaxResponseBytes a response body,
	// past which the request fails with RESOURCE_EXHAUSTED.
	MaxRequestBytes  int `toml:"max_request_bytes"`
	MaxResponseBytes int `toml:"max_response_bytes"`
	// MaxRedirects is how many redirects one request follows (0: none).
	MaxRedirects int `toml:"max_redirects"`
	// UserAgent is sent when a request sets none.
	UserAgent string `toml:"user_agent"`
}

// HandlesConfig configures WebSocket and MQTT connections.
type HandlesConfig struct {
	// Max is how many connections one replica holds at once.
	Max int `toml:"max"`
	// IdleTimeout closes a connection no call used for this long.
	IdleTimeout time.Duration `toml:"idle_timeout"`
	// MaxMessageBytes caps one message sent or received.
	MaxMessageBytes int `toml:"max_message_bytes"`
	// Buffer is how many received messages a connection keeps until they
	// are read; past it, a WebSocket stops reading and MQTT messages are
	// dropped (QoS 0) as the broker would.
	Buffer int `toml:"buffer"`
	// ReconnectMin and ReconnectMax bound the backoff between redials of a
	// WebSocket opened with reconnect; MaxReconnects is how many redials in
	// a row are tried before the connection is given up.
	ReconnectMin  time.Duration `toml:"reconnect_min"`
	ReconnectMax  time.Duration `toml:"reconnect_max"`
	MaxReconnects int           `toml:"max_reconnects"`
}

// DefaultConfig returns the defaults: an empty policy, which allows no
// destination, and ports 80, 443, 1883 and 8883 for entries that name no port.
func DefaultConfig() Config {
	n := runtime.GOMAXPROCS(0)
	return Config{
		Workers:           16 * n,
		Queue:             128 * n,
		RequestTimeout:    30 * time.Second,
		MaxRequestTimeout: 10 * time.Minute,
		DrainTimeout:      10 * time.Second,
		HTTP: HTTPConfig{
			MaxRequestBytes:  256 << 10,
			MaxResponseBytes: 512 << 10,
			MaxRedirects:     5,
			UserAgent:        "loki-jormungandr/" + Version,
		},
		Handles: HandlesConfig{
			Max:             256,
			IdleTimeout:     5 * time.Minute,
			MaxMessageBytes: 256 << 10,
			Buffer:          256,
			ReconnectMin:    100 * time.Millisecond,
			ReconnectMax:    30 * time.Second,
			MaxReconnects:   10,
		},
		Policy: Policy{AllowPorts: []int{80, 443, 1883, 8883}},
	}
}

// ErrConfig is wrapped by every error of Validate.
var ErrConfig = errors.New("invalid jormungandr config")

// Validate reports the first unusable setting, naming its TOML key.
func (c Config) Validate() error {
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
		{c.HTTP.MaxRequestBytes >= 1, "http.max_request_bytes", c.HTTP.MaxRequestBytes, "must be at least 1"},
		{c.HTTP.MaxResponseBytes >= 1, "http.max_response_bytes", c.HTTP.MaxResponseBytes, "must be at least 1"},
		{c.HTTP.MaxRedirects >= 0 && c.HTTP.MaxRedirects <= 20, "http.max_redirects", c.HTTP.MaxRedirects, "must be 0 to 20"},
		{c.Handles.Max >= 1, "handles.max", c.Handles.Max, "must be at least 1"},
		{c.Handles.IdleTimeout >= time.Millisecond, "handles.idle_timeout", c.Handles.IdleTimeout, "must be at least 1ms"},
		{c.Handles.MaxMessageBytes >= 1, "handles.max_message_bytes", c.Handles.MaxMessageBytes, "must be at least 1"},
		{c.Handles.Buffer >= 1, "handles.buffer", c.Handles.Buffer, "must be at least 1"},
		{c.Handles.ReconnectMin > 0, "handles.reconnect_min", c.Handles.ReconnectMin, "must be positive"},
		{c.Handles.ReconnectMax >= c.Handles.ReconnectMin, "handles.reconnect_max", c.Handles.ReconnectMax, "must be at least handles.reconnect_min"},
		{c.Handles.MaxReconnects >= 0, "handles.max_reconnects", c.Handles.MaxReconnects, "must not be negative"},
	} {
		if !k.ok {
			return fmt.Errorf("%w: %s = %v: %s", ErrConfig, k.key, k.v, k.want)
		}
	}
	_, err := c.Policy.compile()
	return err
}
