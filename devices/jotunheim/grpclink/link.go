// Package grpclink is the Jotunheim agent's gRPC transport: the device
// protocol over one bidirectional stream to the gateway
// (loki.v1.DeviceLink/Connect), and a Loki client for code on the device
// (capabilities, children status, tools, execute, stream) over the same
// connection and the same device login.
//
// A frame carries what an MQTT device would publish or receive on
// jotunheim/<id>/<topic>, its topic relative to the device's tree, its
// payload byte for byte (docs/DEVICES.md). Subscriptions are implicit: the
// gateway forwards the device's downlink kinds and the link filters them
// locally. Topics outside the device's tree (Home Assistant discovery)
// cannot travel over a link: they are skipped, and logged once.
//
// The agent library (devices/jotunheim) imports no gRPC; a program passes
// this transport with jotunheim.WithTransport (cmd/jotunheim does, unless
// built with -tags mqttonly).
package grpclink

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
)

// Errors of New and of a link.
var (
	// ErrCleartext is a login that would cross the network in clear: a
	// gateway that is not on loopback without TLS.
	ErrCleartext = errors.New("grpclink: refusing to send the device's login without TLS to a gateway that is not on loopback")
	// ErrClosed is a publish on a link after Disconnect or its loss.
	ErrClosed = errors.New("grpclink: the link is closed")
	// ErrQueueFull is a publish while maxQueued frames wait to be sent.
	ErrQueueFull = errors.New("grpclink: too many frames waiting to be sent")
)

// keepaliveParams is the client's HTTP/2 keepalive: a ping after 30 s
// without activity, the connection declared dead 10 s later, streams or
// not. The gateway must permit it (keepalive.EnforcementPolicy MinTime at
// most 30 s, PermitWithoutStream; it allows 10 s), or it closes the
// connection for "too many pings".
func keepaliveParams() keepalive.ClientParameters {
	return keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}
}

// maxQueued bounds the frames waiting for the stream.
const maxQueued = 256

// Config is one device's link to a gateway.
type Config struct {
	// Gateway is the gateway's host:port.
	Gateway string
	// DeviceID is the device's id: frames' topics are relative to
	// jotunheim/<DeviceID>/.
	DeviceID string
	// Login is the device's login, sent as "authorization: Basic
	// base64(username:password)" on every call.
	Login jotunheim.Login
	// TLS secures the connection; nil is plaintext, which New accepts
	// only for a gateway on loopback (ErrCleartext).
	TLS *tls.Config
	// MaxMessageBytes caps a frame's payload from the gateway (the agent's
	// limits.max_message_bytes); a larger frame ends the link.
	MaxMessageBytes int
	// ConnectTimeout bounds reaching the gateway (default 10 s).
	ConnectTimeout time.Duration
	// Log receives the link's warnings; nil discards them.
	Log *slog.Logger
}

// FromAgent is the link the agent's config names: transport.gateway, its
// login, its TLS (ca_file, cert_file and key_file; with neither, TLS with
// the system's roots unless the gateway is on loopback), the agent's
// limits.max_message_bytes and resilience.negotiate_timeout.
func FromAgent(cfg jotunheim.Config, log *slog.Logger) (Config, error) {
	login, err := cfg.Login()
	if err != nil {
		return Config{}, err
	}
	tc, err := cfg.TLSConfig()
	if err != nil {
		return Config{}, err
	}
	if tc == nil && !loopback(cfg.Transport.Gateway) {
		tc = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return Config{Gateway: cfg.Transport.Gateway, DeviceID: cfg.Device.ID, Login: login, TLS: tc,
		MaxMessageBytes: cfg.Limits.MaxMessageBytes, ConnectTimeout: cfg.Resilience.NegotiateTimeout, Log: log}, nil
}

// loopback reports whether addr (host:port) names this machine: localhost
// or a loopback IP.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		host = addr
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Transport opens links to the gateway: a new connection for each of the
// agent's sessions, so that the agent's backoff (full jitter, unlimited)
// is the only reconnect policy. It implements jotunheim.Transport; its
// Loki client uses the current link's connection.
type Transport struct {
	cfg    Config
	log    *slog.Logger
	prefix string // jotunheim/<id>/
	dial   []grpc.DialOption

	skipOnce sync.Once // topics outside the tree: logged once

	mu  sync.Mutex
	cur *grpc.ClientConn // the current link's; nil while none
}

var _ jotunheim.Transport = (*Transport)(nil)

// New checks cfg and returns a transport; it does not connect.
func New(cfg Config) (*Transport, error) {
	if _, _, err := net.SplitHostPort(cfg.Gateway); err != nil {
		return nil, fmt.Errorf("grpclink: gateway %q: want host:port: %w", cfg.Gateway, err)
	}
	if err := subjects.ValidDeviceID(cfg.DeviceID); err != nil {
		return nil, fmt.Errorf("grpclink: %w", err)
	}
	if cfg.Login.Password == "" {
		return nil, errors.New("grpclink: the device's login has no password")
	}
	if cfg.Login.Username == "" {
		cfg.Login.Username = cfg.DeviceID
	}
	if cfg.TLS == nil && !loopback(cfg.Gateway) {
		return nil, fmt.Errorf("%w (%s)", ErrCleartext, cfg.Gateway)
	}
	if cfg.MaxMessageBytes <= 0 {
		cfg.MaxMessageBytes = 64 << 10
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 10 * time.Second
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	prefix, err := subjects.DeviceTopic(cfg.DeviceID, subjects.DeviceStatus)
	if err != nil {
		return nil, fmt.Errorf("grpclink: %w", err)
	}
	t := &Transport{cfg: cfg, log: log.With("transport", "grpc"), prefix: strings.TrimSuffix(prefix, subjects.DeviceStatus)}
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
	}
	t.dial = []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithPerRPCCredentials(basicAuth{login: cfg.Login, secure: cfg.TLS != nil}),
		grpc.WithKeepaliveParams(keepaliveParams()),
		// Room for the topic and framing around the largest payload.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(cfg.MaxMessageBytes + 4096)),
		grpc.WithUserAgent("jotunheim-agent " + jotunheim.FirmwareVersion),
	}
	return t, nil
}

