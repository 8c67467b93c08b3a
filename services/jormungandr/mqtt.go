package jormungandr

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// mqttQuiesce is how long a disconnect lets in-flight work finish, in ms.
const mqttQuiesce = 250

func (s *Service) serveMQTTConnect(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	req, err := DecodeMQTTConnectRequest(r.Data())
	if err != nil {
		return nil, nil, err
	}
	if req.Broker == LocalBroker {
		if s.local == nil {
			return nil, nil, fault.New(fault.FailedPrecondition,
				"mqtt broker %q is Loki's own MQTT listener, and this Jörmungandr has none "+
					"(`loki up` has one unless --mqtt-port is 0; `loki serve jormungandr` has not): name the broker's URL, such as tcp://host:1883", LocalBroker)
		}
		req.Broker = s.local.url()
	}
	t, err := s.allowTarget(req.Broker, mqttSchemes, req.Hosts)
	if err != nil {
		return nil, nil, err
	}
	if err := s.handles.reserve(); err != nil {
		return nil, nil, err
	}
	login, err := s.mqttLogin(t, req)
	if err != nil {
		return nil, nil, err
	}
	m, err := s.connectMQTT(ctx, req.ClientID, login, t)
	if err != nil {
		return nil, nil, err
	}
	return s.register(m)
}

// mqttLogin is how a connection logs in and which topics it may use.
type mqttLogin struct {
	user, pass string
	// local: the broker is Loki's own listener and user is an identity
	// fenced to filters.
	local bool
	// filters are the topic filters publish and subscribe must fall
	// within; nil: any topic.
	filters []string
}

// mqttLogin decides how a connection to t logs in. On Loki's own listener
// it ignores the request's username and password and logs in with an
// identity limited to the request's topic filters, refusing a request that
// names none; elsewhere it uses the request's login, and checks topics
// against its filters unless they include every topic.
func (s *Service) mqttLogin(t target, req MQTTConnectRequest) (mqttLogin, error) {
	if !s.local.is(t.ip, t.port) {
		l := mqttLogin{user: req.Username, pass: req.Password, filters: req.Topics}
		if slices.Contains(l.filters, anyTopic) {
			l.filters = nil
		}
		return l, nil
	}
	what := "mqtt " + t.hostport()
	var filters []string
	for _, f := range req.Topics {
		if f != anyTopic && !slices.Contains(filters, f) {
			filters = append(filters, f)
		}
	}
	if len(filters) == 0 {
		return mqttLogin{}, fault.New(fault.PermissionDenied,
			"%s is Loki's own MQTT listener, where a tool may use only the topics its grants name: "+
				"add a grant such as \"net.mqtt:%s/<topic>\" (it covers <topic> and every topic below it)",
			what, grantHost(t.host))
	}
	for _, f := range filters {
		// A wildcard first level would reach every subject tree the
		// server's deny list forgets ($JS, $KV, a new component's root).
		if first, _, _ := strings.Cut(f, "/"); first == "+" || first == "#" {
			return mqttLogin{}, fault.New(fault.PermissionDenied,
				"%s is Loki's own MQTT listener: topic filter %q: name the first topic level in the grant", what, f)
		}
		if _, err := subjects.MQTTFilterSubjects(f); err != nil {
			return mqttLogin{}, fault.New(fault.PermissionDenied, "%s is Loki's own MQTT listener: %s", what, filterError(err))
		}
	}
	user, pass, err := s.local.login(filters)
	switch {
	case errors.Is(err, subjects.ErrInvalidToken):
		return mqttLogin{}, fault.New(fault.PermissionDenied, "%s is Loki's own MQTT listener: %s", what, filterError(err))
	case err != nil:
		return mqttLogin{}, fault.Wrap(fault.Internal, err, "%s: log in to Loki's own MQTT listener: %v", what, err)
	}
	return mqttLogin{user: user, pass: pass, local: true, filters: filters}, nil
}

// filterError is the message of a topic filter error without the subject
// vocabulary.
func filterError(err error) string {
	return strings.TrimPrefix(err.Error(), subjects.ErrInvalidToken.Error()+": ")
}

