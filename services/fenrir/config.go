package fenrir

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/metrics"
)

// Config configures a Fenrir instance. It decodes from TOML (the keys are
// the toml tags); start from DefaultConfig so omitted keys keep their
// defaults. The boards an instance serves come from their own file (see
// hardware.LoadBoards) or hardware.SimBoardConfig.
type Config struct {
	// Metrics, when not nil, receives the service's request counts and
	// latencies (see docs/METRICS.md). Wiring, not TOML.
	Metrics *metrics.Registry `toml:"-"`
	// Boards are the boards this instance owns and serves; at least one.
	Boards []hardware.BoardConfig `toml:"-"`
	// OpenBoard returns the Board for a board's config; nil means
	// hardware.OpenBoard (by backend). Tests use it to keep hold of a
	// hardware.SimBoard.
	OpenBoard func(hardware.BoardConfig) (hardware.Board, error) `toml:"-"`

	// Workers is how many requests of one kind (one subject of one board)
	// run at once; Queue how many more may wait before RESOURCE_EXHAUSTED.
	// Writes to one pin are serialized whatever Workers is.
	Workers int `toml:"workers"`
	Queue   int `toml:"queue"`
	// RequestTimeout bounds a request that carries no Fenrir-Timeout header;
	// MaxRequestTimeout caps the header.
	RequestTimeout    time.Duration `toml:"request_timeout"`
	MaxRequestTimeout time.Duration `toml:"max_request_timeout"`
	// MaxEdgeWait caps the timeout of one gpio.wait.
	MaxEdgeWait time.Duration `toml:"max_edge_wait"`
	// DrainTimeout bounds how long Run waits for running requests at shutdown.
	DrainTimeout time.Duration `toml:"drain_timeout"`
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	n := runtime.GOMAXPROCS(0)
	return Config{
		Workers:           4 * n,
		Queue:             64 * n,
		RequestTimeout:    5 * time.Second,
		MaxRequestTimeout: 10 * time.Minute,
		MaxEdgeWait:       10 * time.Minute,
		DrainTimeout:      10 * time.Second,
	}
}

// ErrConfig is wrapped by every error of Validate. Errors of loading a
// boards file wrap hardware.ErrConfig instead.
var ErrConfig = errors.New("invalid fenrir config")

// Validate reports the first unusable setting, naming its TOML key, and
// the first invalid board.
func (c Config) Validate() error {
	if len(c.Boards) == 0 {
		return fmt.Errorf("%w: no boards to serve", ErrConfig)
	}
	seen := map[string]bool{}
	for _, b := range c.Boards {
		if err := b.Validate(); err != nil {
			return fmt.Errorf("%w: board %q: %v", ErrConfig, b.Name, err)
		}
		if seen[b.Name] {
			return fmt.Errorf("%w: board %q: defined twice", ErrConfig, b.Name)
		}
		seen[b.Name] = true
	}
	for _, k := range []struct {
		ok   bool
		key  string
		v    any
		want string
	}{
		{c.Workers >= 1, "workers", c.Workers, "must be at least 1"},
		{c.Queue >= 0, "queue", c.Queue, "must not be negative"},
		{c.RequestTimeout > 0, "request_timeout", c.RequestTimeout, "must be positive"},
		{c.MaxRequestTimeout >= c.RequestTimeout, "max_request_timeout", c.MaxRequestTimeout, "must be at least request_timeout"},
		{c.MaxEdgeWait > 0, "max_edge_wait", c.MaxEdgeWait, "must be positive"},
		{c.DrainTimeout > 0, "drain_timeout", c.DrainTimeout, "must be positive"},
	} {
		if !k.ok {
			return fmt.Errorf("%w: %s = %v: %s", ErrConfig, k.key, k.v, k.want)
		}
	}
	return nil
}
