// Package jotunheim is the Jotunheim device agent as a library: what runs
// on a device. It reads a board (the hardware package: the same boards
// Fenrir drives), connects to the platform over MQTT (the NATS server's
// MQTT listener) or through a Transport the program passes (gRPC to the
// gateway: devices/jotunheim/grpclink), announces itself with a
// capability manifest, publishes its sensors' and actuators' states, runs
// the platform's commands and lets code on the device call Loki tools. docs/DEVICES.md is the
// protocol; devices/wire encodes and decodes it.
//
// The agent drives its own reconnects (exponential backoff with full
// jitter, unlimited) and re-announces presence, manifest and state on
// every connect. Losing the platform never changes an output.
//
// It imports no NATS server, no Lua and no gRPC, so that it fits a small
// device: cmd/jotunheim only wires it.
package jotunheim

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loki-iot/loki/devices/ota"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
)

// Errors Run returns.
var (
	// ErrRefused is the platform refusing the device: a protocol major
	// version it does not speak, or an invalid manifest. Retrying is
	// pointless until the agent or the platform is updated.
	ErrRefused = errors.New("refused by the platform")
	// ErrReboot is Run's answer to a reboot command, after the agent
	// replied and published offline: the caller restarts the agent
	// (cmd/jotunheim re-executes itself).
	ErrReboot = errors.New("reboot requested")
	// ErrUpdated is Run's answer after an OTA install or rollback replaced
	// the binary in the OTA directory (ota.go): the caller execs that
	// binary (cmd/jotunheim execs ota.Installer.Current, not os.Args[0]).
	ErrUpdated = errors.New("the agent's binary was replaced: restart into it")
	// errNotConnected is a publish without a connection.
	errNotConnected = errors.New("not connected to the platform")
)

// FirmwareVersion is the agent's version in its manifest; set it with
// -ldflags "-X github.com/loki-iot/loki/devices/jotunheim.FirmwareVersion=v1.2.3".
var FirmwareVersion = "dev"

// Log keys.
const (
	logErr    = "err"
	logEntity = "entity"
	logCmd    = "command"
	logTopic  = "topic"
)

// publishTimeout bounds waiting for one publish to be written (QoS 0) or
// acknowledged (QoS 1).
const publishTimeout = 10 * time.Second

// CommandFunc runs a device-specific command registered with WithCommand.
// ctx ends at the command's deadline or when the agent stops. The result
// must marshal to JSON; an error carrying a *fault.Error code is answered
// with that code.
type CommandFunc func(ctx context.Context, args map[string]any) (any, error)

// Option adjusts an Agent.
type Option func(*Agent)

// WithLevelVar lets config.set change the log level live through lv (the
// level of the handler behind the agent's logger).
func WithLevelVar(lv *slog.LevelVar) Option { return func(a *Agent) { a.level = lv } }

// WithCommand adds a device-specific command name (not one of the
// built-ins). It runs on the command worker like every command.
func WithCommand(name string, fn CommandFunc) Option {
	return func(a *Agent) { a.custom[name] = fn }
}

// Stats counts what the agent received and refused.
type Stats struct {
	// Received counts messages from the platform.
	Received uint64
	// Bad counts messages that could not be decoded (oversized, not the
	// expected protojson, missing fields): logged and dropped.
	Bad uint64
	// Commands counts commands run; QueueFull those refused with
	// RESOURCE_EXHAUSTED.
	Commands, QueueFull uint64
	// Queued is the number of commands waiting now.
	Queued int
	// Connects counts successful connections to the broker (or the
	// gateway, over gRPC).
	Connects uint64
	// Online is true while connected and accepted by the platform.
	Online bool
	// Resources are the resource budgets' figures (budget.go).
	Resources ResourceStats
	// Spool is the store-and-forward buffer (spool.go).
	Spool SpoolStats
}

