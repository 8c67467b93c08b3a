// Package loki is the script service: it keeps the tool registry on
// JetStream KV, runs tools in the sandboxed Lua engine, and serves them over
// NATS as the micro service "loki".
package loki

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/metrics"
	"github.com/loki-iot/loki/internal/microsvc"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/services/loki/isolate"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
)

// Version is the service version reported in $SRV.INFO and Capabilities.
const Version = "0.1.0"

// Config tunes the service. Zero fields take DefaultConfig's values.
type Config struct {
	// Concurrency is how many tools run at once per replica.
	Concurrency int
	// Queue is how many calls may wait for a free slot before new ones are
	// refused with RESOURCE_EXHAUSTED.
	Queue int
	// DrainTimeout bounds how long Run waits for running calls at shutdown.
	DrainTimeout time.Duration
	// Limits bound each execution.
	Limits engine.Limits
	// MemoryLimit is the heap size of the replica's process, in bytes, past
	// which every running script is stopped with RESOURCE_EXHAUSTED and new
	// calls are refused until it is back under (see memoryGuard); 0 means
	// DefaultMemoryLimit. MemoryCheck is how often the heap is sampled;
	// 0 means 20ms.
	MemoryLimit uint64
	MemoryCheck time.Duration
	// Modules are the Lua modules of the child services available to scripts.
	Modules []engine.Module
	// Metrics, when not nil, receives the replica's metrics: per-tool calls
	// and durations, memory-guard refusals, registry size and revision, and
	// the micro service's per-endpoint figures (docs/METRICS.md). It also
	// gets a readiness check that passes once Ready is closed.
	Metrics *metrics.Registry
	// Registry is how the tool registry bucket is created (replicas, hub).
	Registry RegistryConfig
	// EventInterest, when not nil, reports whether anything on the bus
	// subscribes to an event subject (a watcher, a stream capturing
	// events, a subscriber across a route or leaf link). An event nobody
	// would receive is then not published: the server would drop it, and
	// each costs as much as the call's reply. `loki up` sets it from its
	// embedded server's subscription table; nil publishes every event.
	EventInterest func(subject string) bool
	// Isolation is how tools with hard memory and CPU limits run: in
	// worker processes (see IsolationConfig). Without a Command, every
	// tool runs in process.
	Isolation IsolationConfig
}

// DefaultConfig is four running calls per core, with a queue of 64 per core.
func DefaultConfig() Config {
	n := runtime.GOMAXPROCS(0)
	return Config{Concurrency: 4 * n, Queue: 64 * n, DrainTimeout: 10 * time.Second, Limits: engine.DefaultLimits()}
}

// Validate reports the first unusable setting.
func (c Config) Validate() error {
	switch {
	case c.Concurrency < 1:
		return fmt.Errorf("concurrency %d: must be at least 1", c.Concurrency)
	case c.Queue < 0:
		return fmt.Errorf("queue %d: must not be negative", c.Queue)
	case c.DrainTimeout <= 0:
		return fmt.Errorf("drain timeout %s: must be positive", c.DrainTimeout)
	case c.MemoryCheck < 0:
		return fmt.Errorf("memory check interval %s: must not be negative", c.MemoryCheck)
	}
	if err := c.Isolation.Validate(); err != nil {
		return fmt.Errorf("isolation: %w", err)
	}
	return nil
}

// Service is one Loki replica. Any number of replicas share the load through
// the NATS queue group and share tools through the registry.
type Service struct {
	cfg    Config
	nc     *nats.Conn
	log    *slog.Logger
	engine *engine.Engine
	reg    *Registry
	svc    *microsvc.Service
	ready  chan struct{}
	// deadlines bounds executions; set in Run before any call is served.
	deadlines *deadlines
	mem       *memoryGuard
	// tm is nil without Config.Metrics; its methods then do nothing.
	tm *metrics.Tools
	// sup runs isolated calls; nil when isolation is off.
	sup *isolate.Supervisor
	// cancels holds the cancel funcs of running streaming calls by reply subject.
	cancels sync.Map
	// nuids hold *nuid.NUID generators of execution ids, one per P in
	// practice, rather than all calls sharing the package's locked one.
	nuids sync.Pool
	// argMaps holds the maps calls decode their arguments into.
	argMaps sync.Pool
	// eventBufs holds *[]byte buffers events are encoded into; the NATS
	// connection copies a message on Publish, so a buffer is reused at once.
	eventBufs sync.Pool
}

