package jotunheim

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// CallTool calls the Loki tool named tool with args through the platform
// and returns its JSON result. It waits until the result arrives or ctx
// ends; ctx's deadline is sent as the call's timeout. Errors are
// *fault.Error: the platform's code (PERMISSION_DENIED when the platform's
// device_calls setting does not allow the tool, NOT_FOUND, ...),
// UNAVAILABLE while the agent is not connected, DEADLINE_EXCEEDED when ctx
// ends first, INVALID_ARGUMENT for a bad tool name or arguments.
func (a *Agent) CallTool(ctx context.Context, tool string, args map[string]any) (json.RawMessage, error) {
	if err := subjects.ValidToolName(tool); err != nil {
		return nil, fault.Wrap(fault.InvalidArgument, err, "call %q: %v", trunc(tool), err)
	}
	st, err := structpb.NewStruct(args)
	if err != nil {
		return nil, fault.Wrap(fault.InvalidArgument, err, "call %s: arguments: %v", tool, err)
	}
	var b [12]byte
	_, _ = rand.Read(b[:])
	call := &jv1.ToolCall{Id: hex.EncodeToString(b[:]), Tool: tool, Args: st}
	if dl, ok := ctx.Deadline(); ok {
		ms := time.Until(dl).Milliseconds()
		if ms < 1 {
			return nil, fault.New(fault.DeadlineExceeded, "call %s: no time left", tool)
		}
		call.TimeoutMs = uint32(min(ms, 1<<31))
	}
	ch := make(chan *jv1.ToolResult, 1)
	a.mu.Lock()
	a.calls[call.Id] = ch
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.calls, call.Id)
		a.mu.Unlock()
	}()
	if !a.online.Load() {
		return nil, fault.New(fault.Unavailable, "call %s: device %s is not connected to the platform", tool, a.cfg.Device.ID)
	}
	if err := a.publish(a.topics.call, 1, false, call); err != nil {
		return nil, fault.Wrap(fault.Unavailable, err, "call %s: %v", tool, err)
	}
	select {
	case r := <-ch:
		if !r.GetOk() {
			code := fault.Code(r.GetCode())
			if !code.Valid() {
				code = fault.Internal
			}
			return nil, &fault.Error{Code: code, Msg: r.GetMessage()}
		}
		if r.GetResult() == nil {
			return json.RawMessage("null"), nil
		}
		out, err := protojson.Marshal(r.GetResult())
		if err != nil {
			return nil, fault.Wrap(fault.Internal, err, "call %s: result: %v", tool, err)
		}
		return out, nil
	case <-ctx.Done():
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fault.New(fault.DeadlineExceeded, "call %s: no result in time", tool)
		}
		return nil, fault.Wrap(fault.Unavailable, ctx.Err(), "call %s: %v", tool, ctx.Err())
	}
}

// deliverToolResult hands r to the CallTool waiting for its id; a result
// nobody waits for (late, or not ours) is dropped.
func (a *Agent) deliverToolResult(r *jv1.ToolResult) {
	a.mu.Lock()
	ch, ok := a.calls[r.GetId()]
	a.mu.Unlock()
	if !ok {
		a.log.Debug("tool result for no pending call: dropped", "id", trunc(r.GetId()))
		return
	}
	select {
	case ch <- r:
	default:
	}
}
