package jotunheim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
)

// Transport kinds of TransportConfig.Kind.
const (
	// TransportMQTT is MQTT 3.1.1 to the NATS server's MQTT listener; the
	// agent library carries it.
	TransportMQTT = "mqtt"
	// TransportGRPC is a gRPC stream to the gateway (loki.v1.DeviceLink):
	// the agent library does not carry it (it imports no gRPC), so the
	// program passes one with WithTransport (cmd/jotunheim uses
	// devices/jotunheim/grpclink).
	TransportGRPC = "grpc"
)

// Transport connects the agent to the platform. The agent opens a new
// connection for every session and drives the retries itself (full
// jitter, unlimited), so an implementation never reconnects on its own.
// MQTT is built in; devices/jotunheim/grpclink is the gRPC one.
type Transport interface {
	// Connect opens a connection for the device. will is what the
	// platform must see on the device's status topic when the connection
	// is lost without a clean stop (the MQTT will; a gRPC gateway says it
	// for a link that ends). onLost is called at most once, when the
	// connection is lost (never after Disconnect). Connect gives up when
	// ctx ends.
	Connect(ctx context.Context, will Message, onLost func(error)) (Conn, error)
	// Endpoint names the other end in logs and errors: the broker's URL,
	// the gateway's address.
	Endpoint() string
}

// Conn is one connection of a Transport. Its methods are safe for
// concurrent use.
type Conn interface {
	// Subscribe delivers to handler every message on the topics that
	// match filters (MQTT filters, with + and #, and their QoS). The
	// handler may be called concurrently.
	Subscribe(filters map[string]byte, handler func(topic string, payload []byte)) Token
	// Publish sends payload on topic (a full topic: jotunheim/<id>/...).
	// The token completes when the message is written (QoS 0) or
	// acknowledged (QoS 1, where the transport has acknowledgements).
	Publish(topic string, qos byte, retain bool, payload []byte) Token
	// Disconnect closes the connection, giving what is in flight up to
	// quiesce to be sent. The will is not published.
	Disconnect(quiesce time.Duration)
}

// Token is the pending outcome of a Publish or Subscribe (paho's
// mqtt.Token is one): Done is closed once it completes, then Error tells
// how.
type Token interface {
	Done() <-chan struct{}
	Error() error
}

// Message is one message on a topic.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	Retain  bool
}

// WithTransport connects through t instead of the transport the config
// names: how a program adds the gRPC transport (TransportGRPC), or a test
// its own.
func WithTransport(t Transport) Option { return func(a *Agent) { a.transport = t } }

// ErrNoTransport is a config asking for a transport the program does not
// carry: TransportGRPC without WithTransport. It comes wrapped in
// ErrConfig.
var ErrNoTransport = errors.New(`this program was built without a gRPC transport (the agent library carries only MQTT; pass one with WithTransport)`)

// transportFor returns the built-in transport of cfg.
func transportFor(cfg Config, login Login, tc *tls.Config) (Transport, error) {
	if cfg.Transport.Kind != TransportMQTT {
		return nil, fmt.Errorf("%w: %s: transport.kind %q: %w", ErrConfig, cfg.at("transport.kind"), cfg.Transport.Kind, ErrNoTransport)
	}
	return &mqttTransport{broker: cfg.Transport.Broker, id: cfg.Device.ID, login: login, tls: tc,
		connectTimeout: cfg.Resilience.NegotiateTimeout}, nil
}

// mqttTransport is MQTT 3.1.1 over paho, with paho's own reconnect off.
type mqttTransport struct {
	broker, id     string
	login          Login
	tls            *tls.Config
	connectTimeout time.Duration
}

var _ Transport = (*mqttTransport)(nil)

func (m *mqttTransport) Endpoint() string { return m.broker }

func (m *mqttTransport) Connect(ctx context.Context, will Message, onLost func(error)) (Conn, error) {
	opts := mqtt.NewClientOptions().
		AddBroker(m.broker).
		SetClientID(m.id).
		SetUsername(m.login.Username).
		SetPassword(m.login.Password).
		SetCleanSession(true).
		SetKeepAlive(keepAlive).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(m.connectTimeout).
		SetWriteTimeout(publishTimeout).
		SetOrderMatters(false).
		SetBinaryWill(will.Topic, will.Payload, will.QoS, will.Retain).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) { onLost(err) })
	if m.tls != nil {
		opts.SetTLSConfig(m.tls)
	}
	c := mqtt.NewClient(opts)
	if err := waitToken(ctx, c.Connect(), publishTimeout+m.connectTimeout); err != nil {
		return nil, err
	}
	return mqttConn{c}, nil
}

// mqttConn is a connected paho client.
type mqttConn struct{ c mqtt.Client }

func (c mqttConn) Subscribe(filters map[string]byte, handler func(topic string, payload []byte)) Token {
	return c.c.SubscribeMultiple(filters, func(_ mqtt.Client, m mqtt.Message) { handler(m.Topic(), m.Payload()) })
}

func (c mqttConn) Publish(topic string, qos byte, retain bool, payload []byte) Token {
	return c.c.Publish(topic, qos, retain, payload)
}

func (c mqttConn) Disconnect(quiesce time.Duration) { c.c.Disconnect(uint(quiesce / time.Millisecond)) }

// waitToken waits for t until ctx ends or limit passes.
func waitToken(ctx context.Context, t Token, limit time.Duration) error {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return errors.New("no answer from the platform in time")
	}
}
