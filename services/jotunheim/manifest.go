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
// a "refused" event, nothing stored). An accepted one is stored with the
// device online, the device is told which tools it gets (those whose name
// no other owner holds), and the tools are registered in the background
// (syncManifest); should that fail, the device gets a second Negotiation
// naming what failed.
//
// Registering goes through Loki's registry one tool at a time: a fleet of
// 1,000 sim devices reconnecting at once brings 15,000 tools, about 40 s
// of registrations on a 2-vCPU machine. Done before answering, it held every device
// message behind it (states dropped from full queues) and left devices
// waiting for their negotiation past their 10 s, resending manifests.
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
	now := unixNow()
	before, after, err := s.update(ctx, id, func(d *jv1.Device) *jv1.Device {
		if d == nil {
			d = &jv1.Device{}
		}
		if !d.GetOnline() {
			d.Since = now
		}
		d.Manifest, d.Online, d.LastSeen, d.OfflineReason, d.Refused = m, true, now, "", ""
		return d
	})
	if err != nil {
		// The device resends its manifest when no negotiation comes: better
		// than refusing it for a fault of the platform's.
		s.log.Error("store device manifest", logKeyDevice, id, logKeyErr, err)
		return
	}
	if !before.GetOnline() {
		s.presenceEvent(id, after)
	}
	tools, problems := s.planTools(ctx, id, m)
	s.stats.accepted.Add(1)
	s.negotiated(id, m, tools, problems, warning)
	s.syncs.submit(id, manifestSync{m: m, planned: tools, warning: warning})
}

// negotiated tells device id its manifest m is accepted, with tools and
// the problems and warning, and publishes the manifest event.
func (s *Service) negotiated(id string, m *jv1.Manifest, tools, problems []string, warning string) {
	reasons := problems
	if warning != "" {
		reasons = append([]string{warning}, reasons...)
	}
	s.toDevice(id, subjects.DeviceNegotiation, &jv1.Negotiation{
		Accepted: true, Reason: strings.Join(reasons, "; "), PlatformProtocol: wire.Version, Tools: tools,
	})
	s.publishEvent(id, &jv1.DeviceEvent{Kind: "manifest", Manifest: m, Reason: strings.Join(reasons, "; ")})
	s.log.Debug("device manifest accepted", logKeyDevice, id, "tools", tools, "reason", m.GetReason().String())
	for _, p := range problems {
		s.log.Warn("device tool not registered", logKeyDevice, id, logKeyReason, p)
	}
}

// manifestSync is an accepted manifest whose tools are to be registered.
type manifestSync struct {
	m       *jv1.Manifest
	planned []string // the tools the device was told it gets
	warning string   // of the version negotiation
}

