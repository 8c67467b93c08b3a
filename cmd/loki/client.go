package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/fault"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// natsFlags are the flags of every command that connects to NATS.
type natsFlags struct {
	url, creds             *string
	tlsCA, tlsCert, tlsKey *string
	role                   subjects.Role
	// dataDir, when set, is the command's --data-dir: its auth/ holds the
	// local credential instead of the default data dir's.
	dataDir *string
}

// addNATSFlags registers --nats-url and --creds. Without --creds (or
// LOKI_CREDS), the command uses the local credential of role that `loki up`
// keeps in the data dir, when there is one.
func addNATSFlags(fs *flag.FlagSet, role subjects.Role) *natsFlags {
	return &natsFlags{
		url: fs.String("nats-url", envOr("NATS_URL", nats.DefaultURL), "NATS server URL, or several comma-separated (the nodes of a cluster); nats://user:pass@host or nats://token@host work too (env NATS_URL)"),
		creds: fs.String("creds", os.Getenv("LOKI_CREDS"), fmt.Sprintf(
			"credential file: an nkey seed (as loki auth add prints) or a NATS .creds file (env LOKI_CREDS; default: %s if it exists)",
			localCreds(role))),
		tlsCA:   fs.String("tls-ca", os.Getenv("LOKI_TLS_CA"), "for a NATS server with TLS: trust this CA (PEM) instead of the system's (env LOKI_TLS_CA)"),
		tlsCert: fs.String("tls-cert", os.Getenv("LOKI_TLS_CERT"), "client certificate (PEM) for a NATS server that requires one, with --tls-key (env LOKI_TLS_CERT)"),
		tlsKey:  fs.String("tls-key", os.Getenv("LOKI_TLS_KEY"), "private key (PEM) of --tls-cert (env LOKI_TLS_KEY)"),
		role:    role,
	}
}

// tlsOptions returns the options for --tls-ca, --tls-cert and --tls-key,
// checking the files first so a bad one is named. nats.go reads them again
// on every (re)connect, so renewed certificates are picked up.
func (f *natsFlags) tlsOptions() ([]nats.Option, error) {
	var opts []nats.Option
	if *f.tlsCA != "" {
		pem, err := os.ReadFile(*f.tlsCA)
		if err != nil {
			return nil, fmt.Errorf("--tls-ca: %w", err)
		}
		if !x509.NewCertPool().AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-ca %s: no PEM certificate in the file", *f.tlsCA)
		}
		opts = append(opts, nats.RootCAs(*f.tlsCA))
	}
	if (*f.tlsCert == "") != (*f.tlsKey == "") {
		return nil, errors.New("--tls-cert and --tls-key go together")
	}
	if *f.tlsCert != "" {
		if _, err := tls.LoadX509KeyPair(*f.tlsCert, *f.tlsKey); err != nil {
			return nil, fmt.Errorf("--tls-cert %s, --tls-key %s: %w", *f.tlsCert, *f.tlsKey, err)
		}
		opts = append(opts, nats.ClientCert(*f.tlsCert, *f.tlsKey))
	}
	return opts, nil
}

// localCreds is where `loki up` keeps the seed of the built-in identity of role.
func localCreds(role subjects.Role) string {
	return auth.SeedFile(filepath.Join(defaultDataDir(), "auth"), string(role))
}

// local is the local credential of f's role: in --data-dir when the
// command has one, else in the default data dir.
func (f *natsFlags) local() string {
	if f.dataDir != nil && *f.dataDir != "" {
		return auth.SeedFile(filepath.Join(*f.dataDir, "auth"), string(f.role))
	}
	return localCreds(f.role)
}

// options returns the connection options for the chosen credential and TLS files.
func (f *natsFlags) options() ([]nats.Option, error) {
	tlsOpts, err := f.tlsOptions()
	if err != nil {
		return nil, fault.Wrap(fault.InvalidArgument, err, "%v", err)
	}
	path := *f.creds
	if path == "" {
		if _, err := os.Stat(f.local()); err != nil {
			return tlsOpts, nil // no local credential: connect without one
		}
		path = f.local()
	}
	opts, err := auth.ConnectOptions(path)
	if err != nil {
		return nil, fault.Wrap(fault.Unauthenticated, err, "%v", err)
	}
	return append(tlsOpts, opts...), nil
}

