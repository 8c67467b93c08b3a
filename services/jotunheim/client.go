package jotunheim

import (
	"context"
	"encoding/json"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/middleware"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// DefaultClientTimeout bounds a Client call whose context has no deadline.
// A command without a deadline is sent without one, so the service applies
// its own command_timeout; keep that below this.
const DefaultClientTimeout = time.Minute

// Client calls the device service over NATS. It is safe for concurrent
// use; the caller owns and closes the connection. Every error is a
// *fault.Error: the service's code and message (NOT_FOUND for an unknown
// device, UNAVAILABLE for an offline one, DEADLINE_EXCEEDED for a device
// that does not answer, the device's own code for a failed command),
// INVALID_ARGUMENT for arguments refused before sending, UNAVAILABLE when
// no replica answers.
type Client struct {
	nc *nats.Conn
}

// NewClient returns a client on nc.
func NewClient(nc *nats.Conn) *Client { return &Client{nc: nc} }

// request sends body on subj, passing ctx's deadline in HeaderTimeout, and
// returns the reply's body.
func (c *Client) request(ctx context.Context, subj string, body []byte) ([]byte, error) {
	h := nats.Header{}
	if dl, ok := ctx.Deadline(); ok {
		middleware.SetTimeout(h, HeaderTimeout, dl)
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultClientTimeout)
		defer cancel()
	}
	resp, err := c.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subj, Header: h, Data: body})
	if err != nil {
		return nil, microsvc.TransportError(err, subjects.JotunheimService, subj)
	}
	if err := microsvc.ReplyError(resp, subjects.JotunheimService, subj); err != nil {
		return nil, err
	}
	return resp.Data, nil
}

func (c *Client) device(ctx context.Context, subj, id string) (*jv1.Device, error) {
	body, err := deviceBody(id)
	if err != nil {
		return nil, err
	}
	b, err := c.request(ctx, subj, body)
	if err != nil {
		return nil, err
	}
	d := &jv1.Device{}
	if err := protojson.Unmarshal(b, d); err != nil {
		return nil, fault.Wrap(fault.Internal, err, "decode %s reply: %v", subj, err)
	}
	return d, nil
}

func deviceBody(id string) ([]byte, error) {
	if err := subjects.ValidDeviceID(id); err != nil {
		return nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	return protojson.Marshal(&jv1.DeviceRequest{Id: id})
}

// List returns every known device, sorted by id. A list larger than one
// message comes in parts (HeaderChunks), gathered here.
func (c *Client) List(ctx context.Context) ([]*jv1.Device, error) {
	subj := subjects.DevicesList
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultClientTimeout)
		defer cancel()
	}
	inbox := c.nc.NewRespInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, microsvc.TransportError(err, subjects.JotunheimService, subj)
	}
	defer func() { _ = sub.Unsubscribe() }()
	m := nats.NewMsg(subj)
	m.Reply = inbox
	m.Header.Set(HeaderChunks, "1")
	if dl, ok := ctx.Deadline(); ok {
		middleware.SetTimeout(m.Header, HeaderTimeout, dl)
	}
	if err := c.nc.PublishMsg(m); err != nil {
		return nil, microsvc.TransportError(err, subjects.JotunheimService, subj)
	}
	var out []*jv1.Device
	for {
		resp, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return nil, microsvc.TransportError(err, subjects.JotunheimService, subj)
		}
		if err := microsvc.ReplyError(resp, subjects.JotunheimService, subj); err != nil {
			return nil, err
		}
		list := &jv1.DeviceList{}
		if err := protojson.Unmarshal(resp.Data, list); err != nil {
			return nil, fault.Wrap(fault.Internal, err, "decode %s reply: %v", subj, err)
		}
		out = append(out, list.GetDevices()...)
		if resp.Header.Get(HeaderChunks) == "" {
			return out, nil
		}
	}
}

// Get returns device id's registry record.
func (c *Client) Get(ctx context.Context, id string) (*jv1.Device, error) {
	return c.device(ctx, subjects.DevicesGet, id)
}

// Caps asks online device id for its manifest again and returns the
// record it produced.
func (c *Client) Caps(ctx context.Context, id string) (*jv1.Device, error) {
	return c.device(ctx, subjects.DevicesCaps, id)
}

