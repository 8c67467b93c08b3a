package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/services/fenrir"
	"github.com/loki-iot/loki/services/hel"
	"github.com/loki-iot/loki/services/jormungandr"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/services/loki/isolate"
	"github.com/nats-io/nats.go"
)

// serviceConfig is the --service-config file: optional [log], [nats], [loki], [hel],
// [fenrir], [jormungandr], [jotunheim] and [gateway] tables over the defaults. Unknown keys are errors.
// Fenrir's boards come from --board, not from here. SIGHUP applies some
// settings live (see serviceReloader and each component's live settings).
type serviceConfig struct {
	Log         logSettings        `toml:"log"`
	NATS        natsSettings       `toml:"nats"`
	Loki        lokiSettings       `toml:"loki"`
	Hel         hel.Config         `toml:"hel"`
	Fenrir      fenrir.Config      `toml:"fenrir"`
	Jormungandr jormungandr.Config `toml:"jormungandr"`
	Jotunheim   jotunheim.Config   `toml:"jotunheim"`
	Gateway     gateway.Config     `toml:"gateway"`
}

// logSettings is the [log] table.
type logSettings struct {
	// Level, when set, overrides --log-level, at start and on SIGHUP:
	// debug, info, warn or error.
	Level string `toml:"level"`
}

// level is the log level the table sets, or def (--log-level) when it
// sets none; set reports whether it set one.
func (l logSettings) level(def slog.Level) (lv slog.Level, set bool, err error) {
	if l.Level == "" {
		return def, false, nil
	}
	if err := lv.UnmarshalText([]byte(l.Level)); err != nil {
		return def, false, fmt.Errorf("level = %q: want debug, info, warn or error", l.Level)
	}
	return lv, true, nil
}

type lokiSettings struct {
	Concurrency  int           `toml:"concurrency"`
	Queue        int           `toml:"queue"`
	DrainTimeout time.Duration `toml:"drain_timeout"`
	// MemoryLimitMiB: the process heap past which running scripts are
	// stopped (0: loki.DefaultMemoryLimit).
	MemoryLimitMiB int `toml:"memory_limit_mib"`
	// Isolation picks the tools that run in isolated worker processes:
	// "auto" (those with a memory or cpu limit), "always" or "never".
	Isolation string `toml:"isolation"`
	// Workers is the number of worker processes (0: one per core).
	Workers int `toml:"workers"`
	// Memory ("64MiB") and CPU ("500ms" of CPU time) are the hard limits
	// of every tool that declares none of its own.
	Memory string `toml:"memory"`
	CPU    string `toml:"cpu"`

	isolationMode loki.IsolationMode
	memoryBytes   uint64
	cpu           time.Duration
}

// validate parses the isolation settings; errors name the key.
func (l *lokiSettings) validate() error {
	var err error
	if l.isolationMode, err = loki.ParseIsolationMode(l.Isolation); err != nil {
		return err
	}
	if l.Memory != "" {
		if l.memoryBytes, err = isolate.ParseSize(l.Memory); err != nil || l.memoryBytes == 0 {
			return fmt.Errorf("memory = %q: want a size such as \"64MiB\", \"512KiB\" or \"1GiB\"", l.Memory)
		}
	}
	if l.CPU != "" {
		if l.cpu, err = time.ParseDuration(l.CPU); err != nil || l.cpu <= 0 {
			return fmt.Errorf("cpu = %q: want a positive CPU time such as \"500ms\" or \"2s\"", l.CPU)
		}
	}
	return loki.IsolationConfig{Mode: l.isolationMode, Workers: l.Workers, Memory: l.memoryBytes, CPU: l.cpu}.Validate()
}