// connectMQTT connects to the broker of t (MQTT 3.1.1, clean session, no
// automatic reconnect) through the policy-checking dialer, logging in with
// login. On Loki's own listener the client id is prefixed with the fenced
// identity's name, so that a script cannot take over, and so disconnect,
// the session of a device or of another tool.
func (s *Service) connectMQTT(ctx context.Context, clientID string, login mqttLogin, t target) (*mqttConn, error) {
	what := "mqtt " + t.hostport()
	useTLS := t.scheme == "ssl" || t.scheme == "tls" || t.scheme == "mqtts"
	tlsCfg := &tls.Config{ServerName: t.host, MinVersion: tls.VersionTLS12}
	if login.local && s.local.tls != nil {
		if s.local.noCert {
			return nil, fault.New(fault.FailedPrecondition, "%s is Loki's own MQTT listener, which requires a client certificate: "+
				"set local_mqtt_cert_file and local_mqtt_key_file in the [jormungandr] service config to one its client CA signed", what)
		}
		// The listener speaks TLS whatever the URL says, and is verified
		// against its own certificate rather than the system roots.
		useTLS = true
		tlsCfg = s.local.tls.Clone()
		if tlsCfg.ServerName == "" {
			tlsCfg.ServerName = t.host
		}
	}
	m := &mqttConn{broker: t.hostport(), filters: login.filters, msgs: make(chan Message, s.cfg.Handles.Buffer), dead: make(chan struct{})}
	if clientID == "" {
		clientID = "loki-" + nuid.Next()
	}
	if login.local {
		clientID = login.user + "-" + clientID
	}
	timeout := max(time.Until(deadlineOf(ctx)), time.Millisecond)
	opts := mqtt.NewClientOptions().
		AddBroker("tcp://" + t.hostport()).
		SetClientID(clientID).
		SetUsername(login.user).
		SetPassword(login.pass).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(false).
		SetConnectTimeout(timeout).
		SetWriteTimeout(10 * time.Second).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			m.die(fault.Wrap(fault.Unavailable, err, "%s: connection lost: %v", what, err))
		}).
		SetCustomOpenConnectionFn(func(*url.URL, mqtt.ClientOptions) (net.Conn, error) {
			c, err := s.pol.dial(ctx, t)
			if err != nil {
				return nil, err
			}
			// A name the policy resolves into the listener's address must
			// not reach it with the request's own login.
			if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); !login.local && err == nil && s.local.is(ap.Addr(), int(ap.Port())) {
				_ = c.Close()
				return nil, fault.New(fault.PermissionDenied, "%s: host %q leads to Loki's own MQTT listener: connect to its address, %s", what, t.host, ap)
			}
			if !useTLS {
				return c, nil
			}
			tc := tls.Client(c, tlsCfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				_ = c.Close()
				return nil, err
			}
			return tc, nil
		})
	m.cl = mqtt.NewClient(opts)
	if err := waitToken(ctx, m.cl.Connect(), what+": connect"); err != nil {
		m.cl.Disconnect(0)
		return nil, err
	}
	return m, nil
}

// allowed refuses topic (a filter for subscribe) unless one of m's filters
// covers it. The broker is the real fence on Loki's own listener; this
// gives a clear error where the broker would drop the message silently.
func (m *mqttConn) allowed(op, topic string) error {
	if m.filters == nil {
		return nil
	}
	for _, f := range m.filters {
		if topicMatches(f, topic) {
			return nil
		}
	}
	return fault.New(fault.PermissionDenied, "mqtt %s: %s %q: the tool's net.mqtt grants for this broker allow only %s",
		m.broker, op, topic, strings.Join(m.filters, ", "))
}

// waitToken waits for a paho operation until ctx ends, mapping its error.
func waitToken(ctx context.Context, tok mqtt.Token, what string) error {
	select {
	case <-tok.Done():
	case <-ctx.Done():
		return fault.New(fault.DeadlineExceeded, "%s: no answer before the deadline", what)
	}
	if err := tok.Error(); err != nil {
		return netError(ctx, err, what)
	}
	return nil
}

// mqttConn is a held MQTT client. Messages of its subscriptions are queued
// in msgs; when msgs is full, new ones are dropped and counted.
type mqttConn struct {
	broker  string
	filters []string // nil: any topic
	cl      mqtt.Client
	msgs    chan Message
	dead    chan struct{}
	dropped atomic.Uint64

	mu  sync.Mutex
	err error
}

var _ conn = (*mqttConn)(nil)

func (m *mqttConn) kind() string { return "mqtt" }

func (m *mqttConn) die(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.err == nil {
		m.err = err
		close(m.dead)
	}
}

func (m *mqttConn) gone() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.err
}

func (m *mqttConn) publish(ctx context.Context, topic string, data []byte, qos int, retain bool) error {
	if err := m.gone(); err != nil {
		return err
	}
	if err := m.allowed("publish to", topic); err != nil {
		return err
	}
	return waitToken(ctx, m.cl.Publish(topic, byte(qos), retain, data), "mqtt "+m.broker+": publish to "+topic)
}

func (m *mqttConn) subscribe(ctx context.Context, topic string, qos int) error {
	if err := m.gone(); err != nil {
		return err
	}
	if err := m.allowed("subscribe to", topic); err != nil {
		return err
	}
	tok := m.cl.Subscribe(topic, byte(qos), func(_ mqtt.Client, msg mqtt.Message) {
		select {
		case m.msgs <- Message{Topic: msg.Topic(), Data: msg.Payload()}:
		default:
			m.dropped.Add(1)
		}
	})
	if err := waitToken(ctx, tok, "mqtt "+m.broker+": subscribe to "+topic); err != nil {
		return err
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		for t, code := range st.Result() {
			if code == 0x80 {
				return fault.New(fault.PermissionDenied, "mqtt %s: the broker refused the subscription to %s", m.broker, t)
			}
		}
	}
	return nil
}

func (m *mqttConn) receive(ctx context.Context, wait time.Duration) (*Message, error) {
	return receiveFrom(ctx, wait, m.msgs, m.dead, m.gone)
}

func (m *mqttConn) send(context.Context, []byte, bool) error {
	return errUnsupported("send", "mqtt")
}

func (m *mqttConn) close() {
	m.die(fault.New(fault.FailedPrecondition, "mqtt %s: connection is closed", m.broker))
	m.cl.Disconnect(mqttQuiesce)
}
