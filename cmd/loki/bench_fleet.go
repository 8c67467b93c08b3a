package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natsrv"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	svcjotunheim "github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// fleetConfig is what `loki bench devices` runs.
type fleetConfig struct {
	Count     int
	Prefix    string        // device ids are Prefix-0001, ...
	Ramp      time.Duration // agent starts are spread at random over it
	Telemetry time.Duration // each agent's telemetry period
	Heartbeat time.Duration
	Steady    time.Duration // the steady-telemetry phase
	Online    time.Duration // how long to wait for the whole fleet online
	Command   time.Duration // each command's deadline
	InProcess bool          // agents in this process instead of a child
	Probe     time.Duration // the real-agent measurement; 0 skips it
	AgentBin  string        // cmd/jotunheim binary for the probe
	Profile   string        // CPU profile of this process until the fleet is online
	MemProf   string        // heap profile of this process after the steady phase
}

func defaultFleetConfig() fleetConfig {
	return fleetConfig{
		Count: 1000, Prefix: "fleet", Ramp: -1, Telemetry: 10 * time.Second, Heartbeat: 15 * time.Second,
		Steady: 60 * time.Second, Online: 2 * time.Minute, Command: 10 * time.Second, Probe: 60 * time.Second,
	}
}

// benchFleet is `loki bench devices`.
func benchFleet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := defaultFleetConfig()
	fs := newFlags("bench devices", `Usage: loki bench devices [--count N] [flags]

Runs a fleet of N simulated Jotunheim agents (the agent library on the
simulated board) against an embedded stack on loopback — NATS with its MQTT
listener, a Loki replica with the jotunheim module and the device service,
as under 'loki up', without authentication — and prints in Markdown:

  - the time from the first agent's start until devices.list shows all N
    online (agent starts spread at random over --ramp), and until every
    device's tools (each sensor and actuator a Loki tool) are registered;
  - one ping command to every device, all sent at once: latencies and how
    many were answered within --command-timeout;
  - --steady of telemetry every --telemetry from all of them: state
    messages heard, messages the device service refused or dropped,
    agent warnings, and whether all stayed online;
  - the server's memory (Go heap and RSS) per device, before and after;
  - the idle RSS and CPU of one real 'jotunheim --sim' process (built from
    ./cmd/jotunheim when the go tool and the source are here, else
    --agent-bin or jotunheim on PATH) with telemetry every --telemetry,
    over --probe.

The agents run in a child process of this binary, so that the server's
memory is its own; --in-process runs them here (the memory figures then
include the agents). Only the embedded stack is supported: against a
running 'loki up' the fleet would need a device login per agent.`, stderr)
	fs.IntVar(&cfg.Count, "count", cfg.Count, "number of simulated devices")
	fs.DurationVar(&cfg.Ramp, "ramp", cfg.Ramp, "spread agent starts at random over this `duration` (default 10ms per device)")
	fs.DurationVar(&cfg.Telemetry, "telemetry", cfg.Telemetry, "each agent's telemetry period")
	fs.DurationVar(&cfg.Steady, "steady", cfg.Steady, "length of the steady-telemetry phase")
	fs.DurationVar(&cfg.Online, "online-timeout", cfg.Online, "give up waiting for the whole fleet online after this long")
	fs.DurationVar(&cfg.Command, "command-timeout", cfg.Command, "deadline of each ping command")
	fs.BoolVar(&cfg.InProcess, "in-process", cfg.InProcess, "run the agents in this process instead of a child process")
	fs.DurationVar(&cfg.Probe, "probe", cfg.Probe, "measure one real jotunheim process's RSS and CPU over this long (0: skip)")
	fs.StringVar(&cfg.AgentBin, "agent-bin", "", "jotunheim `binary` for the probe (default: build ./cmd/jotunheim, or jotunheim on PATH)")
	fs.StringVar(&cfg.Profile, "cpuprofile", "", "write this process's CPU profile until the fleet is online to `FILE`")
	fs.StringVar(&cfg.MemProf, "memprofile", "", "write this process's heap profile after the steady phase to `FILE`")
	agentsOnly := fs.Bool("agents-only", false, "internal: run only the agents, against --mqtt-url, for a parent 'loki bench devices'")
	mqttURL := fs.String("mqtt-url", "", "internal: with --agents-only, the MQTT broker `URL`")
	newLog := logFlags(fs, stderr)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageError(fs, "bench devices: unexpected argument %q", pos[0])
	}
	log, err := newLog()
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	if cfg.Count < 1 || cfg.Count > 9999 {
		return badInput("bench devices: --count %d: want 1 to 9999", cfg.Count)
	}
	if cfg.Telemetry < time.Second || cfg.Telemetry%time.Second != 0 {
		return badInput("bench devices: --telemetry %s: want whole seconds, at least 1s", cfg.Telemetry)
	}
	if cfg.Ramp < 0 {
		cfg.Ramp = time.Duration(cfg.Count) * 10 * time.Millisecond
	}
	if *agentsOnly {
		if *mqttURL == "" {
			return badInput("bench devices: --agents-only needs --mqtt-url")
		}
		return runFleetChild(ctx, cfg, *mqttURL, os.Stdin, stdout)
	}
	return runFleet(ctx, cfg, log, stdout, stderr)
}

