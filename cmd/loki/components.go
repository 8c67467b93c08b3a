package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/services/fenrir"
	"github.com/loki-iot/loki/services/hel"
	"github.com/loki-iot/loki/services/jormungandr"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/nats-io/nats.go"
)

// serviceConfig is the --service-config file: optional [loki], [hel],
// [fenrir], [jormungandr] and [gateway] tables over the defaults. Unknown keys are errors.
// Fenrir's boards come from --board, not from here.
type serviceConfig struct {
	Loki        lokiSettings       `toml:"loki"`
	Hel         hel.Config         `toml:"hel"`
	Fenrir      fenrir.Config      `toml:"fenrir"`
	Jormungandr jormungandr.Config `toml:"jormungandr"`
	Gateway     gateway.Config     `toml:"gateway"`
}

type lokiSettings struct {
	Concurrency  int           `toml:"concurrency"`
	Queue        int           `toml:"queue"`
	DrainTimeout time.Duration `toml:"drain_timeout"`
	// MemoryLimitMiB: the process heap past which running scripts are
	// stopped (0: loki.DefaultMemoryLimit).
	MemoryLimitMiB int `toml:"memory_limit_mib"`
}

func loadServiceConfig(path, dataDir string) (serviceConfig, error) {
	def := loki.DefaultConfig()
	cfg := serviceConfig{
		Loki:        lokiSettings{Concurrency: def.Concurrency, Queue: def.Queue, DrainTimeout: def.DrainTimeout},
		Hel:         hel.DefaultConfig(dataDir),
		Fenrir:      fenrir.DefaultConfig(),
		Jormungandr: jormungandr.DefaultConfig(),
		Gateway:     gateway.DefaultConfig(),
	}
	if path != "" {
		md, err := toml.DecodeFile(path, &cfg)
		if err != nil {
			return cfg, fmt.Errorf("service config %s: %w", path, err)
		}
		if und := md.Undecoded(); len(und) > 0 {
			return cfg, fmt.Errorf("service config %s: unknown key %q", path, und[0].String())
		}
	}
	if cfg.Loki.MemoryLimitMiB < 0 {
		return cfg, fmt.Errorf("service config %s: [loki]: memory_limit_mib = %d: must not be negative", orDefault(path), cfg.Loki.MemoryLimitMiB)
	}
	if err := cfg.Hel.Validate(); err != nil {
		return cfg, fmt.Errorf("service config %s: [hel]: %w", orDefault(path), err)
	}
	if err := cfg.Jormungandr.Validate(); err != nil {
		return cfg, fmt.Errorf("service config %s: [jormungandr]: %w", orDefault(path), err)
	}
	if err := cfg.Gateway.Validate(); err != nil {
		return cfg, fmt.Errorf("service config %s: [gateway]: %w", orDefault(path), err)
	}
	return cfg, nil
}

func orDefault(path string) string {
	if path == "" {
		return "(defaults)"
	}
	return path
}

func (c serviceConfig) lokiConfig(nc *nats.Conn) loki.Config {
	cfg := loki.DefaultConfig()
	cfg.Concurrency, cfg.Queue, cfg.DrainTimeout = c.Loki.Concurrency, c.Loki.Queue, c.Loki.DrainTimeout
	cfg.MemoryLimit = uint64(c.Loki.MemoryLimitMiB) << 20
	cfg.Modules = modules(nc)
	return cfg
}

// modules are every child service's Lua module; a module whose service is
// not running answers UNAVAILABLE. With a nil nc they serve only for their
// names, to check tools' grants before anything starts.
func modules(nc *nats.Conn) []engine.Module {
	return []engine.Module{hel.NewModule(nc), fenrir.NewModule(nc), jormungandr.NewModule(nc)}
}

// checkGrants refuses tools whose grants name no module.
func checkGrants(tools []*loki.Compiled) error {
	var names []string
	for _, m := range modules(nil) {
		names = append(names, m.Name())
	}
	return loki.CheckGrantModules(tools, names)
}

// component is one service run by `loki up` or `loki serve`.
type component struct {
	name  string
	run   func(ctx context.Context) error
	ready <-chan struct{}
}

