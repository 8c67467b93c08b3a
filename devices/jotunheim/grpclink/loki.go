package grpclink

import (
	"context"
	"encoding/json"
	"time"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/internal/fault"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Loki is a device's client of the gateway's loki.v1.Loki service, with
// the device's login, over the current link's connection. Its errors are
// *fault.Error with the codes a controller gets for the same call
// (client.Fault): NOT_FOUND, SCRIPT_ERROR, PERMISSION_DENIED, ...; while
// no link is up, UNAVAILABLE. It is safe for concurrent use.
type Loki struct{ t *Transport }

// Loki returns the transport's Loki client.
func (t *Transport) Loki() *Loki { return &Loki{t: t} }

// api is a client over the current link's connection.
func (l *Loki) api() (*client.Client, error) {
	conn := l.t.current()
	if conn == nil {
		return nil, fault.New(fault.Unavailable, "device %s is not connected to the gateway %s", l.t.cfg.DeviceID, l.t.cfg.Gateway)
	}
	return client.New(conn), nil
}

// fail maps a call's error: the gateway's codes, and a call cut by the
// link's end (its connection closing) is UNAVAILABLE, not the
// cancellation of the caller.
func fail(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if status.Code(err) == codes.Canceled && ctx.Err() == nil {
		return fault.Wrap(fault.Unavailable, err, "the link to the gateway ended during the call")
	}
	return client.Fault(err)
}

// Capabilities returns what the answering Loki replica offers.
func (l *Loki) Capabilities(ctx context.Context) (*lokiv1.Capabilities, error) {
	c, err := l.api()
	if err != nil {
		return nil, err
	}
	caps, err := c.Capabilities(ctx)
	return caps, fail(ctx, err)
}

// ChildrenStatus returns the running instances of the named services (all
// when none are named).
func (l *Loki) ChildrenStatus(ctx context.Context, names ...string) ([]*lokiv1.ServiceStatus, error) {
	c, err := l.api()
	if err != nil {
		return nil, err
	}
	st, err := c.ChildrenStatus(ctx, names...)
	return st, fail(ctx, err)
}

// ListTools returns every registered tool.
func (l *Loki) ListTools(ctx context.Context) ([]*lokiv1.Tool, error) {
	c, err := l.api()
	if err != nil {
		return nil, err
	}
	tools, err := c.List(ctx)
	return tools, fail(ctx, err)
}

// Execute runs tool with args (JSON-shaped values) and returns its result
// as JSON. timeout (0: ctx's deadline only) bounds the call and the
// script.
func (l *Loki) Execute(ctx context.Context, tool string, args map[string]any, timeout time.Duration) (json.RawMessage, error) {
	c, err := l.api()
	if err != nil {
		return nil, err
	}
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	result, _, err := c.Execute(ctx, tool, args)
	if err != nil {
		return nil, fail(ctx, err)
	}
	return marshal(result)
}

// Stream runs tool like Execute and calls onChunk with each value the
// script emits, as JSON and in order, before returning the result. An
// error from onChunk cancels the call (which stops the script) and is
// returned as it is.
func (l *Loki) Stream(ctx context.Context, tool string, args map[string]any, onChunk func(chunk json.RawMessage) error) (json.RawMessage, error) {
	c, err := l.api()
	if err != nil {
		return nil, err
	}
	var chunkErr error
	result, _, err := c.Stream(ctx, tool, args, func(_ uint64, v any) error {
		b, err := marshal(v)
		if err == nil && onChunk != nil {
			err = onChunk(b)
		}
		chunkErr = err
		return err
	})
	if chunkErr != nil {
		return nil, chunkErr
	}
	if err != nil {
		return nil, fail(ctx, err)
	}
	return marshal(result)
}

// Runner runs tools through Execute: loki.exec's runner on a device that
// speaks gRPC (jotunheim.WithToolRunner).
func (l *Loki) Runner() jotunheim.ToolRunner {
	return func(ctx context.Context, tool string, args map[string]any) (json.RawMessage, error) {
		return l.Execute(ctx, tool, args, 0)
	}
}

func marshal(v any) (json.RawMessage, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fault.Wrap(fault.Internal, err, "result: %v", err)
	}
	return b, nil
}
