package loki

import (
	"context"
	"github.com/loki-iot/loki/internal/microsvc"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// Headers of loki.exec.<tool> requests and replies.
const (
	// HeaderTimeout (request) bounds the execution below the tool's own
	// timeout, as a Go duration ("250ms"). Gateways pass their caller's
	// remaining deadline here.
	HeaderTimeout = "Loki-Timeout"
	// HeaderStream (request), when set to any value, asks for emit() chunks:
	// each is sent to the reply subject with HeaderChunk before the final reply.
	HeaderStream = "Loki-Stream"
	// HeaderChunk (reply) marks an emit() chunk and carries its sequence
	// number from 1; the final reply has no HeaderChunk.
	HeaderChunk = "Loki-Chunk"
	// HeaderExecutionID (reply) is the execution's id, as in script events.
	HeaderExecutionID = "Loki-Execution-Id"
)

// Client calls Loki over NATS. It is safe for concurrent use; the caller owns
// and closes the connection.
type Client struct {
	nc *nats.Conn
	// execSubjects caches loki.exec.<tool> by tool, up to maxCachedSubjects.
	execSubjects sync.Map
	cached       atomic.Int32
}

const maxCachedSubjects = 1024

// execSubject returns loki.exec.<tool>, or INVALID_ARGUMENT for a bad name.
func (c *Client) execSubject(tool string) (string, error) {
	if subj, ok := c.execSubjects.Load(tool); ok {
		return subj.(string), nil
	}
	subj, err := subjects.ToolExec(tool)
	if err != nil {
		return "", fault.New(fault.InvalidArgument, "%v", err)
	}
	if c.cached.Load() < maxCachedSubjects {
		if _, loaded := c.execSubjects.LoadOrStore(tool, subj); !loaded {
			c.cached.Add(1)
		}
	}
	return subj, nil
}

// NewClient returns a client on nc.
func NewClient(nc *nats.Conn) *Client { return &Client{nc: nc} }

// Chunk is one emit() value of a streaming call.
type Chunk struct {
	ExecutionID string
	// Seq counts chunks from 1.
	Seq uint64
	// JSON is the emitted value as JSON.
	JSON []byte
}

// Result is the answer of one execution.
type Result struct {
	ExecutionID string
	// JSON is the tool's result as JSON.
	JSON []byte
}

// Call runs tool with args (a JSON object, or nil for none) and returns its
// JSON result. ctx's deadline bounds the wait and is passed to Loki so the
// script stops too. Failures are *fault.Error: the tool's error code and
// message, or UNAVAILABLE when no Loki replica answers.
func (c *Client) Call(ctx context.Context, tool string, args []byte) (Result, error) {
	subj, err := c.execSubject(tool)
	if err != nil {
		return Result{}, err
	}
	m := &nats.Msg{Subject: subj, Data: args}
	setTimeout(ctx, m)
	resp, err := c.nc.RequestMsgWithContext(ctx, m)
	if err != nil {
		return Result{}, microsvc.TransportError(err, subjects.LokiService, subj)
	}
	// The execution id comes with errors too (when the tool ran), for logs.
	res := Result{ExecutionID: resp.Header.Get(HeaderExecutionID)}
	if err := microsvc.ReplyError(resp, subjects.LokiService, subj); err != nil {
		return res, err
	}
	res.JSON = resp.Data
	return res, nil
}

// Stream runs tool like Call and passes each emit() chunk, in order, to
// onChunk before returning the final result. When ctx ends or onChunk fails,
// the script is cancelled rather than left to run to its timeout.
func (c *Client) Stream(ctx context.Context, tool string, args []byte, onChunk func(Chunk) error) (Result, error) {
	subj, err := subjects.ToolExec(tool)
	if err != nil {
		return Result{}, fault.New(fault.InvalidArgument, "%v", err)
	}
	inbox := c.nc.NewRespInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return Result{}, microsvc.TransportError(err, subjects.LokiService, subj)
	}
	defer func() { _ = sub.Unsubscribe() }()
	m := nats.NewMsg(subj)
	m.Reply = inbox
	m.Data = args
	m.Header.Set(HeaderStream, "1")
	setTimeout(ctx, m)
	if err := c.nc.PublishMsg(m); err != nil {
		return Result{}, microsvc.TransportError(err, subjects.LokiService, subj)
	}
	cancelScript := func() { _ = c.nc.Publish(subjects.LokiCancel, []byte(inbox)) }
	var res Result
	for {
		resp, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			cancelScript()
			return res, microsvc.TransportError(err, subjects.LokiService, subj)
		}
		if id := resp.Header.Get(HeaderExecutionID); id != "" {
			res.ExecutionID = id
		}
		if err := microsvc.ReplyError(resp, subjects.LokiService, subj); err != nil {
			return res, err
		}
		if seqStr := resp.Header.Get(HeaderChunk); seqStr != "" {
			seq, _ := strconv.ParseUint(seqStr, 10, 64)
			if err := onChunk(Chunk{ExecutionID: res.ExecutionID, Seq: seq, JSON: resp.Data}); err != nil {
				cancelScript()
				return res, err
			}
			continue
		}
		res.JSON = resp.Data
		return res, nil
	}
}

