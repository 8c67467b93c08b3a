// Command jotunheim is the Jotunheim device agent: it joins a Loki
// platform over MQTT (or gRPC to the gateway), announces its board's
// sensors and actuators, and runs the platform's commands. It only wires
// devices/jotunheim: flags, config, signals and exit codes.
//
// Built with -tags mqttonly it leaves out the gRPC transport
// (devices/jotunheim/grpclink) and with it every gRPC package: the
// smallest agent, for the smallest devices.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/ota"
)

const usage = `jotunheim is the Jotunheim device agent: it connects a board's sensors and
actuators to a Loki platform over MQTT (or gRPC to the gateway: --gateway, or
[transport] kind = "grpc"), where they become tools.

Usage:
  jotunheim --sim [--id ID]            run on the simulated board (id default "demo")
  jotunheim --board FILE --id ID       run on real hardware (a [[boards]] TOML, Fenrir's format)
  jotunheim --config FILE              run with a config file; flags override it

Examples:
  loki auth add-device demo            # once, on the Loki machine: the device's login
  jotunheim --sim --id demo            # then: the device, its tools and commands
  loki devices                         # see it
  jotunheim --board pi.toml --id greenhouse --broker tcp://loki.local:1883 \
      --login greenhouse.json          # a login printed by 'loki auth add-device greenhouse --json'
  jotunheim --sim --id demo --gateway 127.0.0.1:50051
                                       # over gRPC to the gateway instead of MQTT

Login: --login FILE, or the config's transport password/password_file/login_file;
without any, the login 'loki auth add-device ID' saved in the Loki data dir
($LOKI_DATA_DIR or ~/.local/share/loki, file auth/devices/ID.json).

A reboot command makes the agent reply, publish offline and re-execute
itself (same arguments, same process id under a supervisor).

OTA updates ([ota] in the config, docs/OTA.md): the agent must run as
<ota dir>/current (systemd: ExecStart=/var/lib/jotunheim/ota/current --config
…). At start it finishes or undoes an interrupted install, counts the start
of a new release and rolls back one past its boot limit; after an install
or a rollback it re-executes <ota dir>/current.

Exit codes: 0 stopped by a signal, --help or --version; 1 the agent failed or
the platform refused it; 2 a usage or configuration mistake.

Flags:
`

