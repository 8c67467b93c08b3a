// Package microsvc serves NATS micro-protocol services whose handlers run in
// a bounded worker pool.
//
// nats.go/micro delivers each endpoint's requests on one goroutine and times a
// handler only until it returns, so a slow script would block every call
// behind it, and handing work off to goroutines would leave micro's request,
// error and latency figures counting only the hand-off. This package answers
// the same $SRV.PING/INFO/STATS verbs with micro's own types (so `nats micro`
// tools and any micro client work unchanged) but records each request when
// its handler finishes: counts, errors and latency stay honest however long a
// handler runs.
package microsvc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/metrics"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/nats-io/nuid"
)

// Config describes a service.
type Config struct {
	Name        string
	Version     string // semver
	Description string
	Metadata    map[string]string
	// QueueGroup shared by replicas; default micro.DefaultQueueGroup ("q").
	QueueGroup string
	// Metrics, when not nil, receives each endpoint's requests by result
	// code, handler durations, and busy and queued requests (see
	// docs/METRICS.md), recorded where the stats are.
	Metrics *metrics.Registry
}

// Request is one incoming request. It and everything it returns are valid
// until the handler returns; a worker reuses it for its next request.
type Request struct {
	msg *nats.Msg
	nc  *nats.Conn
	hdr nats.Header
}

// ReplyHeader returns an empty header the handler may fill and return as the
// reply's header, so that answering with a header allocates none.
func (r *Request) ReplyHeader() nats.Header {
	if r.hdr == nil {
		r.hdr = nats.Header{}
	}
	return r.hdr
}

// reset readies r, and its reply header, for m.
func (r *Request) reset(m *nats.Msg) {
	r.msg = m
	clear(r.hdr)
}

// Subject is the subject the request arrived on.
func (r *Request) Subject() string { return r.msg.Subject }

// Data is the request body.
func (r *Request) Data() []byte { return r.msg.Data }

// Header is the request's headers (nil when none).
func (r *Request) Header() nats.Header { return r.msg.Header }

// Reply is the caller's reply subject ("" when none).
func (r *Request) Reply() string { return r.msg.Reply }

// HasReply reports whether the caller waits for an answer.
func (r *Request) HasReply() bool { return r.msg.Reply != "" }

// Publish sends an intermediate message to the caller's reply subject, ahead
// of the final reply (used to stream partial results). It is a no-op when the
// request has no reply subject.
func (r *Request) Publish(m *nats.Msg) error {
	if r.msg.Reply == "" {
		return nil
	}
	m.Subject = r.msg.Reply
	if err := tooBig(r.nc, "a message", m.Data, m.Header); err != nil {
		return err
	}
	return r.nc.PublishMsg(m)
}

// tooBig is RESOURCE_EXHAUSTED when data and hdr would not fit in one
// message on nc: NATS refuses such a message at the publisher, so the
// caller would otherwise wait out its deadline for a reply that never
// comes, and report a call that succeeded as timed out.
func tooBig(nc *nats.Conn, what string, data []byte, hdr nats.Header) error {
	limit := nc.MaxPayload()
	size := int64(len(data))
	if hdr != nil {
		size += int64(len("NATS/1.0\r\n\r\n"))
		for k, vs := range hdr {
			for _, v := range vs {
				size += int64(len(k) + len(v) + 4)
			}
		}
	}
	if limit > 0 && size > limit {
		return fault.New(fault.ResourceExhausted, "%s of %d bytes is over the %d-byte message limit of the NATS server", what, size, limit)
	}
	return nil
}

// Handler answers one request. A nil error sends data (with hdr, which may be
// nil) as the reply; an error is answered with micro's error headers, the
// code from fault.CodeOf and the message from fault.MessageOf. ctx is
// cancelled when the service is stopped past its drain timeout.
type Handler func(ctx context.Context, r *Request) (data []byte, hdr nats.Header, err error)