// Agent is one device's agent. Create it with New, run it with Run (once).
// Its methods are safe for concurrent use.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	level   *slog.LevelVar
	started time.Time
	custom  map[string]CommandFunc
	queue   *queue
	topics  topics

	transport Transport     // the config's, or WithTransport's
	runTool   ToolRunner    // loki.exec's, or nil for CallTool (lokiexec.go)
	lokiSlots chan struct{} // loki.exec commands running

	hw *hw // the board; swapped by UpdateBoard

	otaInst *ota.Installer // WithOTA
	ota     *otaAgent      // nil without [ota] (ota.go)
	streams streamHost     // device streams (streams.go)

	mu         sync.Mutex
	settings   Settings
	settingsCh chan struct{} // closed and replaced when settings change
	sess       *session      // nil while disconnected
	states     map[string]string
	calls      map[string]chan *jv1.ToolResult
	ha         haState // Home Assistant discovery (homeassistant.go)

	heartbeatSeq atomic.Uint64
	received     atomic.Uint64
	bad          atomic.Uint64
	commands     atomic.Uint64
	queueFull    atomic.Uint64
	connects     atomic.Uint64
	online       atomic.Bool

	budgetCounters            // throttled telemetry, refused commands (budget.go)
	res            resources  // memory and CPU samples (budget.go)
	bw             *bandwidth // bytes in the bandwidth window (budget.go)
	spool          *spool     // store-and-forward (spool.go)
}

// New validates cfg, opens the board it names and reads the state file.
// It does not connect: Run does, and closes the board when it returns.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	login, err := cfg.login()
	if err != nil {
		return nil, err
	}
	tc, err := tlsConfig(cfg)
	if err != nil {
		return nil, err
	}
	settings := Settings{
		TelemetrySeconds: uint32(cfg.Telemetry.Period / time.Second),
		HeartbeatSeconds: uint32(cfg.Telemetry.Heartbeat / time.Second),
		LogLevel:         "info",
	}
	a := &Agent{
		cfg: cfg, log: log.With("component", "jotunheim", "device", cfg.Device.ID),
		started:    time.Now(),
		custom:     map[string]CommandFunc{},
		lokiSlots:  make(chan struct{}, lokiExecSlots),
		queue:      newQueue(cfg.Limits.MaxQueuedCommands),
		topics:     newTopics(cfg.Device.ID),
		settingsCh: make(chan struct{}),
		states:     map[string]string{},
		calls:      map[string]chan *jv1.ToolResult{},
		bw:         newBandwidth(cfg.Limits.BandwidthBudget, cfg.Limits.BandwidthWindow),
	}
	for _, o := range opts {
		o(a)
	}
	if a.transport == nil {
		if a.transport, err = transportFor(cfg, login, tc); err != nil {
			return nil, err
		}
	}
	for name := range a.custom {
		if builtin[name] {
			return nil, fmt.Errorf("%w: WithCommand: %q is a built-in command", ErrConfig, name)
		}
	}
	if a.level != nil {
		settings.LogLevel = levelName(a.level.Level())
	}
	if settings, err = loadSettings(cfg.Telemetry.StateFile, settings); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	a.settings = settings
	a.applyLevel(settings.LogLevel)
	board, err := boardConfig(cfg)
	if err != nil {
		return nil, err
	}
	if err := checkDiagNames(board); err != nil {
		return nil, err
	}
	if err := a.openOTA(); err != nil {
		return nil, err
	}
	if a.spool, err = openSpool(cfg, a.log); err != nil {
		return nil, err
	}
	if a.hw, err = openHW(board, cfg.Telemetry.SampleMaxAge); err != nil {
		a.spool.close()
		return nil, err
	}
	return a, nil
}

func levelName(l slog.Level) string {
	for n, v := range logLevels {
		if v == l {
			return n
		}
	}
	return "info"
}

func (a *Agent) applyLevel(name string) {
	if l, err := ParseLogLevel(name); err == nil && a.level != nil {
		a.level.Set(l)
	}
}

// TLSConfig returns the TLS settings the config's transport names (its
// CA file, its client certificate), or nil when it names none: the TLS of
// a transport passed with WithTransport.
func (c Config) TLSConfig() (*tls.Config, error) { return tlsConfig(c) }

func tlsConfig(cfg Config) (*tls.Config, error) {
	if cfg.Transport.CAFile == "" && cfg.Transport.CertFile == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.Transport.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.Transport.CertFile, cfg.Transport.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: transport.cert_file: %v", ErrConfig, cfg.at("transport.cert_file"), err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	if cfg.Transport.CAFile == "" {
		return tc, nil // the system's roots
	}
	pem, err := os.ReadFile(cfg.Transport.CAFile)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: transport.ca_file: %v", ErrConfig, cfg.at("transport.ca_file"), err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%w: %s: transport.ca_file: %s holds no PEM certificate", ErrConfig, cfg.at("transport.ca_file"), cfg.Transport.CAFile)
	}
	tc.RootCAs = pool
	return tc, nil
}