// natsSettings is the [nats] table: the embedded server `loki up` runs
// (`loki serve` connects to a server configured elsewhere and ignores it).
type natsSettings struct {
	// TLSCertFile and TLSKeyFile turn on TLS for the NATS client port and
	// the MQTT listener. Relative paths are relative to the config file.
	TLSCertFile string `toml:"tls_cert_file"`
	TLSKeyFile  string `toml:"tls_key_file"`
	// TLSClientCAFile makes TCP and MQTT clients present a certificate
	// signed by this CA (devices still log in with their password too).
	TLSClientCAFile string `toml:"tls_client_ca_file"`
	// Sync is when JetStream fsyncs: "always" (every write, before it is
	// acknowledged: acknowledged writes survive a power cut) or an interval
	// such as "2m" (nats-server's default: faster writes, but a power cut
	// loses up to that much acknowledged data).
	Sync string `toml:"sync"`
	// Replicas is the JetStream replica count of every bucket Loki creates
	// (tool registry, Hel's KV, objects and cache, device registry): 1 on a
	// single node, 3 on a cluster. `loki serve` reads it too. A bucket that
	// exists keeps its own count; a difference is logged at WARN.
	Replicas int `toml:"replicas"`

	// hubDomain is the JetStream domain of the hub (`loki up --hub`).
	hubDomain    string
	syncAlways   bool
	syncInterval time.Duration
}

// syncAlways is the default [nats] sync.
const syncAlways = "always"

// validate parses sync and resolves the TLS files against dir, the
// directory of the config file, checking that each can be read. Errors
// name the key and the file.
func (n *natsSettings) validate(dir string) error {
	if n.Replicas < 1 || n.Replicas > 5 {
		return fmt.Errorf("replicas = %d: must be 1 to 5 (3 on a three-node cluster)", n.Replicas)
	}
	if strings.EqualFold(n.Sync, syncAlways) {
		n.syncAlways, n.syncInterval = true, 0
	} else {
		d, err := time.ParseDuration(n.Sync)
		if err != nil || d <= 0 {
			return fmt.Errorf("sync = %q: want %q (fsync every write before acknowledging it) or a positive interval such as \"2m\"", n.Sync, syncAlways)
		}
		n.syncAlways, n.syncInterval = false, d
	}
	if n.TLSCertFile == "" && n.TLSKeyFile == "" && n.TLSClientCAFile == "" {
		return nil
	}
	if n.TLSCertFile == "" || n.TLSKeyFile == "" {
		return errors.New("TLS needs both tls_cert_file and tls_key_file (tls_client_ca_file only adds client certificates)")
	}
	for _, f := range []struct {
		key  string
		path *string
	}{{"tls_cert_file", &n.TLSCertFile}, {"tls_key_file", &n.TLSKeyFile}, {"tls_client_ca_file", &n.TLSClientCAFile}} {
		if *f.path == "" {
			continue
		}
		if !filepath.IsAbs(*f.path) {
			*f.path = filepath.Join(dir, *f.path)
		}
		if _, err := os.ReadFile(*f.path); err != nil {
			return fmt.Errorf("%s = %q: %w", f.key, *f.path, err)
		}
	}
	if _, err := n.tls().Load(); err != nil {
		return fmt.Errorf("tls_cert_file = %q, tls_key_file = %q, tls_client_ca_file = %q: %w",
			n.TLSCertFile, n.TLSKeyFile, n.TLSClientCAFile, err)
	}
	return nil
}

// tls is the server's TLS configuration, nil when TLS is off.
func (n natsSettings) tls() *natsrv.TLSConfig {
	if n.TLSCertFile == "" {
		return nil
	}
	return &natsrv.TLSConfig{CertFile: n.TLSCertFile, KeyFile: n.TLSKeyFile, ClientCAFile: n.TLSClientCAFile}
}

// server returns cfg with the [nats] settings applied.
func (n natsSettings) server(cfg natsrv.Config) natsrv.Config {
	cfg.SyncAlways, cfg.SyncInterval, cfg.TLS = n.syncAlways, n.syncInterval, n.tls()
	return cfg
}