// New validates cfg and prepares a replica; Run starts it.
func New(cfg Config, nc *nats.Conn, log *slog.Logger) (*Service, error) {
	def := DefaultConfig()
	if cfg.Concurrency == 0 {
		cfg.Concurrency = def.Concurrency
	}
	if cfg.Queue == 0 {
		cfg.Queue = def.Queue
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = def.DrainTimeout
	}
	if cfg.Limits == (engine.Limits{}) {
		cfg.Limits = def.Limits
	}
	if cfg.MemoryLimit == 0 {
		cfg.MemoryLimit = DefaultMemoryLimit()
	}
	if cfg.MemoryCheck == 0 {
		cfg.MemoryCheck = 20 * time.Millisecond
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("loki config: %w", err)
	}
	log = log.With("component", "loki")
	tm := cfg.Metrics.Tools()
	mem := newMemoryGuard(cfg.MemoryLimit, cfg.MemoryCheck, log)
	mem.stopped = tm.MemoryStopped
	ready := make(chan struct{})
	cfg.Metrics.AddCheck("loki", metrics.ReadyWhenClosed(ready))
	cfg.Isolation.Mode, _ = ParseIsolationMode(string(cfg.Isolation.Mode))
	var sup *isolate.Supervisor
	if cfg.Isolation.Command != nil && cfg.Isolation.Mode != IsolateNever {
		var err error
		sup, err = isolate.New(isolate.Config{Workers: cfg.Isolation.Workers, Command: cfg.Isolation.Command,
			Init: cfg.Isolation.Init, Stderr: cfg.Isolation.Stderr, Observer: metered(cfg.Isolation.Observer, cfg.Metrics.Isolation())}, log)
		if err != nil {
			return nil, fmt.Errorf("loki config: %w", err)
		}
	}
	return &Service{
		sup:     sup,
		cfg:     cfg,
		tm:      tm,
		nc:      nc,
		log:     log,
		engine:  engine.New(engine.Config{Limits: cfg.Limits, Modules: cfg.Modules}, log),
		mem:     mem,
		ready:   ready,
		nuids:   sync.Pool{New: func() any { return nuid.New() }},
		argMaps: sync.Pool{New: func() any { return make(map[string]any, 8) }},
		eventBufs: sync.Pool{New: func() any {
			b := make([]byte, 0, 256)
			return &b
		}},
	}, nil
}

// Ready is closed once the registry is loaded and the endpoints serve.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Registry is the replica's view of the tool registry; valid after Ready.
func (s *Service) Registry() *Registry { return s.reg }

