package jotunheim

import (
	"errors"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loki-iot/loki/internal/metrics"
	"github.com/prometheus/client_golang/prometheus"
)

// Stats are a replica's counts of device messages since it was built.
type Stats struct {
	// Accepted and Refused count manifests.
	Accepted, Refused uint64
	// Bad counts device messages refused as malformed (a refused manifest
	// included), by kind: "manifest", "state", "result", ...
	Bad map[string]uint64
	// Dropped counts device messages dropped because the replica's queue was
	// full, by kind.
	Dropped map[string]uint64
}

// Stats returns the replica's counts.
func (s *Service) Stats() Stats {
	s.stats.mu.Lock()
	defer s.stats.mu.Unlock()
	return Stats{
		Accepted: s.stats.accepted.Load(), Refused: s.stats.refused.Load(),
		Bad: maps.Clone(s.stats.badBy), Dropped: maps.Clone(s.stats.dropBy),
	}
}

type counters struct {
	accepted, refused atomic.Uint64

	mu            sync.Mutex
	badBy, dropBy map[string]uint64

	// vec is nil without metrics.
	vec *prometheus.CounterVec
}

// newCounters registers loki_jotunheim_device_messages_refused_total on m
// (shared by the replicas of one process), if m is not nil.
func newCounters(m *metrics.Registry) *counters {
	c := &counters{badBy: map[string]uint64{}, dropBy: map[string]uint64{}}
	if reg := m.Prometheus(); reg != nil {
		vec := prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: metrics.Namespace, Subsystem: "jotunheim", Name: "device_messages_refused_total",
			Help: "Device messages the device service refused, by kind and reason (malformed, or dropped because its queue was full).",
		}, []string{"kind", "reason"})
		if err := reg.Register(vec); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				vec, _ = are.ExistingCollector.(*prometheus.CounterVec)
			} else {
				vec = nil
			}
		}
		c.vec = vec
	}
	return c
}

func (c *counters) bad(kind string) {
	c.mu.Lock()
	c.badBy[kind]++
	c.mu.Unlock()
	if c.vec != nil {
		c.vec.WithLabelValues(kind, "malformed").Inc()
	}
}

func (c *counters) drop(kind string) {
	c.mu.Lock()
	c.dropBy[kind]++
	c.mu.Unlock()
	if c.vec != nil {
		c.vec.WithLabelValues(kind, "queue_full").Inc()
	}
}

// logLimiter logs at WARN the first of a device's problems of one kind in
// each period and the rest at DEBUG, so a device sending garbage in a loop
// cannot flood the log.
type logLimiter struct {
	out    *slog.Logger
	period time.Duration

	mu   sync.Mutex
	last map[string]time.Time
}

// maxLimited bounds the keys a logLimiter remembers.
const maxLimited = 4096

func newLogLimiter(log *slog.Logger, period time.Duration) *logLimiter {
	return &logLimiter{out: log, period: period, last: map[string]time.Time{}}
}

func (l *logLimiter) log(id, kind, msg string, args ...any) {
	key := id + "\x00" + kind
	now := time.Now()
	l.mu.Lock()
	warn := now.Sub(l.last[key]) >= l.period
	if warn {
		if len(l.last) >= maxLimited {
			clear(l.last)
		}
		l.last[key] = now
	}
	l.mu.Unlock()
	if warn {
		l.out.Warn(msg, args...)
	} else {
		l.out.Debug(msg, args...)
	}
}
