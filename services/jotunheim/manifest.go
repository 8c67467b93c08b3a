package jotunheim

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// handleManifest negotiates with device id: a manifest that fails
// validation or version negotiation is refused (Negotiation accepted=false,
// a "refused" event, nothing stored); an accepted one is stored, its tools
// synced, and the device told which tools it got.
func (s *Service) handleManifest(ctx context.Context, id string, data []byte) {
	m, err := wire.DecodeManifest(id, data)
	if err != nil {
		s.refuse(id, nil, err.Error())
		return
	}
	ok, warning := wire.Negotiate(m.GetProtocol())
	if !ok {
		s.refuse(id, m, warning)
		return
	}
	tools, problems := s.syncTools(ctx, id, m)
	now := unixNow()
	before, after, err := s.update(ctx, id, func(d *jv1.Device) *jv1.Device {
		if d == nil {
			d = &jv1.Device{}
		}
		if !d.GetOnline() {
			d.Since = now
		}
		d.Manifest, d.Online, d.LastSeen, d.OfflineReason, d.Refused, d.Tools = m, true, now, "", "", tools
		return d
	})
	if err != nil {
		// The device resends its manifest when no negotiation comes: better
		// than refusing it for a fault of the platform's.
		s.log.Error("store device manifest", logKeyDevice, id, logKeyErr, err)
		return
	}
	s.stats.accepted.Add(1)
	reasons := problems
	if warning != "" {
		reasons = append([]string{warning}, reasons...)
	}
	s.toDevice(id, subjects.DeviceNegotiation, &jv1.Negotiation{
		Accepted: true, Reason: strings.Join(reasons, "; "), PlatformProtocol: wire.Version, Tools: tools,
	})
	s.publishEvent(id, &jv1.DeviceEvent{Kind: "manifest", Manifest: m, Reason: strings.Join(reasons, "; ")})
	if !before.GetOnline() {
		s.presenceEvent(id, after)
	}
	s.log.Debug("device manifest accepted", logKeyDevice, id, "tools", tools, "reason", m.GetReason().String())
	for _, p := range problems {
		s.log.Warn("device tool not registered", logKeyDevice, id, logKeyReason, p)
	}
}

// refuse tells device id its manifest m (nil when it did not decode) is
// refused, and why; nothing is stored.
func (s *Service) refuse(id string, m *jv1.Manifest, reason string) {
	s.stats.refused.Add(1)
	s.stats.bad(subjects.DeviceManifest)
	s.warn.log(id, subjects.DeviceManifest, "device manifest refused", logKeyDevice, id, logKeyReason, reason)
	s.toDevice(id, subjects.DeviceNegotiation, &jv1.Negotiation{Accepted: false, Reason: reason, PlatformProtocol: wire.Version})
	s.publishEvent(id, &jv1.DeviceEvent{Kind: "refused", Reason: reason, Manifest: m})
}

// owner is the Tool.owner of device id's tools.
func owner(id string) string { return "device:" + id }