// Endpoint is the gateway's address.
func (t *Transport) Endpoint() string { return t.cfg.Gateway }

// basicAuth is per-call credentials carrying the device's login. Like
// grpc's own per-RPC credentials, it requires transport security, except
// on a plaintext connection New allowed (loopback only).
type basicAuth struct {
	login  jotunheim.Login
	secure bool
}

func (b basicAuth) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Basic " + base64.StdEncoding.EncodeToString([]byte(b.login.Username+":"+b.login.Password))}, nil
}

func (b basicAuth) RequireTransportSecurity() bool { return b.secure }

// Connect dials the gateway and opens the link stream. The will needs no
// sending: the gateway publishes "offline" for a link that ends without
// it. The stream's authentication is checked by the gateway on open: a
// refused login ends the link at once (onLost, UNAUTHENTICATED).
func (t *Transport) Connect(ctx context.Context, _ jotunheim.Message, onLost func(error)) (jotunheim.Conn, error) {
	conn, err := grpc.NewClient(t.cfg.Gateway, t.dial...)
	if err != nil {
		return nil, fmt.Errorf("grpclink: %w", err)
	}
	sctx, cancel := context.WithCancel(context.Background())
	// Opening the stream waits for the connection; bound it by ctx and
	// the connect timeout, not the stream's life.
	timer := time.AfterFunc(t.cfg.ConnectTimeout, cancel)
	stopCtx := context.AfterFunc(ctx, cancel)
	stream, err := lokiv1.NewDeviceLinkClient(conn).Connect(sctx)
	timedOut := !timer.Stop()
	stopCtx()
	if err == nil && sctx.Err() != nil {
		err = sctx.Err()
	}
	if err != nil {
		cancel()
		_ = conn.Close()
		if timedOut {
			return nil, fmt.Errorf("no connection to the gateway within %v: %w", t.cfg.ConnectTimeout, err)
		}
		return nil, err
	}
	l := &link{t: t, conn: conn, stream: stream, cancel: cancel, onLost: onLost,
		wake: make(chan struct{}, 1), sent: make(chan struct{}), received: make(chan struct{})}
	t.mu.Lock()
	t.cur = conn
	t.mu.Unlock()
	go l.send()
	go l.receive()
	return l, nil
}

// current is the current link's connection, or nil.
func (t *Transport) current() *grpc.ClientConn {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.cur
}

func (t *Transport) release(conn *grpc.ClientConn) {
	t.mu.Lock()
	if t.cur == conn {
		t.cur = nil
	}
	t.mu.Unlock()
}

// relative maps a full topic to the frame's topic, or reports false for a
// topic outside the device's tree.
func (t *Transport) relative(topic string) (string, bool) {
	rel, ok := strings.CutPrefix(topic, t.prefix)
	return rel, ok && rel != ""
}

// link is one open DeviceLink stream: a sender goroutine owns Send (a
// gRPC stream allows one sender), a receiver goroutine owns Recv.
type link struct {
	t      *Transport
	conn   *grpc.ClientConn
	stream grpc.BidiStreamingClient[jv1.LinkFrame, jv1.LinkFrame]
	cancel context.CancelFunc
	onLost func(error)

	mu      sync.Mutex
	queue   []outFrame
	closing bool // Disconnect called: the sender drains and stops
	dead    error
	filters [][]string
	handler func(topic string, payload []byte)

	wake     chan struct{} // one token: the queue grew or closing
	sent     chan struct{} // closed when the sender has stopped
	received chan struct{} // closed when the receiver has stopped
	lostOnce sync.Once
}

type outFrame struct {
	f   *jv1.LinkFrame
	tok *token
}

// token is a publish's outcome.
type token struct {
	done chan struct{}
	err  error
}

