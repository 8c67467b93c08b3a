// Package metrics is a process's Prometheus registry, its readiness checks
// and the HTTP server that exposes them: /metrics (Prometheus text format),
// /healthz (the process is alive) and /readyz (every registered check
// passes). There is no default registry: cmd/loki builds one Registry per
// process and hands it to the components through their Config, and a nil
// *Registry means no metrics (every method of a nil Registry is a no-op
// returning nil collectors, which the components check once).
//
// The collector sets (Services, Tools, Gateway) are created on first use
// and shared by every component of the process that asks, so two services
// built on internal/microsvc in one process count into the same vectors
// under their own service label instead of failing to register twice.
// docs/METRICS.md lists every metric.
package metrics

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric of Loki's own.
const Namespace = "loki"

// OK is the code label of a request or call that succeeded; failures carry
// their fault code (INVALID_ARGUMENT, ...) or, at the gateway, their gRPC
// code name.
const OK = "OK"

// DurationBuckets are the buckets, in seconds, of every duration histogram:
// from 50µs (a cached call on loopback) to 30s (a tool's longest sensible
// timeout).
var DurationBuckets = []float64{
	0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
	0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
}

// Registry is one process's metrics and readiness checks. Its methods are
// safe for concurrent use; a nil *Registry records nothing.
type Registry struct {
	reg *prometheus.Registry

	mu     sync.Mutex
	checks []check

	servicesOnce sync.Once
	services     *Services
	toolsOnce    sync.Once
	tools        *Tools
	gatewayOnce  sync.Once
	gateway      *Gateway
	devicesOnce  sync.Once
	devices      *Devices
	isolateOnce  sync.Once
	isolation    *Isolation
}

type check struct {
	name string
	fn   func() error
}

// New returns a registry holding the Go runtime and process collectors and
// no readiness checks (so it is ready until a component adds one).
func New() *Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return &Registry{reg: reg}
}

// Prometheus is the underlying registry, for collectors of a component's own
// and for tests that Gather directly.
func (r *Registry) Prometheus() *prometheus.Registry {
	if r == nil {
		return nil
	}
	return r.reg
}

// AddCheck adds a readiness check: /readyz answers 200 only while every
// check returns nil. name appears in /readyz's body next to the error.
func (r *Registry) AddCheck(name string, fn func() error) {
	if r == nil {
		return
	}
	r.mu.Lock()
	r.checks = append(r.checks, check{name: name, fn: fn})
	r.mu.Unlock()
}

// ErrNotReady is wrapped by Ready's error.
var ErrNotReady = errors.New("not ready")

var errStarting = errors.New("starting")

// ReadyWhenClosed is a check that passes once ch is closed, such as a
// service's Ready() channel (closed when its registry is loaded and its
// endpoints serve).
func ReadyWhenClosed(ch <-chan struct{}) func() error {
	return func() error {
		select {
		case <-ch:
			return nil
		default:
			return errStarting
		}
	}
}

// NATSConnected is a check that passes while nc is connected (not
// reconnecting, draining or closed).
func NATSConnected(nc *nats.Conn) func() error {
	return func() error {
		if nc.IsConnected() {
			return nil
		}
		return fmt.Errorf("NATS connection is %s", nc.Status())
	}
}

// Ready runs every check and returns nil when all pass, else an error
// (wrapping ErrNotReady) naming each that failed.
func (r *Registry) Ready() error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	checks := slices.Clone(r.checks)
	r.mu.Unlock()
	var failed []string
	for _, c := range checks {
		if err := c.fn(); err != nil {
			failed = append(failed, c.name+": "+err.Error())
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%w: %s", ErrNotReady, strings.Join(failed, "; "))
	}
	return nil
}

// Handler serves /metrics, /healthz and /readyz.
//
// /healthz answers 200 "ok" whenever the process can answer at all: it is
// the liveness probe. /readyz answers 200 "ready" when every check passes,
// else 503 with one failing check per line: the readiness probe, false
// until NATS is connected and the components have loaded what they serve.
func (r *Registry) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if err := r.Ready(); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(strings.ReplaceAll(err.Error(), "; ", "\n") + "\n"))
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}