// dial connects as a short-lived client (a CLI command).
func (f *natsFlags) dial() (*nats.Conn, error) {
	opts, err := f.options()
	if err != nil {
		return nil, err
	}
	opts = append([]nats.Option{nats.Name("loki-cli"), nats.Timeout(3 * time.Second)}, opts...)
	nc, err := nats.Connect(*f.url, opts...)
	if err != nil {
		if errors.Is(err, nats.ErrAuthorization) || strings.Contains(strings.ToLower(err.Error()), "authorization") {
			return nil, fault.Wrap(fault.Unauthenticated, err, "NATS at %s refused the credential (%s): %v", *f.url, f.describe(), err)
		}
		if isTLSError(err) {
			return nil, fault.Wrap(fault.Unavailable, err, "TLS with NATS at %s failed (--tls-ca trusts the server's CA; --tls-cert and --tls-key present a client certificate): %v", *f.url, err)
		}
		return nil, fault.Wrap(fault.Unavailable, err, "cannot reach NATS at %s (is `loki up` running?): %v", *f.url, err)
	}
	return nc, nil
}

// isTLSError reports whether a connect failed in the TLS handshake.
func isTLSError(err error) bool {
	// crypto/tls reports an alert from the server (a refused client
	// certificate) as a "remote error", which nats.go passes on unwrapped.
	var op *net.OpError
	return errors.Is(err, nats.ErrTLS) || errors.Is(err, nats.ErrSecureConnRequired) || errors.Is(err, nats.ErrSecureConnWanted) ||
		(errors.As(err, &op) && op.Op == "remote error")
}

func (f *natsFlags) describe() string {
	if *f.creds != "" {
		return *f.creds
	}
	if _, err := os.Stat(f.local()); err == nil {
		return f.local()
	}
	return "none: pass --creds FILE"
}