// listTimeout bounds List when ctx has no deadline.
const listTimeout = 30 * time.Second

// List returns every registered tool.
//
// A list larger than one message comes in parts, gathered here.
func (c *Client) List(ctx context.Context) ([]*lokiv1.Tool, error) {
	subj := subjects.LokiToolsList
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, listTimeout)
		defer cancel()
	}
	inbox := c.nc.NewRespInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, microsvc.TransportError(err, subjects.LokiService, subj)
	}
	defer func() { _ = sub.Unsubscribe() }()
	m := nats.NewMsg(subj)
	m.Reply = inbox
	m.Header.Set(HeaderStream, "1")
	if err := c.nc.PublishMsg(m); err != nil {
		return nil, microsvc.TransportError(err, subjects.LokiService, subj)
	}
	var out []*lokiv1.Tool
	for {
		resp, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return nil, microsvc.TransportError(err, subjects.LokiService, subj)
		}
		if err := microsvc.ReplyError(resp, subjects.LokiService, subj); err != nil {
			return nil, err
		}
		list := &lokiv1.ToolList{}
		if err := protojson.Unmarshal(resp.Data, list); err != nil {
			return nil, fault.Wrap(fault.Internal, err, "decode %s reply: %v", subj, err)
		}
		out = append(out, list.GetTools()...)
		if resp.Header.Get(HeaderChunk) == "" {
			return out, nil
		}
	}
}

// Get returns one tool's definition.
func (c *Client) Get(ctx context.Context, name string) (*lokiv1.Tool, error) {
	t := &lokiv1.Tool{}
	if err := c.request(ctx, subjects.LokiToolsGet, []byte(name), t); err != nil {
		return nil, err
	}
	return t, nil
}

// Register validates and stores a tool (exactly as a TOML tool is checked)
// and returns it with its registry revision. Invalid tools are
// INVALID_ARGUMENT naming the problem.
func (c *Client) Register(ctx context.Context, tool *lokiv1.Tool) (*lokiv1.Tool, error) {
	body, err := protojson.Marshal(tool)
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "encode tool: %v", err)
	}
	out := &lokiv1.Tool{}
	if err := c.request(ctx, subjects.LokiToolsRegister, body, out); err != nil {
		return nil, err
	}
	return out, nil
}

// Unregister removes a tool; NOT_FOUND if there is none by that name.
func (c *Client) Unregister(ctx context.Context, name string) error {
	resp, err := c.nc.RequestWithContext(ctx, subjects.LokiToolsUnregister, []byte(name))
	if err != nil {
		return microsvc.TransportError(err, subjects.LokiService, subjects.LokiToolsUnregister)
	}
	return microsvc.ReplyError(resp, subjects.LokiService, subjects.LokiToolsUnregister)
}

// Capabilities returns what the answering replica offers.
func (c *Client) Capabilities(ctx context.Context) (*lokiv1.Capabilities, error) {
	caps := &lokiv1.Capabilities{}
	if err := c.request(ctx, subjects.LokiCapabilities, nil, caps); err != nil {
		return nil, err
	}
	return caps, nil
}

func (c *Client) request(ctx context.Context, subj string, body []byte, out proto.Message) error {
	resp, err := c.nc.RequestWithContext(ctx, subj, body)
	if err != nil {
		return microsvc.TransportError(err, subjects.LokiService, subj)
	}
	if err := microsvc.ReplyError(resp, subjects.LokiService, subj); err != nil {
		return err
	}
	if err := protojson.Unmarshal(resp.Data, out); err != nil {
		return fault.Wrap(fault.Internal, err, "decode %s reply: %v", subj, err)
	}
	return nil
}

// setTimeout passes ctx's remaining time to the service.
func setTimeout(ctx context.Context, m *nats.Msg) {
	if dl, ok := ctx.Deadline(); ok {
		if d := time.Until(dl); d > 0 {
			if m.Header == nil {
				m.Header = nats.Header{}
			}
			m.Header.Set(HeaderTimeout, d.String())
		}
	}
}