// runComponents runs every component until ctx is done or one of them
// fails, then stops them all and waits for them. onReady is called once
// every component is ready. The first failure is returned.
func runComponents(ctx context.Context, onReady func(), comps ...component) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(comps))
	for _, c := range comps {
		go func() {
			err := c.run(ctx)
			if err == nil && ctx.Err() == nil {
				err = errors.New("stopped unexpectedly")
			}
			if err != nil {
				err = fmt.Errorf("%s: %w", c.name, err)
			}
			errs <- err
		}()
	}
	allReady := make(chan struct{})
	go func() {
		for _, c := range comps {
			select {
			case <-c.ready:
			case <-ctx.Done():
				return
			}
		}
		close(allReady)
	}()
	var first error
	remaining := len(comps)
	select {
	case <-allReady:
		if onReady != nil {
			onReady()
		}
	case first = <-errs:
		remaining--
		cancel()
	case <-ctx.Done():
	}
	for ; remaining > 0; remaining-- {
		if err := <-errs; err != nil {
			if first == nil {
				first = err
			}
			cancel()
		}
	}
	return first
}

func lokiComponent(cfg loki.Config, nc *nats.Conn, log *slog.Logger) (component, error) {
	svc, err := loki.New(cfg, nc, log)
	if err != nil {
		return component{}, err
	}
	return component{name: "loki", run: svc.Run, ready: svc.Ready()}, nil
}

func helComponent(cfg hel.Config, nc *nats.Conn, log *slog.Logger) (component, error) {
	svc, err := hel.New(cfg, nc, log)
	if err != nil {
		return component{}, err
	}
	return component{name: "hel", run: svc.Run, ready: svc.Ready()}, nil
}

// loadBoards sets the boards Fenrir serves: those of the --board file, or
// the built-in simulated board when path is "", and validates the [fenrir]
// settings with them.
func (c *serviceConfig) loadBoards(path string) error {
	if path == "" {
		c.Fenrir.Boards = []fenrir.BoardConfig{fenrir.SimBoardConfig()}
	} else {
		boards, err := fenrir.LoadBoards(path)
		if err != nil {
			return err
		}
		c.Fenrir.Boards = boards
	}
	return c.Fenrir.Validate()
}

// boardNames lists the boards Fenrir serves, for the start-up banner.
func (c serviceConfig) boardNames() string {
	names := make([]string, len(c.Fenrir.Boards))
	for i, b := range c.Fenrir.Boards {
		names[i] = b.Name + " (" + b.Backend + ")"
	}
	return strings.Join(names, ", ")
}

func fenrirComponent(cfg fenrir.Config, nc *nats.Conn, log *slog.Logger) (component, error) {
	svc, err := fenrir.New(cfg, nc, log)
	if err != nil {
		return component{}, err
	}
	return component{name: "fenrir", run: svc.Run, ready: svc.Ready()}, nil
}

func jormungandrComponent(cfg jormungandr.Config, nc *nats.Conn, log *slog.Logger) (component, error) {
	svc, err := jormungandr.New(cfg, nc, log)
	if err != nil {
		return component{}, err
	}
	return component{name: "jormungandr", run: svc.Run, ready: svc.Ready()}, nil
}

// gatewayComponent listens at once, so a busy port fails start-up clearly.
func gatewayComponent(cfg gateway.Config, nc *nats.Conn, log *slog.Logger, addr string) (component, net.Addr, error) {
	gw, err := gateway.New(cfg, nc, log)
	if err != nil {
		return component{}, nil, err
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return component{}, nil, fmt.Errorf("gateway: listen on %s: %w", addr, err)
	}
	return component{name: "gateway", run: func(ctx context.Context) error { return gw.Serve(ctx, lis) }, ready: gw.Ready()}, lis.Addr(), nil
}

func grpcAddr(host string, port int) string {
	if port < 0 {
		port = 0 // -1: any free port
	}
	return net.JoinHostPort(host, strconv.Itoa(port))
}

func mustDir(dir string) error {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("data dir %s: %w", dir, err)
	}
	return nil
}