func cmdCall(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("call", `Usage: loki call TOOL [key=value ...] [flags]

Calls a tool and prints its JSON result. Values are taken as the param's
declared type: strings as written, other types as JSON (n=3, on=true,
tags='["a","b"]'). --json passes the whole argument object instead.
On failure, prints the error code and message and exits 1.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleClient)
	rawJSON := fs.String("json", "", "arguments as one JSON object, merged under key=value pairs")
	timeout := fs.Duration("timeout", 30*time.Second, "give up after this long (also bounds the script)")
	stream := fs.Bool("stream", false, "print each emit() chunk as it arrives, before the result")
	grpcAddr := fs.String("grpc", "", "call through the gRPC gateway at this address (host:port) instead of NATS")
	token := fs.String("token", os.Getenv("LOKI_TOKEN"), "bearer token for the gateway, with --grpc (env LOKI_TOKEN)")
	caFile := fs.String("ca-file", "", "with --grpc: use TLS, trusting this CA (PEM); without it the connection is plaintext")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return &exitError{code: 2, err: errors.New("call: name a tool")}
	}
	tool := pos[0]
	// Mistakes in the pairs are usage mistakes, found before connecting.
	seen := map[string]bool{}
	for _, kv := range pos[1:] {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return usageMistake("call", fmt.Errorf("call: argument %q: want key=value", kv))
		}
		if seen[k] {
			return usageMistake("call", fmt.Errorf("call: argument %s given twice", k))
		}
		seen[k] = true
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	var c caller
	if *grpcAddr != "" {
		opts := []client.Option{client.WithInsecure()}
		if *caFile != "" {
			opts = []client.Option{client.WithCAFile(*caFile)}
		}
		if *token != "" {
			opts = append(opts, client.WithToken(*token))
		}
		gc, err := client.Dial(*grpcAddr, opts...)
		if err != nil {
			return callFailed(fault.Wrap(fault.Unavailable, err, "gateway %s: %v", *grpcAddr, err))
		}
		defer gc.Close()
		c = grpcCaller{gc}
	} else {
		nc, err := nf.dial()
		if err != nil {
			return err
		}
		defer nc.Close()
		c = natsCaller{loki.NewClient(nc)}
	}
	body, err := buildArgs(ctx, c, tool, *rawJSON, pos[1:])
	if err != nil {
		return callFailed(err)
	}
	var onChunk func([]byte) error
	if *stream {
		onChunk = func(chunk []byte) error {
			_, err := fmt.Fprintln(stdout, string(chunk))
			return err
		}
	}
	res, err := c.call(ctx, tool, body, onChunk)
	if err != nil {
		return callFailed(err)
	}
	fmt.Fprintln(stdout, string(res))
	return nil
}

// caller is how `loki call` reaches Loki: over NATS or through the gateway.
type caller interface {
	Get(ctx context.Context, name string) (*lokiv1.Tool, error)
	// call runs tool; a non-nil onChunk streams emit() chunks to it.
	call(ctx context.Context, tool string, args []byte, onChunk func([]byte) error) ([]byte, error)
}

type natsCaller struct{ *loki.Client }

func (n natsCaller) call(ctx context.Context, tool string, args []byte, onChunk func([]byte) error) ([]byte, error) {
	if onChunk == nil {
		res, err := n.Call(ctx, tool, args)
		return res.JSON, err
	}
	res, err := n.Stream(ctx, tool, args, func(c loki.Chunk) error { return onChunk(c.JSON) })
	return res.JSON, err
}

type grpcCaller struct{ *client.Client }

func (g grpcCaller) call(ctx context.Context, tool string, args []byte, onChunk func([]byte) error) ([]byte, error) {
	var m map[string]any
	if err := json.Unmarshal(args, &m); err != nil {
		return nil, fault.New(fault.InvalidArgument, "arguments: %v", err)
	}
	var result any
	var err error
	if onChunk == nil {
		result, _, err = g.Execute(ctx, tool, m)
	} else {
		result, _, err = g.Stream(ctx, tool, m, func(_ uint64, v any) error {
			b, err := json.Marshal(v)
			if err != nil {
				return err
			}
			return onChunk(b)
		})
	}
	if err != nil {
		return nil, grpcFault(err)
	}
	return json.Marshal(result)
}

// grpcFault turns a gateway status back into the Loki code and message.
func grpcFault(err error) error { return client.Fault(err) }

func callFailed(err error) error {
	return &exitError{code: 1, err: fmt.Errorf("%s: %s", fault.CodeOf(err), fault.MessageOf(err))}
}

// buildArgs merges --json and key=value pairs into one JSON object, reading
// the tool's params so `name=42` stays a string for a string param.
func buildArgs(ctx context.Context, c caller, tool, rawJSON string, pairs []string) ([]byte, error) {
	args := map[string]any{}
	if rawJSON != "" {
		if err := json.Unmarshal([]byte(rawJSON), &args); err != nil {
			return nil, fault.New(fault.InvalidArgument, "--json: want a JSON object: %v", err)
		}
	}
	if len(pairs) == 0 {
		return json.Marshal(args)
	}
	types := map[string]string{}
	def, err := c.Get(ctx, tool)
	if _, isGRPC := c.(grpcCaller); isGRPC && err != nil {
		err = grpcFault(err)
	}
	if err != nil {
		return nil, err
	}
	for _, p := range def.GetParams() {
		types[p.GetName()] = p.GetType()
	}
	for _, kv := range pairs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fault.New(fault.InvalidArgument, "argument %q: want key=value", kv)
		}
		if types[k] == "string" {
			args[k] = v
			continue
		}
		var val any
		if err := json.Unmarshal([]byte(v), &val); err != nil {
			if t, known := types[k]; known && t != "any" {
				return nil, fault.New(fault.InvalidArgument, "argument %s: %q is not a valid %s (write it as JSON)", k, v, t)
			}
			val = v // unknown or "any" params: a bare word is a string
		}
		args[k] = val
	}
	return json.Marshal(args)
}

func cmdEvents(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("events", `Usage: loki events [flags]

Prints script events (started, completed, failed) as JSON lines until interrupted.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleClient)
	tool := fs.String("tool", "", "only events of this tool")
	kind := fs.String("kind", "", "only events of this kind: started, completed or failed")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageMistake("events", fmt.Errorf("events: unexpected argument %q", pos[0]))
	}
	subj, err := subjects.ScriptEvents(*tool, subjects.EventKind(*kind))
	if err != nil {
		return usageMistake("events", fmt.Errorf("events: %w", err))
	}
	nc, err := nf.dial()
	if err != nil {
		return err
	}
	defer nc.Close()
	ch := make(chan *nats.Msg, 1024)
	sub, err := nc.ChanSubscribe(subj, ch)
	if err != nil {
		return err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "listening on %s (Ctrl-C to stop)\n", subj)
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-ch:
			fmt.Fprintln(stdout, string(m.Data))
		}
	}
}