// Endpoint describes one endpoint.
type Endpoint struct {
	Name    string
	Subject string
	Handler Handler
	// Workers > 0 runs the handler on that many goroutines, with up to Queue
	// requests waiting; a request arriving when the queue is full is answered
	// RESOURCE_EXHAUSTED at once. Workers == 0 runs the handler inline on the
	// subscription's goroutine, for cheap handlers.
	Workers int
	Queue   int
	// Metadata appears in $SRV.INFO.
	Metadata map[string]string
}

// Service is a running micro-protocol service. Its methods are safe for
// concurrent use.
type Service struct {
	cfg     Config
	id      string
	nc      *nats.Conn
	log     *slog.Logger
	started time.Time

	ctx    context.Context
	cancel context.CancelFunc

	mu        sync.Mutex
	endpoints []*endpoint
	control   []*nats.Subscription
	stopped   bool
	inflight  sync.WaitGroup
}

type endpoint struct {
	Endpoint
	queueGroup string
	sub        *nats.Subscription
	jobs       chan *nats.Msg
	workers    sync.WaitGroup
	busy       atomic.Int64
	// admitted counts requests handed to the workers and not yet answered:
	// at most Workers + Queue.
	admitted atomic.Int64

	// m is nil without Config.Metrics.
	m *metrics.Endpoint

	// guarded by Service.mu
	requests, errors, rejected uint64
	lastError                  string
	processing                 time.Duration
}