type options struct {
	config, board, id, broker, gateway, login, logLevel string
	sim, version                                        bool
}

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	var o options
	fs := flag.NewFlagSet("jotunheim", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.config, "config", "", "config `FILE` (TOML: [device], [transport], [board], [resilience], [limits], [telemetry], [homeassistant], [ota])")
	fs.BoolVar(&o.sim, "sim", false, "use the simulated board")
	fs.StringVar(&o.board, "board", "", "board `FILE`: a [[boards]] TOML in Fenrir's format (its one board)")
	fs.StringVar(&o.id, "id", "", "device `ID`: 1 to 64 of [A-Za-z0-9_-]")
	fs.StringVar(&o.broker, "broker", "", "MQTT broker `URL` (default "+jotunheim.DefaultBroker+"; ssl://host:port for TLS)")
	fs.StringVar(&o.gateway, "gateway", "", "gRPC gateway `HOST:PORT`: speak gRPC to the gateway instead of MQTT (transport.kind = \"grpc\"; "+jotunheim.DefaultGateway+" is a local 'loki up')")
	fs.StringVar(&o.login, "login", "", "login `FILE`: JSON {\"username\",\"password\"} from 'loki auth add-device ID --json'")
	fs.StringVar(&o.logLevel, "log-level", "info", "log `LEVEL`: debug, info, warn or error")
	fs.BoolVar(&o.version, "version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "jotunheim: unexpected argument %q\nRun 'jotunheim --help' for usage.\n", fs.Arg(0))
		return 2
	}
	if o.version {
		fmt.Fprintf(stderr, "jotunheim %s (%s, %s/%s)\n", jotunheim.FirmwareVersion, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return 0
	}
	level := new(slog.LevelVar)
	l, err := jotunheim.ParseLogLevel(o.logLevel)
	if err != nil {
		fmt.Fprintf(stderr, "jotunheim: --log-level: %v\n", err)
		return 2
	}
	level.Set(l)
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg, err := loadConfig(o)
	if err != nil {
		fmt.Fprintf(stderr, "jotunheim: %v\nRun 'jotunheim --help' for usage.\n", err)
		return 2
	}
	opts := append([]jotunheim.Option{jotunheim.WithLevelVar(level)}, simStreamOptions(cfg.Board.Sim)...)
	topts, err := transportOptions(cfg, log) // transport_grpc.go, transport_mqttonly.go
	if err != nil {
		fmt.Fprintf(stderr, "jotunheim: %v\n", err)
		return 2
	}
	opts = append(opts, topts...)
	exe := "" // what a restart execs: the OTA current, else this binary
	if cfg.OTA.Dir != "" {
		inst, err := bootOTA(cfg, log)
		if err != nil {
			fmt.Fprintf(stderr, "jotunheim: ota: %v\n", err)
			return 1
		}
		if inst == nil {
			return 1 // the exec failed; bootOTA said why
		}
		exe = inst.Current()
		opts = append(opts, jotunheim.WithOTA(inst))
	}
	agent, err := jotunheim.New(cfg, log, opts...)
	if err != nil {
		fmt.Fprintf(stderr, "jotunheim: %v\n", err)
		if errors.Is(err, jotunheim.ErrNoTransport) && noGRPCHint != "" {
			fmt.Fprintf(stderr, "jotunheim: %s\n", noGRPCHint)
		}
		if errors.Is(err, jotunheim.ErrConfig) {
			return 2
		}
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	go func() {
		// After the first signal, the default action returns: a second one
		// ends the process at once.
		<-ctx.Done()
		stop()
	}()
	err = agent.Run(ctx)
	stop()
	switch {
	case err == nil:
		return 0
	case errors.Is(err, jotunheim.ErrReboot), errors.Is(err, jotunheim.ErrUpdated):
		log.Info("restarting", "binary", exe)
		if err := reexec(exe); err != nil {
			fmt.Fprintf(stderr, "jotunheim: reboot: %v\n", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "jotunheim: %v\n", err)
	return 1
}

// bootOTA opens the OTA directory and runs Boot: it finishes or undoes
// an interrupted install, counts this start of a release on trial and
// rolls back one past its boot limit, in which case it execs the rolled
// back current at once (and returns nil, nil only when that failed).
func bootOTA(cfg jotunheim.Config, log *slog.Logger) (*ota.Installer, error) {
	inst, err := ota.Open(cfg.OTA.Dir, ota.WithBootLimit(cfg.OTA.BootLimit), ota.WithFactory(jotunheim.FirmwareVersion, 0))
	if err != nil {
		return nil, err
	}
	if self, err := os.Executable(); err == nil {
		a, aerr := os.Stat(self)
		b, berr := os.Stat(inst.Current())
		if aerr != nil || berr != nil || !os.SameFile(a, b) {
			log.Warn("not running as the OTA current binary: an update takes effect at the next restart into it",
				"running", self, "current", inst.Current())
		}
	}
	d, err := inst.Boot()
	if err != nil {
		// current is still a verified binary: run on, say so.
		log.Error("ota: boot check failed; running on", "err", err)
		return inst, nil
	}
	if d.Reexec {
		log.Warn("ota: current was rolled back; restarting into it", "reason", rollbackReason(d))
		if err := reexec(inst.Current()); err != nil {
			log.Error("ota: exec current", "err", err)
			return nil, nil
		}
	}
	return inst, nil
}

func rollbackReason(d ota.Decision) string {
	if d.RolledBack != nil {
		return d.RolledBack.Reason
	}
	return "an interrupted rollback was finished"
}

// loadConfig builds the config: the file (if any) over the defaults, then
// the flags, then the login and state file defaults; validated.
func loadConfig(o options) (jotunheim.Config, error) {
	cfg := jotunheim.DefaultConfig()
	if o.config != "" {
		data, err := os.ReadFile(o.config)
		if err != nil {
			return cfg, err
		}
		if cfg, err = jotunheim.DecodeConfig(o.config, data); err != nil {
			return cfg, err
		}
	}
	if o.sim && o.board != "" {
		return cfg, errors.New("--sim and --board: choose one")
	}
	if o.sim {
		cfg.Board = jotunheim.BoardSource{Sim: true}
		if o.id == "" && cfg.Device.ID == "" {
			o.id = "demo"
		}
	}
	if o.board != "" {
		cfg.Board = jotunheim.BoardSource{File: o.board}
	}
	if o.id != "" {
		cfg.Device.ID = o.id
	}
	if o.broker != "" && o.gateway != "" {
		return cfg, errors.New("--broker and --gateway: choose one")
	}
	if o.broker != "" {
		cfg.Transport.Kind, cfg.Transport.Broker = jotunheim.TransportMQTT, o.broker
	}
	if o.gateway != "" {
		cfg.Transport.Kind, cfg.Transport.Gateway = jotunheim.TransportGRPC, o.gateway
	}
	if o.login != "" {
		cfg.Transport.Password, cfg.Transport.PasswordFile, cfg.Transport.LoginFile = "", "", o.login
	}
	if err := cfg.Validate(); err != nil {
		return cfg, err
	}
	if !cfg.Transport.HasCredentials() {
		path := jotunheim.LokiLoginFile(lokiDataDir(), cfg.Device.ID)
		if _, err := os.Stat(path); err != nil {
			return cfg, fmt.Errorf("no login for device %q: run 'loki auth add-device %s' on the Loki machine "+
				"(it saves the login in %s), or pass --login FILE with the JSON 'loki auth add-device %s --json' prints",
				cfg.Device.ID, cfg.Device.ID, path, cfg.Device.ID)
		}
		cfg.Transport.LoginFile = path
	}
	if cfg.Telemetry.StateFile == "" {
		cfg.Telemetry.StateFile = stateFile(o.config, cfg.Device.ID)
	}
	return cfg, nil
}

// lokiDataDir is where `loki up` keeps its data, as cmd/loki finds it.
func lokiDataDir() string {
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

// stateFile is the default state file: next to the config file, or
// $XDG_STATE_HOME/jotunheim/<id>.json (~/.local/state by default).
func stateFile(config, id string) string {
	if config != "" {
		return strings.TrimSuffix(config, filepath.Ext(config)) + ".state.json"
	}
	dir := os.Getenv("XDG_STATE_HOME")
	if dir == "" {
		if home, err := os.UserHomeDir(); err == nil {
			dir = filepath.Join(home, ".local", "state")
		} else {
			dir = "."
		}
	}
	return filepath.Join(dir, "jotunheim", id+".json")
}