func loadServiceConfig(path, dataDir string) (serviceConfig, error) {
	def := loki.DefaultConfig()
	cfg := serviceConfig{
		NATS:        natsSettings{Sync: syncAlways, Replicas: 1},
		Loki:        lokiSettings{Concurrency: def.Concurrency, Queue: def.Queue, DrainTimeout: def.DrainTimeout},
		Hel:         hel.DefaultConfig(dataDir),
		Fenrir:      fenrir.DefaultConfig(),
		Jormungandr: jormungandr.DefaultConfig(),
		Jotunheim:   jotunheim.DefaultConfig(),
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
		// [nats] replicas sets every component's; a component's own
		// replicas key, older, still works alone but must not contradict it.
		if md.IsDefined("nats", "replicas") {
			for _, c := range []struct {
				table string
				n     *int
			}{{"hel", &cfg.Hel.Replicas}, {"jotunheim", &cfg.Jotunheim.Replicas}} {
				if md.IsDefined(c.table, "replicas") && *c.n != cfg.NATS.Replicas {
					return cfg, fmt.Errorf("service config %s: [%s] replicas = %d contradicts [nats] replicas = %d: keep only [nats] replicas",
						path, c.table, *c.n, cfg.NATS.Replicas)
				}
				*c.n = cfg.NATS.Replicas
			}
		}
	}
	if _, _, err := cfg.Log.level(slog.LevelInfo); err != nil {
		return cfg, fmt.Errorf("service config %s: [log]: %w", orDefault(path), err)
	}
	if err := cfg.NATS.validate(filepath.Dir(path)); err != nil {
		return cfg, fmt.Errorf("service config %s: [nats]: %w", orDefault(path), err)
	}
	if cfg.Loki.MemoryLimitMiB < 0 {
		return cfg, fmt.Errorf("service config %s: [loki]: memory_limit_mib = %d: must not be negative", orDefault(path), cfg.Loki.MemoryLimitMiB)
	}
	if err := cfg.Loki.validate(); err != nil {
		return cfg, fmt.Errorf("service config %s: [loki]: %w", orDefault(path), err)
	}
	if err := cfg.Hel.Validate(); err != nil {
		return cfg, fmt.Errorf("service config %s: [hel]: %w", orDefault(path), err)
	}
	if err := cfg.Jormungandr.Validate(); err != nil {
		return cfg, fmt.Errorf("service config %s: [jormungandr]: %w", orDefault(path), err)
	}
	if err := cfg.Jotunheim.Validate(); err != nil {
		return cfg, fmt.Errorf("service config %s: [jotunheim]: %w", orDefault(path), err)
	}
	// [jotunheim] ota_keys, like [nats]'s files, are relative to the config file.
	for i, k := range cfg.Jotunheim.OTAKeys {
		if !filepath.IsAbs(k) {
			cfg.Jotunheim.OTAKeys[i] = filepath.Join(filepath.Dir(path), k)
		}
	}
	// One setting governs the tools devices may call on either transport:
	// MQTT (the device service) and gRPC (the gateway's device principals).
	cfg.Gateway.DeviceCalls = cfg.Jotunheim.DeviceCalls
	if err := cfg.Gateway.Validate(); err != nil {
		return cfg, fmt.Errorf("service config %s: [gateway]: %w", orDefault(path), err)
	}
	if err := resolveGatewayTLS(&cfg.Gateway, filepath.Dir(path)); err != nil {
		return cfg, fmt.Errorf("service config %s: [gateway]: %w", orDefault(path), err)
	}
	return cfg, nil
}

