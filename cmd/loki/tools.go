package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"
)

// toolsTimeout bounds one `loki tools` command's requests.
const toolsTimeout = 10 * time.Second

// toolsCommands are the subcommands of `loki tools`; without one it lists.
var toolsCommands = []string{"get", "register", "unregister"}

func cmdTools(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 {
		switch args[0] {
		case "get":
			return toolsGet(ctx, args[1:], stdout, stderr)
		case "register":
			return toolsRegister(ctx, args[1:], stdout, stderr)
		case "unregister":
			return toolsUnregister(ctx, args[1:], stdout, stderr)
		}
	}
	fs := newFlags("tools", `Usage: loki tools [--json] [flags]
       loki tools get NAME [--json]
       loki tools register FILE
       loki tools unregister NAME...

Lists the registered tools with their params and return type. 'loki tools
COMMAND --help' shows a subcommand's flags.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleClient)
	asJSON := fs.Bool("json", false, "print the full definitions as JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageMistake("tools", fmt.Errorf("tools: unknown command %q (commands: %s)", pos[0], strings.Join(toolsCommands, ", ")))
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("tools", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, toolsTimeout)
	defer cancel()
	tools, err := loki.NewClient(nc).List(ctx)
	if err != nil {
		return toolsFailed("tools", err)
	}
	if *asJSON {
		b, _ := protojson.MarshalOptions{Multiline: true}.Marshal(&lokiv1.ToolList{Tools: tools})
		fmt.Fprintln(stdout, string(b))
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOOL\tPARAMS\tRETURNS\tDESCRIPTION")
	for _, t := range tools {
		var ps []string
		for _, p := range t.GetParams() {
			s := p.GetName() + ":" + p.GetType()
			if !p.GetRequired() {
				s += "?"
			}
			ps = append(ps, s)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.GetName(), strings.Join(ps, " "), t.GetReturns(), t.GetDescription())
	}
	return tw.Flush()
}

// toolsFailed gives a failure behind the bus exit code 1 and the
// "CODE: message" form of `loki call`.
func toolsFailed(cmd string, err error) error {
	return &exitError{code: 1, err: fmt.Errorf("%s: %s: %s", cmd, fault.CodeOf(err), fault.MessageOf(err))}
}

func toolsGet(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tools get", `Usage: loki tools get NAME [--json] [flags]

Prints one tool's definition, as TOML like a tool config's, or with --json
as JSON.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleClient)
	asJSON := fs.Bool("json", false, "print the definition as JSON")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageMistake("tools get", fmt.Errorf("tools get: want one tool NAME, got %d arguments", len(pos)))
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("tools get", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, toolsTimeout)
	defer cancel()
	t, err := loki.NewClient(nc).Get(ctx, pos[0])
	if err != nil {
		return toolsFailed("tools get", err)
	}
	if *asJSON {
		b, _ := protojson.MarshalOptions{Multiline: true}.Marshal(t)
		fmt.Fprintln(stdout, string(b))
		return nil
	}
	writeToolTOML(stdout, t)
	return nil
}

// writeToolTOML prints t in the shape of a [[tools]] table of a tool config.
func writeToolTOML(w io.Writer, t *lokiv1.Tool) {
	q := strconv.Quote
	fmt.Fprintln(w, "[[tools]]")
	fmt.Fprintf(w, "name = %s\n", q(t.GetName()))
	if t.GetDescription() != "" {
		fmt.Fprintf(w, "description = %s\n", q(t.GetDescription()))
	}
	fmt.Fprintf(w, "returns = %s\n", q(t.GetReturns()))
	if d := t.GetTimeout(); d != nil {
		fmt.Fprintf(w, "timeout = %s\n", q(d.AsDuration().String()))
	}
	if gs := t.GetGrants(); len(gs) > 0 {
		qs := make([]string, len(gs))
		for i, g := range gs {
			qs[i] = q(g)
		}
		fmt.Fprintf(w, "grants = [%s]\n", strings.Join(qs, ", "))
	}
	fmt.Fprintf(w, "# revision %d\n", t.GetRevision())
	if t.GetSourceName() != "" {
		fmt.Fprintf(w, "# from %s\n", t.GetSourceName())
	}
	fmt.Fprintf(w, "script = '''\n%s\n'''\n", strings.TrimRight(t.GetSource(), "\n"))
	for _, p := range t.GetParams() {
		fmt.Fprintln(w, "\n[[tools.params]]")
		fmt.Fprintf(w, "name = %s\n", q(p.GetName()))
		fmt.Fprintf(w, "type = %s\n", q(p.GetType()))
		if p.GetRequired() {
			fmt.Fprintln(w, "required = true")
		}
		if p.GetDescription() != "" {
			fmt.Fprintf(w, "description = %s\n", q(p.GetDescription()))
		}
		if d := p.GetDefault(); d != nil {
			b, _ := protojson.Marshal(d)
			fmt.Fprintf(w, "default = %s\n", b)
		}
	}
}

