package metrics

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// codeCounters is one labelled counter per result code under fixed leading
// labels, each child looked up once: after the first call with a code,
// counting it is a map load and an atomic add, with no label strings built.
type codeCounters struct {
	vec    *prometheus.CounterVec
	labels []string
	ok     prometheus.Counter
	byCode sync.Map // code string -> prometheus.Counter
}

func newCodeCounters(vec *prometheus.CounterVec, labels ...string) *codeCounters {
	return &codeCounters{vec: vec, labels: labels, ok: vec.WithLabelValues(append(labels[:len(labels):len(labels)], OK)...)}
}

func (c *codeCounters) inc(code string) {
	if code == OK {
		c.ok.Inc()
		return
	}
	if v, ok := c.byCode.Load(code); ok {
		v.(prometheus.Counter).Inc()
		return
	}
	ctr := c.vec.WithLabelValues(append(c.labels[:len(c.labels):len(c.labels)], code)...)
	c.byCode.Store(code, ctr)
	ctr.Inc()
}

// Services are the metrics of every micro-protocol service of the process
// (internal/microsvc: Loki, Hel, Fenrir, Jörmungandr, the identity service),
// by service and endpoint.
type Services struct {
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
	busy     *funcGauges
	queued   *funcGauges
}

// Services returns the process's service metrics, registering them on first
// use; nil for a nil Registry.
func (r *Registry) Services() *Services {
	if r == nil {
		return nil
	}
	r.servicesOnce.Do(func() {
		s := &Services{
			requests: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: Namespace, Subsystem: "service", Name: "requests_total",
				Help: "Requests answered by a micro-protocol service endpoint, by result code (OK or the error code), counted when the handler finishes or the request is refused.",
			}, []string{"service", "endpoint", "code"}),
			duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
				Namespace: Namespace, Subsystem: "service", Name: "request_duration_seconds",
				Help:    "Time a service endpoint's handler took, from the start of the handler to its answer; requests refused before a handler ran are not observed.",
				Buckets: DurationBuckets,
			}, []string{"service", "endpoint"}),
			busy: newFuncGauges(Namespace+"_service_busy",
				"Requests a service endpoint's handlers are running now.", false, "service", "endpoint"),
			queued: newFuncGauges(Namespace+"_service_queued",
				"Requests waiting for a free worker of a service endpoint now.", false, "service", "endpoint"),
		}
		r.reg.MustRegister(s.requests, s.duration, s.busy, s.queued)
		r.services = s
	})
	return r.services
}

// Endpoint holds the labelled metrics of one endpoint of one service. A nil
// *Endpoint records nothing.
type Endpoint struct {
	codes    *codeCounters
	duration prometheus.Observer
	s        *Services
	service  string
	name     string

	mu     sync.Mutex
	detach []func()
}

// Endpoint returns the metrics of service's endpoint; nil when s is nil.
func (s *Services) Endpoint(service, endpoint string) *Endpoint {
	if s == nil {
		return nil
	}
	return &Endpoint{
		codes:    newCodeCounters(s.requests, service, endpoint),
		duration: s.duration.WithLabelValues(service, endpoint),
		s:        s, service: service, name: endpoint,
	}
}

// Observe counts a request that ran its handler for elapsed with result code.
func (e *Endpoint) Observe(code string, elapsed time.Duration) {
	if e == nil {
		return
	}
	e.codes.inc(code)
	e.duration.Observe(elapsed.Seconds())
}

// Refused counts a request answered with code without running its handler.
func (e *Endpoint) Refused(code string) {
	if e == nil {
		return
	}
	e.codes.inc(code)
}

// TrackPool reports busy() and queued() as the endpoint's busy and queued
// gauges, read at scrape time, until Close.
func (e *Endpoint) TrackPool(busy, queued func() int64) {
	if e == nil {
		return
	}
	d1 := e.s.busy.attach(func() float64 { return float64(busy()) }, e.service, e.name)
	d2 := e.s.queued.attach(func() float64 { return float64(queued()) }, e.service, e.name)
	e.mu.Lock()
	e.detach = append(e.detach, d1, d2)
	e.mu.Unlock()
}

// Close stops reporting what TrackPool attached; counts stay.
func (e *Endpoint) Close() {
	if e == nil {
		return
	}
	e.mu.Lock()
	d := e.detach
	e.detach = nil
	e.mu.Unlock()
	for _, f := range d {
		f()
	}
}

