package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"syscall"

	"github.com/loki-iot/loki/internal/metrics"
	"github.com/nats-io/nats.go"
)

// defaultMetricsListen is where `loki up` and `loki serve` expose /metrics,
// /healthz and /readyz unless told otherwise: loopback, Prometheus's
// conventional exporter port range.
const defaultMetricsListen = "127.0.0.1:9464"

// metricsListenFlag is --metrics-listen, defaulting to env
// LOKI_METRICS_LISTEN, else defaultMetricsListen.
type metricsListenFlag struct {
	addr     *string
	fs       *flag.FlagSet
	explicit bool
}

func addMetricsFlag(fs *flag.FlagSet) *metricsListenFlag {
	def := envOr("LOKI_METRICS_LISTEN", "")
	f := &metricsListenFlag{fs: fs, explicit: def != ""}
	if def == "" {
		def = defaultMetricsListen
	}
	f.addr = fs.String("metrics-listen", def, `HTTP address of /metrics (Prometheus), /healthz and /readyz; "off" or "" turns it off (env LOKI_METRICS_LISTEN; see docs/METRICS.md)`)
	return f
}

// explicitAddr is the address given with --metrics-listen or env
// LOKI_METRICS_LISTEN (after flag parsing), "" when metrics use the default
// address or are off: only a chosen address is an error when busy.
func (f *metricsListenFlag) explicitAddr() string {
	f.fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "metrics-listen" {
			f.explicit = true
		}
	})
	if !f.explicit || *f.addr == "off" {
		return ""
	}
	return *f.addr
}

// metricsEndpoint is a process's metrics registry and its HTTP server;
// both nil when metrics are off.
type metricsEndpoint struct {
	reg *metrics.Registry
	srv *metrics.Server
	// note says why metrics are off, for the start-up banner.
	note string
}

// start opens the listener (after flag parsing). A busy port given with the
// flag or env is an error naming the flag; the default port busy (another
// loki on this host, or a test run) turns metrics off with a warning instead
// of refusing to start.
func (f *metricsListenFlag) start(log *slog.Logger) (*metricsEndpoint, error) {
	f.fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "metrics-listen" {
			f.explicit = true
		}
	})
	addr := *f.addr
	if addr == "" || addr == "off" {
		return &metricsEndpoint{note: "off (--metrics-listen off)"}, nil
	}
	reg := metrics.New()
	srv, err := metrics.Listen(addr, reg, log)
	if err != nil {
		if !f.explicit && errors.Is(err, syscall.EADDRINUSE) {
			log.Warn("metrics off: the default address is in use; choose another with --metrics-listen", "addr", addr)
			return &metricsEndpoint{note: fmt.Sprintf("off (%s is in use; choose with --metrics-listen)", addr)}, nil
		}
		return nil, fmt.Errorf("--metrics-listen %s: %w", addr, err)
	}
	return &metricsEndpoint{reg: reg, srv: srv}, nil
}

// watchNATS makes readiness depend on nc being connected.
func (m *metricsEndpoint) watchNATS(name string, nc *nats.Conn) {
	m.reg.AddCheck("nats "+name, metrics.NATSConnected(nc))
}

// watchComponents makes readiness depend on each component being ready,
// but for those whose service adds its own check (given the registry in
// its Config: Loki and the gateway).
func (m *metricsEndpoint) watchComponents(comps []component) {
	for _, c := range comps {
		if c.name == "loki" || c.name == "gateway" {
			continue
		}
		m.reg.AddCheck(c.name, metrics.ReadyWhenClosed(c.ready))
	}
}

// close stops the HTTP server, if any.
func (m *metricsEndpoint) close() {
	if m.srv != nil {
		_ = m.srv.Close()
	}
}

// line is the banner's metrics line.
func (m *metricsEndpoint) line() string {
	if m.srv == nil {
		return m.note
	}
	return m.srv.URL() + "/metrics  (/healthz, /readyz)"
}
