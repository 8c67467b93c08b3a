package metrics

import "github.com/prometheus/client_golang/prometheus"

// Isolation counts the worker processes that run isolated calls (tools
// with hard memory or cpu limits): how many are alive, and how many
// started and ended. A worker ends when it passes a limit, crashes, is
// killed, or stops with its replica.
type Isolation struct {
	alive  prometheus.Gauge
	starts prometheus.Counter
	exits  *prometheus.CounterVec
}

// How a worker process ended, the values of
// loki_isolation_worker_exits_total's how label.
const (
	WorkerExited   = "exited"
	WorkerSignaled = "signaled"
)

// Isolation returns the process's worker metrics, registering them on
// first use; nil for a nil Registry.
func (r *Registry) Isolation() *Isolation {
	if r == nil {
		return nil
	}
	r.isolateOnce.Do(func() {
		i := &Isolation{
			alive: prometheus.NewGauge(prometheus.GaugeOpts{
				Namespace: Namespace, Subsystem: "isolation", Name: "workers",
				Help: "Worker processes alive that run isolated calls.",
			}),
			starts: prometheus.NewCounter(prometheus.CounterOpts{
				Namespace: Namespace, Subsystem: "isolation", Name: "worker_starts_total",
				Help: "Worker processes started (the first ones, and each replacement).",
			}),
			exits: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: Namespace, Subsystem: "isolation", Name: "worker_exits_total",
				Help: "Worker processes that ended, by how: exited (its own exit: a limit passed, a crash, a stop) or signaled (killed).",
			}, []string{"how"}),
		}
		r.reg.MustRegister(i.alive, i.starts, i.exits)
		r.isolation = i
	})
	return r.isolation
}

// Started counts a worker that started; nothing on a nil *Isolation.
func (i *Isolation) Started() {
	if i != nil {
		i.starts.Inc()
		i.alive.Inc()
	}
}

// Ended counts a worker that ended, by how (WorkerExited or
// WorkerSignaled); nothing on a nil *Isolation.
func (i *Isolation) Ended(how string) {
	if i != nil {
		i.exits.WithLabelValues(how).Inc()
		i.alive.Dec()
	}
}
