// Command loki runs Loki and talks to it.
//
//	loki up                     run everything in one process on an embedded NATS server
//	loki serve loki             run one component against an external NATS server
//	loki tools | call | events  client commands
//	loki devices                Jotunheim devices: list, show, cmd, watch, rm
//	loki ota                    signed device updates: keygen, sign, publish, rollout, status
//	loki bench                  measure Loki against raw NATS request/reply
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
	"runtime"
	"runtime/debug"
	"strings"
	"syscall"
)

const usage = `loki runs user-written Lua tools against hardware, networks and storage, over NATS.

Usage:
  loki up [flags]                 run NATS (embedded, with JetStream) and every service in one process
  loki serve COMPONENT [flags]    run one component (loki, hel, fenrir, jormungandr, jotunheim, gateway, auth) against an external NATS server
  loki tools [flags]              list registered tools
  loki tools get NAME             print one tool
  loki tools register FILE        register the tools of a TOML file (admin)
  loki tools unregister NAME...   remove tools (admin)
  loki call TOOL [key=value ...]  call a tool and print its JSON result
  loki events [flags]             print script events as they happen
  loki devices [flags]            list devices (show ID, cmd ID NAME [k=v ...], watch [ID], rm ID)
  loki ota COMMAND [flags]        signed device updates: keygen, sign, publish, releases, rollout, status
  loki auth COMMAND [flags]       manage bus identities: add, add-device, list, revoke, export, context
  loki bench [flags]              benchmark tool calls against a raw NATS echo
  loki completion bash|zsh|fish   print a shell completion script
  loki version                    print the version

Run 'loki help COMMAND' or 'loki COMMAND --help' for a command's flags.
Exit codes: 0 success or help, 1 the operation failed, 2 a usage mistake.
`

// version is the release, set with -ldflags "-X main.version=v1.2.3";
// empty means the main module's version from the build info, or "dev".
var version = ""

func versionString() string {
	v := version
	if v == "" {
		v = "dev"
		if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
	}
	return fmt.Sprintf("loki %s (%s, %s/%s)", v, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// exitError carries a process exit code through main. hint, when set, is
// printed on its own line after the error (what to run for help).
type exitError struct {
	code int
	err  error
	hint string
}

func (e *exitError) Error() string { return e.err.Error() }

func (e *exitError) Unwrap() error { return e.err }

// usageMistake is a wrong command line: exit code 2, with a pointer to the
// command's help.
func usageMistake(cmd string, err error) error {
	return &exitError{code: 2, err: err, hint: fmt.Sprintf("Run 'loki %s --help' for usage.", cmd)}
}

// processExitCode is the process exit code for run's error: 0 for nil, else the
// exitError's code, else 1.
func processExitCode(err error) int {
	if err == nil {
		return 0
	}
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// SIGHUP asks a running server to reload its tool config (reload.go).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	ctx = withReloadSignal(ctx, hup)
	go func() {
		// A second signal, after the first started a graceful stop, exits now.
		<-ctx.Done()
		stop()
		again := make(chan os.Signal, 1)
		signal.Notify(again, os.Interrupt, syscall.SIGTERM)
		<-again
		fmt.Fprintln(os.Stderr, "loki: second signal, exiting without draining")
		os.Exit(130)
	}()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "loki:", err)
		var ee *exitError
		if errors.As(err, &ee) && ee.hint != "" {
			fmt.Fprintln(os.Stderr, ee.hint)
		}
		os.Exit(processExitCode(err))
	}
}

// commands are the top-level commands, in the order help lists them.
var commands = []string{"up", "serve", "tools", "call", "events", "devices", "ota", "auth", "bench", "completion", "version", "help"}

// run runs one command line. Help requests print to stdout and return nil;
// usage mistakes return an exitError with code 2 and a hint; nothing is
// printed for an error, which the caller prints once.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return &exitError{code: 2, err: errors.New("no command given")}
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "help", "-h", "--help", "-help":
		if len(rest) == 0 {
			fmt.Fprint(stdout, usage)
			return nil
		}
		if rest[0] == "help" {
			fmt.Fprint(stdout, usage)
			return nil
		}
		if strings.HasPrefix(rest[0], "-") {
			return usageMistake("help", fmt.Errorf("help: unexpected argument %q", rest[0]))
		}
		// `loki help serve fenrir` is `loki serve fenrir --help`.
		return run(ctx, append(append([]string{}, rest...), "--help"), stdout, stderr)
	case workerCommand: // hidden: a replica's isolated worker (worker.go)
		return cmdWorker(ctx, rest, stderr)
	case "version", "--version", "-version":
		if len(rest) > 0 {
			if isHelp(rest[0]) {
				fmt.Fprint(stdout, "Usage: loki version\n\nPrints the version of loki, the Go release it was built with, and the platform.\n")
				return nil
			}
			return usageMistake("version", fmt.Errorf("version: unexpected argument %q", rest[0]))
		}
		fmt.Fprintln(stdout, versionString())
		return nil
	}
	h, ok := handler(cmd)
	if !ok {
		if name, _, _ := strings.Cut(strings.TrimLeft(cmd, "-"), "="); strings.HasPrefix(cmd, "-") && name != "" {
			// loki takes no flags of its own but --help and --version.
			return &exitError{code: 2, err: fmt.Errorf("unknown flag %s", flagName(name)), hint: "Run 'loki --help' for usage."}
		}
		return &exitError{code: 2, err: fmt.Errorf("unknown command %q", cmd), hint: "Run 'loki help' for the commands."}
	}
	if maxArgs, ok := noPositionals[cmd]; ok {
		// These commands take flags only; refuse a stray argument before
		// they start anything (a benchmark, a server).
		if err := checkPositionals(ctx, cmd, rest, maxArgs); err != nil {
			return err
		}
	}
	o := &cliOut{Writer: stderr}
	err := h(ctx, rest, stdout, o)
	return o.finish(err, stdout)
}

