package gateway

import (
	"sync/atomic"

	"github.com/loki-iot/loki/internal/fault"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
)

// WatchLiveHeader is the response header WatchEvents and WatchDevices send
// once their subscription is live.
const WatchLiveHeader = "loki-watch-live"

// watchBuffer is how many events may wait for a slow watcher before the
// watch ends with RESOURCE_EXHAUSTED.
const watchBuffer = 4096

// watchEvents subscribes to the script events matching req and streams them
// until the caller hangs up or the gateway stops. Response headers are sent
// once the subscription is live on the server, so a caller that waits for
// them misses no event published afterwards.
func (g *Gateway) watchEvents(req *lokiv1.WatchEventsRequest, stream grpc.ServerStreamingServer[lokiv1.WatchEventsResponse]) error {
	subj, err := subjects.ScriptEvents(req.GetTool(), subjects.EventKind(req.GetKind()))
	if err != nil {
		return statusError(g.log, fault.New(fault.InvalidArgument, "%v", err), req.GetTool(), "")
	}
	return g.watch(stream, subj, req.GetTool(), func(m *nats.Msg) error {
		ev := &lokiv1.ScriptEvent{}
		if err := protojson.Unmarshal(m.Data, ev); err != nil {
			g.log.Warn("skipping an event that is not a ScriptEvent", "subject", m.Subject, keyErr, err)
			return nil
		}
		return stream.Send(&lokiv1.WatchEventsResponse{Event: ev})
	})
}

// watch subscribes to subj and hands every message to send until the
// caller hangs up, the gateway stops or send fails. It sends the response
// headers once the subscription is live on the server. name is what the
// watch is about (a tool, a device), for the log.
func (g *Gateway) watch(stream grpc.ServerStream, subj, name string, send func(*nats.Msg) error) error {
	ctx := stream.Context()
	events := make(chan *nats.Msg, watchBuffer)
	var dropped atomic.Uint64
	sub, err := g.nc.Subscribe(subj, func(m *nats.Msg) {
		select {
		case events <- m:
		default:
			dropped.Add(1)
		}
	})
	if err != nil {
		return statusError(g.log, fault.Wrap(fault.Unavailable, err, "NATS: %v", err), name, "")
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := g.nc.FlushWithContext(ctx); err != nil {
		return statusError(g.log, fault.Wrap(fault.Unavailable, err, "NATS: %v", err), name, "")
	}
	if err := stream.SendHeader(metadata.Pairs(WatchLiveHeader, "1")); err != nil {
		return err
	}
	for {
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-g.stopping:
			return status.Error(codes.Unavailable, "gateway shutting down; watch again")
		case m := <-events:
			if n := dropped.Load(); n > 0 {
				return status.Errorf(codes.ResourceExhausted, "watch fell behind: %d events dropped; watch again", n)
			}
			if err := send(m); err != nil {
				return err
			}
		}
	}
}