// Tools are the Loki service's metrics: per-tool calls, durations and
// running calls; memory-guard refusals and stops; the registry's size and
// revision.
type Tools struct {
	calls       *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	running     *prometheus.GaugeVec
	memRefused  prometheus.Counter
	memStopped  prometheus.Counter
	regTools    *funcGauges
	regRevision *funcGauges
	memOver     *funcGauges

	byName sync.Map // tool name -> *Tool
}

// Tools returns the process's Loki tool metrics, registering them on first
// use; nil for a nil Registry.
func (r *Registry) Tools() *Tools {
	if r == nil {
		return nil
	}
	r.toolsOnce.Do(func() {
		t := &Tools{
			calls: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: Namespace, Subsystem: "tool", Name: "calls_total",
				Help: "Calls of a registered tool, by result code (OK or the error code), including calls refused before the script started.",
			}, []string{"tool", "code"}),
			duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
				Namespace: Namespace, Subsystem: "tool", Name: "call_duration_seconds",
				Help:    "Time from a tool call's arrival at a worker to its result, every call of loki_tool_calls_total.",
				Buckets: DurationBuckets,
			}, []string{"tool"}),
			running: prometheus.NewGaugeVec(prometheus.GaugeOpts{
				Namespace: Namespace, Subsystem: "tool", Name: "calls_running",
				Help: "Calls of a tool running now.",
			}, []string{"tool"}),
			memRefused: prometheus.NewCounter(prometheus.CounterOpts{
				Namespace: Namespace, Subsystem: "memory", Name: "refused_calls_total",
				Help: "Calls refused with RESOURCE_EXHAUSTED because the replica was over its memory limit.",
			}),
			memStopped: prometheus.NewCounter(prometheus.CounterOpts{
				Namespace: Namespace, Subsystem: "memory", Name: "stopped_calls_total",
				Help: "Running calls stopped with RESOURCE_EXHAUSTED when the replica passed its memory limit.",
			}),
			regTools: newFuncGauges(Namespace+"_registry_tools",
				"Tools in the replica's view of the registry (callable ones).", true),
			regRevision: newFuncGauges(Namespace+"_registry_revision",
				"Highest registry (KV) revision the replica has applied.", true),
			memOver: newFuncGauges(Namespace+"_memory_over_limit",
				"1 while the replica is over its memory limit and refusing calls, else 0.", true),
		}
		r.reg.MustRegister(t.calls, t.duration, t.running, t.memRefused, t.memStopped, t.regTools, t.regRevision, t.memOver)
		r.tools = t
	})
	return r.tools
}

// Tool holds one tool's labelled metrics. A nil *Tool records nothing.
type Tool struct {
	codes    *codeCounters
	duration prometheus.Observer
	running  prometheus.Gauge
}

// Tool returns the metrics of the tool named name, built once and cached;
// nil when t is nil.
func (t *Tools) Tool(name string) *Tool {
	if t == nil {
		return nil
	}
	if v, ok := t.byName.Load(name); ok {
		return v.(*Tool)
	}
	v, _ := t.byName.LoadOrStore(name, &Tool{
		codes:    newCodeCounters(t.calls, name),
		duration: t.duration.WithLabelValues(name),
		running:  t.running.WithLabelValues(name),
	})
	return v.(*Tool)
}

// Started marks a call running; Finished must follow.
func (t *Tool) Started() {
	if t != nil {
		t.running.Inc()
	}
}

// Finished ends a call marked by Started.
func (t *Tool) Finished(code string, elapsed time.Duration) {
	if t == nil {
		return
	}
	t.running.Dec()
	t.Observe(code, elapsed)
}

// Observe counts a call that ended with code after elapsed.
func (t *Tool) Observe(code string, elapsed time.Duration) {
	if t == nil {
		return
	}
	t.codes.inc(code)
	t.duration.Observe(elapsed.Seconds())
}

// MemoryRefused counts a call refused because the replica was over its
// memory limit.
func (t *Tools) MemoryRefused() {
	if t != nil {
		t.memRefused.Inc()
	}
}

// MemoryStopped counts n running calls stopped by the memory guard.
func (t *Tools) MemoryStopped(n int) {
	if t != nil && n > 0 {
		t.memStopped.Add(float64(n))
	}
}

