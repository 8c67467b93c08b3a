package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/loki-iot/loki/examples"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/services/loki"
	"github.com/nats-io/nats.go"
)

func cmdUp(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("up", `Usage: loki up [flags]

Runs an embedded NATS server with JetStream and every Loki service in one
process. Without --config, the built-in example tools are registered.
Tools, and everything else, persist in --data-dir across restarts.
SIGINT or SIGTERM drains running calls and exits; a second signal exits at once.`, stderr)
	config := fs.String("config", "", "tool config (TOML); default: the built-in examples/tools.toml")
	dataDir := fs.String("data-dir", defaultDataDir(), "directory for JetStream data (tools, KV, objects)")
	port := fs.Int("nats-port", 4222, "NATS client port (-1 picks a free port)")
	listen := fs.String("listen", "127.0.0.1", "address the NATS server listens on")
	concurrency := fs.Int("concurrency", 0, "tools running at once (default 4 per core)")
	newLog := logFlags(fs, stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("up: unexpected argument %q", fs.Arg(0))
	}
	log, err := newLog()
	if err != nil {
		return err
	}
	tools, source, err := loadToolsFlag(*config)
	if err != nil {
		return err
	}

	started := time.Now()
	srv, err := natsrv.Start(natsrv.Config{Name: "loki", DataDir: *dataDir, Host: *listen, Port: *port}, log)
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	nc, err := srv.Connect("loki-up")
	if err != nil {
		return fmt.Errorf("connect to embedded NATS: %w", err)
	}
	defer nc.Close()

	cfg := loki.DefaultConfig()
	if *concurrency > 0 {
		cfg.Concurrency = *concurrency
	}
	svc, err := loki.New(cfg, nc, log)
	if err != nil {
		return err
	}
	// Register before Run, so the tools are in the registry's first snapshot
	// and callable the moment "Loki is up" is printed.
	if err := register(ctx, nc, log, tools); err != nil {
		return err
	}
	runErr := make(chan error, 1)
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { runErr <- svc.Run(runCtx) }()
	select {
	case <-svc.Ready():
	case err := <-runErr:
		return fmt.Errorf("loki service: %w", err)
	case <-ctx.Done():
		cancel()
		return <-runErr
	}
	names := make([]string, 0, len(tools))
	for _, t := range tools {
		names = append(names, t.Def.GetName())
	}
	fmt.Fprintf(stdout, `Loki is up (ready in %s)
  NATS       %s  (JetStream data in %s)
  tools      %d from %s: %s
  try        loki call add a=1 b=2
             nats req loki.exec.add '{"a":1,"b":2}'
  stop       Ctrl-C
`, time.Since(started).Round(time.Millisecond), srv.ClientURL(), *dataDir, len(tools), source, strings.Join(names, ", "))
	return <-runErr
}

func cmdServe(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		fmt.Fprintln(stderr, "Usage: loki serve COMPONENT [flags]\n\nComponents: loki")
		return &exitError{code: 2, err: errors.New("serve: name a component")}
	}
	switch args[0] {
	case "loki":
		return serveLoki(ctx, args[1:], stdout, stderr)
	}
	return &exitError{code: 2, err: fmt.Errorf("serve: unknown component %q (components: loki)", args[0])}
}

func serveLoki(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlags("serve loki", `Usage: loki serve loki --nats-url URL [flags]

Runs one Loki replica against an external NATS server with JetStream. Run as
many as you like: they share calls through a queue group and tools through
the registry. --config registers tools before serving.`, stderr)
	url := fs.String("nats-url", envOr("NATS_URL", nats.DefaultURL), "NATS server URL (env NATS_URL)")
	config := fs.String("config", "", "tool config (TOML) to register at start; none by default")
	concurrency := fs.Int("concurrency", 0, "tools running at once (default 4 per core)")
	newLog := logFlags(fs, stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	log, err := newLog()
	if err != nil {
		return err
	}
	var tools []*loki.Compiled
	if *config != "" {
		if tools, _, err = loadToolsFlag(*config); err != nil {
			return err
		}
	}
	nc, err := natsrv.Dial(*url, "loki", log)
	if err != nil {
		return err
	}
	defer nc.Close()
	if err := register(ctx, nc, log, tools); err != nil {
		return err
	}
	cfg := loki.DefaultConfig()
	if *concurrency > 0 {
		cfg.Concurrency = *concurrency
	}
	svc, err := loki.New(cfg, nc, log)
	if err != nil {
		return err
	}
	return svc.Run(ctx)
}

// loadToolsFlag loads --config, or the built-in examples when path is empty.
func loadToolsFlag(path string) ([]*loki.Compiled, string, error) {
	if path != "" {
		tools, err := loki.LoadTools(path)
		return tools, path, err
	}
	data, err := fs.ReadFile(examples.FS, examples.ToolsFile)
	if err != nil {
		return nil, "", err
	}
	const name = "built-in examples/tools.toml"
	tools, err := loki.ParseTools(name, data, examples.FS)
	return tools, name, err
}

func register(ctx context.Context, nc *nats.Conn, log *slog.Logger, tools []*loki.Compiled) error {
	if len(tools) == 0 {
		return nil
	}
	reg, err := loki.OpenRegistry(ctx, nc, log)
	if err != nil {
		return err
	}
	if err := reg.Put(ctx, tools...); err != nil {
		return err
	}
	log.Info("tools registered", "count", len(tools))
	return nil
}

func defaultDataDir() string {
	if d := os.Getenv("LOKI_DATA_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_DATA_HOME"); d != "" {
		return filepath.Join(d, "loki")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "share", "loki")
	}
	return "loki-data"
}