// Run serves until ctx is cancelled, then stops taking calls and waits up to
// DrainTimeout for running ones.
func (s *Service) Run(ctx context.Context) error {
	reg, err := OpenRegistryConfig(ctx, s.nc, s.log, s.cfg.Registry)
	if err != nil {
		return err
	}
	s.reg = reg
	defer s.tm.AttachReplica(reg.Len, reg.Revision, s.mem.over.Load)()
	if s.sup != nil {
		// Deferred first, so it runs last: the workers stop once running
		// calls are drained.
		supCtx, stopSup := context.WithCancel(context.Background())
		supDone := make(chan struct{})
		go func() { _ = s.sup.Run(supCtx); close(supDone) }()
		defer func() { stopSup(); <-supDone }()
	}
	loaded := make(chan struct{})
	watchCtx, stopWatch := context.WithCancel(context.Background())
	watchErr := make(chan error, 1)
	go func() { watchErr <- reg.Watch(watchCtx, func() { close(loaded) }) }()
	defer func() { stopWatch(); <-watchErr }()
	select {
	case <-loaded:
	case err := <-watchErr:
		watchErr <- err
		return err
	case <-ctx.Done():
		return nil
	}

	svc, err := microsvc.Start(s.nc, microsvc.Config{
		Name: subjects.LokiService, Version: Version,
		Description: "Runs Lua tools; exec with loki.exec.<tool> and a JSON object of arguments",
		Metrics:     s.cfg.Metrics,
	}, s.log)
	if err != nil {
		return err
	}
	s.svc = svc
	dl, stopDeadlines := newDeadlines(svc.Context())
	defer stopDeadlines()
	s.deadlines = dl
	guardCtx, stopGuard := context.WithCancel(context.Background())
	defer stopGuard()
	go s.mem.run(guardCtx, dl)
	endpoints := []microsvc.Endpoint{
		{Name: "exec", Subject: subjects.LokiExecAll, Handler: s.handleExec, Workers: s.cfg.Concurrency, Queue: s.cfg.Queue},
		{Name: "list", Subject: subjects.LokiToolsList, Handler: s.handleList},
		{Name: "get", Subject: subjects.LokiToolsGet, Handler: s.handleGet},
		{Name: "capabilities", Subject: subjects.LokiCapabilities, Handler: s.handleCapabilities},
		{Name: "register", Subject: subjects.LokiToolsRegister, Handler: s.handleRegister},
		{Name: "unregister", Subject: subjects.LokiToolsUnregister, Handler: s.handleUnregister},
	}
	if err := svc.AddEndpoints(s.cfg.DrainTimeout, endpoints...); err != nil {
		return err
	}
	// Cancellation goes to every replica (no queue group); only the one
	// running the call finds it in its map.
	cancelSub, err := s.nc.Subscribe(subjects.LokiCancel, func(m *nats.Msg) {
		if c, ok := s.cancels.Load(string(m.Data)); ok {
			c.(context.CancelFunc)()
		}
	})
	if err != nil {
		_ = svc.Stop(s.cfg.DrainTimeout)
		return fmt.Errorf("loki: subscribe %s: %w", subjects.LokiCancel, err)
	}
	defer func() { _ = cancelSub.Unsubscribe() }()
	if err := s.nc.Flush(); err != nil {
		_ = svc.Stop(s.cfg.DrainTimeout)
		return fmt.Errorf("loki: flush subscriptions: %w", err)
	}
	s.log.Debug("serving", "id", svc.ID(), "tools", len(reg.List()), "concurrency", s.cfg.Concurrency, "memory_limit_mib", s.cfg.MemoryLimit>>20)
	close(s.ready)
	<-ctx.Done()
	s.log.Info("draining", "timeout", s.cfg.DrainTimeout)
	return svc.Stop(s.cfg.DrainTimeout)
}

