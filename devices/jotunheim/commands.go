package jotunheim

import (
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"google.golang.org/protobuf/encoding/protojson"
)

// Built-in command names.
const (
	CmdPing      = "ping"
	CmdCaps      = "caps"
	CmdReboot    = "reboot"
	CmdConfigGet = "config.get"
	CmdConfigSet = "config.set"
	CmdRead      = "read"
	CmdSet       = "set"
	CmdState     = "state"
)

var builtin = map[string]bool{CmdPing: true, CmdCaps: true, CmdReboot: true, CmdConfigGet: true,
	CmdConfigSet: true, CmdRead: true, CmdSet: true, CmdState: true, CmdOTARollback: true, CmdToolCall: true}

// queued is a command waiting for the worker.
type queued struct {
	cmd *jv1.Command
	at  time.Time
	seq uint64
}

// queue is a bounded priority queue: higher priority first, then arrival.
type queue struct {
	mu    sync.Mutex
	items cmdHeap
	max   int
	seq   uint64
	ready chan struct{} // one token while items is not empty
}

func newQueue(max int) *queue { return &queue{max: max, ready: make(chan struct{}, 1)} }

// push adds c; false when the queue is full.
func (q *queue) push(c *jv1.Command) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) >= q.max {
		return false
	}
	q.seq++
	heap.Push(&q.items, &queued{cmd: c, at: time.Now(), seq: q.seq})
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return true
}

func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items)
}

// pop takes the first command, waiting until there is one or ctx ends.
func (q *queue) pop(ctx context.Context) (*queued, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			it := heap.Pop(&q.items).(*queued)
			if len(q.items) > 0 {
				select {
				case q.ready <- struct{}{}:
				default:
				}
			}
			q.mu.Unlock()
			return it, true
		}
		q.mu.Unlock()
		select {
		case <-q.ready:
		case <-ctx.Done():
			return nil, false
		}
	}
}

type cmdHeap []*queued

func (h cmdHeap) Len() int { return len(h) }
func (h cmdHeap) Less(i, j int) bool {
	if pi, pj := h[i].cmd.GetPriority(), h[j].cmd.GetPriority(); pi != pj {
		return pi > pj
	}
	return h[i].seq < h[j].seq
}
func (h cmdHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *cmdHeap) Push(x any)   { *h = append(*h, x.(*queued)) }
func (h *cmdHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	*h = old[:len(old)-1]
	return it
}

// enqueue queues c, or answers RESOURCE_EXHAUSTED at once when the queue
// is full.
func (a *Agent) enqueue(c *jv1.Command) {
	if err := a.memoryRefusal(); err != nil { // budget.go: no new work while starving
		a.memRefused.Add(1)
		a.log.Warn("memory exhausted: command refused", logCmd, c.GetName(), "id", c.GetId())
		a.reply(c, nil, err)
		return
	}
	if a.queue.push(c) {
		return
	}
	a.queueFull.Add(1)
	a.log.Warn("command queue full: command refused", logCmd, c.GetName(), "id", c.GetId(), "max", a.cfg.Limits.MaxQueuedCommands)
	a.reply(c, nil, fault.New(fault.ResourceExhausted, "device %s: %d commands already queued", a.cfg.Device.ID, a.cfg.Limits.MaxQueuedCommands))
}

// worker runs queued commands one at a time until ctx ends. A reboot
// command, once answered, cancels the agent with ErrReboot.
func (a *Agent) worker(ctx context.Context, cancel context.CancelCauseFunc) {
	for {
		it, ok := a.queue.pop(ctx)
		if !ok {
			return
		}
		c := it.cmd
		if t := c.GetTimeoutMs(); t > 0 && time.Since(it.at) > time.Duration(t)*time.Millisecond {
			// The caller has given up: running it now (an output switched
			// long after it was asked for) would surprise more than help.
			a.reply(c, nil, fault.New(fault.DeadlineExceeded, "device %s: command %s waited in the queue past its %d ms", a.cfg.Device.ID, c.GetName(), t))
			continue
		}
		a.commands.Add(1)
		if c.GetName() == CmdToolCall { // beside the worker (lokiexec.go)
			a.startLokiExec(ctx, c, time.Duration(c.GetTimeoutMs())*time.Millisecond)
			continue
		}
		cctx, stop := ctx, context.CancelFunc(func() {})
		if t := c.GetTimeoutMs(); t > 0 {
			cctx, stop = context.WithTimeout(ctx, time.Duration(t)*time.Millisecond)
		}
		data, err := a.execute(cctx, c)
		stop()
		a.reply(c, data, err)
		if err == nil && c.GetName() == CmdReboot {
			a.log.Info("reboot requested by the platform")
			cancel(ErrReboot)
			return
		}
		if err == nil && c.GetName() == CmdOTARollback {
			cancel(ErrUpdated) // current is the previous release now
			return
		}
	}
}

