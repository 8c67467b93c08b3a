package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"

	"github.com/loki-iot/loki/gateway/gatewaybench"
	"github.com/loki-iot/loki/internal/bench"
	"github.com/loki-iot/loki/internal/natsrv"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

func cmdBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := bench.DefaultConfig()
	fs := newFlags("bench", `Usage: loki bench [flags]

With --grpc, measures the gateway instead (see docs/BENCHMARKS.md).
Otherwise starts an embedded NATS server and a Loki replica on loopback, then measures,
from a client connected over TCP, a trivial tool (return a + b) against a raw
NATS request/reply echo in the same run: sequential p50/p99 and throughput
with concurrent callers. Prints a Markdown table.`, stderr)
	fs.IntVar(&cfg.Sequential, "requests", cfg.Sequential, "sequential calls timed per round")
	fs.IntVar(&cfg.Concurrency, "callers", cfg.Concurrency, "concurrent callers in the throughput phase")
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "length of each throughput phase")
	fs.IntVar(&cfg.Rounds, "rounds", cfg.Rounds, "alternating rounds; the median is reported")
	viaGRPC := fs.Bool("grpc", false, "measure ExecuteScript and Script_<tool> through the gRPC gateway against a raw gRPC echo instead")
	newLog := logFlags(fs, stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLog()
	if err != nil {
		return err
	}
	if *viaGRPC {
		fmt.Fprintf(stderr, "benchmarking the gRPC gateway on %d CPUs: %d sequential calls, %d callers for %s, %d rounds...\n",
			runtime.NumCPU(), cfg.Sequential, cfg.Concurrency, cfg.Duration, cfg.Rounds)
		rep, err := gatewaybench.Run(ctx, cfg, log)
		if err != nil {
			return err
		}
		rep.Markdown(stdout)
		return nil
	}
	dir, err := os.MkdirTemp("", "loki-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, err := natsrv.Start(natsrv.Config{Name: "bench", DataDir: dir, Port: -1}, nil)
	if err != nil {
		return err
	}
	defer srv.Shutdown()

	// The service side connects in-process, as under `loki up`.
	svcConn, err := srv.Connect("bench-loki")
	if err != nil {
		return err
	}
	defer svcConn.Close()
	echo, err := svcConn.QueueSubscribe(subjects.BenchEcho, "q", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		return err
	}
	defer func() { _ = echo.Unsubscribe() }()
	tool, err := loki.Compile(&lokiv1.Tool{Name: "bench_add", Returns: "number", Source: "return a + b",
		Params: []*lokiv1.Param{{Name: "a", Type: "number", Required: true}, {Name: "b", Type: "number", Required: true}}})
	if err != nil {
		return err
	}
	reg, err := loki.OpenRegistry(ctx, svcConn, log)
	if err != nil {
		return err
	}
	if err := reg.Put(ctx, tool); err != nil {
		return err
	}
	svc, err := loki.New(loki.DefaultConfig(), svcConn, log)
	if err != nil {
		return err
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- svc.Run(runCtx) }()
	defer func() { stop(); <-done }()
	select {
	case <-svc.Ready():
	case err := <-done:
		return err
	}

	// Callers connect over TCP, as `loki call` does.
	nc, err := nats.Connect(srv.ClientURL(), nats.Name("bench-client"))
	if err != nil {
		return err
	}
	defer nc.Close()
	client := loki.NewClient(nc)
	body := []byte(`{"a":1,"b":2}`)
	echoTarget := bench.Target{Name: "raw NATS echo", Call: func(ctx context.Context) error {
		_, err := nc.RequestWithContext(ctx, subjects.BenchEcho, body)
		return err
	}}
	lokiTarget := bench.Target{Name: "loki exec bench_add", Call: func(ctx context.Context) error {
		res, err := client.Call(ctx, "bench_add", body)
		if err == nil && string(res.JSON) != "3" {
			return fmt.Errorf("bench_add returned %s, want 3", res.JSON)
		}
		return err
	}}
	fmt.Fprintf(stderr, "benchmarking on %d CPUs: %d sequential calls, %d callers for %s, %d rounds...\n",
		runtime.NumCPU(), cfg.Sequential, cfg.Concurrency, cfg.Duration, cfg.Rounds)
	rep, err := bench.Run(ctx, cfg, echoTarget, lokiTarget)
	if err != nil {
		return err
	}
	rep.Markdown(stdout)
	return nil
}
