package loki

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/metrics"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/services/loki/isolate"
	"google.golang.org/protobuf/encoding/protojson"
)

// IsolationMode says which tools run in isolated worker processes.
type IsolationMode string

// The isolation modes ([loki] isolation).
const (
	// IsolateAuto isolates a tool when a memory or CPU limit applies to it:
	// its own, or a [loki] default. Tools without one run in process.
	IsolateAuto IsolationMode = "auto"
	// IsolateAlways isolates every tool.
	IsolateAlways IsolationMode = "always"
	// IsolateNever runs every tool in process: memory and CPU limits are
	// then not enforced (the replica's memory guard still is).
	IsolateNever IsolationMode = "never"
)

// ParseIsolationMode parses "auto", "always" or "never"; "" is auto.
func ParseIsolationMode(s string) (IsolationMode, error) {
	switch m := IsolationMode(s); m {
	case "":
		return IsolateAuto, nil
	case IsolateAuto, IsolateAlways, IsolateNever:
		return m, nil
	}
	return "", fmt.Errorf("isolation = %q: want auto, always or never", s)
}

// IsolationConfig is how tools with hard limits run: in worker processes a
// supervisor owns, each running one call at a time, so that a call that
// passes its limit ends only its own worker (package isolate).
type IsolationConfig struct {
	// Mode picks the tools that run isolated ("" is IsolateAuto).
	Mode IsolationMode
	// Workers is the number of worker processes (0: GOMAXPROCS). They
	// start with the first isolated call.
	Workers int
	// Memory and CPU are the limits of isolated calls whose tool declares
	// none (0: none); under IsolateAuto a default isolates every tool.
	Memory uint64
	CPU    time.Duration
	// Command starts one worker: the loki binary re-executed as a worker
	// (`loki worker`), which serves calls with ServeWorker. Nil turns
	// isolation off: every tool runs in process, as under IsolateNever.
	Command func() (*exec.Cmd, error)
	// Init is handed to every worker (isolate.Config.Init).
	Init []byte
	// Stderr receives the workers' logs.
	Stderr io.Writer
	// Observer hears about the workers (benchmarks, tests).
	Observer isolate.Observer
}

// Validate reports the first unusable setting.
func (c IsolationConfig) Validate() error {
	if _, err := ParseIsolationMode(string(c.Mode)); err != nil {
		return err
	}
	switch {
	case c.Workers < 0:
		return fmt.Errorf("workers = %d: must not be negative", c.Workers)
	case c.Memory != 0 && (c.Memory < isolate.MinMemory || c.Memory > MaxMemory):
		return fmt.Errorf("memory %s: must be at least %s and at most %s", isolate.FormatSize(c.Memory), isolate.FormatSize(isolate.MinMemory), isolate.FormatSize(MaxMemory))
	case c.CPU < 0 || c.CPU > MaxTimeout:
		return fmt.Errorf("cpu %s: must not be negative nor above %s", c.CPU, MaxTimeout)
	}
	return nil
}

// isolation returns the limits of a call of t, and whether it runs in a
// worker. It is all the in-process path pays for isolation.
func (s *Service) isolation(t *Compiled) (isolate.Limits, bool) {
	if s.sup == nil {
		return isolate.Limits{}, false
	}
	lim := isolate.Limits{Memory: t.Memory, CPU: t.CPU}
	if lim.Memory == 0 {
		lim.Memory = s.cfg.Isolation.Memory
	}
	if lim.CPU == 0 {
		lim.CPU = s.cfg.Isolation.CPU
	}
	return lim, s.cfg.Isolation.Mode == IsolateAlways || lim != (isolate.Limits{})
}

// workerCall is the payload of a call sent to a worker.
type workerCall struct {
	ExecID  string          `json:"exec_id"`
	Args    json.RawMessage `json:"args"`
	Timeout time.Duration   `json:"timeout"`
	Stream  bool            `json:"stream,omitempty"`
}