func newToken() *token { return &token{done: make(chan struct{})} }

func (k *token) complete(err error) *token {
	k.err = err
	close(k.done)
	return k
}

func (k *token) Done() <-chan struct{} { return k.done }

// Error is the outcome, once Done is closed.
func (k *token) Error() error { return k.err }

func (l *link) Subscribe(filters map[string]byte, handler func(topic string, payload []byte)) jotunheim.Token {
	l.mu.Lock()
	defer l.mu.Unlock()
	for f := range filters {
		l.filters = append(l.filters, strings.Split(f, "/"))
	}
	l.handler = handler
	return newToken().complete(nil)
}

func (l *link) Publish(topic string, _ byte, retain bool, payload []byte) jotunheim.Token {
	rel, ok := l.t.relative(topic)
	if !ok {
		l.t.skipOnce.Do(func() {
			l.t.log.Info("topics outside the device's tree cannot travel over a gRPC link: skipped (Home Assistant discovery needs MQTT)", "topic", topic)
		})
		return newToken().complete(nil)
	}
	tok := newToken()
	l.mu.Lock()
	switch {
	case l.dead != nil:
		tok.complete(l.dead)
	case l.closing:
		tok.complete(ErrClosed)
	case len(l.queue) >= maxQueued:
		tok.complete(ErrQueueFull)
	default:
		l.queue = append(l.queue, outFrame{f: &jv1.LinkFrame{Topic: rel, Payload: payload, Retain: retain}, tok: tok})
	}
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	return tok
}

// send writes queued frames in order until Disconnect; after a failed
// Send it fails what is queued.
func (l *link) send() {
	defer close(l.sent)
	for {
		l.mu.Lock()
		q, closing, dead := l.queue, l.closing, l.dead
		l.queue = nil
		l.mu.Unlock()
		for _, o := range q {
			if dead != nil {
				o.tok.complete(dead)
				continue
			}
			if err := l.stream.Send(o.f); err != nil {
				dead = fmt.Errorf("send: %w", err)
				l.fail(dead)
			}
			o.tok.complete(dead)
		}
		if closing {
			return
		}
		<-l.wake
	}
}

// fail marks the link dead: later publishes fail at once.
func (l *link) fail(err error) {
	l.mu.Lock()
	if l.dead == nil {
		l.dead = err
	}
	l.mu.Unlock()
}

// receive hands each frame that matches a subscription to the handler, in
// order, until the stream ends; an end Disconnect did not ask for is the
// link's loss.
func (l *link) receive() {
	defer close(l.received)
	for {
		f, err := l.stream.Recv()
		if err != nil {
			if err == io.EOF {
				err = errors.New("the gateway ended the link")
			}
			l.fail(ErrClosed)
			l.mu.Lock()
			closing := l.closing
			l.mu.Unlock()
			if !closing {
				l.lostOnce.Do(func() { l.onLost(err) })
			}
			select { // let the sender fail what is queued
			case l.wake <- struct{}{}:
			default:
			}
			return
		}
		rel := f.GetTopic()
		if rel == "" || strings.ContainsAny(rel, "+#") || strings.HasPrefix(rel, "/") {
			l.t.log.Warn("frame from the gateway with a bad topic: dropped", "topic", rel)
			continue
		}
		topic := l.t.prefix + rel
		l.mu.Lock()
		h, match := l.handler, l.matches(topic)
		l.mu.Unlock()
		if h == nil || !match {
			l.t.log.Debug("frame from the gateway on no subscription: dropped", "topic", topic)
			continue
		}
		h(topic, f.GetPayload())
	}
}

// matches reports whether topic matches one of the subscriptions.
func (l *link) matches(topic string) bool {
	levels := strings.Split(topic, "/")
	for _, f := range l.filters {
		if match(f, levels) {
			return true
		}
	}
	return false
}

// match reports whether a topic's levels match an MQTT filter's: + is one
// level, a final # any number (zero included).
func match(filter, topic []string) bool {
	for i, f := range filter {
		if f == "#" {
			return i == len(filter)-1
		}
		if i >= len(topic) || (f != "+" && f != topic[i]) {
			return false
		}
	}
	return len(filter) == len(topic)
}

// Disconnect sends what is queued (for up to quiesce), half-closes the
// stream and waits up to quiesce for the gateway to end it, then closes
// the connection.
func (l *link) Disconnect(quiesce time.Duration) {
	l.mu.Lock()
	l.closing = true
	l.mu.Unlock()
	select {
	case l.wake <- struct{}{}:
	default:
	}
	deadline := time.NewTimer(quiesce)
	defer deadline.Stop()
	select {
	case <-l.sent:
		_ = l.stream.CloseSend() // the sender has stopped: Send's owner now
		select {
		case <-l.received:
		case <-deadline.C:
		}
	case <-deadline.C:
	}
	l.cancel()
	<-l.sent
	<-l.received
	l.t.release(l.conn)
	_ = l.conn.Close()
}
