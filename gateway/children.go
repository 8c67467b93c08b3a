package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"

	"github.com/loki-iot/loki/internal/fault"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// childrenStatus asks every service instance (or those of the named
// services) for $SRV.STATS and collects the replies until the window or
// the call's deadline ends, whichever is first. Replies that are not micro
// stats are skipped. An empty answer is not an error: nothing is running.
func (g *Gateway) childrenStatus(ctx context.Context, req *lokiv1.GetChildrenStatusRequest) ([]*lokiv1.ServiceStatus, error) {
	window := g.cfg.StatusWindow
	if w := req.GetWindow(); w != nil {
		if err := w.CheckValid(); err != nil || w.AsDuration() <= 0 || w.AsDuration() > MaxStatusWindow {
			return nil, fault.New(fault.InvalidArgument, "window %v: must be above 0 and at most %s", w.AsDuration(), MaxStatusWindow)
		}
		window = w.AsDuration()
	}
	var subjs []string
	if len(req.GetNames()) == 0 {
		s, err := micro.ControlSubject(micro.StatsVerb, "", "")
		if err != nil {
			return nil, err
		}
		subjs = append(subjs, s)
	}
	for i, name := range req.GetNames() {
		if err := subjects.ValidToken(name); err != nil {
			return nil, fault.New(fault.InvalidArgument, "names[%d]: %v", i, err)
		}
		s, err := micro.ControlSubject(micro.StatsVerb, name, "")
		if err != nil {
			return nil, fault.New(fault.InvalidArgument, "names[%d]: %v", i, err)
		}
		subjs = append(subjs, s)
	}

	inbox := g.nc.NewInbox()
	sub, err := g.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fault.Wrap(fault.Unavailable, err, "NATS: %v", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	for _, s := range subjs {
		if err := g.nc.PublishRequest(s, inbox, nil); err != nil {
			return nil, fault.Wrap(fault.Unavailable, err, "NATS: %v", err)
		}
	}
	wctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	byID := map[string]*lokiv1.ServiceStatus{}
	for {
		m, err := sub.NextMsgWithContext(wctx)
		if err != nil {
			if errors.Is(ctx.Err(), context.Canceled) {
				return nil, fault.Wrap(fault.DeadlineExceeded, ctx.Err(), "cancelled")
			}
			if wctx.Err() != nil {
				break // the window or the caller's deadline ended: answer with what came
			}
			if errors.Is(err, nats.ErrNoResponders) {
				continue // the server's 503: no instance of a named service
			}
			return nil, fault.Wrap(fault.Unavailable, err, "NATS: %v", err)
		}
		st, err := serviceStatus(m.Data)
		if err != nil {
			g.log.Debug("skipping a $SRV.STATS reply", keyErr, err)
			continue
		}
		byID[st.GetId()] = st
	}
	out := make([]*lokiv1.ServiceStatus, 0, len(byID))
	for _, st := range byID {
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetName() != out[j].GetName() {
			return out[i].GetName() < out[j].GetName()
		}
		return out[i].GetId() < out[j].GetId()
	})
	return out, nil
}

// serviceStatus converts a micro $SRV.STATS reply.
func serviceStatus(data []byte) (*lokiv1.ServiceStatus, error) {
	var st micro.Stats
	if err := json.Unmarshal(data, &st); err != nil {
		return nil, err
	}
	if st.Type != micro.StatsResponseType || st.ID == "" {
		return nil, fmt.Errorf("not a stats response: type %q, id %q", st.Type, st.ID)
	}
	out := &lokiv1.ServiceStatus{Name: st.Name, Id: st.ID, Version: st.Version}
	if !st.Started.IsZero() {
		out.Started = timestamppb.New(st.Started)
	}
	for _, e := range st.Endpoints {
		if e == nil {
			continue
		}
		out.Endpoints = append(out.Endpoints, &lokiv1.EndpointStatus{
			Name: e.Name, Subject: e.Subject,
			Requests: uint64(max(e.NumRequests, 0)), Errors: uint64(max(e.NumErrors, 0)),
			AverageLatency: durationpb.New(e.AverageProcessingTime), LastError: e.LastError,
		})
	}
	return out, nil
}