// runIsolated runs a call of tool in a worker process.
func (s *Service) runIsolated(ctx context.Context, tool *Compiled, name, execID string, args []byte, timeout time.Duration,
	lim isolate.Limits, emit func([]byte) error) ([]byte, error) {
	if len(args) == 0 {
		args = []byte("{}")
	}
	payload, err := json.Marshal(workerCall{ExecID: execID, Args: args, Timeout: timeout, Stream: emit != nil})
	if err != nil {
		return nil, err
	}
	return s.sup.Do(ctx, isolate.Request{
		Name: name, Limits: lim, Payload: payload, Emit: emit,
		Key:   name + "@" + strconv.FormatUint(tool.Def.GetRevision(), 10),
		Setup: func() ([]byte, error) { return protojson.Marshal(tool.Def) },
	})
}

// WorkerConfig configures the engine of a worker process.
type WorkerConfig struct {
	Limits  engine.Limits
	Modules []engine.Module
}

// ServeWorker runs the calls a supervisor sends over link, one at a time,
// in the same engine a replica uses, until the supervisor lets go of the
// worker or ctx ends. cmd/loki's hidden `loki worker` command calls it.
func ServeWorker(ctx context.Context, link *isolate.Link, cfg WorkerConfig, log *slog.Logger) error {
	en := engine.New(engine.Config{Limits: cfg.Limits, Modules: cfg.Modules}, log)
	tools := map[string]*Compiled{}
	return link.Serve(ctx, func(ctx context.Context, c *isolate.Call) ([]byte, error) {
		var wc workerCall
		if err := json.Unmarshal(c.Payload, &wc); err != nil {
			return nil, fmt.Errorf("worker: call: %w", err)
		}
		tool := tools[c.Key]
		if c.Setup != nil {
			def := &lokiv1.Tool{}
			if err := protojson.Unmarshal(c.Setup, def); err != nil {
				return nil, fmt.Errorf("worker: tool %q: %w", c.Name, err)
			}
			t, err := Compile(def)
			if err != nil {
				return nil, fmt.Errorf("worker: %w", err)
			}
			if c.Forget { // the supervisor forgot them too (isolate.MaxKeys)
				clear(tools)
			}
			tools[c.Key], tool = t, t
		}
		if tool == nil {
			return nil, fmt.Errorf("worker: no tool %q (key %q)", c.Name, c.Key)
		}
		args, err := engine.DecodeArgs(tool.Params, wc.Args)
		if err != nil {
			return nil, withTool(err, c.Name)
		}
		var emit func([]byte) error
		if wc.Stream {
			emit = c.Emit
		}
		ctx, cancel := context.WithTimeout(ctx, wc.Timeout)
		defer cancel()
		return en.Run(ctx, engine.Exec{
			Tool: c.Name, ExecID: wc.ExecID, Program: tool.Program, Params: tool.Params,
			Returns: tool.Returns, Args: args, Grants: tool.Grants, Emit: emit, Timeout: wc.Timeout,
		})
	})
}

// metered adds the worker metrics to o: a worker counts as alive from its
// start to its exit.
func metered(o isolate.Observer, m *metrics.Isolation) isolate.Observer {
	if m == nil {
		return o
	}
	ready, exit := o.Ready, o.Exit
	var started sync.Map // pids that became ready: a worker that failed to start never counted
	o.Ready = func(pid int) {
		started.Store(pid, struct{}{})
		m.Started()
		if ready != nil {
			ready(pid)
		}
	}
	o.Exit = func(pid int, st *os.ProcessState) {
		if _, ok := started.LoadAndDelete(pid); ok {
			how := metrics.WorkerExited
			if st != nil && !st.Exited() {
				how = metrics.WorkerSignaled
			}
			m.Ended(how)
		}
		if exit != nil {
			exit(pid, st)
		}
	}
	return o
}
