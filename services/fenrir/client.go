package fenrir

import (
	"context"
	"encoding/json"
	"time"

	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/middleware"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// DefaultClientTimeout bounds a Client call whose context has no deadline.
const DefaultClientTimeout = 10 * time.Second

// Client calls Fenrir over NATS. It is safe for concurrent use; the caller
// owns and closes the connection. Every error is a *fault.Error: the
// service's code and message, INVALID_ARGUMENT for arguments refused before
// sending, UNAVAILABLE when no instance serves the board, DEADLINE_EXCEEDED
// when ctx ends.
type Client struct {
	nc *nats.Conn
}

// NewClient returns a client on nc.
func NewClient(nc *nats.Conn) *Client { return &Client{nc: nc} }

// Do sends req as operation op (one of subjects.FenrirOps) to board and
// returns the JSON answer.
func (c *Client) Do(ctx context.Context, board, op string, req Request) ([]byte, error) {
	subj, err := subjects.FenrirOp(board, op)
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "fenrir %s: %v", op, err)
	}
	if len(body) > MaxRequestBytes {
		return nil, fault.New(fault.InvalidArgument, "fenrir %s: request is %d bytes: at most %d", op, len(body), MaxRequestBytes)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultClientTimeout)
		defer cancel()
	}
	dl, _ := ctx.Deadline()
	h := nats.Header{}
	middleware.SetTimeout(h, HeaderTimeout, dl)
	resp, err := c.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subj, Header: h, Data: body})
	if err != nil {
		return nil, noBoard(microsvc.TransportError(err, subjects.FenrirService, subj), board)
	}
	if err := microsvc.ReplyError(resp, subjects.FenrirService, subj); err != nil {
		return nil, noBoard(err, board)
	}
	return resp.Data, nil
}

// noBoard names the board when nothing serves it: that is the usual cause.
func noBoard(err error, board string) error {
	if fault.CodeOf(err) == fault.Unavailable {
		return fault.Wrap(fault.Unavailable, err, "no Fenrir instance serves board %q (%s)", board, fault.MessageOf(err))
	}
	return err
}

func call[T any](ctx context.Context, c *Client, board, op string, req Request) (T, error) {
	var v T
	b, err := c.Do(ctx, board, op, req)
	if err != nil {
		return v, err
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fault.Wrap(fault.Internal, err, "decode fenrir %s reply: %v", op, err)
	}
	return v, nil
}

// Read reads a pin (by name or number) of board.
func (c *Client) Read(ctx context.Context, board, pin string) (hardware.PinState, error) {
	return call[hardware.PinState](ctx, c, board, subjects.FenrirGPIORead, Request{Pin: pin})
}

// Write drives an output pin to level 0 or 1.
func (c *Client) Write(ctx context.Context, board, pin string, level int) (hardware.PinState, error) {
	return call[hardware.PinState](ctx, c, board, subjects.FenrirGPIOWrite, Request{Pin: pin, Level: &level})
}

// Mode sets a pin's direction (hardware.ModeIn, hardware.ModeOut) and, for an input, its pull.
func (c *Client) Mode(ctx context.Context, board, pin, mode, pull string) (hardware.PinState, error) {
	return call[hardware.PinState](ctx, c, board, subjects.FenrirGPIOMode, Request{Pin: pin, Mode: mode, Pull: pull})
}

// PWM outputs duty (0..1) at hz (0 means 1000) on an output pin.
func (c *Client) PWM(ctx context.Context, board, pin string, duty, hz float64) (hardware.PinState, error) {
	return call[hardware.PinState](ctx, c, board, subjects.FenrirGPIOPWM, Request{Pin: pin, Duty: &duty, Hz: hz})
}

// WaitEdge waits up to timeout for edge (hardware.EdgeRising,
// hardware.EdgeFalling or hardware.EdgeBoth) on an input pin. A timeout is not an error: the Edge has Edge false.
func (c *Client) WaitEdge(ctx context.Context, board, pin, edge string, timeout time.Duration) (hardware.Edge, error) {
	return call[hardware.Edge](ctx, c, board, subjects.FenrirGPIOWait, Request{Pin: pin, Edge: edge, Timeout: timeout.String()})
}

// ReadSensor reads a named sensor.
func (c *Client) ReadSensor(ctx context.Context, board, name string) (hardware.Reading, error) {
	return call[hardware.Reading](ctx, c, board, subjects.FenrirSensorRead, Request{Name: name})
}

// SetActuator drives a named actuator: "on", "off", "toggle", a boolean, a
// number (LED brightness 0..1, motor speed -1..1) or, for a motor,
// map[string]any{"speed": 0..1, "direction": "forward"|"reverse"}.
func (c *Client) SetActuator(ctx context.Context, board, name string, value any) (hardware.ActuatorState, error) {
	return call[hardware.ActuatorState](ctx, c, board, subjects.FenrirActuatorSet, Request{Name: name, Value: value})
}

// List describes the board's pins, sensors and actuators.
func (c *Client) List(ctx context.Context, board string) (hardware.BoardInfo, error) {
	return call[hardware.BoardInfo](ctx, c, board, subjects.FenrirBoardList, Request{})
}
