package jotunheim

import (
	"context"
	"encoding/json"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
)

// CmdToolCall forwards a controller's command to Loki and answers with the
// tool's result: args {"tool": name, "args": {...}, "timeout_ms": n}
// (args and timeout_ms optional). A failed call answers with the call's
// code and message, as a controller calling the tool would get them.
const CmdToolCall = "tool.call"

// Bounds of loki.exec.
const (
	// lokiExecSlots is how many loki.exec commands run at once; more are
	// refused with RESOURCE_EXHAUSTED.
	lokiExecSlots = 4
	// lokiExecTimeout bounds a loki.exec that names no timeout.
	lokiExecTimeout = 30 * time.Second
)

// ToolRunner runs the Loki tool named tool with args and returns its JSON
// result. Errors carry a *fault.Error code (NOT_FOUND, SCRIPT_ERROR,
// PERMISSION_DENIED, UNAVAILABLE, DEADLINE_EXCEEDED, ...): the codes a
// controller gets for the same call. ctx's deadline bounds the call.
type ToolRunner func(ctx context.Context, tool string, args map[string]any) (json.RawMessage, error)

// WithToolRunner makes loki.exec run tools through run instead of the
// device's tool calls over the platform (CallTool): cmd/jotunheim passes
// the gateway's Loki service when the agent speaks gRPC.
func WithToolRunner(run ToolRunner) Option { return func(a *Agent) { a.runTool = run } }

// startLokiExec runs a loki.exec command beside the command worker, not
// on it: the tool may well command this very device, which would wait
// behind the loki.exec forever on a serial worker. It reports false
// (after answering RESOURCE_EXHAUSTED) when every slot is busy.
func (a *Agent) startLokiExec(ctx context.Context, c *jv1.Command, timeout time.Duration) {
	select {
	case a.lokiSlots <- struct{}{}:
	default:
		a.reply(c, nil, fault.New(fault.ResourceExhausted, "device %s: %d loki.exec commands already running", a.cfg.Device.ID, lokiExecSlots))
		return
	}
	go func() {
		defer func() { <-a.lokiSlots }()
		data, err := a.lokiExec(ctx, c.GetArgs().AsMap(), timeout)
		a.reply(c, data, err)
	}()
}

// lokiExec runs one loki.exec: timeout is the command's (0: none).
func (a *Agent) lokiExec(ctx context.Context, args map[string]any, timeout time.Duration) (any, error) {
	tool, _ := args["tool"].(string)
	if err := subjects.ValidToolName(tool); err != nil {
		return nil, fault.New(fault.InvalidArgument, "device %s: %s: args.tool: %v", a.cfg.Device.ID, CmdToolCall, err)
	}
	var targs map[string]any
	switch v := args["args"].(type) {
	case nil:
	case map[string]any:
		targs = v
	default:
		return nil, fault.New(fault.InvalidArgument, "device %s: %s: args.args must be an object", a.cfg.Device.ID, CmdToolCall)
	}
	// The call's own timeout_ms, else the default; never past the
	// command's timeout.
	d := lokiExecTimeout
	switch ms := args["timeout_ms"].(type) {
	case nil:
	case float64:
		if ms < 1 || ms > float64(time.Hour/time.Millisecond) {
			return nil, fault.New(fault.InvalidArgument, "device %s: %s: args.timeout_ms %v must be 1 to 3600000", a.cfg.Device.ID, CmdToolCall, ms)
		}
		d = time.Duration(ms) * time.Millisecond
	default:
		return nil, fault.New(fault.InvalidArgument, "device %s: %s: args.timeout_ms must be a number", a.cfg.Device.ID, CmdToolCall)
	}
	if timeout > 0 {
		d = min(d, timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	run := a.runTool
	if run == nil {
		run = a.CallTool
	}
	out, err := run(ctx, tool, targs)
	if err != nil {
		if fault.CodeOf(err) == fault.Internal {
			// The runner's own failure, not a code from the platform: keep
			// the code, say what failed.
			a.log.Warn(CmdToolCall, "tool", tool, logErr, err)
		}
		return nil, err
	}
	return jsonValue(out)
}