// resolveGatewayTLS resolves [gateway] tls_cert_file and tls_key_file
// against dir, the directory of the config file (as [nats] does), and
// loads the pair, so a bad certificate stops start-up before NATS starts
// or a tool is registered.
func resolveGatewayTLS(g *gateway.Config, dir string) error {
	if g.TLSCertFile == "" {
		return nil // Validate refused a key without a certificate
	}
	for _, p := range []*string{&g.TLSCertFile, &g.TLSKeyFile} {
		if !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	if _, err := tls.LoadX509KeyPair(g.TLSCertFile, g.TLSKeyFile); err != nil {
		return fmt.Errorf("tls_cert_file = %q, tls_key_file = %q: %w", g.TLSCertFile, g.TLSKeyFile, err)
	}
	return nil
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
	cfg.Registry = c.registry()
	return cfg
}

// registry is how the tool registry bucket is created.
func (c serviceConfig) registry() loki.RegistryConfig {
	return loki.RegistryConfig{Replicas: c.NATS.Replicas, HubDomain: c.NATS.hubDomain}
}

// modules are every child service's Lua module; a module whose service is
// not running answers UNAVAILABLE. With a nil nc they serve only for their
// names, to check tools' grants before anything starts.
func modules(nc *nats.Conn) []engine.Module {
	return []engine.Module{hel.NewModule(nc), fenrir.NewModule(nc), jormungandr.NewModule(nc), jotunheim.NewModule(nc)}
}

// checkGrants refuses tools whose grants name no module, or that their
// module refuses.
func checkGrants(tools []*loki.Compiled) error {
	return loki.CheckGrantModules(tools, modules(nil))
}

// component is one service run by `loki up` or `loki serve`.
type component struct {
	name  string
	run   func(ctx context.Context) error
	ready <-chan struct{}
	// live are the service-config settings it applies on SIGHUP without
	// a restart.
	live []liveSetting
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

// lokiComponent also returns the service, whose Registry is what the
// replica serves once it is ready.
func lokiComponent(cfg loki.Config, nc *nats.Conn, log *slog.Logger) (component, *loki.Service, error) {
	svc, err := loki.New(cfg, nc, log)
	if err != nil {
		return component{}, nil, err
	}
	// Concurrency and the queue size the endpoints: they need a restart.
	live := []liveSetting{{keys: []string{"[loki] memory_limit_mib"}, apply: func(c serviceConfig) error {
		svc.SetMemoryLimit(uint64(c.Loki.MemoryLimitMiB) << 20)
		return nil
	}}}
	return component{name: "loki", run: svc.Run, ready: svc.Ready(), live: live}, svc, nil
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
		c.Fenrir.Boards = []hardware.BoardConfig{hardware.SimBoardConfig()}
	} else {
		boards, err := hardware.LoadBoards(path)
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
	live := []liveSetting{{keys: []string{"[jormungandr] policy"}, apply: func(c serviceConfig) error {
		p := c.Jormungandr.Policy
		p.AllowHosts = slices.Clone(p.AllowHosts)
		// Under `loki up`, scripts keep reaching the local MQTT listener.
		if addr := cfg.LocalMQTT.Addr; addr != "" {
			if err := p.AllowAddr(addr); err != nil {
				return err
			}
		}
		return svc.SetPolicy(p)
	}}}
	return component{name: "jormungandr", run: svc.Run, ready: svc.Ready(), live: live}, nil
}

// jotunheimComponent is the device service: the registry of devices, their
// presence, their tools, and commands to them.
func jotunheimComponent(cfg jotunheim.Config, nc *nats.Conn, log *slog.Logger) (component, error) {
	svc, err := jotunheim.New(cfg, nc, log)
	if err != nil {
		return component{}, err
	}
	return component{name: "jotunheim", run: svc.Run, ready: svc.Ready()}, nil
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
	live := []liveSetting{{keys: []string{"[gateway] tokens", "[gateway] admin_tokens"}, apply: func(c serviceConfig) error {
		return gw.SetTokens(c.Gateway.Tokens, c.Gateway.AdminTokens)
	}}}
	return component{name: "gateway", run: func(ctx context.Context) error { return gw.Serve(ctx, lis) }, ready: gw.Ready(),
		live: live}, lis.Addr(), nil
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