// ID is the device id.
func (a *Agent) ID() string { return a.cfg.Device.ID }

// Settings returns the current runtime settings.
func (a *Agent) Settings() Settings {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.settings
}

// Stats returns the agent's counters.
func (a *Agent) Stats() Stats {
	return Stats{
		Received: a.received.Load(), Bad: a.bad.Load(), Commands: a.commands.Load(),
		QueueFull: a.queueFull.Load(), Queued: a.queue.len(), Connects: a.connects.Load(), Online: a.online.Load(),
		Resources: a.resourceStats(), Spool: a.spool.stats(),
	}
}

// Run connects and serves until ctx ends, reconnecting forever with
// backoff. On ctx's end it publishes offline, disconnects, closes the board
// and returns nil. It returns an error wrapping ErrRefused when the
// platform refuses the device, ErrReboot after a reboot command, and
// ErrUpdated after an OTA install or rollback.
func (a *Agent) Run(ctx context.Context) error {
	defer a.hw.close()
	defer a.closeStreams()
	defer a.spool.close()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	wg.Go(func() { a.worker(ctx, cancel) })
	// Telemetry runs offline too: what it produces then is spooled.
	wg.Go(func() { a.loops(ctx) })
	wg.Go(func() { a.watchMotion(ctx) })
	wg.Go(func() { a.monitor(ctx) })
	wg.Go(func() { a.otaLoop(ctx, cancel) })
	defer wg.Wait()
	for attempt := 0; ; attempt++ {
		accepted, err := a.session(ctx)
		if ctx.Err() != nil {
			if cause := context.Cause(ctx); errors.Is(cause, ErrReboot) || errors.Is(cause, ErrUpdated) {
				return cause
			}
			return nil
		}
		if errors.Is(err, ErrRefused) {
			if a.rollbackRefused(err) { // a new release the platform refuses
				cancel(ErrUpdated)
				return ErrUpdated
			}
			cancel(err)
			return err
		}
		if accepted {
			attempt = 0
		}
		d := a.backoff(attempt)
		a.log.Warn("not connected to the platform; retrying", logErr, err, "in", d.Round(time.Millisecond), "attempt", attempt+1)
		if !sleep(ctx, d) {
			continue // the check at the top of the loop returns
		}
	}
}

// backoff is the full-jitter delay before attempt n (0-based):
// rand(0, min(cap, base·2^n)).
func (a *Agent) backoff(n int) time.Duration {
	base, ceil := a.cfg.Resilience.BackoffBase, a.cfg.Resilience.BackoffCap
	d := ceil
	if n < 40 && base<<n > 0 && base<<n < ceil {
		d = base << n
	}
	return rand.N(d + 1)
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

// topics are the device's MQTT topics, built once.
type topics struct {
	status, manifest, negotiation, capsGet, cmd, result, event, heartbeat, call, callResult string
	otaOffer, otaGet, otaChunk, otaProgress                                                 string
}

func newTopics(id string) topics {
	t := func(kind string) string {
		s, err := subjects.DeviceTopic(id, kind)
		if err != nil {
			panic(err) // the id was validated by Config.Validate
		}
		return s
	}
	return topics{
		status: t(subjects.DeviceStatus), manifest: t(subjects.DeviceManifest),
		negotiation: t(subjects.DeviceNegotiation), capsGet: t(subjects.DeviceCapsGet),
		cmd: t(subjects.DeviceCmd), result: t(subjects.DeviceResult), event: t(subjects.DeviceEvent),
		heartbeat: t(subjects.DeviceHeartbeat), call: t(subjects.DeviceCall), callResult: t(subjects.DeviceCallResult),
		otaOffer: t(subjects.DeviceOTAOffer), otaGet: t(subjects.DeviceOTAGet), otaChunk: t(subjects.DeviceOTAChunk),
		otaProgress: t(subjects.DeviceOTAProgress),
	}
}
