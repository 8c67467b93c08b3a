package jotunheim

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/loki-iot/loki/devices/wire"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/proto"
)

// keepAlive is the MQTT keepalive the protocol asks for.
const keepAlive = 30 * time.Second

// session is one connection of the transport: from its connect to its
// loss or the agent's stop. The transport never reconnects on its own; Run
// starts a new session instead.
type session struct {
	client Conn
	neg    chan *jv1.Negotiation

	lostOnce sync.Once
	lost     chan struct{}
	lostErr  error
}

func (s *session) markLost(err error) {
	s.lostOnce.Do(func() {
		s.lostErr = err
		close(s.lost)
	})
}

// session connects and runs the protocol until the connection is lost or
// ctx ends. accepted reports whether the platform accepted the manifest
// (the backoff starts over after an accepted session).
func (a *Agent) session(ctx context.Context) (accepted bool, err error) {
	s := &session{neg: make(chan *jv1.Negotiation, 1), lost: make(chan struct{})}
	will := Message{Topic: a.topics.status, Payload: []byte(subjects.PresenceOffline), QoS: 1, Retain: true}
	c, err := a.transport.Connect(ctx, will, s.markLost)
	if err != nil {
		return false, fmt.Errorf("connect to %s: %w", a.transport.Endpoint(), err)
	}
	s.client = c
	a.connects.Add(1)
	a.log.Info("connected", "to", a.transport.Endpoint())
	a.mu.Lock()
	a.sess = s
	a.states = map[string]string{} // a new connection gets every state again
	a.mu.Unlock()
	defer func() {
		a.online.Store(false)
		a.spool.offline()
		a.mu.Lock()
		a.sess = nil
		a.mu.Unlock()
		if ctx.Err() != nil || errors.Is(err, ErrRefused) {
			// A clean stop: say so, since a DISCONNECT suppresses the will.
			if perr := a.wait(context.Background(), s.client.Publish(a.topics.status, 1, true, []byte(subjects.PresenceOffline))); perr != nil {
				a.log.Warn("publish offline", logErr, perr)
			}
			s.client.Disconnect(250 * time.Millisecond)
			a.log.Info("disconnected", "status", subjects.PresenceOffline)
			return
		}
		s.client.Disconnect(0)
	}()

	filters := map[string]byte{a.topics.negotiation: 0, a.topics.capsGet: 0, a.topics.cmd: 0, a.topics.callResult: 0}
	a.haFilters(filters)
	filters[a.streamCtlTopic()] = 0
	if a.ota != nil {
		filters[a.topics.otaOffer], filters[a.topics.otaChunk] = 0, 0
	}
	if err := a.wait(ctx, s.client.Subscribe(filters, func(topic string, payload []byte) { a.handle(s, topic, payload) })); err != nil {
		return false, fmt.Errorf("subscribe: %w", err)
	}
	if err := a.wait(ctx, s.client.Publish(a.topics.status, 1, true, []byte(subjects.PresenceOnline))); err != nil {
		return false, fmt.Errorf("publish online: %w", err)
	}
	if err := a.negotiate(ctx, s); err != nil {
		return false, err
	}
	a.online.Store(true)
	if a.ota != nil { // OTA: the health window, reports, a download's resume
		poke(a.ota.accepted)
		poke(a.ota.nudge)
	}
	a.publishDiscovery() // Home Assistant: discovery before states
	// Store-and-forward: what was spooled offline goes first, in order.
	if err := a.flushSpool(ctx, s); err != nil {
		return true, err
	}
	a.publishStates(true)
	for {
		select {
		case <-ctx.Done():
			return true, nil
		case <-s.lost:
			return true, fmt.Errorf("connection lost: %w", s.lostErr)
		case n := <-s.neg:
			// The answer to a later manifest (an update or a caps request).
			a.logNegotiation(n)
		}
	}
}

// negotiate sends the CONNECT manifest and waits for the platform's
// answer, sending it again with backoff while none comes (the platform
// service may be down while the broker is up).
func (a *Agent) negotiate(ctx context.Context, s *session) error {
	for attempt := 0; ; attempt++ {
		if err := a.publishManifest(jv1.Manifest_REASON_CONNECT, ""); err != nil {
			return fmt.Errorf("publish manifest: %w", err)
		}
		timer := time.NewTimer(a.cfg.Resilience.NegotiateTimeout)
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-s.lost:
			timer.Stop()
			return fmt.Errorf("connection lost while negotiating: %w", s.lostErr)
		case n := <-s.neg:
			timer.Stop()
			if !n.GetAccepted() {
				a.log.Error("the platform refused this device", "reason", n.GetReason(),
					"platform_protocol", wire.VersionString(n.GetPlatformProtocol()), "protocol", wire.VersionString(wire.Version))
				return fmt.Errorf("%w: %s", ErrRefused, n.GetReason())
			}
			a.logNegotiation(n)
			return nil
		case <-timer.C:
		}
		d := a.backoff(attempt)
		a.log.Warn("no answer from the platform to the manifest; sending it again",
			"waited", a.cfg.Resilience.NegotiateTimeout, "in", d.Round(time.Millisecond))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-s.lost:
			t.Stop()
			return fmt.Errorf("connection lost while negotiating: %w", s.lostErr)
		case <-t.C:
		}
	}
}