func toolsRegister(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tools register", `Usage: loki tools register FILE [flags]

Registers (or replaces) every tool of the TOML tool config FILE, checked
exactly as 'loki up --config FILE' checks it: if any tool is invalid, none is
sent. Connects as the local admin identity; only admins may register.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleAdmin)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return usageMistake("tools register", fmt.Errorf("tools register: want one FILE, got %d arguments", len(pos)))
	}
	// Every tool is validated before any is sent: nothing is half-applied.
	tools, _, err := loadToolsFlag(pos[0])
	if err != nil {
		return &exitError{code: 1, err: fmt.Errorf("tools register: %w", err)}
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("tools register", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, toolsTimeout)
	defer cancel()
	ctx, denied := watchPermissions(ctx, nc, "only an admin identity may change the tools (--creds)")
	c := loki.NewClient(nc)
	for i, t := range tools {
		got, err := c.Register(ctx, t.Def)
		if err != nil {
			err = denied(err)
			done := ""
			if i > 0 {
				done = fmt.Sprintf(" (%d earlier tools of the file were registered)", i)
			}
			return toolsFailed(fmt.Sprintf("tools register: %s: tool %q%s", pos[0], t.Def.GetName(), done), err)
		}
		fmt.Fprintf(stdout, "registered %s (revision %d)\n", got.GetName(), got.GetRevision())
	}
	return nil
}

func toolsUnregister(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("tools unregister", `Usage: loki tools unregister NAME... [flags]

Removes the named tools. Connects as the local admin identity; only admins
may unregister.`, stderr)
	nf := addNATSFlags(fs, subjects.RoleAdmin)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		return err
	}
	if len(pos) == 0 {
		fs.Usage()
		return usageMistake("tools unregister", fmt.Errorf("tools unregister: name at least one tool"))
	}
	seen := map[string]bool{}
	for _, name := range pos {
		if seen[name] {
			return usageMistake("tools unregister", fmt.Errorf("tools unregister: argument %s given twice", name))
		}
		seen[name] = true
	}
	nc, err := nf.dial()
	if err != nil {
		return toolsFailed("tools unregister", err)
	}
	defer nc.Close()
	ctx, cancel := context.WithTimeout(ctx, toolsTimeout)
	defer cancel()
	ctx, denied := watchPermissions(ctx, nc, "only an admin identity may change the tools (--creds)")
	c := loki.NewClient(nc)
	for _, name := range pos {
		if err := c.Unregister(ctx, name); err != nil {
			return toolsFailed("tools unregister: "+name, denied(err))
		}
		fmt.Fprintf(stdout, "unregistered %s\n", name)
	}
	return nil
}

// watchPermissions returns a context cancelled when the server reports a
// permissions violation on nc, and a function that turns a request's
// error into PERMISSION_DENIED, with hint, when that is why it failed. A
// credential that may not publish on a subject gets no reply, only that
// asynchronous report: without this the command would wait for its timeout.
func watchPermissions(ctx context.Context, nc *nats.Conn, hint string) (context.Context, func(error) error) {
	ctx, cancel := context.WithCancelCause(ctx)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if errors.Is(err, nats.ErrPermissionViolation) {
			cancel(err)
		}
	})
	return ctx, func(err error) error {
		if cause := context.Cause(ctx); errors.Is(cause, nats.ErrPermissionViolation) {
			return fault.Wrap(fault.PermissionDenied, cause, "%v: %s", cause, hint)
		}
		return err
	}
}