// fleetStats are the agents' counts, summed over the fleet.
type fleetStats struct {
	Agents    int   `json:"agents"`
	Online    int   `json:"online"`
	Connects  int   `json:"connects"`
	Bad       int   `json:"bad"`
	QueueFull int   `json:"queue_full"`
	Commands  int   `json:"commands"`
	RampMs    int64 `json:"ramp_ms"` // from the first start to the last
	// Warnings counts the agents' log records at WARN and above, by
	// message (a failed publish, a lost connection, a retry...).
	Warnings map[string]uint64 `json:"warnings"`
	// Samples holds the first such record of each message, in full.
	Samples map[string]string `json:"samples"`
}

func (s fleetStats) warnings() uint64 {
	var n uint64
	for _, c := range s.Warnings {
		n += c
	}
	return n
}

// warnCounter is a slog handler that counts WARN and above by message;
// every agent of a fleet logs into the same one.
type warnCounter struct {
	mu      sync.Mutex
	counts  map[string]uint64
	samples map[string]string
}

func newWarnCounter() *warnCounter {
	return &warnCounter{counts: map[string]uint64{}, samples: map[string]string{}}
}

func (w *warnCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (w *warnCounter) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.counts[r.Message]++
	if _, ok := w.samples[r.Message]; !ok {
		var b strings.Builder
		b.WriteString(r.Message)
		r.Attrs(func(a slog.Attr) bool {
			fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
			return true
		})
		w.samples[r.Message] = b.String()
	}
	return nil
}

// WithAttrs and WithGroup drop the attributes: only messages are counted.
func (w *warnCounter) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnCounter) WithGroup(string) slog.Handler      { return w }

// fleet is N agents in this process.
type fleet struct {
	agents []*jotunheim.Agent
	warn   *warnCounter
	rampMs atomic.Int64
	wg     sync.WaitGroup
	stop   context.CancelFunc
}

func fleetID(prefix string, i int) string { return fmt.Sprintf("%s-%04d", prefix, i) }

