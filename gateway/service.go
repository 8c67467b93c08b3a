package gateway

import (
	"context"
	"fmt"

	"github.com/loki-iot/loki/internal/fault"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// lokiServer implements loki.v1.Loki by forwarding to loki.Client.
type lokiServer struct {
	lokiv1.UnimplementedLokiServer
	g *Gateway
}

var _ lokiv1.LokiServer = (*lokiServer)(nil)

func (s *lokiServer) GetCapabilities(ctx context.Context, _ *lokiv1.GetCapabilitiesRequest) (*lokiv1.GetCapabilitiesResponse, error) {
	caps, err := s.g.lc.Capabilities(ctx)
	if err != nil {
		return nil, statusError(s.g.log, err, "", "")
	}
	return &lokiv1.GetCapabilitiesResponse{Capabilities: caps}, nil
}

func (s *lokiServer) GetChildrenStatus(ctx context.Context, req *lokiv1.GetChildrenStatusRequest) (*lokiv1.GetChildrenStatusResponse, error) {
	list, err := s.g.childrenStatus(ctx, req)
	if err != nil {
		return nil, statusError(s.g.log, err, "", "")
	}
	return &lokiv1.GetChildrenStatusResponse{Services: list}, nil
}

func (s *lokiServer) ListScripts(ctx context.Context, _ *lokiv1.ListScriptsRequest) (*lokiv1.ListScriptsResponse, error) {
	tools, err := s.g.lc.List(ctx)
	if err != nil {
		return nil, statusError(s.g.log, err, "", "")
	}
	return &lokiv1.ListScriptsResponse{Tools: tools}, nil
}

func (s *lokiServer) GetScript(ctx context.Context, req *lokiv1.GetScriptRequest) (*lokiv1.GetScriptResponse, error) {
	if req.GetName() == "" {
		return nil, statusError(s.g.log, fault.New(fault.InvalidArgument, "name: empty"), "", "")
	}
	t, err := s.g.lc.Get(ctx, req.GetName())
	if err != nil {
		return nil, statusError(s.g.log, err, req.GetName(), "")
	}
	return &lokiv1.GetScriptResponse{Tool: t}, nil
}

func (s *lokiServer) RegisterScript(ctx context.Context, req *lokiv1.RegisterScriptRequest) (*lokiv1.RegisterScriptResponse, error) {
	if req.GetTool() == nil {
		return nil, statusError(s.g.log, fault.New(fault.InvalidArgument, "tool: missing"), "", "")
	}
	t := proto.Clone(req.GetTool()).(*lokiv1.Tool)
	if t.GetSourceName() == "" {
		t.SourceName = "inline"
	}
	stored, err := s.g.lc.Register(ctx, t)
	if err != nil {
		return nil, statusError(s.g.log, err, t.GetName(), "")
	}
	return &lokiv1.RegisterScriptResponse{Tool: stored}, nil
}

func (s *lokiServer) UnregisterScript(ctx context.Context, req *lokiv1.UnregisterScriptRequest) (*lokiv1.UnregisterScriptResponse, error) {
	if err := s.g.lc.Unregister(ctx, req.GetName()); err != nil {
		return nil, statusError(s.g.log, err, req.GetName(), "")
	}
	return &lokiv1.UnregisterScriptResponse{}, nil
}

func (s *lokiServer) ExecuteScript(ctx context.Context, req *lokiv1.ExecuteScriptRequest) (*lokiv1.ExecuteScriptResponse, error) {
	if err := s.g.deviceMayRun(ctx, req.GetTool()); err != nil {
		return nil, statusError(s.g.log, err, req.GetTool(), "")
	}
	args, err := structJSON(structMessage(req.GetArguments()))
	if err != nil {
		return nil, statusError(s.g.log, err, req.GetTool(), "")
	}
	ctx, cancel, err := withTimeout(ctx, req.GetTimeout())
	if err != nil {
		return nil, statusError(s.g.log, err, req.GetTool(), "")
	}
	defer cancel()
	res, err := s.g.lc.Call(ctx, req.GetTool(), args)
	if err != nil {
		return nil, statusError(s.g.log, err, req.GetTool(), res.ExecutionID)
	}
	v, err := valueFromJSON(res.JSON)
	if err != nil {
		return nil, statusError(s.g.log, fmt.Errorf("decode result: %w", err), req.GetTool(), res.ExecutionID)
	}
	return &lokiv1.ExecuteScriptResponse{ExecutionId: res.ExecutionID, Result: v}, nil
}

func (s *lokiServer) StreamScriptExecution(req *lokiv1.StreamScriptExecutionRequest, stream grpc.ServerStreamingServer[lokiv1.StreamScriptExecutionResponse]) error {
	if err := s.g.deviceMayRun(stream.Context(), req.GetTool()); err != nil {
		return statusError(s.g.log, err, req.GetTool(), "")
	}
	args, err := structJSON(structMessage(req.GetArguments()))
	if err != nil {
		return statusError(s.g.log, err, req.GetTool(), "")
	}
	ctx, cancel, err := withTimeout(stream.Context(), req.GetTimeout())
	if err != nil {
		return statusError(s.g.log, err, req.GetTool(), "")
	}
	defer cancel()
	res, err := s.g.lc.Stream(ctx, req.GetTool(), args, func(c loki.Chunk) error {
		v, err := valueFromJSON(c.JSON)
		if err != nil {
			return fmt.Errorf("decode chunk %d: %w", c.Seq, err)
		}
		return stream.Send(&lokiv1.StreamScriptExecutionResponse{Event: &lokiv1.StreamScriptExecutionResponse_Chunk{
			Chunk: &lokiv1.EmitChunk{ExecutionId: c.ExecutionID, Sequence: c.Seq, Value: v},
		}})
	})
	if err != nil {
		return statusError(s.g.log, err, req.GetTool(), res.ExecutionID)
	}
	v, err := valueFromJSON(res.JSON)
	if err != nil {
		return statusError(s.g.log, fmt.Errorf("decode result: %w", err), req.GetTool(), res.ExecutionID)
	}
	return stream.Send(&lokiv1.StreamScriptExecutionResponse{Event: &lokiv1.StreamScriptExecutionResponse_Result{
		Result: &lokiv1.ExecuteScriptResponse{ExecutionId: res.ExecutionID, Result: v},
	}})
}

func (s *lokiServer) WatchEvents(req *lokiv1.WatchEventsRequest, stream grpc.ServerStreamingServer[lokiv1.WatchEventsResponse]) error {
	return s.g.watchEvents(req, stream)
}

// structMessage is nil for a nil Struct, so unset arguments stay unset.
func structMessage(s *structpb.Struct) protoreflect.Message {
	if s == nil {
		return nil
	}
	return s.ProtoReflect()
}

// withTimeout bounds ctx by a request's optional timeout.
func withTimeout(ctx context.Context, d *durationpb.Duration) (context.Context, context.CancelFunc, error) {
	if d == nil {
		return ctx, func() {}, nil
	}
	if err := d.CheckValid(); err != nil || d.AsDuration() <= 0 || d.AsDuration() > loki.MaxTimeout {
		return nil, nil, fault.New(fault.InvalidArgument, "timeout %v: must be above 0 and at most %s", d.AsDuration(), loki.MaxTimeout)
	}
	ctx, cancel := context.WithTimeout(ctx, d.AsDuration())
	return ctx, cancel, nil
}