// handler returns the command that parses its own flags with newFlags.
// (A function, not a map: cmdServe's help probes the components through it.)
func handler(cmd string) (func(ctx context.Context, args []string, stdout, stderr io.Writer) error, bool) {
	switch cmd {
	case "up":
		return cmdUp, true
	case "serve":
		return cmdServe, true
	case "tools":
		return cmdTools, true
	case "call":
		return cmdCall, true
	case "events":
		return cmdEvents, true
	case "devices":
		return cmdDevices, true
	case "ota":
		return cmdOTA, true
	case "bench":
		return cmdBench, true
	case "auth":
		return cmdAuth, true
	case "completion":
		return cmdCompletion, true
	}
	return nil, false
}

// noPositionals are the commands run checks for stray arguments itself,
// since their handlers take none.
var noPositionals = map[string]int{"up": 0, "bench": 1} // bench: its sub-mode "devices"

func isHelp(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

// checkPositionals parses args with cmd's flags (found by asking the
// command for its help, which starts nothing) and refuses more than max
// positional arguments.
func checkPositionals(ctx context.Context, cmd string, args []string, max int) error {
	fs, _ := probeFlags(ctx, cmd)
	if fs == nil {
		return nil
	}
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return nil // the command reports its own flag errors
	}
	if len(pos) > max {
		return usageMistake(cmd, fmt.Errorf("%s: unexpected argument %q", cmd, pos[max]))
	}
	return nil
}

// probeFlags returns the flag set and synopsis a command builds, by
// running it with --help into a cliOut that prints nothing. args name a
// subcommand first (["serve", "hel"], ["auth", "add"]).
func probeFlags(ctx context.Context, args ...string) (*flag.FlagSet, string) {
	h, ok := handler(args[0])
	if !ok {
		return nil, ""
	}
	o := &cliOut{Writer: io.Discard}
	_ = h(ctx, append(append([]string{}, args[1:]...), "--help"), io.Discard, o)
	if o.fs == nil {
		return nil, ""
	}
	// A fresh copy, so a caller's Parse does not see the probe's --help.
	fs := flag.NewFlagSet(o.fs.Name(), flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	o.fs.VisitAll(func(f *flag.Flag) { fs.Var(f.Value, f.Name, f.Usage) })
	return fs, o.synopsis
}

// cliOut is the stderr run hands a command. It writes to stderr, and
// newFlags records on it the flag set and synopsis whose usage the flag
// package asked for, so run prints help (to stdout) and flag errors (once,
// as a usage mistake) in one place for every command.
type cliOut struct {
	io.Writer
	fs       *flag.FlagSet
	synopsis string
}

// finish turns a command's error into run's result: a help request prints
// the usage to stdout and succeeds; a flag error becomes a usage mistake.
func (o *cliOut) finish(err error, stdout io.Writer) error {
	if err == nil || o.fs == nil {
		return err
	}
	if errors.Is(err, flag.ErrHelp) {
		printUsage(stdout, o.fs, o.synopsis)
		return nil
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.code == 2 && ee.hint == "" {
			ee.hint = fmt.Sprintf("Run 'loki %s --help' for usage.", o.fs.Name())
		}
		return err
	}
	// The flag package's own errors: Usage was called, so this is one.
	return usageMistake(o.fs.Name(), fmt.Errorf("%s: %s", o.fs.Name(), dashes(err.Error())))
}

// dashes rewrites the flag package's "-name" in its error messages to the
// "--name" the help shows.
func dashes(msg string) string {
	msg = strings.Replace(msg, "flag provided but not defined: -", "unknown flag -", 1)
	for _, pre := range []string{"unknown flag -", "flag needs an argument: -", "for flag -"} {
		if i := strings.Index(msg, pre); i >= 0 {
			j := i + len(pre)
			if j+1 < len(msg) && msg[j] != '-' && msg[j+1] != ':' && msg[j+1] != ' ' {
				msg = msg[:j] + "-" + msg[j:]
			}
		}
	}
	return msg
}

// newFlags returns a FlagSet for the command name (as typed after "loki").
// It prints nothing itself: on --help or a bad flag the flag package calls
// Usage, which records the set on run's cliOut, and run prints the usage
// (--help, to stdout, exit 0) or the error once with a hint (exit 2).
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o, ok := stderr.(*cliOut)
	fs.Usage = func() {
		if ok {
			o.fs, o.synopsis = fs, synopsis
			return
		}
		printUsage(stderr, fs, synopsis) // called outside run
	}
	return fs
}