func (s *Service) handleExec(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	start := time.Now()
	name, err := subjects.ToolFromExec(r.Subject())
	if err != nil {
		return nil, nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	tool, ok := s.reg.Get(name)
	if !ok {
		return nil, nil, fault.New(fault.NotFound, "no tool named %q (list them with `loki tools`)", name)
	}
	if s.mem.over.Load() {
		s.tm.MemoryRefused()
		return nil, nil, s.refused(tool, name, start, fault.New(fault.ResourceExhausted, "tool %q: this replica is over its memory limit and is not taking calls; retry shortly", name))
	}
	args, err := engine.DecodeArgsInto(s.argMaps.Get().(map[string]any), tool.Params, r.Data())
	if err != nil {
		return nil, nil, s.refused(tool, name, start, withTool(err, name))
	}
	// The engine holds args only while it runs.
	defer s.putArgMap(args)
	timeout := tool.Timeout
	if h := r.Header().Get(HeaderTimeout); h != "" {
		d, err := time.ParseDuration(h)
		if err != nil || d <= 0 {
			return nil, nil, s.refused(tool, name, start, fault.New(fault.InvalidArgument, "header %s: %q is not a positive duration", HeaderTimeout, h))
		}
		timeout = min(timeout, d)
	}
	execID := s.newExecID()
	hdr := r.ReplyHeader()
	hdr[HeaderExecutionID] = []string{execID}
	ev := event{execID: execID, tool: name, kind: subjects.EventStarted, time: start, toolRevision: tool.Def.GetRevision()}
	s.publishEvent(tool, &ev)
	tm := s.tm.Tool(name)
	tm.Started()

	var emit func([]byte) error
	if r.Header().Get(HeaderStream) != "" && r.HasReply() {
		var seq uint64
		emit = func(chunk []byte) error {
			seq++
			return r.Publish(&nats.Msg{Data: chunk, Header: nats.Header{
				HeaderExecutionID: []string{execID},
				HeaderChunk:       []string{strconv.FormatUint(seq, 10)},
			}})
		}
	}
	runCtx, cancel := s.deadlines.withTimeout(ctx, timeout)
	defer cancel()
	if emit != nil {
		s.cancels.Store(r.Reply(), cancel)
		defer s.cancels.Delete(r.Reply())
	}
	var result []byte
	if lim, ok := s.isolation(tool); ok {
		result, err = s.runIsolated(runCtx, tool, name, execID, r.Data(), timeout, lim, emit)
	} else {
		result, err = s.engine.Run(runCtx, engine.Exec{
			Tool: name, ExecID: execID, Program: tool.Program, Params: tool.Params,
			Returns: tool.Returns, Args: args, Grants: tool.Grants, Emit: emit, Timeout: timeout,
		})
	}
	ev.duration, ev.hasDuration = time.Since(start), true
	ev.kind = subjects.EventCompleted
	if err != nil {
		err = s.edgeError(err, name, execID)
		ev.kind = subjects.EventFailed
		ev.errorCode = string(fault.CodeOf(err))
		ev.errorMessage = fault.MessageOf(err)
	}
	ev.time = time.Now()
	s.publishEvent(tool, &ev)
	if err != nil {
		tm.Finished(ev.errorCode, ev.duration)
		return nil, hdr, err
	}
	tm.Finished(metrics.OK, ev.duration)
	return result, hdr, nil
}

// refused publishes the failed event of a call to a registered tool that
// was refused before it started (bad arguments, no memory), so automation
// sees every failed call of the tool, and returns err. It has no started
// event: nothing ran.
func (s *Service) refused(tool *Compiled, name string, start time.Time, err error) error {
	ev := event{
		execID: s.newExecID(), tool: name, kind: subjects.EventFailed, time: time.Now(),
		toolRevision: tool.Def.GetRevision(), duration: time.Since(start), hasDuration: true,
		errorCode: string(fault.CodeOf(err)), errorMessage: fault.MessageOf(err),
	}
	s.publishEvent(tool, &ev)
	s.tm.Tool(name).Observe(ev.errorCode, ev.duration)
	return err
}

func (s *Service) putArgMap(m map[string]any) {
	// A map that held a long argument list is left to the collector.
	if len(m) <= MaxParams {
		clear(m)
		s.argMaps.Put(m)
	}
}

func (s *Service) newExecID() string {
	n := s.nuids.Get().(*nuid.NUID)
	id := n.Next()
	s.nuids.Put(n)
	return id
}

// edgeError logs internal errors with the execution id and replaces them with
// a generic message that names the id, so operators can find the log line.
func (s *Service) edgeError(err error, tool, execID string) error {
	if fault.CodeOf(err) != fault.Internal {
		return err
	}
	s.log.Error("execution failed", "tool", tool, "exec_id", execID, "err", err)
	return fault.New(fault.Internal, "internal error in tool %q (execution %s; details in the service log)", tool, execID)
}

func withTool(err error, tool string) error {
	var fe *fault.Error
	if errors.As(err, &fe) {
		return &fault.Error{Code: fe.Code, Msg: fmt.Sprintf("tool %q: %s", tool, fe.Msg), Err: fe.Err}
	}
	return err
}

// maxPooledEventBuf keeps the buffer of an event with a long error message
// out of the pool.
const maxPooledEventBuf = 4 << 10

func (s *Service) publishEvent(tool *Compiled, ev *event) {
	subj := tool.events.of(ev.kind)
	if s.cfg.EventInterest != nil && !s.cfg.EventInterest(subj) {
		return
	}
	buf := s.eventBufs.Get().(*[]byte)
	*buf = appendEvent((*buf)[:0], ev)
	if err := s.nc.Publish(subj, *buf); err != nil {
		s.log.Warn("publish event", "subject", subj, "err", err)
	}
	if cap(*buf) <= maxPooledEventBuf {
		s.eventBufs.Put(buf)
	}
}

// handleList answers every tool. A list larger than one message (a fleet's
// device tools are thousands) goes out in parts when the caller asked with
// HeaderStream, as an exec streams its emits: each part but the last to the
// reply subject with HeaderChunk, a ToolList of some tools in name order;
// the final reply holds the rest. A caller that did not ask gets
// RESOURCE_EXHAUSTED naming the header, never a reply NATS drops.
func (s *Service) handleList(_ context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	tools := s.reg.List()
	items := make([][]byte, 0, len(tools))
	for _, c := range tools {
		b, err := protojson.Marshal(c.Def)
		if err != nil {
			return nil, nil, fmt.Errorf("encode tool %q: %w", c.Def.GetName(), err)
		}
		items = append(items, b)
	}
	b, err := microsvc.Parts{Field: "tools", Ask: HeaderStream, Part: HeaderChunk, What: "tools",
		Instead: subjects.LokiToolsGet + " one tool (loki.Client asks for parts)",
		Limit:   int(s.nc.MaxPayload()) - microsvc.PartsOverhead}.Reply(r, items)
	return b, nil, err
}

func (s *Service) handleGet(_ context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	name := string(r.Data())
	if len(name) > 0 && name[0] == '{' {
		req := &lokiv1.GetToolRequest{}
		if err := protojson.Unmarshal(r.Data(), req); err != nil {
			return nil, nil, fault.New(fault.InvalidArgument, "body: want a tool name or {\"name\": ...}: %v", err)
		}
		name = req.GetName()
	}
	c, ok := s.reg.Get(name)
	if !ok {
		return nil, nil, fault.New(fault.NotFound, "no tool named %q", name)
	}
	return marshal(c.Def)
}

func (s *Service) handleCapabilities(context.Context, *microsvc.Request) ([]byte, nats.Header, error) {
	caps := &lokiv1.Capabilities{
		Service:        subjects.LokiService,
		InstanceId:     s.svc.ID(),
		Version:        Version,
		Types:          []string{"string", "number", "integer", "boolean", "object", "array", "any"},
		MaxConcurrency: uint32(s.cfg.Concurrency),
		MaxResultBytes: uint64(s.cfg.Limits.MaxResultBytes),
		DefaultTimeout: durationpb.New(DefaultTimeout),
	}
	for _, c := range s.reg.List() {
		caps.Tools = append(caps.Tools, c.Def.GetName())
	}
	for _, m := range s.cfg.Modules {
		caps.Modules = append(caps.Modules, m.Name())
	}
	return marshal(caps)
}

func (s *Service) handleRegister(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	def := &lokiv1.Tool{}
	if err := protojson.Unmarshal(r.Data(), def); err != nil {
		return nil, nil, fault.New(fault.InvalidArgument, "body: want a protojson Tool: %v", err)
	}
	def.Revision = 0
	c, err := Compile(def)
	if err == nil {
		err = CheckGrantModules([]*Compiled{c}, s.cfg.Modules)
	}
	if err != nil {
		return nil, nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	stored, err := s.reg.Register(ctx, c)
	if err != nil {
		return nil, nil, err
	}
	// Read your writes: answer once this replica serves the new revision,
	// so a call right after registering, answered here, finds the tool.
	s.reg.WaitRevision(ctx, stored.GetRevision(), registerVisibleWait)
	s.log.Info("tool registered", "tool", def.GetName(), "revision", stored.GetRevision())
	return marshal(stored)
}

func (s *Service) handleUnregister(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	name := string(r.Data())
	if err := subjects.ValidToolName(name); err != nil {
		return nil, nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	if err := s.reg.Delete(ctx, name); err != nil {
		return nil, nil, err
	}
	s.log.Info("tool unregistered", "tool", name)
	return nil, nil, nil
}

func marshal(m proto.Message) ([]byte, nats.Header, error) {
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil, nil, fmt.Errorf("encode %T: %w", m, err)
	}
	return b, nil, nil
}