func (a *Agent) logNegotiation(n *jv1.Negotiation) {
	switch {
	case !n.GetAccepted():
		a.log.Error("the platform refused this device's manifest", "reason", n.GetReason())
	case n.GetReason() != "":
		a.log.Warn("accepted by the platform with a warning", "reason", n.GetReason(), "tools", n.GetTools())
	default:
		a.log.Info("accepted by the platform", "tools", n.GetTools())
	}
}

// handle dispatches one message from the platform. It never panics on a
// bad payload: it logs and counts it.
func (a *Agent) handle(s *session, topic string, payload []byte) {
	a.received.Add(1)
	a.bw.received(len(topic) + len(payload))
	max := a.cfg.Limits.MaxMessageBytes
	bad := func(err error) {
		a.bad.Add(1)
		a.log.Warn("bad message from the platform: dropped", logTopic, topic, "bytes", len(payload), logErr, err)
	}
	switch topic {
	case a.topics.negotiation:
		n := &jv1.Negotiation{}
		if err := wire.Decode(payload, n, max); err != nil {
			bad(err)
			return
		}
		select {
		case s.neg <- n:
		default: // an answer is already waiting; the newer one is a duplicate
		}
	case a.topics.capsGet:
		r := &jv1.CapsRequest{}
		if err := wire.Decode(payload, r, max); err != nil {
			bad(err)
			return
		}
		if err := a.publishManifest(jv1.Manifest_REASON_REQUEST, r.GetId()); err != nil {
			a.log.Warn("answer caps request", logErr, err)
		}
	case a.topics.cmd:
		c, err := wire.DecodeCommand(payload, max)
		if err != nil {
			bad(err)
			return
		}
		a.enqueue(c)
	case a.topics.callResult:
		r := &jv1.ToolResult{}
		if err := wire.Decode(payload, r, max); err != nil {
			bad(err)
			return
		}
		a.deliverToolResult(r)
	case a.streamCtlTopic():
		a.handleStreamCtl(payload)
	case a.topics.otaOffer, a.topics.otaChunk:
		if a.ota == nil {
			bad(fmt.Errorf("%w: OTA is not configured", wire.ErrDecode))
			return
		}
		if topic == a.topics.otaChunk {
			c := &jv1.OTAChunk{}
			if err := wire.Decode(payload, c, max); err != nil {
				bad(err)
				return
			}
			a.handleChunk(c)
			return
		}
		off := &jv1.OTAOffer{}
		if err := wire.Decode(payload, off, max); err != nil {
			bad(err)
			return
		}
		a.handleOffer(off)
	default:
		if a.handleHA(topic, payload) {
			return
		}
		bad(fmt.Errorf("%w: unexpected topic", wire.ErrDecode))
	}
}

// wait waits for a transport's token until ctx ends or publishTimeout passes.
func (a *Agent) wait(ctx context.Context, t Token) error {
	return waitToken(ctx, t, publishTimeout+a.cfg.Resilience.NegotiateTimeout)
}

// publish sends m (or raw, when m is nil) on topic over the current
// connection, waiting for it to be written (QoS 0) or acknowledged (QoS 1).
func (a *Agent) publish(topic string, qos byte, retain bool, m proto.Message) error {
	var payload []byte
	if m != nil {
		var err error
		if payload, err = wire.Encode(m); err != nil {
			return err
		}
	}
	return a.publishRaw(topic, qos, retain, payload)
}

// publishAsync is publish without waiting for the broker's acknowledgement:
// the command worker goes on to the next command while a result is on its
// way; a failed delivery is logged as what.
func (a *Agent) publishAsync(topic string, qos byte, m proto.Message, what string) {
	payload, err := wire.Encode(m)
	a.mu.Lock()
	s := a.sess
	a.mu.Unlock()
	if err == nil && s == nil {
		err = errNotConnected
	}
	if err != nil {
		a.log.Warn("publish "+what, logErr, err)
		return
	}
	a.bw.sent(len(topic) + len(payload))
	t := s.client.Publish(topic, qos, false, payload)
	go func() {
		if err := a.wait(context.Background(), t); err != nil {
			a.log.Warn("publish "+what, logErr, err)
		}
	}()
}

func (a *Agent) publishRaw(topic string, qos byte, retain bool, payload []byte) error {
	a.mu.Lock()
	s := a.sess
	a.mu.Unlock()
	if s == nil {
		return errNotConnected
	}
	a.bw.sent(len(topic) + len(payload))
	return a.wait(context.Background(), s.client.Publish(topic, qos, retain, payload))
}
