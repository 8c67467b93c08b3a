package jormungandr

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// DefaultClientTimeout bounds a Client call whose context has no deadline.
const DefaultClientTimeout = 30 * time.Second

// Client calls Jormungandr over NATS. It is safe for concurrent use; the
// caller owns and closes the connection. Every error is a *fault.Error: the
// service's code and message, UNAVAILABLE when no replica answers or the
// replica holding a handle is gone, DEADLINE_EXCEEDED when ctx ends.
type Client struct {
	nc *nats.Conn
}

// NewClient returns a client on nc.
func NewClient(nc *nats.Conn) *Client { return &Client{nc: nc} }

// request sends body as JSON to subj and decodes the reply into out (when
// not nil). timeout, when positive and shorter than ctx's deadline, is what
// the service is given; the wait for the answer is bounded by ctx alone, so
// that the service's own timeout error arrives.
func (c *Client) request(ctx context.Context, subj string, body, out any, timeout time.Duration) (*nats.Msg, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultClientTimeout)
		defer cancel()
	}
	data, err := json.Marshal(body)
	if err != nil {
		return nil, fault.Wrap(fault.InvalidArgument, err, "encode request for %s: %v", subj, err)
	}
	d := time.Until(deadlineOf(ctx))
	if timeout > 0 && timeout < d {
		d = timeout
	}
	m := nats.NewMsg(subj)
	m.Data = data
	m.Header.Set(HeaderTimeout, max(d, time.Nanosecond).String())
	resp, err := c.nc.RequestMsgWithContext(ctx, m)
	if err != nil {
		return nil, microsvc.TransportError(err, subjects.JormungandrService, subj)
	}
	if err := microsvc.ReplyError(resp, subjects.JormungandrService, subj); err != nil {
		return resp, err
	}
	if out != nil {
		if err := json.Unmarshal(resp.Data, out); err != nil {
			return resp, fault.Wrap(fault.Internal, err, "decode %s reply: %v", subj, err)
		}
	}
	return resp, nil
}

// HTTP performs one HTTP request. timeout (0: none) bounds it below ctx's
// deadline. A response of any status is not an error.
func (c *Client) HTTP(ctx context.Context, req HTTPRequest, timeout time.Duration) (HTTPResponse, error) {
	var out HTTPResponse
	_, err := c.request(ctx, subjects.JormungandrHTTP, req, &out, timeout)
	return out, err
}

// ConnectWS opens a WebSocket held by one replica and returns its handle.
func (c *Client) ConnectWS(ctx context.Context, req WSConnectRequest) (Handle, error) {
	var h Handle
	_, err := c.request(ctx, subjects.JormungandrWSConnect, req, &h, 0)
	return h, err
}

// ConnectMQTT connects to an MQTT broker from one replica and returns the handle.
func (c *Client) ConnectMQTT(ctx context.Context, req MQTTConnectRequest) (Handle, error) {
	var h Handle
	_, err := c.request(ctx, subjects.JormungandrMQTTConnect, req, &h, 0)
	return h, err
}

// onHandle sends op on h to the replica holding it. When that replica is
// gone, the request has no responders and fails at once with UNAVAILABLE.
func (c *Client) onHandle(ctx context.Context, h Handle, op subjects.HandleOp, req HandleRequest, out any) error {
	subj, err := subjects.JormungandrHandle(h.Instance, op)
	if err != nil {
		return fault.New(fault.InvalidArgument, "handle %s: %v", h, err)
	}
	req.ID = h.ID
	_, err = c.request(ctx, subj, req, out, 0)
	if errors.Is(err, nats.ErrNoResponders) {
		return fault.Wrap(fault.Unavailable, err, "connection handle %s is gone: the jormungandr replica holding it stopped", h)
	}
	return err
}

// Send sends a text (or binary) message on a WebSocket handle.
func (c *Client) Send(ctx context.Context, h Handle, data []byte, binary bool) error {
	return c.onHandle(ctx, h, subjects.HandleSend, HandleRequest{Data: data, Binary: binary}, nil)
}

// Receive waits up to wait (negative: until ctx's deadline) for the next
// message on a handle; nil when none arrived in time.
func (c *Client) Receive(ctx context.Context, h Handle, wait time.Duration) (*Message, error) {
	req := HandleRequest{}
	if wait >= 0 {
		req.Wait = wait.String()
	}
	var out ReceiveReply
	err := c.onHandle(ctx, h, subjects.HandleReceive, req, &out)
	return out.Message, err
}

// Publish publishes payload to topic on an MQTT handle at QoS 0 or 1.
func (c *Client) Publish(ctx context.Context, h Handle, topic string, payload []byte, qos int, retain bool) error {
	return c.onHandle(ctx, h, subjects.HandlePublish, HandleRequest{Topic: topic, Data: payload, QoS: qos, Retain: retain}, nil)
}

// Subscribe subscribes an MQTT handle to a topic filter; messages arrive
// through Receive.
func (c *Client) Subscribe(ctx context.Context, h Handle, topic string, qos int) error {
	return c.onHandle(ctx, h, subjects.HandleSubscribe, HandleRequest{Topic: topic, QoS: qos}, nil)
}

// Close closes the connection of h. Closing a closed handle is not an error.
func (c *Client) Close(ctx context.Context, h Handle) error {
	return c.onHandle(ctx, h, subjects.HandleClose, HandleRequest{}, nil)
}

// closeAsync asks the replica holding h to close it without waiting.
func (c *Client) closeAsync(h Handle) {
	subj, err := subjects.JormungandrHandle(h.Instance, subjects.HandleClose)
	if err != nil {
		return
	}
	data, _ := json.Marshal(HandleRequest{ID: h.ID})
	_ = c.nc.Publish(subj, data)
}
