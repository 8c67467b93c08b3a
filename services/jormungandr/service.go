// Package jormungandr is Jörmungandr, Loki's network service: the only way
// scripts reach the network. It serves the NATS micro service "jormungandr"
// (every replica in the queue group subjects.JormungandrQueueGroup) with
//
//   - HTTP requests (GET, POST, PUT, PATCH, DELETE, HEAD) with headers, a
//     body, a timeout, a response size cap and policy-checked redirects;
//   - WebSocket connections (send, receive with a timeout, close,
//     reconnection with backoff and jitter on request);
//   - MQTT 3.1.1 connections (publish at QoS 0 or 1, subscribe, receive).
//
// Every destination passes the egress Policy, and every address dialed is
// checked again after name resolution. On Loki's own MQTT listener
// (Config.LocalMQTT) a connection logs in with an identity limited to the
// topic filters of the tool's grants. Connections are held by the replica
// that opened them and reached through handle subjects carrying its
// instance id; see docs/JORMUNGANDR.md.
//
// Scripts reach the service through the Lua module returned by NewModule;
// Go programs through Client.
package jormungandr

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/middleware"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// Version is the service version reported in $SRV.INFO.
const Version = "0.1.0"

// Log keys.
const (
	logKeySubject = "subject"
	logKeyErr     = "err"
	logKeyHandle  = "handle"
	logKeyURL     = "url"
	logKeyAddr    = "addr"
)

// replyRoom is what a reply reserves for JSON framing and headers beyond
// the base64 of its payload.
const replyRoom = 64 << 10

// Service is one Jormungandr replica. Its methods are safe for concurrent use.
type Service struct {
	cfg   Config
	nc    *nats.Conn
	log   *slog.Logger
	pol   livePolicy
	local *localListener // nil: no MQTT listener to fence
	ready chan struct{}

	httpTransport *http.Transport
	wsTransport   *http.Transport
	handles       *handleTable
	instance      string // set by Run before any handle exists
}

// New validates cfg and prepares a replica on nc (owned by the caller); Run
// starts it. It fails if a size limit does not fit nc's max payload.
func New(cfg Config, nc *nats.Conn, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nc == nil {
		return nil, errors.New("jormungandr: nil NATS connection")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if mp := nc.MaxPayload(); mp > 0 {
		for _, v := range []struct {
			key string
			n   int
		}{
			{"http.max_request_bytes", cfg.HTTP.MaxRequestBytes},
			{"http.max_response_bytes", cfg.HTTP.MaxResponseBytes},
			{"handles.max_message_bytes", cfg.Handles.MaxMessageBytes},
		} {
			if int64(base64Len(v.n))+replyRoom > mp {
				return nil, fmt.Errorf("%w: %s = %d: its base64 plus %d bytes must fit the NATS max payload (%d)",
					ErrConfig, v.key, v.n, replyRoom, mp)
			}
		}
	}
	pol, err := cfg.Policy.compile()
	if err != nil {
		return nil, err
	}
	local, err := cfg.LocalMQTT.compile()
	if err != nil {
		return nil, err
	}
	s := &Service{
		cfg:     cfg,
		nc:      nc,
		log:     log.With("component", "jormungandr"),
		local:   local,
		ready:   make(chan struct{}),
		handles: newHandleTable(cfg.Handles.Max),
	}
	s.pol.cur.Store(pol)
	if local != nil && local.noCert {
		s.log.Warn("scripts cannot reach Loki's own MQTT listener: it requires a client certificate; "+
			"set local_mqtt_cert_file and local_mqtt_key_file in [jormungandr]", logKeyAddr, cfg.LocalMQTT.Addr)
	}
	s.httpTransport = s.newTransport(true)
	s.wsTransport = s.newTransport(false)
	return s, nil
}

func base64Len(n int) int { return (n + 2) / 3 * 4 }

// newTransport returns a transport that dials through the policy and
// ignores proxy settings from the environment. WebSocket needs HTTP/1.1.
func (s *Service) newTransport(h2 bool) *http.Transport {
	t := &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			// Dial the canonical name: "localhost." and "localhost" are one
			// host to the policy, and must be one to the resolver too.
			host, port, _ := net.SplitHostPort(addr)
			host = strings.TrimSuffix(host, ".")
			return s.pol.dialer(host, 0).DialContext(ctx, network, net.JoinHostPort(host, port))
		},
		ForceAttemptHTTP2:      h2,
		MaxIdleConns:           64,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		MaxResponseHeaderBytes: 64 << 10,
	}
	if !h2 {
		t.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	}
	return t
}