// reply publishes the CommandResult of c.
func (a *Agent) reply(c *jv1.Command, data any, err error) {
	if a.haReply(c, err) {
		return // from Home Assistant: it sees the state topic
	}
	r := &jv1.CommandResult{Id: c.GetId(), Ok: err == nil}
	if err != nil {
		r.Code, r.Message = string(fault.CodeOf(err)), fault.MessageOf(err)
		if r.Code == string(fault.Internal) {
			a.log.Error("command failed", logCmd, c.GetName(), "id", c.GetId(), logErr, err)
		} else {
			a.log.Debug("command refused", logCmd, c.GetName(), "id", c.GetId(), logErr, err)
		}
	} else if data != nil {
		v, verr := toValue(data)
		if verr != nil {
			r.Ok, r.Code, r.Message = false, string(fault.Internal), "internal error"
			a.log.Error("command result", logCmd, c.GetName(), logErr, verr)
		}
		r.Data = v
	}
	a.publishAsync(a.topics.result, 1, r, "the result of command "+c.GetName()+" "+c.GetId())
}

// execute runs one command.
func (a *Agent) execute(ctx context.Context, c *jv1.Command) (any, error) {
	args := c.GetArgs().AsMap()
	switch c.GetName() {
	case CmdPing:
		return map[string]any{"uptime": time.Since(a.started).Seconds()}, nil
	case CmdCaps:
		b, err := protojson.Marshal(a.Manifest())
		if err != nil {
			return nil, err
		}
		return jsonValue(b)
	case CmdReboot:
		return map[string]any{"rebooting": true}, nil
	case CmdConfigGet:
		return a.Settings().asMap(), nil
	case CmdConfigSet:
		return a.setSettings(args)
	case CmdRead:
		return a.read(c.GetEntity())
	case CmdSet:
		return a.set(c.GetEntity(), args)
	case CmdState:
		return a.state(c.GetEntity())
	case CmdOTARollback:
		return a.manualRollback(args)
	}
	if fn, ok := a.custom[c.GetName()]; ok {
		return fn(ctx, args)
	}
	return nil, fault.New(fault.NotFound, "device %s has no command %q (commands: %s)", a.cfg.Device.ID, trunc(c.GetName()), a.commandList())
}

