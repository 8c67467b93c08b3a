package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/loki-iot/loki/gateway/gatewaybench"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/bench"
	"github.com/loki-iot/loki/internal/natsrv"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "devices" {
		return benchFleet(ctx, args[1:], stdout, stderr)
	}
	cfg := bench.DefaultConfig()
	fs := newFlags("bench", `Usage: loki bench [flags]
       loki bench devices [--count N] [flags]

'loki bench devices' runs a fleet of simulated devices (see its --help).
With --grpc, measures the gateway instead; with --auth, the cost of
authentication and permissions; with --device, a device tool (see
docs/BENCHMARKS.md).
Otherwise starts an embedded NATS server and a Loki replica on loopback, then measures,
from a client connected over TCP, a trivial tool (return a + b) against a raw
NATS request/reply echo in the same run: sequential p50/p99 and throughput
with concurrent callers. Prints a Markdown table.`, stderr)
	fs.IntVar(&cfg.Sequential, "requests", cfg.Sequential, "sequential calls timed per round")
	fs.IntVar(&cfg.Concurrency, "callers", cfg.Concurrency, "concurrent callers in the throughput phase")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of each throughput phase")
	fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "alternating rounds; the median is reported")
	viaGRPC := fs.Bool("grpc", false, "measure ExecuteScript and Script_<tool> through the gRPC gateway against a raw gRPC echo instead")
	withDevice := fs.Bool("device", false, "measure a sensor read through a device tool (caller, Loki, device service, MQTT, agent on the sim board, and back) against the raw NATS echo, and the time from an agent's start to its tools being callable")
	withAuth := fs.Bool("auth", false, "measure the same call with authentication and permissions on (nkey identities with their roles' permissions, as under loki up) against without, on two servers, alternating rounds")
	newLog := logFlags(fs, stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageMistake("bench", fmt.Errorf("bench: unexpected argument %q (sub-mode: devices)", fs.Arg(0)))
	}
	log, err := newLog()
	if err != nil {
		return err
	}
	switch {
	case countTrue(*viaGRPC, *withAuth, *withDevice) > 1:
		return &exitError{code: 2, err: errors.New("bench: --grpc, --auth and --device measure different things: pick one")}
	case *withDevice:
		return benchDevice(ctx, cfg, log, stdout, stderr)
	case *viaGRPC:
		fmt.Fprintf(stderr, "benchmarking the gRPC gateway on %d CPUs: %d sequential calls, %d callers for %s, %d rounds...\n",
			runtime.NumCPU(), cfg.Sequential, cfg.Concurrency, cfg.Duration, cfg.Rounds)
		rep, err := gatewaybench.Run(ctx, cfg, log)
		if err != nil {
			return err
		}
		rep.Markdown(stdout)
		return nil
	case *withAuth:
		return benchAuth(ctx, cfg, log, stdout, stderr)
	}
	st, err := startBenchStack(ctx, "bench", false, log)
	if err != nil {
		return err
	}
	defer st.Close()
	echo, err := st.svc.QueueSubscribe(subjects.BenchEcho, "q", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		return err
	}
	defer func() { _ = echo.Unsubscribe() }()
	echoTarget := bench.Target{Name: "raw NATS echo", Call: func(ctx context.Context) error {
		_, err := st.caller.RequestWithContext(ctx, subjects.BenchEcho, benchBody)
		return err
	}}
	fmt.Fprintf(stderr, "benchmarking on %d CPUs: %d sequential calls, %d callers for %s, %d rounds...\n",
		runtime.NumCPU(), cfg.Sequential, cfg.Concurrency, cfg.Duration, cfg.Rounds)
	rep, err := bench.Run(ctx, cfg, echoTarget, st.target("loki exec bench_add"))
	if err != nil {
		return err
	}
	rep.Markdown(stdout)
	return nil
}