// printUsage writes synopsis and fs's flags, spelled --name (-o for a
// one-letter flag), with their argument type and default.
func printUsage(w io.Writer, fs *flag.FlagSet, synopsis string) {
	fmt.Fprintf(w, "%s\n\nFlags:\n", strings.TrimRight(synopsis, "\n"))
	shorts := map[string]string{} // long name -> its one-letter alias
	fs.VisitAll(func(f *flag.Flag) {
		if long, ok := strings.CutPrefix(f.Usage, aliasUsage); ok {
			shorts[long] = f.Name
		}
	})
	fs.VisitAll(func(f *flag.Flag) {
		if strings.HasPrefix(f.Usage, aliasUsage) {
			return // shown with its long name
		}
		typ, text := flag.UnquoteUsage(f)
		line := "  " + flagName(f.Name)
		if short, ok := shorts[f.Name]; ok {
			line = "  " + flagName(short) + ", " + flagName(f.Name)
		}
		if typ != "" {
			line += " " + typ
		}
		fmt.Fprintln(w, line)
		switch {
		case f.DefValue == "" || f.DefValue == "false" || f.DefValue == "0" || f.DefValue == "0s":
		case typ == "string" || strings.ContainsAny(f.DefValue, " \t"):
			text += fmt.Sprintf(" (default %q)", f.DefValue)
		default:
			text += " (default " + f.DefValue + ")"
		}
		fmt.Fprintf(w, "        %s\n", strings.ReplaceAll(text, "\n", "\n        "))
	})
	fmt.Fprintln(w, "  -h, --help\n        print this help")
}

// aliasUsage starts the usage of a flag defined by shortAlias.
const aliasUsage = "alias of "

// shortAlias defines the one-letter flag short as another name of the
// flag long, defined already: both set the same value, and the help shows
// them on one line ("-o, --output FILE").
func shortAlias(fs *flag.FlagSet, short, long string) {
	fs.Var(fs.Lookup(long).Value, short, aliasUsage+long)
}

// flagName spells a flag as the help and completion show it.
func flagName(name string) string {
	if len(name) == 1 {
		return "-" + name
	}
	return "--" + name
}

// parseInterleaved parses flags that may appear before, between or after
// positional arguments, and returns the positionals.
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// logFlags registers --log-level and returns a constructor for the logger.
func logFlags(fs *flag.FlagSet, stderr io.Writer) func() (*slog.Logger, error) {
	newLog := logFlagsVar(fs, stderr)
	return func() (*slog.Logger, error) {
		log, _, err := newLog()
		return log, err
	}
}

// logFlagsVar is logFlags whose constructor also returns the logger's
// level, which may be changed while the logger is in use (SIGHUP applies
// [log] level so).
func logFlagsVar(fs *flag.FlagSet, stderr io.Writer) func() (*slog.Logger, *slog.LevelVar, error) {
	level := fs.String("log-level", envOr("LOKI_LOG_LEVEL", "info"), "log level: debug, info, warn, error (env LOKI_LOG_LEVEL; [log] level in --service-config overrides it)")
	format := fs.String("log-format", envOr("LOKI_LOG_FORMAT", "text"), "log format: text or json (env LOKI_LOG_FORMAT)")
	return func() (*slog.Logger, *slog.LevelVar, error) {
		var lv slog.Level
		if err := lv.UnmarshalText([]byte(*level)); err != nil {
			return nil, nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
		}
		v := new(slog.LevelVar)
		v.Set(lv)
		opts := &slog.HandlerOptions{Level: v}
		switch strings.ToLower(*format) {
		case "text":
			return slog.New(slog.NewTextHandler(stderr, opts)), v, nil
		case "json":
			return slog.New(slog.NewJSONHandler(stderr, opts)), v, nil
		}
		return nil, nil, fmt.Errorf("--log-format %q: want text or json", *format)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// serveUsage is the help of `loki serve` without a component: the
// components and the flags every one of them takes.
func serveUsage(ctx context.Context, w io.Writer, components []string) {
	common := flag.NewFlagSet("serve", flag.ContinueOnError)
	counts := map[string]int{}
	for _, c := range components {
		fs, _ := probeFlags(ctx, "serve", c)
		if fs == nil {
			continue
		}
		fs.VisitAll(func(f *flag.Flag) {
			counts[f.Name]++
			if counts[f.Name] == len(components) {
				common.Var(f.Value, f.Name, f.Usage)
			}
		})
	}
	printUsage(w, common, fmt.Sprintf(`Usage: loki serve COMPONENT [flags]

Runs one component against an external NATS server with JetStream.
Components: %s
Run 'loki serve COMPONENT --help' for a component's own flags; these are common to all`, strings.Join(components, ", ")))
}