// AttachReplica reports a replica's registry size, registry revision and
// memory state, read at scrape time, until detach is called. Replicas in
// one process are combined by their maximum.
func (t *Tools) AttachReplica(tools func() int, revision func() uint64, overMemory func() bool) (detach func()) {
	if t == nil {
		return func() {}
	}
	d1 := t.regTools.attach(func() float64 { return float64(tools()) })
	d2 := t.regRevision.attach(func() float64 { return float64(revision()) })
	d3 := t.memOver.attach(func() float64 {
		if overMemory() {
			return 1
		}
		return 0
	})
	return func() { d1(); d2(); d3() }
}

// Gateway are the gRPC gateway's metrics: RPCs by method and code, and
// their durations.
type Gateway struct {
	rpcs     *prometheus.CounterVec
	duration *prometheus.HistogramVec
	links    prometheus.Gauge
	dropped  *prometheus.CounterVec

	byMethod sync.Map // method -> *RPC
}

// Reasons a device link drops frames, the values of
// loki_gateway_device_link_frames_dropped_total's reason label.
const (
	DropSlowDevice    = "slow_device"
	DropHomeAssistant = "home_assistant"
)

// LinkUp counts a device link that opened; LinkDown one that ended. Both
// do nothing on a nil *Gateway.
func (g *Gateway) LinkUp() {
	if g != nil {
		g.links.Inc()
	}
}

// LinkDown: see LinkUp.
func (g *Gateway) LinkDown() {
	if g != nil {
		g.links.Dec()
	}
}

// LinkDropped counts n frames a device link dropped for reason.
func (g *Gateway) LinkDropped(reason string, n uint64) {
	if g != nil && n > 0 {
		g.dropped.WithLabelValues(reason).Add(float64(n))
	}
}

// UnknownMethod is the method label of RPCs to methods the gateway does not
// serve, so that callers cannot grow the label set without bound.
const UnknownMethod = "unknown"

// Gateway returns the process's gateway metrics, registering them on first
// use; nil for a nil Registry.
func (r *Registry) Gateway() *Gateway {
	if r == nil {
		return nil
	}
	r.gatewayOnce.Do(func() {
		g := &Gateway{
			rpcs: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: Namespace, Subsystem: "gateway", Name: "rpcs_total",
				Help: "gRPC calls the gateway answered, by full method and gRPC status code name.",
			}, []string{"method", "code"}),
			duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
				Namespace: Namespace, Subsystem: "gateway", Name: "rpc_duration_seconds",
				Help:    "Time the gateway took to answer a gRPC call (for streams, until the stream ended).",
				Buckets: DurationBuckets,
			}, []string{"method"}),
			links: prometheus.NewGauge(prometheus.GaugeOpts{
				Namespace: Namespace, Subsystem: "gateway", Name: "device_links",
				Help: "Devices connected to the gateway over gRPC (live DeviceLink streams).",
			}),
			dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: Namespace, Subsystem: "gateway", Name: "device_link_frames_dropped_total",
				Help: "Frames a device link dropped, by reason: slow_device (the device read slower than the platform sent) or home_assistant (discovery topics a link cannot deliver).",
			}, []string{"reason"}),
		}
		r.reg.MustRegister(g.rpcs, g.duration, g.links, g.dropped)
		r.gateway = g
	})
	return r.gateway
}

// RPC holds one method's labelled metrics. A nil *RPC records nothing.
type RPC struct {
	codes    *codeCounters
	duration prometheus.Observer
}

// Method returns the metrics of the full method name (such as
// /loki.v1.Loki/ListScripts), built once and cached; nil when g is nil.
// Pass UnknownMethod for methods the gateway does not serve.
func (g *Gateway) Method(method string) *RPC {
	if g == nil {
		return nil
	}
	if v, ok := g.byMethod.Load(method); ok {
		return v.(*RPC)
	}
	v, _ := g.byMethod.LoadOrStore(method, &RPC{
		codes:    newCodeCounters(g.rpcs, method),
		duration: g.duration.WithLabelValues(method),
	})
	return v.(*RPC)
}

// Observe counts an RPC that ended with code (a gRPC code name, "OK" for
// success) after elapsed.
func (r *RPC) Observe(code string, elapsed time.Duration) {
	if r == nil {
		return
	}
	r.codes.inc(code)
	r.duration.Observe(elapsed.Seconds())
}