// benchAuth measures exec with authentication and permissions on against
// the same without, each on its own server in this process. Rounds
// alternate which goes first, and ratios are taken round by round, so a
// change in the machine's load shifts both sides of a ratio alike. Besides
// latency and throughput it reports the process's CPU time per call (every
// part, server, Loki and callers, runs in this process), on Linux: on a
// busy machine the steadiest measure of what a call costs.
func benchAuth(ctx context.Context, cfg bench.Config, log *slog.Logger, stdout, stderr io.Writer) error {
	if cfg.Rounds < 1 {
		return &exitError{code: 2, err: fmt.Errorf("bench: --rounds %d: want at least 1", cfg.Rounds)}
	}
	open, err := startBenchStack(ctx, "bench-open", false, log)
	if err != nil {
		return err
	}
	defer open.Close()
	secure, err := startBenchStack(ctx, "bench-auth", true, log)
	if err != nil {
		return err
	}
	defer secure.Close()
	type side struct {
		target  bench.Target
		calls   atomic.Int64
		results []bench.Result
		cpu     []float64 // CPU seconds per call, per round
	}
	sides := []*side{{target: open.target("loki exec, no auth")}, {target: secure.target("loki exec, auth + permissions")}}
	for _, sd := range sides {
		call := sd.target.Call
		sd.target.Call = func(ctx context.Context) error {
			sd.calls.Add(1)
			return call(ctx)
		}
	}
	fmt.Fprintf(stderr, "benchmarking auth on %d CPUs: %d sequential calls, %d callers for %s, %d rounds...\n",
		runtime.NumCPU(), cfg.Sequential, cfg.Concurrency, cfg.Duration, cfg.Rounds)
	one := cfg
	one.Rounds = 1
	haveCPU := true
	for r := range cfg.Rounds {
		for i := range sides {
			sd := sides[(r+i)%2] // who goes first alternates
			cpu0, _ := processCPU()
			calls0 := sd.calls.Load()
			rep, err := bench.Run(ctx, one, sd.target)
			if err != nil {
				return err
			}
			sd.results = append(sd.results, rep.Results[0])
			cpu1, ok := processCPU()
			haveCPU = haveCPU && ok
			sd.cpu = append(sd.cpu, (cpu1-cpu0)/float64(sd.calls.Load()-calls0))
		}
		b, a := sides[0].results[r], sides[1].results[r]
		fmt.Fprintf(stderr, "round %d, auth vs none: p50 %s vs %s, throughput %.0f/s vs %.0f/s, CPU/call %.1fµs vs %.1fµs\n",
			r+1, a.P50, b.P50, a.Throughput, b.Throughput, sides[1].cpu[r]*1e6, sides[0].cpu[r]*1e6)
	}
	rep := &bench.Report{Config: cfg}
	for _, sd := range sides {
		rep.Results = append(rep.Results, medianResult(sd.target.Name, sd.results))
	}
	rep.Markdown(stdout)
	ratios := func(f func(sd *side, r int) float64) []float64 {
		var v []float64
		for r := range cfg.Rounds {
			v = append(v, f(sides[1], r)/f(sides[0], r))
		}
		return v
	}
	fmt.Fprintf(stdout, "\nAuth + permissions / no auth, round by round (%d rounds, first side alternating):\n\n", cfg.Rounds)
	fmt.Fprintln(stdout, "| ratio | median | range |")
	fmt.Fprintln(stdout, "|---|---:|---:|")
	type row struct {
		name string
		v    []float64
	}
	rows := []row{
		{"p50", ratios(func(sd *side, r int) float64 { return float64(sd.results[r].P50) })},
		{fmt.Sprintf("throughput (%d callers)", cfg.Concurrency), ratios(func(sd *side, r int) float64 { return sd.results[r].Throughput })},
	}
	if haveCPU {
		rows = append(rows, row{"process CPU per call", ratios(func(sd *side, r int) float64 { return sd.cpu[r] })})
	}
	for _, row := range rows {
		s := slices.Sorted(slices.Values(row.v))
		fmt.Fprintf(stdout, "| %s | %.3f× | %.3f×–%.3f× |\n", row.name, s[len(s)/2], s[0], s[len(s)-1])
	}
	if haveCPU {
		cpu := func(sd *side) float64 { return slices.Sorted(slices.Values(sd.cpu))[len(sd.cpu)/2] * 1e6 }
		fmt.Fprintf(stdout, "\nProcess CPU per call (median): %.1fµs without auth, %.1fµs with.\n", cpu(sides[0]), cpu(sides[1]))
	}
	return nil
}

// processCPU is the CPU time, in seconds, this process has used so far:
// user and system time from /proc/self/stat (Linux reports it in units of
// USER_HZ, 1/100 s), or ok=false where there is no such file.
func processCPU() (secs float64, ok bool) {
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return 0, false
	}
	// The fields after the command name, which ends at the last ')': state
	// is the first, utime the 12th, stime the 13th.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, false
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return float64(utime+stime) / 100, true
}