// deviceTools returns the Loki tools made from m's entities, and why any
// entity could not become one.
func (s *Service) deviceTools(id string, m *jv1.Manifest) ([]*lokiv1.Tool, []string) {
	var tools []*lokiv1.Tool
	var problems []string
	label := id
	if n := m.GetName(); n != "" && n != id {
		label = fmt.Sprintf("%s (%s)", id, n)
	}
	base := func(entity string) *lokiv1.Tool {
		name, err := subjects.DeviceToolName(id, entity)
		if err != nil {
			problems = append(problems, fmt.Sprintf("entity %q cannot be a tool: %v", entity, err))
			return nil
		}
		return &lokiv1.Tool{
			Name:       name,
			Timeout:    durationpb.New(s.cfg.CommandTimeout),
			Grants:     []string{grantModule + ":" + id},
			SourceName: owner(id) + "/" + entity,
			Owner:      owner(id),
		}
	}
	for _, sn := range m.GetSensors() {
		t := base(sn.GetName())
		if t == nil {
			continue
		}
		desc := fmt.Sprintf("Reads the %s sensor %q of device %s", orDefault(sn.GetKind(), "generic"), sn.GetName(), label)
		if u := sn.GetUnit(); u != "" {
			desc += ", in " + u
		}
		t.Description = desc + "."
		switch sn.GetValueType() {
		case "number", "boolean", "string":
			t.Returns = sn.GetValueType()
		default:
			t.Returns = "any"
		}
		t.Source = fmt.Sprintf("return jotunheim.read(%q, %q)", id, sn.GetName())
		tools = append(tools, t)
	}
	for _, a := range m.GetActuators() {
		t := base(a.GetName())
		if t == nil {
			continue
		}
		t.Description = fmt.Sprintf("Sets the %s actuator %q of device %s and returns its state.", orDefault(a.GetKind(), "generic"), a.GetName(), label)
		vdesc := "The value to set"
		if acc := a.GetAccepts(); len(acc) > 0 {
			vdesc += ": " + strings.Join(acc, ", ")
		}
		t.Params = []*lokiv1.Param{{Name: "value", Type: "any", Required: true, Description: vdesc}}
		t.Returns = "object"
		t.Source = fmt.Sprintf("return jotunheim.set(%q, %q, value)", id, a.GetName())
		tools = append(tools, t)
	}
	return tools, problems
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// syncTools makes the registry hold exactly the tools of m for device id:
// it registers new and changed ones, unregisters those of the device no
// longer in m, and refuses names another owner holds. It returns the names
// the device has and the problems, worded for the device's author.
func (s *Service) syncTools(ctx context.Context, id string, m *jv1.Manifest) ([]string, []string) {
	want, problems := s.deviceTools(id, m)
	existing, err := s.loki.List(ctx)
	if err != nil {
		return nil, append(problems, fmt.Sprintf("tools not registered: the tool registry did not answer: %s", fault.MessageOf(err)))
	}
	have := make(map[string]*lokiv1.Tool, len(existing))
	for _, t := range existing {
		have[t.GetName()] = t
	}
	var names []string
	wanted := map[string]bool{}
	for _, t := range want {
		wanted[t.GetName()] = true
		cur, ok := have[t.GetName()]
		if ok && cur.GetOwner() != owner(id) {
			who := "a tool registered by a user or a tool file"
			if o := cur.GetOwner(); o != "" {
				who = "a tool of " + o
			}
			problems = append(problems, fmt.Sprintf("tool %q (entity %q) not registered: the name is taken by %s",
				t.GetName(), strings.TrimPrefix(t.GetSourceName(), owner(id)+"/"), who))
			continue
		}
		if ok {
			c := proto.Clone(cur).(*lokiv1.Tool)
			c.Revision = 0
			if proto.Equal(c, t) {
				names = append(names, t.GetName())
				continue
			}
		}
		if _, err := s.loki.Register(ctx, t); err != nil {
			problems = append(problems, fmt.Sprintf("tool %q not registered: %s", t.GetName(), fault.MessageOf(err)))
			continue
		}
		names = append(names, t.GetName())
	}
	for _, t := range existing {
		if t.GetOwner() == owner(id) && !wanted[t.GetName()] {
			if err := s.loki.Unregister(ctx, t.GetName()); err != nil && fault.CodeOf(err) != fault.NotFound {
				s.log.Warn("unregister device tool", logKeyDevice, id, logKeyTool, t.GetName(), logKeyErr, err)
			}
		}
	}
	slices.Sort(names)
	return names, problems
}

// removeTools unregisters every tool device id owns.
func (s *Service) removeTools(ctx context.Context, id string) error {
	existing, err := s.loki.List(ctx)
	if err != nil {
		return err
	}
	for _, t := range existing {
		if t.GetOwner() == owner(id) {
			if err := s.loki.Unregister(ctx, t.GetName()); err != nil && fault.CodeOf(err) != fault.NotFound {
				return err
			}
		}
	}
	return nil
}