// semver is a semantic version (semver.org), as micro.AddService requires
// and tools such as `nats micro` show.
var semver = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$`)

// ErrStopped is returned by AddEndpoint after Stop.
var ErrStopped = errors.New("service stopped")

// Start registers the service's PING/INFO/STATS handlers and returns it.
// Endpoints are added with AddEndpoint; Stop drains it.
func Start(nc *nats.Conn, cfg Config, log *slog.Logger) (*Service, error) {
	if cfg.Name == "" || cfg.Version == "" {
		return nil, errors.New("microsvc: Name and Version are required")
	}
	if !semver.MatchString(cfg.Version) {
		return nil, fmt.Errorf("microsvc: Version %q is not a semantic version such as 1.2.3", cfg.Version)
	}
	if cfg.QueueGroup == "" {
		cfg.QueueGroup = micro.DefaultQueueGroup
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Service{
		cfg: cfg, id: nuid.Next(), nc: nc, log: log, started: time.Now().UTC(),
		ctx: ctx, cancel: cancel,
	}
	verbs := map[micro.Verb]func() any{
		micro.PingVerb:  func() any { return micro.Ping{ServiceIdentity: s.identity(), Type: micro.PingResponseType} },
		micro.InfoVerb:  func() any { return s.Info() },
		micro.StatsVerb: func() any { return s.Stats() },
	}
	for verb, value := range verbs {
		for _, kind := range [][2]string{{"", ""}, {cfg.Name, ""}, {cfg.Name, s.id}} {
			subj, err := micro.ControlSubject(verb, kind[0], kind[1])
			if err != nil {
				s.unsubscribeControl()
				return nil, err
			}
			sub, err := nc.Subscribe(subj, func(m *nats.Msg) {
				if !subjects.IsReplyInbox(m.Reply) {
					return // see subjects.IsReplyInbox
				}
				b, _ := json.Marshal(value())
				_ = m.Respond(b)
			})
			if err != nil {
				s.unsubscribeControl()
				return nil, fmt.Errorf("microsvc: subscribe %s: %w", subj, err)
			}
			s.control = append(s.control, sub)
		}
	}
	return s, nil
}

// Context is the context every handler receives: it is cancelled when the
// service is stopped past its drain timeout.
func (s *Service) Context() context.Context { return s.ctx }

// ID is this instance's unique id, as in $SRV.INFO.
func (s *Service) ID() string { return s.id }

func (s *Service) identity() micro.ServiceIdentity {
	return micro.ServiceIdentity{Name: s.cfg.Name, ID: s.id, Version: s.cfg.Version, Metadata: s.cfg.Metadata}
}

// AddEndpoints adds every endpoint and flushes, so that once it returns the
// server has the subscriptions and the endpoints answer. On failure it
// stops the service, waiting up to drain, and returns the error.
func (s *Service) AddEndpoints(drain time.Duration, es ...Endpoint) error {
	for _, e := range es {
		if err := s.AddEndpoint(e); err != nil {
			_ = s.Stop(drain)
			return err
		}
	}
	if err := s.nc.FlushTimeout(10 * time.Second); err != nil {
		_ = s.Stop(drain)
		return fmt.Errorf("microsvc: flush subscriptions: %w", err)
	}
	return nil
}

// AddEndpoint subscribes e in the service's queue group.
func (s *Service) AddEndpoint(e Endpoint) error {
	if e.Name == "" || e.Subject == "" || e.Handler == nil {
		return errors.New("microsvc: endpoint needs Name, Subject and Handler")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrStopped
	}
	ep := &endpoint{Endpoint: e, queueGroup: s.cfg.QueueGroup}
	ep.m = s.cfg.Metrics.Services().Endpoint(s.cfg.Name, e.Name)
	ep.m.TrackPool(ep.busy.Load, func() int64 {
		if ep.jobs == nil {
			return 0
		}
		// busy drops just before admitted: never report a negative queue.
		return max(ep.admitted.Load()-ep.busy.Load(), 0)
	})
	cb := func(m *nats.Msg) {
		if s.refuseReply(ep, m) {
			return
		}
		s.handle(ep, &Request{msg: m, nc: s.nc})
	}
	if e.Workers > 0 {
		// Room for every admitted request, so dispatch never blocks and an
		// idle worker that is not yet waiting on the channel costs no refusal.
		ep.jobs = make(chan *nats.Msg, e.Workers+max(e.Queue, 0))
		for range e.Workers {
			ep.workers.Add(1)
			go func() {
				defer ep.workers.Done()
				r := &Request{nc: s.nc}
				for m := range ep.jobs {
					r.reset(m)
					s.serve(ep, r)
				}
			}()
		}
		cb = func(m *nats.Msg) {
			if s.refuseReply(ep, m) {
				return
			}
			s.dispatch(ep, m)
		}
	}
	sub, err := s.nc.QueueSubscribe(e.Subject, ep.queueGroup, cb)
	if err != nil {
		if ep.jobs != nil {
			close(ep.jobs)
		}
		ep.m.Close()
		return fmt.Errorf("microsvc: subscribe %s: %w", e.Subject, err)
	}
	// Bursts queue here rather than being dropped as a slow consumer.
	_ = sub.SetPendingLimits(1<<16, 256<<20)
	ep.sub = sub
	s.endpoints = append(s.endpoints, ep)
	return nil
}

// refuseReply drops a request whose reply subject is not an inbox (see
// subjects.IsReplyInbox), counting it as an error; it is never answered
// and its handler never runs. A message without a reply (a publish) passes.
func (s *Service) refuseReply(ep *endpoint, m *nats.Msg) bool {
	if m.Reply == "" || subjects.IsReplyInbox(m.Reply) {
		return false
	}
	s.log.Debug("dropped a request whose reply subject is not an inbox", "subject", m.Subject, "reply", m.Reply)
	s.record(ep, 0, fault.New(fault.PermissionDenied, "reply subject %q is not under %s.", m.Reply, subjects.InboxRoot))
	return true
}

// dispatch hands r to a worker, or refuses it when every worker is busy and
// the queue is full.
func (s *Service) dispatch(ep *endpoint, m *nats.Msg) {
	if ep.admitted.Add(1) <= int64(ep.Workers+max(ep.Queue, 0)) {
		s.inflight.Add(1)
		ep.jobs <- m
		return
	}
	ep.admitted.Add(-1)
	s.mu.Lock()
	ep.rejected++
	s.mu.Unlock()
	err := fault.New(fault.ResourceExhausted, "%s is busy: %d requests running and %d queued; retry later",
		s.cfg.Name, ep.Workers, ep.Queue)
	s.record(ep, 0, err)
	s.respond(&Request{msg: m, nc: s.nc}, nil, nil, err)
}

func (s *Service) handle(ep *endpoint, r *Request) {
	s.inflight.Add(1)
	s.serve(ep, r)
}

// serve runs the handler and answers; it owns one inflight count.
func (s *Service) serve(ep *endpoint, r *Request) {
	defer s.inflight.Done()
	ep.busy.Add(1)
	start := time.Now()
	data, hdr, err := s.call(ep, r)
	if err == nil && r.msg.Reply != "" {
		// A reply too big to send is this request's error, counted as one.
		err = tooBig(s.nc, "the reply", data, hdr)
	}
	elapsed := time.Since(start)
	// Record before replying: a caller that asks for STATS after its reply
	// must find its own request counted.
	s.mu.Lock()
	ep.busy.Add(-1)
	s.recordLocked(ep, elapsed, err)
	s.mu.Unlock()
	if ep.m != nil {
		ep.m.Observe(resultCode(err), elapsed)
	}
	if ep.jobs != nil {
		// Free the slot before answering: a caller that sends its next
		// request on this reply finds the worker free.
		ep.admitted.Add(-1)
	}
	s.respond(r, data, hdr, err)
}

// call runs the handler, turning a panic into an INTERNAL error so one bad
// request cannot take the service down.
func (s *Service) call(ep *endpoint, r *Request) (data []byte, hdr nats.Header, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("handler panicked", "endpoint", ep.Name, "subject", r.Subject(), "panic", p)
			err = fmt.Errorf("panic: %v", p)
		}
	}()
	return ep.Handler(s.ctx, r)
}

func (s *Service) respond(r *Request, data []byte, hdr nats.Header, err error) {
	if r.msg.Reply == "" {
		return
	}
	m := &nats.Msg{Subject: r.msg.Reply, Data: data, Header: hdr}
	if err != nil {
		m.Data = nil
		if m.Header == nil {
			m.Header = nats.Header{}
		}
		m.Header.Set(micro.ErrorCodeHeader, string(fault.CodeOf(err)))
		m.Header.Set(micro.ErrorHeader, fault.MessageOf(err))
	}
	if perr := s.nc.PublishMsg(m); perr != nil {
		s.log.Warn("reply failed", "subject", r.msg.Subject, "err", perr)
	}
}

// record counts a request refused before its handler ran.
func (s *Service) record(ep *endpoint, elapsed time.Duration, err error) {
	s.mu.Lock()
	s.recordLocked(ep, elapsed, err)
	s.mu.Unlock()
	if ep.m != nil {
		ep.m.Refused(resultCode(err))
	}
}

// resultCode is the code label of a request's metrics.
func resultCode(err error) string {
	if err == nil {
		return metrics.OK
	}
	return string(fault.CodeOf(err))
}

func (s *Service) recordLocked(ep *endpoint, elapsed time.Duration, err error) {
	ep.requests++
	ep.processing += elapsed
	if err != nil {
		ep.errors++
		ep.lastError = string(fault.CodeOf(err)) + ": " + fault.MessageOf(err)
	}
}

// Info returns the service's $SRV.INFO answer.
func (s *Service) Info() micro.Info {
	s.mu.Lock()
	defer s.mu.Unlock()
	info := micro.Info{
		ServiceIdentity: s.identity(),
		Type:            micro.InfoResponseType,
		Description:     s.cfg.Description,
		Endpoints:       make([]micro.EndpointInfo, 0, len(s.endpoints)),
	}
	for _, ep := range s.endpoints {
		info.Endpoints = append(info.Endpoints, micro.EndpointInfo{
			Name: ep.Name, Subject: ep.Subject, QueueGroup: ep.queueGroup, Metadata: ep.Metadata,
		})
	}
	return info
}

// PoolStats is the Data of an endpoint's stats when it has workers.
type PoolStats struct {
	Workers  int    `json:"workers"`
	Queue    int    `json:"queue"`
	Busy     int    `json:"busy"`
	Rejected uint64 `json:"rejected"`
}

// Stats returns the service's $SRV.STATS answer. Counts and latency cover
// requests whose handler has finished; requests still running show as Busy.
func (s *Service) Stats() micro.Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := micro.Stats{
		ServiceIdentity: s.identity(),
		Type:            micro.StatsResponseType,
		Started:         s.started,
		Endpoints:       make([]*micro.EndpointStats, 0, len(s.endpoints)),
	}
	for _, ep := range s.endpoints {
		es := &micro.EndpointStats{
			Name: ep.Name, Subject: ep.Subject, QueueGroup: ep.queueGroup,
			NumRequests: int(ep.requests), NumErrors: int(ep.errors), LastError: ep.lastError,
			ProcessingTime: ep.processing,
		}
		if ep.requests > 0 {
			es.AverageProcessingTime = ep.processing / time.Duration(ep.requests)
		}
		if ep.Workers > 0 {
			es.Data, _ = json.Marshal(PoolStats{Workers: ep.Workers, Queue: ep.Queue, Busy: int(ep.busy.Load()), Rejected: ep.rejected})
		}
		st.Endpoints = append(st.Endpoints, es)
	}
	return st
}

// Stop stops taking requests, lets those already received finish for up to
// timeout, then cancels the handlers' context and waits for them to return.
// It is safe to call more than once.
func (s *Service) Stop(timeout time.Duration) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return nil
	}
	s.stopped = true
	eps := append([]*endpoint(nil), s.endpoints...)
	s.mu.Unlock()

	deadline := time.Now().Add(timeout)
	var errs []error
	for _, ep := range eps {
		// Drain: messages already delivered to the client are still handled;
		// nothing new arrives.
		if err := ep.sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
			errs = append(errs, err)
		}
	}
	for _, ep := range eps {
		for ep.sub.IsValid() {
			if time.Now().After(deadline) {
				s.cancel() // unblock inline handlers so the drain can finish
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// Only now is no callback left to call inflight.Add, so Wait is safe.
	done := make(chan struct{})
	go func() {
		s.inflight.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Until(deadline)):
		s.log.Warn("requests still running at shutdown; cancelling them", "service", s.cfg.Name, "timeout", timeout)
		s.cancel()
		<-done
	}
	s.cancel()
	for _, ep := range eps {
		if ep.jobs != nil {
			close(ep.jobs)
			ep.workers.Wait()
		}
	}
	for _, ep := range eps {
		ep.m.Close()
	}
	s.unsubscribeControl()
	return errors.Join(errs...)
}

func (s *Service) unsubscribeControl() {
	for _, sub := range s.control {
		_ = sub.Unsubscribe()
	}
	s.control = nil
}

// ReplyError decodes a reply from a microsvc service as a caller sees it:
// micro error headers become a *fault.Error with the service's code and
// message, and a no-responders status becomes UNAVAILABLE naming service and
// subj. A successful reply yields nil.
func ReplyError(m *nats.Msg, service, subj string) error {
	if m.Header == nil {
		return nil
	}
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		return &fault.Error{Code: fault.Code(code), Msg: m.Header.Get(micro.ErrorHeader)}
	}
	if m.Header.Get("Status") == "503" {
		return noResponders(nil, service, subj)
	}
	return nil
}

// TransportError maps a failed NATS request on subj to a *fault.Error: no
// responders is UNAVAILABLE naming service, a deadline or cancellation is
// DEADLINE_EXCEEDED, an oversized request RESOURCE_EXHAUSTED, anything else
// UNAVAILABLE.
func TransportError(err error, service, subj string) error {
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return noResponders(err, service, subj)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fault.Wrap(fault.DeadlineExceeded, err, "no answer on %s before the deadline", subj)
	case errors.Is(err, context.Canceled):
		return fault.Wrap(fault.DeadlineExceeded, err, "call on %s cancelled", subj)
	case errors.Is(err, nats.ErrMaxPayload):
		return fault.Wrap(fault.ResourceExhausted, err, "request on %s is larger than a NATS message", subj)
	}
	return fault.Wrap(fault.Unavailable, err, "NATS: %v", err)
}

func noResponders(err error, service, subj string) error {
	return fault.Wrap(fault.Unavailable, err, "no %s service is answering on %s (is `loki up` running?)", service, subj)
}