// startFleet builds cfg.Count agents against broker and starts them, each
// at a random moment within cfg.Ramp, in the background; Close stops them.
func startFleet(ctx context.Context, cfg fleetConfig, broker string) (*fleet, error) {
	f := &fleet{warn: newWarnCounter()}
	log := slog.New(f.warn)
	for i := range cfg.Count {
		acfg := jotunheim.DefaultConfig()
		acfg.Device.ID = fleetID(cfg.Prefix, i)
		acfg.Transport.Broker = broker
		acfg.Transport.Username = acfg.Device.ID
		acfg.Board.Sim = true
		acfg.Telemetry.Period, acfg.Telemetry.Heartbeat = cfg.Telemetry, cfg.Heartbeat
		a, err := jotunheim.New(acfg, log)
		if err != nil {
			return nil, fmt.Errorf("agent %s: %w", acfg.Device.ID, err)
		}
		f.agents = append(f.agents, a)
	}
	runCtx, stop := context.WithCancel(ctx)
	f.stop = stop
	// Start times: random within the ramp, taken in order.
	at := make([]time.Duration, cfg.Count)
	for i := range at {
		if cfg.Ramp > 0 {
			at[i] = rand.N(cfg.Ramp)
		}
	}
	slices.Sort(at)
	f.wg.Go(func() {
		t0 := time.Now()
		for i, a := range f.agents {
			if d := at[i] - time.Since(t0); d > 0 && !sleep(runCtx, d) {
				return
			}
			f.wg.Go(func() { _ = a.Run(runCtx) })
		}
		f.rampMs.Store(time.Since(t0).Milliseconds())
	})
	return f, nil
}

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (f *fleet) stats() fleetStats {
	s := fleetStats{Agents: len(f.agents), RampMs: f.rampMs.Load()}
	for _, a := range f.agents {
		st := a.Stats()
		if st.Online {
			s.Online++
		}
		s.Connects += int(st.Connects)
		s.Bad += int(st.Bad)
		s.QueueFull += int(st.QueueFull)
		s.Commands += int(st.Commands)
	}
	f.warn.mu.Lock()
	defer f.warn.mu.Unlock()
	s.Warnings, s.Samples = map[string]uint64{}, map[string]string{}
	for k, v := range f.warn.counts {
		s.Warnings[k], s.Samples[k] = v, f.warn.samples[k]
	}
	return s
}

// Close stops every agent (each publishes offline) and waits for them.
func (f *fleet) Close() {
	f.stop()
	f.wg.Wait()
}

// runFleetChild is --agents-only: the agents of a parent's fleet. It
// prints a JSON fleetStats line for every "stats" line on in, and a last
// one when in ends, after stopping the agents.
func runFleetChild(ctx context.Context, cfg fleetConfig, broker string, in io.Reader, out io.Writer) error {
	f, err := startFleet(ctx, cfg, broker)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "stats" {
			if err := enc.Encode(f.stats()); err != nil {
				f.Close()
				return err
			}
		}
	}
	f.Close()
	return enc.Encode(f.stats())
}

// fleetAgents is where the fleet runs: in this process or a child.
type fleetAgents interface {
	stats() (fleetStats, error)
	Close() (fleetStats, error)
}

type localFleet struct{ f *fleet }

func (l localFleet) stats() (fleetStats, error) { return l.f.stats(), nil }
func (l localFleet) Close() (fleetStats, error) { l.f.Close(); return l.f.stats(), nil }

// childFleet is a child process running `loki bench devices --agents-only`.
type childFleet struct {
	cmd  *exec.Cmd
	in   io.WriteCloser
	out  *bufio.Scanner
	done chan error
}

func startChildFleet(cfg fleetConfig, broker string, stderr io.Writer) (*childFleet, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("bench devices: find this binary to run the agents in a child process (or use --in-process): %w", err)
	}
	c := &childFleet{done: make(chan error, 1)}
	c.cmd = exec.Command(exe, "bench", "devices", "--agents-only", "--mqtt-url", broker,
		"--count", strconv.Itoa(cfg.Count), "--ramp", cfg.Ramp.String(),
		"--telemetry", cfg.Telemetry.String(), "--log-level", "warn")
	c.cmd.Stderr = stderr
	if c.in, err = c.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	pr, err := c.cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	c.out = bufio.NewScanner(pr)
	c.out.Buffer(make([]byte, 0, 64<<10), 16<<20)
	if err := c.cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench devices: start the agents' process: %w", err)
	}
	return c, nil
}

func (c *childFleet) read() (fleetStats, error) {
	var s fleetStats
	if !c.out.Scan() {
		err := c.out.Err()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return s, fmt.Errorf("bench devices: the agents' process: %w", err)
	}
	return s, json.Unmarshal(c.out.Bytes(), &s)
}

func (c *childFleet) stats() (fleetStats, error) {
	if _, err := io.WriteString(c.in, "stats\n"); err != nil {
		return fleetStats{}, err
	}
	return c.read()
}

func (c *childFleet) Close() (fleetStats, error) {
	_ = c.in.Close()
	s, err := c.read()
	if werr := c.cmd.Wait(); err == nil && werr != nil {
		err = fmt.Errorf("bench devices: the agents' process: %w", werr)
	}
	return s, err
}

