package jotunheim

import (
	"context"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// startCall runs device id's ToolCall c in the background, at most Workers
// at once, and answers it on the device's call/result topic.
func (s *Service) startCall(ctx context.Context, id string, c *jv1.ToolCall) {
	select {
	case s.calls <- struct{}{}:
	default:
		s.answerCall(id, c, nil, fault.New(fault.ResourceExhausted, "the device service is running %d tool calls: try again later", cap(s.calls)))
		return
	}
	s.callWG.Go(func() {
		defer func() { <-s.calls }()
		res, err := s.call(ctx, id, c)
		s.answerCall(id, c, res, err)
	})
}

// call checks that device id may call c's tool and calls it through Loki.
func (s *Service) call(ctx context.Context, id string, c *jv1.ToolCall) (*structpb.Value, error) {
	tool := c.GetTool()
	if err := DeviceMayCall(s.cfg.DeviceCalls, id, tool); err != nil {
		return nil, err
	}
	wait := s.cfg.CommandTimeout
	if ms := c.GetTimeoutMs(); ms > 0 {
		wait = min(time.Duration(ms)*time.Millisecond, s.cfg.MaxCommandTimeout)
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if _, _, err := s.get(ctx, id); err != nil {
		if fault.CodeOf(err) == fault.NotFound {
			return nil, fault.New(fault.FailedPrecondition, "device %s has no accepted manifest: connect and negotiate first", id)
		}
		return nil, err
	}
	def, err := s.loki.Get(ctx, tool)
	if err != nil {
		return nil, err
	}
	if err := NotAnotherDevicesTool(id, def); err != nil {
		return nil, err
	}
	args := []byte("{}")
	if c.GetArgs() != nil {
		if args, err = protojson.Marshal(c.GetArgs()); err != nil {
			return nil, fault.New(fault.InvalidArgument, "args: %v", err)
		}
	}
	res, err := s.loki.Call(ctx, tool, args)
	if err != nil {
		return nil, err
	}
	v := &structpb.Value{}
	if err := protojson.Unmarshal(res.JSON, v); err != nil {
		return nil, fault.Wrap(fault.Internal, err, "tool %q: decode result: %v", tool, err)
	}
	return v, nil
}

// answerCall publishes the ToolResult of c to device id.
func (s *Service) answerCall(id string, c *jv1.ToolCall, v *structpb.Value, err error) {
	r := &jv1.ToolResult{Id: c.GetId(), Ok: err == nil, Result: v}
	if err != nil {
		r.Code, r.Message = string(fault.CodeOf(err)), fault.MessageOf(err)
		s.log.Debug("device tool call failed", logKeyDevice, id, logKeyTool, c.GetTool(), logKeyErr, err)
	}
	s.toDevice(id, subjects.DeviceCallResult, r)
}