func (a *Agent) commandList() string {
	var names []string
	for n := range builtin {
		names = append(names, n)
	}
	for n := range a.custom {
		names = append(names, n)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// jsonValue decodes JSON into generic values (maps, slices, float64...).
func jsonValue(b []byte) (any, error) {
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// setSettings validates args, persists the result and applies it live.
func (a *Agent) setSettings(args map[string]any) (any, error) {
	a.mu.Lock()
	next, err := a.settings.apply(args)
	if err != nil {
		a.mu.Unlock()
		return nil, fault.New(fault.InvalidArgument, "device %s: config.set: %v", a.cfg.Device.ID, err)
	}
	if err := saveSettings(a.cfg.Telemetry.StateFile, next); err != nil {
		a.mu.Unlock()
		return nil, fault.Wrap(fault.Unavailable, err, "device %s: config.set: cannot save the state file: %v", a.cfg.Device.ID, err)
	}
	prev := a.settings
	a.settings = next
	close(a.settingsCh)
	a.settingsCh = make(chan struct{})
	a.mu.Unlock()
	a.applyLevel(next.LogLevel)
	a.log.Info("settings changed", "telemetry_seconds", next.TelemetrySeconds, "heartbeat_seconds", next.HeartbeatSeconds, "log_level", next.LogLevel)
	a.publishEvent("config_changed", "", next.asMap())
	if prev.HeartbeatSeconds != next.HeartbeatSeconds || prev.TelemetrySeconds != next.TelemetrySeconds {
		// The platform's presence sweeper reads heartbeat_seconds.
		if err := a.publishManifest(jv1.Manifest_REASON_UPDATE, ""); err != nil && !errors.Is(err, errNotConnected) {
			a.log.Warn("publish manifest", logErr, err)
		}
	}
	return next.asMap(), nil
}

func (a *Agent) noEntity(kind, name string) error {
	bc := a.hw.device().Config()
	var names []string
	if kind == "sensor" || kind == "entity" {
		for _, s := range bc.Sensors {
			names = append(names, s.Name)
		}
	}
	if kind == "actuator" || kind == "entity" {
		for _, ac := range bc.Actuators {
			names = append(names, ac.Name)
		}
	}
	if name == "" {
		return fault.New(fault.InvalidArgument, "device %s: the command needs an entity (%ss: %s)", a.cfg.Device.ID, kind, strings.Join(names, ", "))
	}
	return fault.New(fault.NotFound, "device %s has no %s %q (%ss: %s)", a.cfg.Device.ID, kind, trunc(name), kind, strings.Join(names, ", "))
}

func (a *Agent) isSensor(name string) bool {
	for _, s := range a.hw.device().Config().Sensors {
		if s.Name == name {
			return true
		}
	}
	return false
}

func (a *Agent) isActuator(name string) bool {
	for _, ac := range a.hw.device().Config().Actuators {
		if ac.Name == name {
			return true
		}
	}
	return false
}

// read reads a sensor: data is its value.
func (a *Agent) read(entity string) (any, error) {
	if v, ok := a.diagValue(entity); ok { // the agent's own figures (budget.go)
		return v, nil
	}
	if !a.isSensor(entity) {
		return nil, a.noEntity("sensor", entity)
	}
	r, err := a.hw.readSensor(entity)
	if err != nil {
		return nil, hwFault(err)
	}
	a.publishState(entity, r.Value, r.Unit, r.At, false)
	return r.Value, nil
}

// set drives an actuator to args["value"]: data is its new state.
func (a *Agent) set(entity string, args map[string]any) (any, error) {
	if !a.isActuator(entity) {
		return nil, a.noEntity("actuator", entity)
	}
	v, ok := args["value"]
	if !ok {
		return nil, fault.New(fault.InvalidArgument, "device %s: set %s: args need a value", a.cfg.Device.ID, entity)
	}
	st, err := a.hw.device().SetActuator(entity, v)
	if err != nil {
		return nil, hwFault(err)
	}
	a.publishState(entity, st, "", unixNow(), false)
	return st, nil
}

// state answers an entity's current state as a State object.
func (a *Agent) state(entity string) (any, error) {
	st := &jv1.State{Entity: entity, At: unixNow()}
	var value any
	switch {
	case isDiagnostic(entity):
		v, ok := a.diagValue(entity)
		if !ok {
			return nil, a.noEntity("entity", entity)
		}
		value = v
		for _, s := range diagSensors {
			if s.GetName() == entity {
				st.Unit = s.GetUnit()
			}
		}
	case a.isSensor(entity):
		r, err := a.hw.readSensor(entity)
		if err != nil {
			return nil, hwFault(err)
		}
		value, st.Unit, st.At = r.Value, r.Unit, r.At
	case a.isActuator(entity):
		for _, s := range a.hw.device().Info().Actuators {
			if s.Name == entity {
				value = s
			}
		}
	default:
		return nil, a.noEntity("entity", entity)
	}
	v, err := toValue(value)
	if err != nil {
		return nil, err
	}
	st.Value = v
	b, err := protojson.Marshal(st)
	if err != nil {
		return nil, err
	}
	return jsonValue(b)
}

// hwFault keeps the hardware's fault codes and calls anything else a
// hardware failure (UNAVAILABLE).
func hwFault(err error) error {
	var fe *fault.Error
	if errors.As(err, &fe) {
		return err
	}
	return fault.Wrap(fault.Unavailable, err, "hardware: %v", err)
}