// memSnapshot is this process's memory after a GC.
type memSnapshot struct {
	heap, rss  uint64 // bytes
	goroutines int
}

func snapshotMem() memSnapshot {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	rss, _ := procStatusKB("self", "VmRSS")
	return memSnapshot{heap: ms.HeapInuse, rss: rss * 1024, goroutines: runtime.NumGoroutine()}
}

// procStatusKB reads a "Key: N kB" line of /proc/<pid>/status.
func procStatusKB(pid, key string) (uint64, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "status"))
	if err != nil {
		return 0, false
	}
	for _, l := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(l, key+":"); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, err := strconv.ParseUint(f[0], 10, 64)
				return n, err == nil
			}
		}
	}
	return 0, false
}

// procCPU is the user+system CPU time of process pid so far, from
// /proc/<pid>/stat (in USER_HZ, 1/100 s).
func procCPU(pid string) (time.Duration, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", pid, "stat"))
	if err != nil {
		return 0, false
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+s) * 10 * time.Millisecond, true
}

// fleetStack is the embedded platform the fleet connects to.
type fleetStack struct {
	srv     *natsrv.Server
	jsvc    *svcjotunheim.Service
	caller  *nats.Conn
	closers []func()
}

func startFleetStack(ctx context.Context, log *slog.Logger) (_ *fleetStack, err error) {
	st := &fleetStack{}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	dir, err := os.MkdirTemp("", "loki-bench-fleet-")
	if err != nil {
		return nil, err
	}
	st.closers = append(st.closers, func() { _ = os.RemoveAll(dir) })
	if st.srv, err = natsrv.Start(natsrv.Config{Name: "bench-fleet", DataDir: dir, Port: -1, MQTTPort: -1}, nil); err != nil {
		return nil, err
	}
	st.closers = append(st.closers, st.srv.Shutdown)
	conn := func(name string) (*nats.Conn, error) {
		nc, err := st.srv.Connect(name)
		if err == nil {
			st.closers = append(st.closers, nc.Close)
		}
		return nc, err
	}
	nc, err := conn("bench-loki")
	if err != nil {
		return nil, err
	}
	jnc, err := conn("bench-jotunheim")
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(ctx)
	run := func(r func(context.Context) error) {
		done := make(chan error, 1)
		go func() { done <- r(runCtx) }()
		st.closers = append(st.closers, func() { stop(); <-done })
	}
	lcfg := loki.DefaultConfig()
	lcfg.Modules = []engine.Module{svcjotunheim.NewModule(nc)}
	lsvc, err := loki.New(lcfg, nc, log)
	if err != nil {
		stop()
		return nil, err
	}
	run(lsvc.Run)
	if st.jsvc, err = svcjotunheim.New(svcjotunheim.DefaultConfig(), jnc, log); err != nil {
		return nil, err
	}
	run(st.jsvc.Run)
	for _, ready := range []<-chan struct{}{lsvc.Ready(), st.jsvc.Ready()} {
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if st.caller, err = nats.Connect(st.srv.ClientURL(), nats.Name("bench-caller")); err != nil {
		return nil, err
	}
	st.closers = append(st.closers, st.caller.Close)
	return st, nil
}

// Close stops everything, last started first.
func (st *fleetStack) Close() {
	for i := len(st.closers) - 1; i >= 0; i-- {
		st.closers[i]()
	}
	st.closers = nil
}

// fleetOnline counts the fleet's devices devices.list shows online, the
// tools their records list, and the tools their manifests' entities make.
func fleetOnline(ctx context.Context, jc *svcjotunheim.Client, prefix string) (online, tools, entities int, err error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	list, err := jc.List(ctx)
	if err != nil {
		return 0, 0, 0, err
	}
	for _, d := range list {
		if strings.HasPrefix(d.GetId(), prefix+"-") && d.GetOnline() {
			online++
			tools += len(d.GetTools())
			entities += len(d.GetManifest().GetSensors()) + len(d.GetManifest().GetActuators())
		}
	}
	return online, tools, entities, nil
}

// pctl is the q-quantile of sorted ds.
func pctl(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	return ds[min(len(ds)-1, int(q*float64(len(ds))))]
}

func mib(b uint64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func yesNo(ok bool) string {
	if ok {
		return "**yes**"
	}
	return "**no**"
}

// runFleet is the benchmark; see benchFleet's usage.
func runFleet(ctx context.Context, cfg fleetConfig, log *slog.Logger, stdout, stderr io.Writer) error {
	st, err := startFleetStack(ctx, log)
	if err != nil {
		return err
	}
	defer st.Close()
	jc := svcjotunheim.NewClient(st.caller)
	var probe *agentProbe
	if cfg.Probe > 0 {
		if probe, err = prepareProbe(ctx, cfg, st.srv.MQTTURL(), stderr); err != nil {
			fmt.Fprintf(stderr, "bench devices: the agent probe is skipped: %v\n", err)
		} else {
			defer probe.Close()
		}
	}
	where := "a child process"
	if cfg.InProcess {
		where = "this process"
	}
	fmt.Fprintf(stderr, "benchmarking a fleet of %d simulated devices on %d CPUs (agents in %s, starts spread over %s)...\n",
		cfg.Count, runtime.NumCPU(), where, cfg.Ramp)
	before := snapshotMem()
	statsBefore := st.jsvc.Stats()

	// Phase 1: the fleet comes online.
	stopProfile := func() {}
	if cfg.Profile != "" {
		pf, err := os.Create(cfg.Profile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(pf); err != nil {
			_ = pf.Close()
			return err
		}
		stopProfile = func() { pprof.StopCPUProfile(); _ = pf.Close(); stopProfile = func() {} }
		defer stopProfile()
	}
	t0 := time.Now()
	var agents fleetAgents
	if cfg.InProcess {
		f, err := startFleet(ctx, cfg, st.srv.MQTTURL())
		if err != nil {
			return err
		}
		agents = localFleet{f}
	} else {
		c, err := startChildFleet(cfg, st.srv.MQTTURL(), stderr)
		if err != nil {
			return err
		}
		agents = c
	}
	closed := false
	var final fleetStats
	closeAgents := func() error {
		if closed {
			return nil
		}
		closed = true
		var err error
		final, err = agents.Close()
		return err
	}
	defer func() { _ = closeAgents() }()
	var onlineAfter, toolsAfter time.Duration
	var online, onlineTools, tools, entities int
	var listErrs int
	for {
		n, tl, en, err := fleetOnline(ctx, jc, cfg.Prefix)
		if err != nil {
			listErrs++
			fmt.Fprintf(stderr, "%s: %v\n", subjects.DevicesList, err)
		} else {
			online, tools, entities = n, tl, en
		}
		if online == cfg.Count && onlineAfter == 0 {
			onlineAfter, onlineTools = time.Since(t0), tools
			fmt.Fprintf(stderr, "online: %d of %d after %s; %d of %d device tools registered\n",
				online, cfg.Count, onlineAfter.Round(time.Millisecond), tools, entities)
		}
		if onlineAfter > 0 && tools == entities {
			toolsAfter = time.Since(t0)
			break
		}
		if time.Since(t0) > cfg.Online {
			break
		}
		if !sleep(ctx, time.Second) {
			return ctx.Err()
		}
	}
	allOnline := onlineAfter > 0
	stopProfile()
	fmt.Fprintf(stderr, "%d of %d online and %d of %d device tools registered after %s\n",
		online, cfg.Count, tools, entities, time.Since(t0).Round(time.Millisecond))
	ramp, err := agents.stats()
	if err != nil {
		return err
	}

	// Phase 2: one ping to every device, all at once.
	lat := make([]time.Duration, cfg.Count)
	errsBy := map[string]int{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	c0 := time.Now()
	for i := range cfg.Count {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, cfg.Command)
			defer cancel()
			s := time.Now()
			_, err := jc.Command(cctx, fleetID(cfg.Prefix, i), &jv1.Command{Name: "ping"})
			lat[i] = time.Since(s)
			if err != nil {
				lat[i] = -1
				mu.Lock()
				if len(errsBy) == 0 {
					fmt.Fprintf(stderr, "ping %s: %v\n", fleetID(cfg.Prefix, i), err)
				}
				errsBy[string(fault.CodeOf(err))]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	allAnswered := time.Since(c0)
	var ok []time.Duration
	for _, d := range lat {
		if d >= 0 {
			ok = append(ok, d)
		}
	}
	slices.Sort(ok)
	within := 0
	for _, d := range ok {
		if d <= cfg.Command {
			within++
		}
	}

	// Phase 3: steady telemetry, with the agent probe alongside.
	stateSubj, err := subjects.DeviceSubjectAll(subjects.DeviceState)
	if err != nil {
		return err
	}
	heard := map[string]int{}
	var states atomic.Int64
	var hmu sync.Mutex
	sub, err := st.caller.Subscribe(stateSubj, func(m *nats.Msg) {
		id, _, _, err := subjects.ParseDeviceSubject(m.Subject)
		if err != nil || !strings.HasPrefix(id, cfg.Prefix+"-") {
			return
		}
		states.Add(1)
		hmu.Lock()
		heard[id]++
		hmu.Unlock()
	})
	if err != nil {
		return err
	}
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		return err
	}
	var probeRes probeResult
	probeDone := make(chan struct{})
	if probe != nil {
		go func() {
			defer close(probeDone)
			probeRes = probe.measure(ctx, jc, cfg.Probe)
		}()
	} else {
		close(probeDone)
	}
	steadyBefore, err := agents.stats()
	if err != nil {
		return err
	}
	svcBefore := st.jsvc.Stats()
	fmt.Fprintf(stderr, "pings done; steady telemetry for %s...\n", cfg.Steady)
	if !sleep(ctx, cfg.Steady) {
		return ctx.Err()
	}
	_ = sub.Unsubscribe()
	svcAfter := st.jsvc.Stats()
	steadyAfter, err := agents.stats()
	if err != nil {
		return err
	}
	stillOnline, _, _, err := fleetOnline(ctx, jc, cfg.Prefix)
	if err != nil {
		return fmt.Errorf("%s after the steady phase: %w", subjects.DevicesList, err)
	}
	after := snapshotMem()
	if cfg.MemProf != "" {
		if err := writeHeapProfile(cfg.MemProf); err != nil {
			return err
		}
	}
	<-probeDone
	if err := closeAgents(); err != nil {
		fmt.Fprintf(stderr, "bench devices: %v\n", err)
	}
	statsEnd := st.jsvc.Stats()

	// Report.
	sum := func(m map[string]uint64) uint64 {
		var n uint64
		for _, v := range m {
			n += v
		}
		return n
	}
	badSteady := sum(svcAfter.Bad) - sum(svcBefore.Bad)
	dropSteady := sum(svcAfter.Dropped) - sum(svcBefore.Dropped)
	warnSteady := steadyAfter.warnings() - steadyBefore.warnings()
	minHeard := -1
	for i := range cfg.Count {
		n := heard[fleetID(cfg.Prefix, i)]
		if minHeard < 0 || n < minHeard {
			minHeard = n
		}
	}
	n := uint64(cfg.Count)
	perDev := func(a, b uint64) string {
		if b < a {
			return fmt.Sprintf("%.1f KiB", -float64(a-b)/float64(n)/1024)
		}
		return fmt.Sprintf("%.1f KiB", float64(b-a)/float64(n)/1024)
	}
	onlineCell := fmt.Sprintf("%d of %d online (not all within %s)", online, cfg.Count, cfg.Online)
	if allOnline {
		onlineCell = fmt.Sprintf("%d of %d online after **%.1f s** (agent starts spread over %.1f s); %d of %d device tools registered by then",
			online, cfg.Count, onlineAfter.Seconds(), float64(ramp.RampMs)/1000, onlineTools, entities)
	}
	toolsCell := fmt.Sprintf("%d of %d after %s (gave up)", tools, entities, cfg.Online)
	if toolsAfter > 0 {
		toolsCell = fmt.Sprintf("all %d after **%.1f s** (%.0f tools/s over the whole run)", entities, toolsAfter.Seconds(), float64(entities)/toolsAfter.Seconds())
	}
	w := stdout
	fmt.Fprintf(w, "Fleet of %d simulated devices, telemetry every %s, heartbeat every %s; agents in %s.\n\n",
		cfg.Count, cfg.Telemetry, cfg.Heartbeat, where)
	fmt.Fprintln(w, "| measure | measured | target | met? |")
	fmt.Fprintln(w, "|---|---|---|---|")
	fmt.Fprintf(w, "| all devices online in the registry (devices.list), from the first agent's start | %s | ≤ 30 s | %s |\n",
		onlineCell, yesNo(allOnline && onlineAfter <= 30*time.Second))
	fmt.Fprintf(w, "| every device's tools registered in Loki (each sensor and actuator a tool), from the first agent's start | %s | none set | — |\n", toolsCell)
	errText := "no errors"
	if len(errsBy) > 0 {
		errText = fmt.Sprintf("errors by code %v", errsBy)
	}
	fmt.Fprintf(w, "| one ping to every device, all sent at once (after the tools) | %d of %d answered within %s; p50 %s, p99 %s, max %s; all done in %.1f s; %s | all within 10 s | %s |\n",
		within, cfg.Count, cfg.Command, pctl(ok, 0.5).Round(time.Millisecond), pctl(ok, 0.99).Round(time.Millisecond),
		pctl(ok, 1).Round(time.Millisecond), allAnswered.Seconds(), errText, yesNo(within == cfg.Count))
	fmt.Fprintf(w, "| steady telemetry for %s | %d state messages (%.0f/s) from %d of %d devices (fewest from one: %d); device service refused %d, dropped %d; agent warnings %d; %d of %d still online | no errors, all online | %s |\n",
		cfg.Steady, states.Load(), float64(states.Load())/cfg.Steady.Seconds(), len(heard), cfg.Count, max(minHeard, 0),
		badSteady, dropSteady, warnSteady, stillOnline, cfg.Count,
		yesNo(badSteady == 0 && dropSteady == 0 && warnSteady == 0 && stillOnline == cfg.Count && len(heard) == cfg.Count))
	memNote := "the server alone: agents in a child process"
	if cfg.InProcess {
		memNote = "**includes the agents** (--in-process)"
	}
	fmt.Fprintf(w, "| server memory per device (%s) | Go heap %s → %s: **%s**; RSS %s → %s: **%s**; goroutines %d → %d | reported | — |\n",
		memNote, mib(before.heap), mib(after.heap), perDev(before.heap, after.heap),
		mib(before.rss), mib(after.rss), perDev(before.rss, after.rss), before.goroutines, after.goroutines)
	if probe != nil {
		fmt.Fprintf(w, "| one real `jotunheim --sim` process, telemetry every %s, over %s | %s | reported | — |\n",
			cfg.Telemetry, cfg.Probe, probeRes)
	} else {
		fmt.Fprintf(w, "| one real `jotunheim --sim` process | not measured | reported | — |\n")
	}
	fmt.Fprintf(w, "\nDevice service over the whole run: %d manifests accepted, refused %v, malformed %v, dropped (queue full) %v. ",
		statsEnd.Accepted-statsBefore.Accepted, statsEnd.Refused-statsBefore.Refused, statsEnd.Bad, statsEnd.Dropped)
	fmt.Fprintf(w, "Agents: %d connects for %d devices, %d bad messages, %d commands refused as queue full; devices.list failed %d times while polling.\n",
		final.Connects, final.Agents, final.Bad, final.QueueFull, listErrs)
	if len(final.Warnings) > 0 {
		fmt.Fprintf(w, "\nAgent warnings over the whole run (by message; first of each in full):\n\n")
		for _, k := range slices.Sorted(func(yield func(string) bool) {
			for k := range final.Warnings {
				if !yield(k) {
					return
				}
			}
		}) {
			fmt.Fprintf(w, "- %d × `%s`\n", final.Warnings[k], final.Samples[k])
		}
	}
	return nil
}

// agentProbe is one real jotunheim process on the simulated board.
type agentProbe struct {
	cmd  *exec.Cmd
	dir  string
	done chan error
	id   string
}

// probeResult is what measure saw.
type probeResult struct {
	err           error
	rss, hwm      uint64 // kB
	cpu, over     time.Duration
	startToOnline time.Duration
}

func (r probeResult) String() string {
	if r.err != nil {
		return "not measured: " + r.err.Error()
	}
	return fmt.Sprintf("RSS **%d kB** at the end (peak %d kB); CPU **%s** in %s (**%.3f%%** of one core); online %s after its start",
		r.rss, r.hwm, r.cpu, r.over.Round(time.Second), 100*r.cpu.Seconds()/r.over.Seconds(), r.startToOnline.Round(time.Millisecond))
}

// prepareProbe finds or builds cmd/jotunheim and starts it against broker.
func prepareProbe(ctx context.Context, cfg fleetConfig, broker string, stderr io.Writer) (*agentProbe, error) {
	dir, err := os.MkdirTemp("", "loki-bench-probe-")
	if err != nil {
		return nil, err
	}
	p := &agentProbe{dir: dir, done: make(chan error, 1), id: "probe"}
	bin := cfg.AgentBin
	if bin == "" {
		if _, err := os.Stat(filepath.Join("cmd", "jotunheim", "main.go")); err == nil {
			if gobin, err := exec.LookPath("go"); err == nil {
				bin = filepath.Join(dir, "jotunheim")
				fmt.Fprintf(stderr, "building ./cmd/jotunheim for the agent probe...\n")
				out, err := exec.CommandContext(ctx, gobin, "build", "-trimpath", "-o", bin, "./cmd/jotunheim").CombinedOutput()
				if err != nil {
					_ = os.RemoveAll(dir)
					return nil, fmt.Errorf("go build ./cmd/jotunheim: %v\n%s", err, out)
				}
			}
		}
	}
	if bin == "" {
		if bin, err = exec.LookPath("jotunheim"); err != nil {
			_ = os.RemoveAll(dir)
			return nil, errors.New("no jotunheim binary: pass --agent-bin, run from the source tree with the go tool, or put jotunheim on PATH")
		}
	}
	conf := filepath.Join(dir, "probe.toml")
	body := fmt.Sprintf("[device]\nid = %q\n\n[transport]\nbroker = %q\npassword = \"none\"\n\n[board]\nsim = true\n\n[telemetry]\nperiod = %q\nheartbeat = %q\nstate_file = %q\n",
		p.id, broker, cfg.Telemetry.String(), cfg.Heartbeat.String(), filepath.Join(dir, "probe.state.json"))
	if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	p.cmd = exec.Command(bin, "--config", conf, "--log-level", "warn")
	p.cmd.Stderr = stderr
	return p, nil
}

// measure starts the probe, waits until the registry shows it online,
// then reads its CPU time at the start and end of over, and its RSS.
func (p *agentProbe) measure(ctx context.Context, jc *svcjotunheim.Client, over time.Duration) (r probeResult) {
	start := time.Now()
	if err := p.cmd.Start(); err != nil {
		r.err = err
		return r
	}
	go func() { p.done <- p.cmd.Wait() }()
	pid := strconv.Itoa(p.cmd.Process.Pid)
	for {
		gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		d, err := jc.Get(gctx, p.id)
		cancel()
		if err == nil && d.GetOnline() {
			break
		}
		if time.Since(start) > time.Minute {
			r.err = errors.New("not online within a minute")
			return r
		}
		if !sleep(ctx, 100*time.Millisecond) {
			r.err = ctx.Err()
			return r
		}
	}
	r.startToOnline = time.Since(start)
	c0, ok0 := procCPU(pid)
	t0 := time.Now()
	if !sleep(ctx, over) {
		r.err = ctx.Err()
		return r
	}
	c1, ok1 := procCPU(pid)
	r.over = time.Since(t0)
	r.rss, _ = procStatusKB(pid, "VmRSS")
	r.hwm, _ = procStatusKB(pid, "VmHWM")
	if !ok0 || !ok1 {
		r.err = errors.New("no /proc/<pid>/stat")
		return r
	}
	r.cpu = c1 - c0
	return r
}

// Close stops the probe (SIGTERM: it publishes offline) and removes its files.
func (p *agentProbe) Close() {
	if p.cmd.Process != nil {
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(5 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	}
	_ = os.RemoveAll(p.dir)
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.WriteHeapProfile(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