// medianResult is the per-column median of rs, as bench.Run reports.
func medianResult(name string, rs []bench.Result) bench.Result {
	mid := func(v []float64) float64 {
		s := slices.Sorted(slices.Values(v))
		return s[len(s)/2]
	}
	var p50, p99, tput []float64
	out := bench.Result{Name: name}
	for _, r := range rs {
		p50, p99, tput = append(p50, float64(r.P50)), append(p99, float64(r.P99)), append(tput, r.Throughput)
		out.Errors += r.Errors
	}
	out.P50, out.P99, out.Throughput = time.Duration(mid(p50)), time.Duration(mid(p99)), mid(tput)
	return out
}

var benchBody = []byte(`{"a":1,"b":2}`)

// benchStack is an embedded NATS server with one Loki replica serving
// bench_add over an in-process connection, as under `loki up`, and a
// caller connected over TCP, as `loki call` is.
type benchStack struct {
	svc, caller *nats.Conn
	client      *loki.Client
	closers     []func()
}

// startBenchStack starts a stack. With withAuth, the server requires the
// nkey identities of a fresh identity directory: Loki connects as the
// built-in loki identity, the caller as the built-in client, each held to
// its role's permissions. Close stops it.
func startBenchStack(ctx context.Context, name string, withAuth bool, log *slog.Logger) (_ *benchStack, err error) {
	st := &benchStack{}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()
	dir, err := os.MkdirTemp("", "loki-bench-")
	if err != nil {
		return nil, err
	}
	st.closers = append(st.closers, func() { _ = os.RemoveAll(dir) })
	cfg := natsrv.Config{Name: name, DataDir: dir, Port: -1}
	var svcOpts, callerOpts []nats.Option
	if withAuth {
		authority, err := auth.Open(filepath.Join(dir, "auth"))
		if err != nil {
			return nil, err
		}
		st.closers = append(st.closers, func() { _ = authority.Close() })
		if cfg.Nkeys, cfg.Users, err = authority.ServerUsers(); err != nil {
			return nil, err
		}
		if svcOpts, err = auth.ConnectOptions(auth.SeedFile(authority.Dir(), string(subjects.RoleLoki))); err != nil {
			return nil, err
		}
		if callerOpts, err = auth.ConnectOptions(auth.SeedFile(authority.Dir(), string(subjects.RoleClient))); err != nil {
			return nil, err
		}
	}
	srv, err := natsrv.Start(cfg, nil)
	if err != nil {
		return nil, err
	}
	st.closers = append(st.closers, srv.Shutdown)
	if st.svc, err = srv.Connect(name+"-loki", svcOpts...); err != nil {
		return nil, err
	}
	st.closers = append(st.closers, st.svc.Close)
	tool, err := loki.Compile(&lokiv1.Tool{Name: "bench_add", Returns: "number", Source: "return a + b",
		Params: []*lokiv1.Param{{Name: "a", Type: "number", Required: true}, {Name: "b", Type: "number", Required: true}}})
	if err != nil {
		return nil, err
	}
	reg, err := loki.OpenRegistry(ctx, st.svc, log)
	if err != nil {
		return nil, err
	}
	if err := reg.Put(ctx, tool); err != nil {
		return nil, err
	}
	lcfg := loki.DefaultConfig()
	lcfg.EventInterest = srv.Interest // as under loki up
	svc, err := loki.New(lcfg, st.svc, log)
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(runCtx) }()
	st.closers = append(st.closers, func() { stop(); <-done })
	select {
	case <-svc.Ready():
	case err := <-done:
		done <- err
		return nil, err
	}
	if st.caller, err = nats.Connect(srv.ClientURL(), append([]nats.Option{nats.Name(name + "-client")}, callerOpts...)...); err != nil {
		return nil, err
	}
	st.closers = append(st.closers, st.caller.Close)
	st.client = loki.NewClient(st.caller)
	return st, nil
}

// target calls bench_add through the stack's caller.
func (st *benchStack) target(name string) bench.Target {
	return bench.Target{Name: name, Call: func(ctx context.Context) error {
		res, err := st.client.Call(ctx, "bench_add", benchBody)
		if err == nil && string(res.JSON) != "3" {
			return fmt.Errorf("bench_add returned %s, want 3", res.JSON)
		}
		return err
	}}
}

// Close stops everything the stack started, last started first.
func (st *benchStack) Close() {
	for i := len(st.closers) - 1; i >= 0; i-- {
		st.closers[i]()
	}
	st.closers = nil
}

func countTrue(bs ...bool) int {
	n := 0
	for _, b := range bs {
		if b {
			n++
		}
	}
	return n
}