// Remove forgets device id: its record and its tools. A device still
// connected comes back with its next manifest.
func (c *Client) Remove(ctx context.Context, id string) error {
	body, err := deviceBody(id)
	if err != nil {
		return err
	}
	_, err = c.request(ctx, subjects.DevicesRemove, body)
	return err
}

// Command sends cmd to device and returns the JSON of the data of its
// result. cmd's id is ignored (the service gives each command its own); the
// wait is bounded by ctx's deadline and cmd's timeout_ms.
func (c *Client) Command(ctx context.Context, device string, cmd *jv1.Command) (json.RawMessage, error) {
	if err := subjects.ValidDeviceID(device); err != nil {
		return nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	if cmd.GetName() == "" {
		return nil, fault.New(fault.InvalidArgument, "command: name is empty")
	}
	cmd = proto.Clone(cmd).(*jv1.Command)
	cmd.Id = ""
	body, err := protojson.Marshal(&jv1.CommandRequest{Device: device, Command: cmd})
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "command: %v", err)
	}
	if len(body) > MaxRequestBytes {
		return nil, fault.New(fault.InvalidArgument, "command is %d bytes: at most %d", len(body), MaxRequestBytes)
	}
	return c.request(ctx, subjects.DevicesCmd, body)
}

// Watch delivers the events of device id (every device when "") of kind
// (every kind when ""; see subjects.DeviceEventKinds) until ctx ends, then
// closes the channel. The subscription is in place when Watch returns.
// Events that arrive faster than they are read wait in a buffer of 256;
// beyond it they are dropped.
func (c *Client) Watch(ctx context.Context, id, kind string) (<-chan *jv1.DeviceEvent, error) {
	subj, err := subjects.DeviceEvents(id, kind)
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	msgs := make(chan *nats.Msg, 256)
	sub, err := c.nc.ChanSubscribe(subj, msgs)
	if err != nil {
		return nil, microsvc.TransportError(err, subjects.JotunheimService, subj)
	}
	if err := c.nc.FlushTimeout(DefaultClientTimeout); err != nil {
		_ = sub.Unsubscribe()
		return nil, microsvc.TransportError(err, subjects.JotunheimService, subj)
	}
	out := make(chan *jv1.DeviceEvent, 16)
	go func() {
		defer close(out)
		defer func() { _ = sub.Unsubscribe() }()
		for {
			select {
			case <-ctx.Done():
				return
			case m := <-msgs:
				ev := &jv1.DeviceEvent{}
				if err := protojson.Unmarshal(m.Data, ev); err != nil {
					continue
				}
				select {
				case out <- ev:
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return out, nil
}

// otaCall sends req's JSON on subj and decodes the reply into out.
func (c *Client) otaCall(ctx context.Context, subj string, req, out any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return fault.New(fault.InvalidArgument, "%v", err)
	}
	b, err := c.request(ctx, subj, body)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fault.Wrap(fault.Internal, err, "decode %s reply: %v", subj, err)
	}
	return nil
}

// PublishRelease records a signed release whose binary is already in the
// firmware object store (admins only). It fails INVALID_ARGUMENT for an
// unsigned or mis-signed release or a binary that does not match the
// manifest, FAILED_PRECONDITION when the service trusts no key.
func (c *Client) PublishRelease(ctx context.Context, req PublishRequest) (*Release, error) {
	rel := &Release{}
	if err := c.otaCall(ctx, subjects.DevicesOTAPublish, req, rel); err != nil {
		return nil, err
	}
	return rel, nil
}

// Releases returns the published releases, by name and version.
func (c *Client) Releases(ctx context.Context) ([]*Release, error) {
	var out releaseList
	if err := c.otaCall(ctx, subjects.DevicesOTAReleases, struct{}{}, &out); err != nil {
		return nil, err
	}
	return out.Releases, nil
}

// Rollout starts a rollout and returns its record as first driven.
func (c *Client) Rollout(ctx context.Context, req RolloutRequest) (*Rollout, error) {
	ro := &Rollout{}
	if err := c.otaCall(ctx, subjects.DevicesOTARollout, req, ro); err != nil {
		return nil, err
	}
	return ro, nil
}

// RolloutStatus returns rollout id, or every rollout (oldest first) when
// id is empty.
func (c *Client) RolloutStatus(ctx context.Context, id string) ([]*Rollout, error) {
	var out rolloutList
	if err := c.otaCall(ctx, subjects.DevicesOTAStatus, StatusRequest{ID: id}, &out); err != nil {
		return nil, err
	}
	return out.Rollouts, nil
}
