package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"

	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/services/loki/isolate"
	"github.com/nats-io/nats.go"
)

// workerCommand is the hidden command a Loki replica re-executes its own
// binary with to start an isolated worker (services/loki/isolate). It is
// not for people: it serves only a supervisor's socket on fd 3.
const workerCommand = "worker"

// workerInit is what a replica hands its workers over their socket
// (isolate.Config.Init), never in argv or the environment: how to reach
// NATS as the loki identity, and how to log.
type workerInit struct {
	URL string `json:"url"`
	// Creds is the path of the credential file (the loki identity's nkey
	// seed under `loki up`); the worker reads it itself.
	Creds     string        `json:"creds,omitempty"`
	TLSCA     string        `json:"tls_ca,omitempty"`
	TLSCert   string        `json:"tls_cert,omitempty"`
	TLSKey    string        `json:"tls_key,omitempty"`
	LogLevel  string        `json:"log_level"`
	LogFormat string        `json:"log_format"`
	Limits    engine.Limits `json:"limits"`
}

// isolation is the replica's IsolationConfig: the [loki] settings, and the
// command and init that start a worker on this binary.
func (c serviceConfig) isolation(in workerInit, stderr io.Writer) (loki.IsolationConfig, error) {
	iso := loki.IsolationConfig{Mode: c.Loki.isolationMode, Workers: c.Loki.Workers, Memory: c.Loki.memoryBytes, CPU: c.Loki.cpu, Stderr: stderr}
	if iso.Mode == loki.IsolateNever {
		return iso, nil
	}
	exe, err := os.Executable()
	if err != nil {
		return iso, fmt.Errorf("isolated workers re-execute this binary, whose path is not known: %w ([loki] isolation = \"never\" runs every tool in process)", err)
	}
	iso.Init, err = json.Marshal(in)
	if err != nil {
		return iso, err
	}
	iso.Command = func() (*exec.Cmd, error) { return exec.Command(exe, workerCommand), nil }
	return iso, nil
}

// credsPath is the credential file f's connection uses, "" for none: what
// natsFlags.options picks.
func (f *natsFlags) credsPath() string {
	if *f.creds != "" {
		return *f.creds
	}
	if _, err := os.Stat(f.local()); err == nil {
		return f.local()
	}
	return ""
}

func cmdWorker(ctx context.Context, args []string, stderr io.Writer) error {
	if len(args) > 0 {
		return usageMistake(workerCommand, fmt.Errorf("%s: unexpected argument %q", workerCommand, args[0]))
	}
	link, err := isolate.Attach()
	if err != nil {
		return fmt.Errorf("%s: %w (this command is started by `loki up` and `loki serve loki`, not by hand)", workerCommand, err)
	}
	defer link.Close()
	var in workerInit
	if err := json.Unmarshal(link.Init(), &in); err != nil {
		return fmt.Errorf("%s: init: %w", workerCommand, err)
	}
	var lv slog.Level
	_ = lv.UnmarshalText([]byte(in.LogLevel))
	opts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler = slog.NewTextHandler(stderr, opts)
	if strings.EqualFold(in.LogFormat, "json") {
		h = slog.NewJSONHandler(stderr, opts)
	}
	log := slog.New(h).With("worker_pid", os.Getpid())
	var natsOpts []nats.Option
	if in.Creds != "" {
		o, err := auth.ConnectOptions(in.Creds)
		if err != nil {
			return err
		}
		natsOpts = append(natsOpts, o...)
	}
	if in.TLSCA != "" {
		natsOpts = append(natsOpts, nats.RootCAs(in.TLSCA))
	}
	if in.TLSCert != "" {
		natsOpts = append(natsOpts, nats.ClientCert(in.TLSCert, in.TLSKey))
	}
	nc, err := natsrv.Dial(ctx, in.URL, "loki-worker", log, natsOpts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	err = loki.ServeWorker(ctx, link, loki.WorkerConfig{Limits: in.Limits, Modules: modules(nc)}, log)
	if errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}
