package jormungandr

import (
	"context"
	"crypto/tls"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
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
	t, err := s.allowTarget(req.Broker, mqttSchemes, req.Hosts)
	if err != nil {
		return nil, nil, err
	}
	if err := s.handles.reserve(); err != nil {
		return nil, nil, err
	}
	m, err := s.connectMQTT(ctx, req, t)
	if err != nil {
		return nil, nil, err
	}
	return s.register(m)
}

// connectMQTT connects to the broker of t (MQTT 3.1.1, clean session, no
// automatic reconnect) through the policy-checking dialer.
func (s *Service) connectMQTT(ctx context.Context, req MQTTConnectRequest, t target) (*mqttConn, error) {
	what := "mqtt " + t.hostport()
	m := &mqttConn{broker: t.hostport(), msgs: make(chan Message, s.cfg.Handles.Buffer), dead: make(chan struct{})}
	useTLS := t.scheme == "ssl" || t.scheme == "tls" || t.scheme == "mqtts"
	clientID := req.ClientID
	if clientID == "" {
		clientID = "loki-" + nuid.Next()
	}
	timeout := max(time.Until(deadlineOf(ctx)), time.Millisecond)
	opts := mqtt.NewClientOptions().
		AddBroker("tcp://" + t.hostport()).
		SetClientID(clientID).
		SetUsername(req.Username).
		SetPassword(req.Password).
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
			if err != nil || !useTLS {
				return c, err
			}
			tc := tls.Client(c, &tls.Config{ServerName: t.host, MinVersion: tls.VersionTLS12})
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
	return waitToken(ctx, m.cl.Publish(topic, byte(qos), retain, data), "mqtt "+m.broker+": publish to "+topic)
}

func (m *mqttConn) subscribe(ctx context.Context, topic string, qos int) error {
	if err := m.gone(); err != nil {
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