// SetPolicy makes p the egress policy from the next request on: a request
// is checked, and every connection dialed, against the policy current at
// that moment; connections and handles already open keep running. It
// refuses an invalid p with ErrConfig, naming the entry, and then changes
// nothing. It is safe for concurrent use, before or during Run.
func (s *Service) SetPolicy(p Policy) error {
	pol, err := p.compile()
	if err != nil {
		return err
	}
	s.pol.cur.Store(pol)
	// An idle keep-alive connection was dialed under the old policy; the
	// request check refuses a now-denied host before reusing one, but
	// dropping them keeps what is open to what the policy allowed.
	s.httpTransport.CloseIdleConnections()
	s.wsTransport.CloseIdleConnections()
	return nil
}

// Ready is closed once the endpoints serve.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Run serves until ctx is cancelled, then stops taking requests, waits up to
// DrainTimeout for running ones and closes every connection it holds.
func (s *Service) Run(ctx context.Context) error {
	svc, err := microsvc.Start(s.nc, microsvc.Config{
		Metrics:     s.cfg.Metrics,
		Name:        subjects.JormungandrService,
		Version:     Version,
		Description: "Jörmungandr network access for Loki scripts: HTTP, WebSocket, MQTT",
		QueueGroup:  subjects.JormungandrQueueGroup,
	}, s.log)
	if err != nil {
		return fmt.Errorf("jormungandr: %w", err)
	}
	s.instance = svc.ID()
	defer s.handles.closeAll()
	endpoints, err := s.endpoints()
	if err != nil {
		_ = svc.Stop(s.cfg.DrainTimeout)
		return err
	}
	for i, e := range endpoints {
		// UNAVAILABLE here is mostly a remote host that is down: the
		// caller's business, not the operator's.
		e.Handler = middleware.ErrorLog(s.log, e.Subject, middleware.Deadline(HeaderTimeout, s.cfg.RequestTimeout, s.cfg.MaxRequestTimeout, e.Handler), fault.Internal)
		e.Workers, e.Queue = s.cfg.Workers, s.cfg.Queue
		endpoints[i] = e
	}
	if err := svc.AddEndpoints(s.cfg.DrainTimeout, endpoints...); err != nil {
		return fmt.Errorf("jormungandr: %w", err)
	}
	janitor, stopJanitor := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.expireIdle(janitor)
	}()
	close(s.ready)
	s.log.Debug("jormungandr serving", "instance", s.instance)
	<-ctx.Done()
	err = svc.Stop(s.cfg.DrainTimeout)
	stopJanitor()
	<-done
	s.httpTransport.CloseIdleConnections()
	s.wsTransport.CloseIdleConnections()
	return err
}

// endpoints lists the queue-group endpoints and this replica's handle endpoints.
func (s *Service) endpoints() ([]microsvc.Endpoint, error) {
	eps := []microsvc.Endpoint{
		{Name: "http", Subject: subjects.JormungandrHTTP, Handler: s.serveHTTP},
		{Name: "ws_connect", Subject: subjects.JormungandrWSConnect, Handler: s.serveWSConnect},
		{Name: "mqtt_connect", Subject: subjects.JormungandrMQTTConnect, Handler: s.serveMQTTConnect},
	}
	for _, op := range subjects.HandleOps {
		subj, err := subjects.JormungandrHandle(s.instance, op)
		if err != nil {
			return nil, fmt.Errorf("jormungandr: %w", err)
		}
		eps = append(eps, microsvc.Endpoint{Name: "handle_" + string(op), Subject: subj, Handler: s.serveHandle(op)})
	}
	return eps, nil
}

// expireIdle closes connections idle past Handles.IdleTimeout until ctx ends.
func (s *Service) expireIdle(ctx context.Context) {
	every := min(max(s.cfg.Handles.IdleTimeout/4, 10*time.Millisecond), 30*time.Second)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			for id, c := range s.handles.expire(now.Add(-s.cfg.Handles.IdleTimeout)) {
				s.log.Debug("closing idle connection", logKeyHandle, id)
				go c.close()
			}
		}
	}
}
