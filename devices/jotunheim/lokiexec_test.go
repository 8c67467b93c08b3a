package jotunheim_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/types/known/structpb"
)

// Over MQTT, loki.exec goes through the device's tool calls: the result
// and the platform's error codes come back as the command's.
func TestLokiExecOverToolCalls(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "relay")
	runAgent(t, testConfig(t, s, "relay"))
	p.waitState(0, "led", anyValue)
	sub, err := subjects.DeviceSubject("relay", subjects.DeviceCall)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.nc.Subscribe(sub, func(m *nats.Msg) {
		c, err := wire.DecodeToolCall(m.Data)
		if err != nil {
			t.Errorf("tool call: %v", err)
			return
		}
		res := &jv1.ToolResult{Id: c.GetId()}
		if c.GetTool() == "add" {
			sum := c.GetArgs().GetFields()["a"].GetNumberValue() + c.GetArgs().GetFields()["b"].GetNumberValue()
			res.Ok, res.Result = true, structpb.NewNumberValue(sum)
		} else {
			res.Code, res.Message = string(fault.PermissionDenied), "tool "+c.GetTool()+" is not in device_calls"
		}
		p.publish(subjects.DeviceCallResult, res)
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		args     map[string]any
		wantCode fault.Code
		want     float64
	}{
		{"result", map[string]any{"tool": "add", "args": map[string]any{"a": 2, "b": 3}, "timeout_ms": 5000}, "", 5},
		{"platform's code", map[string]any{"tool": "secret"}, fault.PermissionDenied, 0},
		{"no tool", map[string]any{"args": map[string]any{}}, fault.InvalidArgument, 0},
		{"args not an object", map[string]any{"tool": "add", "args": "a=2"}, fault.InvalidArgument, 0},
		{"bad timeout", map[string]any{"tool": "add", "timeout_ms": 0}, fault.InvalidArgument, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := p.command(jotunheim.CmdToolCall, "", tc.args, 0)
			if tc.wantCode != "" {
				if r.GetOk() || r.GetCode() != string(tc.wantCode) {
					t.Fatalf("got ok=%v %s %q, want %s", r.GetOk(), r.GetCode(), r.GetMessage(), tc.wantCode)
				}
				return
			}
			if !r.GetOk() || r.GetData().GetNumberValue() != tc.want {
				t.Fatalf("got ok=%v %v %s %q, want %v", r.GetOk(), r.GetData(), r.GetCode(), r.GetMessage(), tc.want)
			}
		})
	}
}

// A runner passed with WithToolRunner (the gateway's Loki service, over
// gRPC) answers loki.exec; it runs beside the command worker, so a tool
// that commands the same device is answered instead of waiting behind it.
func TestLokiExecRunner(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "runner")
	runner := func(ctx context.Context, tool string, args map[string]any) (json.RawMessage, error) {
		switch tool {
		case "ping_me": // the tool commands this device and waits for it
			r := p.command(jotunheim.CmdPing, "", nil, 0)
			if !r.GetOk() {
				return nil, fault.New(fault.Unavailable, "ping: %s", r.GetMessage())
			}
			return json.RawMessage(`{"pinged":true}`), nil
		case "slow":
			<-ctx.Done()
			return nil, fault.New(fault.DeadlineExceeded, "no result in time")
		}
		return nil, fault.New(fault.NotFound, "no tool %q", tool)
	}
	runAgent(t, testConfig(t, s, "runner"), jotunheim.WithToolRunner(runner))
	p.waitState(0, "led", anyValue)

	r := p.command(jotunheim.CmdToolCall, "", map[string]any{"tool": "ping_me"}, 0)
	if !r.GetOk() || !r.GetData().GetStructValue().GetFields()["pinged"].GetBoolValue() {
		t.Fatalf("ping_me: got ok=%v %v %s %q, want {pinged: true}", r.GetOk(), r.GetData(), r.GetCode(), r.GetMessage())
	}
	r = p.command(jotunheim.CmdToolCall, "", map[string]any{"tool": "missing"}, 0)
	if r.GetOk() || r.GetCode() != string(fault.NotFound) {
		t.Fatalf("missing: got ok=%v %s, want %s", r.GetOk(), r.GetCode(), fault.NotFound)
	}
	r = p.command(jotunheim.CmdToolCall, "", map[string]any{"tool": "slow", "timeout_ms": 50}, 0)
	if r.GetOk() || r.GetCode() != string(fault.DeadlineExceeded) {
		t.Fatalf("slow: got ok=%v %s, want %s", r.GetOk(), r.GetCode(), fault.DeadlineExceeded)
	}
}

// At most a few loki.exec commands run at once: one more is answered
// RESOURCE_EXHAUSTED at once, and the others still finish.
func TestLokiExecSlots(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "busy")
	release := make(chan struct{})
	runner := func(ctx context.Context, _ string, _ map[string]any) (json.RawMessage, error) {
		select {
		case <-release:
			return json.RawMessage(`"done"`), nil
		case <-ctx.Done():
			return nil, fault.New(fault.DeadlineExceeded, "released too late")
		}
	}
	runAgent(t, testConfig(t, s, "busy"), jotunheim.WithToolRunner(runner))
	p.waitState(0, "led", anyValue)
	// Five at once (their arrival order is not guaranteed): one is refused.
	ids := map[string]bool{}
	for range 5 {
		ids[p.send(jotunheim.CmdToolCall, "", map[string]any{"tool": "block"}, 0)] = true
	}
	refused := p.wait(0, "a loki.exec refused RESOURCE_EXHAUSTED", func(m msg) bool {
		if m.kind != subjects.DeviceResult {
			return false
		}
		r, err := wire.DecodeResult(m.data)
		return err == nil && ids[r.GetId()] && !r.GetOk() && r.GetCode() == string(fault.ResourceExhausted)
	})
	r, err := wire.DecodeResult(refused.data)
	if err != nil {
		t.Fatal(err)
	}
	delete(ids, r.GetId())
	close(release)
	for id := range ids {
		if r := p.result(0, id); !r.GetOk() || r.GetData().GetStringValue() != "done" {
			t.Fatalf("loki.exec %s: got ok=%v %s %q, want done", id, r.GetOk(), r.GetCode(), r.GetMessage())
		}
	}
}