// syncManifest registers the tools of device id's accepted manifest j.m
// and records them; if they are not the ones the device was told, it
// tells the device again.
func (s *Service) syncManifest(ctx context.Context, id string, j manifestSync) {
	ctx, cancel := context.WithTimeout(ctx, 2*s.cfg.CommandTimeout)
	defer cancel()
	d := s.cached(id)
	if d == nil {
		var err error
		if d, _, err = s.get(ctx, id); fault.CodeOf(err) == fault.NotFound || ctx.Err() != nil {
			return // removed meanwhile, or stopping
		} else if err != nil {
			s.log.Error("read device record", logKeyDevice, id, logKeyErr, err)
			return
		}
	}
	tools, problems := s.syncTools(ctx, id, j.m, d.GetTools())
	if !slices.Equal(tools, d.GetTools()) {
		// Recorded even when a newer manifest is stored: its sync starts
		// from the tools that are registered.
		if _, _, err := s.update(ctx, id, func(d *jv1.Device) *jv1.Device {
			if d == nil {
				return nil
			}
			d.Tools = tools
			return d
		}); err != nil {
			if ctx.Err() == nil {
				s.log.Error("store device tools", logKeyDevice, id, logKeyErr, err)
			}
			return
		}
	}
	if !slices.Equal(tools, j.planned) && ctx.Err() == nil {
		s.negotiated(id, j.m, tools, problems, j.warning)
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

// ownerPrefix prefixes the Tool.owner of every device's tools.
const ownerPrefix = "device:"

// owner is the Tool.owner of device id's tools.
func owner(id string) string { return ownerPrefix + id }

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

// planTools returns the names of the tools of m device id gets: those no
// other owner holds. It asks the tool registry about each by name, and
// registers nothing.
func (s *Service) planTools(ctx context.Context, id string, m *jv1.Manifest) ([]string, []string) {
	want, problems := s.deviceTools(id, m)
	var names []string
	for _, t := range want {
		cur, err := s.loki.Get(ctx, t.GetName())
		switch {
		case fault.CodeOf(err) == fault.NotFound:
		case err != nil:
			problems = append(problems, fmt.Sprintf("tool %q not registered: the tool registry did not answer: %s", t.GetName(), fault.MessageOf(err)))
			continue
		case cur.GetOwner() != owner(id):
			problems = append(problems, takenProblem(id, t, cur))
			continue
		}
		names = append(names, t.GetName())
	}
	slices.Sort(names)
	return names, problems
}

// takenProblem words, for the device's author, that t's name is held by
// cur of another owner.
func takenProblem(id string, t, cur *lokiv1.Tool) string {
	who := "a tool registered by a user or a tool file"
	if o := cur.GetOwner(); o != "" {
		who = "a tool of " + o
	}
	return fmt.Sprintf("tool %q (entity %q) not registered: the name is taken by %s",
		t.GetName(), strings.TrimPrefix(t.GetSourceName(), owner(id)+"/"), who)
}

// syncTools makes the registry hold exactly the tools of m for device id:
// it registers new and changed ones, unregisters those of the device no
// longer in m (had: the tools its record lists), and refuses names another
// owner holds. It returns the names the device has and the problems,
// worded for the device's author.
//
// It asks the tool registry about the device's own tools only, by name:
// never the whole list, which grows with the fleet (1,000 sim devices
// hold 15,000 tools, a list past NATS's 1 MiB message limit) and would make a
// fleet's connect storm cost the square of its size.
func (s *Service) syncTools(ctx context.Context, id string, m *jv1.Manifest, had []string) ([]string, []string) {
	want, problems := s.deviceTools(id, m)
	var names []string
	wanted := map[string]bool{}
	for _, t := range want {
		wanted[t.GetName()] = true
		cur, err := s.loki.Get(ctx, t.GetName())
		if fault.CodeOf(err) == fault.NotFound {
			cur, err = nil, nil
		}
		if err != nil {
			problems = append(problems, fmt.Sprintf("tool %q not registered: the tool registry did not answer: %s", t.GetName(), fault.MessageOf(err)))
			continue
		}
		if cur != nil && cur.GetOwner() != owner(id) {
			problems = append(problems, takenProblem(id, t, cur))
			continue
		}
		if cur != nil {
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
	for _, name := range had {
		if !wanted[name] {
			if err := s.unregisterOwned(ctx, id, name); err != nil {
				s.log.Warn("unregister device tool", logKeyDevice, id, logKeyTool, name, logKeyErr, err)
			}
		}
	}
	slices.Sort(names)
	return names, problems
}

// unregisterOwned unregisters tool name if device id owns it.
func (s *Service) unregisterOwned(ctx context.Context, id, name string) error {
	t, err := s.loki.Get(ctx, name)
	if fault.CodeOf(err) == fault.NotFound {
		return nil
	}
	if err != nil {
		return err
	}
	if t.GetOwner() != owner(id) {
		return nil
	}
	if err := s.loki.Unregister(ctx, name); err != nil && fault.CodeOf(err) != fault.NotFound {
		return err
	}
	return nil
}

// removeTools unregisters every tool device d owns: those its record
// lists and those its manifest would make.
func (s *Service) removeTools(ctx context.Context, d *jv1.Device) error {
	names := slices.Clone(d.GetTools())
	want, _ := s.deviceTools(d.GetId(), d.GetManifest())
	for _, t := range want {
		names = append(names, t.GetName())
	}
	slices.Sort(names)
	for _, name := range slices.Compact(names) {
		if err := s.unregisterOwned(ctx, d.GetId(), name); err != nil {
			return err
		}
	}
	return nil
}
