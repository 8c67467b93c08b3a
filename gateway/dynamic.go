package gateway

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/loki-iot/loki/internal/fault"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
)

// handleScript serves loki.scripts.v1.Scripts/{Script,StreamScript}_<tool>
// from the current snapshot of per-tool RPCs; it is the server's
// UnknownServiceHandler, so every other unknown method is UNIMPLEMENTED.
func (g *Gateway) handleScript(_ any, ss grpc.ServerStream) error {
	full, _ := grpc.MethodFromServerStream(ss)
	svc, method, _ := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	if svc != ScriptsService {
		return status.Errorf(codes.Unimplemented, "unknown service %s", svc)
	}
	m := g.scripts.Load().methods[method]
	if m == nil {
		tool := strings.TrimPrefix(strings.TrimPrefix(method, StreamPrefix), UnaryPrefix)
		return status.Errorf(codes.Unimplemented,
			"unknown method %s: no tool %q is registered (ListScripts, or `grpcurl describe %s`, lists them)", method, tool, ScriptsService)
	}
	if err := g.deviceMayRun(ss.Context(), m.tool); err != nil {
		return statusError(g.log, err, m.tool, "")
	}
	req := dynamicpb.NewMessage(m.in)
	if err := ss.RecvMsg(req); err != nil {
		if errors.Is(err, io.EOF) {
			return status.Errorf(codes.InvalidArgument, "%s: no request message", method)
		}
		return err
	}
	args, err := argsJSON(req)
	if err != nil {
		return statusError(g.log, err, m.tool, "")
	}
	ctx := ss.Context()
	if !m.stream {
		res, err := g.lc.Call(ctx, m.tool, args)
		if err != nil {
			return statusError(g.log, err, m.tool, res.ExecutionID)
		}
		resp, err := g.scriptResponse(m, res.ExecutionID, res.JSON)
		if err != nil {
			return err
		}
		return ss.SendMsg(resp)
	}

	chunkField := m.out.Fields().ByName(fieldChunk)
	resultField := m.out.Fields().ByName(fieldResult)
	res, err := g.lc.Stream(ctx, m.tool, args, func(c loki.Chunk) error {
		v, err := valueFromJSON(c.JSON)
		if err != nil {
			return fmt.Errorf("decode chunk %d: %w", c.Seq, err)
		}
		out := dynamicpb.NewMessage(m.out)
		out.Set(chunkField, protoreflect.ValueOfMessage((&lokiv1.EmitChunk{ExecutionId: c.ExecutionID, Sequence: c.Seq, Value: v}).ProtoReflect()))
		return ss.SendMsg(out)
	})
	if err != nil {
		return statusError(g.log, err, m.tool, res.ExecutionID)
	}
	resp, err := g.scriptResponse(m, res.ExecutionID, res.JSON)
	if err != nil {
		return err
	}
	out := dynamicpb.NewMessage(m.out)
	out.Set(resultField, protoreflect.ValueOfMessage(resp))
	return ss.SendMsg(out)
}

// scriptResponse builds Script_<tool>_Response from a result.
func (g *Gateway) scriptResponse(m *scriptMethod, execID string, result []byte) (*dynamicpb.Message, error) {
	resp := dynamicpb.NewMessage(m.resp)
	if err := setResult(resp, m.returns, result); err != nil {
		// The tool was re-registered with another result type between the
		// snapshot and the call; the next snapshot will match.
		return nil, statusError(g.log, fault.Wrap(fault.FailedPrecondition, err,
			"result %s of tool %q does not fit its declared type %s (re-registered during the call?); retry",
			truncate(result, 64), m.tool, m.returns), m.tool, execID)
	}
	resp.Set(m.resp.Fields().ByName(fieldExecutionID), protoreflect.ValueOfString(execID))
	return resp, nil
}

func truncate(b []byte, n int) string {
	if len(b) <= n {
		return string(b)
	}
	return string(b[:n]) + "…"
}
