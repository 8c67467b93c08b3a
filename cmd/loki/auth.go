package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

const authUsage = `Usage: loki auth COMMAND [flags]

Manages who may connect to Loki's NATS bus: nkey identities for people and
programs (role client or admin) and MQTT logins for devices.

Commands:
  add NAME [--role client|admin] [-o FILE]   create an identity; print its nkey seed
  add-device ID [--json]                     create a device's MQTT login; print and save it
  add-homeassistant NAME [--json]            create Home Assistant's MQTT login; print it
  list [--json]                              list identities (never a secret)
  revoke NAME                                delete an identity
  export [-o FILE]                           write every identity as nats-server configuration
  context [--role client|admin] [--name CTX] print the nats CLI command for a local identity

The identities live in DATA-DIR/auth (--data-dir, default $LOKI_DATA_DIR or
~/.local/share/loki). While 'loki up' runs on that data dir, the commands ask
it over NATS (--nats-url), as its local admin identity (DATA-DIR/auth/admin.nk
unless --creds), and changes apply at once: a revoked identity's connections
are closed. Otherwise they edit the directory;
the next 'loki up' uses it, and 'loki auth export' carries it to a
nats-server that Loki does not run.

Run 'loki auth COMMAND --help' for a command's flags.
`

// authTimeout bounds one request to the identity service of `loki up`.
const authTimeout = 10 * time.Second

func cmdAuth(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return usageMistake("auth", errors.New("auth: name a command: add, add-device, add-homeassistant, list, revoke, export or context"))
	}
	sub, rest := args[0], args[1:]
	switch sub {
	case "add":
		return authAdd(ctx, rest, stdout, stderr)
	case "add-device":
		return authAddDevice(ctx, rest, stdout, stderr)
	case "add-homeassistant":
		return authAddHomeAssistant(ctx, rest, stdout, stderr)
	case "list":
		return authList(ctx, rest, stdout, stderr)
	case "revoke":
		return authRevoke(ctx, rest, stdout, stderr)
	case "export":
		return authExport(ctx, rest, stdout, stderr)
	case "context":
		return authContext(rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		if len(rest) > 0 && !isHelp(rest[0]) {
			// `loki help auth add` arrives as `auth add --help`; this is `auth help add`.
			return cmdAuth(ctx, append(rest[:1:1], "--help"), stdout, stderr)
		}
		fmt.Fprint(stdout, authUsage)
		return nil
	}
	return usageMistake("auth", fmt.Errorf("auth: unknown command %q (commands: add, add-device, add-homeassistant, list, revoke, export, context)", sub))
}

// authFlags are the flags of every `loki auth` command that reads or
// changes identities.
type authFlags struct {
	dataDir *string
	nats    *natsFlags
	newLog  func() (*slog.Logger, error)
}

func addAuthFlags(fs *flag.FlagSet, stderr io.Writer) *authFlags {
	return &authFlags{
		dataDir: fs.String("data-dir", defaultDataDir(), "data dir whose identities (DATA-DIR/auth) to manage (env LOKI_DATA_DIR)"),
		nats:    addNATSFlags(fs, subjects.RoleAdmin),
		newLog:  logFlags(fs, stderr),
	}
}

// usageError returns err with exit code 2 and a pointer to fs's --help,
// for a command given the wrong number of arguments.
func usageError(fs *flag.FlagSet, format string, args ...any) error {
	fs.Usage()
	return badInput(format, args...)
}

// parseAuthArgs parses flags and positionals; run turns a bad flag into a
// usage mistake (exit 2) and --help into the usage.
func parseAuthArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	return parseInterleaved(fs, args)
}

// badInput is a mistake in one argument or flag, which the message names
// well enough without the usage: exit code 2.
func badInput(format string, args ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, args...)}
}

// authFailed gives err the exit code 1 and the "CODE: message" form
// `loki call` uses; errors without a code keep their own text, since they
// happened here and not behind a service.
func authFailed(cmd string, err error) error {
	var ee *exitError
	if errors.As(err, &ee) {
		return err
	}
	var fe *fault.Error
	if errors.As(auth.Fault(err), &fe) {
		return &exitError{code: 1, err: fmt.Errorf("auth %s: %s: %s", cmd, fe.Code, fe.Msg)}
	}
	return &exitError{code: 1, err: fmt.Errorf("auth %s: %w", cmd, err)}
}

// identityStore is where `loki auth` reads and changes identities: the
// identity directory itself, or the `loki up` that holds it.
type identityStore interface {
	Add(ctx context.Context, name string, role subjects.Role) (auth.Credential, error)
	AddDevice(ctx context.Context, deviceID string) (auth.Credential, error)
	AddHomeAssistant(ctx context.Context, name string) (auth.Credential, error)
	List(ctx context.Context) ([]auth.Identity, error)
	Revoke(ctx context.Context, name string) error
	// Live reports whether changes apply to a running server at once.
	Live() bool
	Close()
}

var (
	_ identityStore = dirStore{}
	_ identityStore = (*busStore)(nil)
)

// openStore opens DATA-DIR/auth when no process holds it, and otherwise
// connects, as the local admin, to the `loki up` that does.
func (f *authFlags) openStore() (identityStore, error) {
	log, err := f.newLog()
	if err != nil {
		return nil, &exitError{code: 2, err: err}
	}
	dir := filepath.Join(*f.dataDir, "auth")
	a, err := auth.Open(dir)
	if err == nil {
		log.Debug("no process holds the identities: editing them in place", "dir", dir)
		return dirStore{a}, nil
	}
	if !errors.Is(err, auth.ErrLocked) {
		return nil, err
	}
	if *f.nats.creds == "" {
		// The admin seed of this data dir, not of the default one.
		if seed := auth.SeedFile(dir, string(subjects.RoleAdmin)); fileExists(seed) {
			*f.nats.creds = seed
		}
	}
	url := *f.nats.url
	log.Debug("loki up holds the identities: asking it over NATS", "dir", dir, "url", url, "creds", f.nats.describe())
	nc, err := f.nats.dial()
	if err != nil {
		cause := errors.Unwrap(err)
		if cause == nil {
			cause = err
		}
		if fault.CodeOf(err) == fault.Unauthenticated {
			return nil, fault.Wrap(fault.Unauthenticated, err,
				"loki up holds %s; the NATS server at %s refused the credential %s: %v (pass --creds with an admin identity of that server)",
				dir, url, f.nats.describe(), cause)
		}
		return nil, fault.Wrap(fault.Unavailable, err,
			"loki up holds %s; could not reach it at %s: %v (pass --nats-url if it listens elsewhere)", dir, url, cause)
	}
	// Permission errors are answered where they happen (busStore.request),
	// not printed by nats.go's default handler.
	nc.SetErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})
	return &busStore{nc: nc, who: f.nats.describe()}, nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// dirStore edits an identity directory that no `loki up` holds.
type dirStore struct{ a *auth.Authority }

func (d dirStore) Add(_ context.Context, name string, role subjects.Role) (auth.Credential, error) {
	return d.a.Add(name, role)
}

func (d dirStore) AddDevice(_ context.Context, id string) (auth.Credential, error) {
	return d.a.AddDevice(id)
}

func (d dirStore) AddHomeAssistant(_ context.Context, name string) (auth.Credential, error) {
	return d.a.AddHomeAssistant(name)
}

func (d dirStore) List(context.Context) ([]auth.Identity, error) { return d.a.List(), nil }

func (d dirStore) Revoke(_ context.Context, name string) error { return d.a.Revoke(name) }

func (d dirStore) Live() bool { return false }

func (d dirStore) Close() { _ = d.a.Close() }

// busStore asks the identity service of a running `loki up`.
type busStore struct {
	nc  *nats.Conn
	who string // the credential, for messages
}

func (b *busStore) Add(ctx context.Context, name string, role subjects.Role) (auth.Credential, error) {
	var cred auth.Credential
	err := b.request(ctx, subjects.AuthAdd, auth.AddRequest{Name: name, Role: role}, &cred)
	return cred, err
}

func (b *busStore) AddDevice(ctx context.Context, id string) (auth.Credential, error) {
	var cred auth.Credential
	err := b.request(ctx, subjects.AuthAdd, auth.AddRequest{DeviceID: id}, &cred)
	return cred, err
}

func (b *busStore) AddHomeAssistant(ctx context.Context, name string) (auth.Credential, error) {
	var cred auth.Credential
	err := b.request(ctx, subjects.AuthAdd, auth.AddRequest{Name: name, Role: subjects.RoleHomeAssistant}, &cred)
	return cred, err
}

func (b *busStore) List(ctx context.Context) ([]auth.Identity, error) {
	var ids []auth.Identity
	err := b.request(ctx, subjects.AuthList, struct{}{}, &ids)
	return ids, err
}

func (b *busStore) Revoke(ctx context.Context, name string) error {
	err := b.request(ctx, subjects.AuthRevoke, auth.NameRequest{Name: name}, nil)
	if errors.Is(err, nats.ErrConnectionClosed) {
		return fault.Wrap(fault.Unavailable, err,
			"the server closed the connection before answering: if %q is the identity of %s, revoking it closed this connection too; check with `loki auth list`", name, b.who)
	}
	return err
}

func (b *busStore) Live() bool { return true }

func (b *busStore) Close() { b.nc.Close() }

// request sends body to subj and decodes the reply into into (when not nil).
func (b *busStore) request(ctx context.Context, subj string, body, into any) error {
	data, err := json.Marshal(body)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, authTimeout)
	defer cancel()
	inbox := b.nc.NewInbox()
	sub, err := b.nc.SubscribeSync(inbox)
	if err != nil {
		return microsvc.TransportError(err, subjects.AuthService, subj)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := b.nc.PublishRequest(subj, inbox, data); err != nil {
		return microsvc.TransportError(err, subjects.AuthService, subj)
	}
	// A credential that may not publish on subj gets no answer, only an
	// asynchronous permissions violation, which the server sends before the
	// flush's PONG: say so now rather than after the timeout.
	if err := b.nc.FlushWithContext(ctx); err != nil {
		return microsvc.TransportError(err, subjects.AuthService, subj)
	}
	if err := b.nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) && strings.Contains(err.Error(), subj) {
		return fault.Wrap(fault.PermissionDenied, err,
			"%s may not publish on %s: `loki auth` needs an admin identity (--creds)", b.who, subj)
	}
	m, err := sub.NextMsgWithContext(ctx)
	if err != nil {
		return microsvc.TransportError(err, subjects.AuthService, subj)
	}
	if err := microsvc.ReplyError(m, subjects.AuthService, subj); err != nil {
		return err
	}
	if into == nil {
		return nil
	}
	if err := json.Unmarshal(m.Data, into); err != nil {
		return fault.Wrap(fault.Internal, err, "reply on %s: %v", subj, err)
	}
	return nil
}

// personRole parses --role of command cmd.
func personRole(cmd, role string) (subjects.Role, error) {
	r := subjects.Role(role)
	if !slices.Contains(subjects.PersonRoles, r) {
		return "", badInput("auth %s: --role %q: want client or admin (devices: loki auth add-device)", cmd, role)
	}
	return r, nil
}

func authAdd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("auth add", `Usage: loki auth add NAME [--role client|admin] [-o|--output FILE] [flags]

Creates the NATS identity NAME and prints its credential: an nkey seed file,
shown once and kept nowhere else (Loki keeps only the public key). With
--output (-o) it is written to FILE (mode 0600), which must not exist yet.
Role client may call tools, list them and watch events; admin may do
anything, 'loki auth' included.`, stderr)
	af := addAuthFlags(fs, stderr)
	roleFlag := fs.String("role", string(subjects.RoleClient), "role: client or admin")
	out := fs.String("output", "", "write the credential to this `FILE` (0600) instead of stdout")
	shortAlias(fs, "o", "output")
	pos, err := parseAuthArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "auth add: want one NAME, got %d arguments", len(pos))
	}
	name := pos[0]
	if err := auth.ValidName(name); err != nil {
		return badInput("auth add: %v", err)
	}
	role, err := personRole("add", *roleFlag)
	if err != nil {
		return err
	}
	// Create the file first: a credential that cannot be saved is never made.
	var file *os.File
	if *out != "" {
		file, err = os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			return authFailed("add", fmt.Errorf("-o %s exists; not overwriting what may be another credential", *out))
		}
		if err != nil {
			return authFailed("add", fmt.Errorf("-o: %w", err))
		}
		defer file.Close()
	}
	store, err := af.openStore()
	if err != nil {
		if file != nil {
			_ = os.Remove(*out)
		}
		return authFailed("add", err)
	}
	defer store.Close()
	cred, err := store.Add(ctx, name, role)
	if err != nil {
		if file != nil {
			_ = os.Remove(*out)
		}
		return authFailed("add", err)
	}
	credPath := "FILE"
	if file != nil {
		_, err := file.WriteString(cred.Seed)
		if err == nil {
			err = file.Close()
		}
		if err != nil {
			// Undo: nobody holds the seed of the identity just made.
			_ = os.Remove(*out)
			if rerr := store.Revoke(ctx, name); rerr != nil {
				return authFailed("add", fmt.Errorf("write %s: %w; and revoking %q again failed: %v (run `loki auth revoke %s`)", *out, err, name, rerr, name))
			}
			return authFailed("add", fmt.Errorf("write %s: %w (identity %q not kept)", *out, err, name))
		}
		if abs, err := filepath.Abs(*out); err == nil {
			credPath = abs
		} else {
			credPath = *out
		}
	} else {
		fmt.Fprint(stdout, cred.Seed)
	}
	save := ""
	if file == nil {
		save = "save it as FILE (mode 0600), then "
	}
	ctxCmd := natsContextSave(name, *af.nats.url, credPath, cred.Identity.PublicKey, role)
	fmt.Fprintf(stderr, "loki: added %s identity %q%s; %suse it with: loki call TOOL --creds %s  or the nats CLI: %s\n",
		role, name, appliedNote(store), save, credPath, ctxCmd)
	return nil
}

// appliedNote says where a change went when it did not go to a running Loki.
func appliedNote(store identityStore) string {
	if store.Live() {
		return ""
	}
	return " (no loki up holds the data dir: it applies when loki up next starts, or after `loki auth export`)"
}

func authAddDevice(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("auth add-device", `Usage: loki auth add-device ID [--json] [flags]

Creates the MQTT login of device ID: username ID and a random password
(Loki's identities keep only its bcrypt hash). The device may connect to the
MQTT listener only, and publish and subscribe only under jotunheim/ID/.
The login is printed, and saved for an agent on this host as
{"username": ..., "password": ...} in DATA-DIR/auth/devices/ID.json (0600),
which 'jotunheim --id ID' reads by default; 'loki auth revoke ID' removes it.
For a device elsewhere, copy the login there and delete the file.`, stderr)
	af := addAuthFlags(fs, stderr)
	asJSON := fs.Bool("json", false, `print {"username": ..., "password": ...}`)
	pos, err := parseAuthArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "auth add-device: want one device ID, got %d arguments", len(pos))
	}
	id := pos[0]
	if err := subjects.ValidDeviceID(id); err != nil {
		return badInput("auth add-device: %v", err)
	}
	store, err := af.openStore()
	if err != nil {
		return authFailed("add-device", err)
	}
	defer store.Close()
	cred, err := store.AddDevice(ctx, id)
	if err != nil {
		return authFailed("add-device", err)
	}
	// Saved for an agent on this host (jotunheim reads it by default); a
	// login that cannot be saved is not kept.
	authDir := filepath.Join(*af.dataDir, "auth")
	loginFile, err := auth.SaveDeviceLogin(authDir, cred)
	if err != nil {
		if rerr := store.Revoke(ctx, id); rerr != nil {
			return authFailed("add-device", fmt.Errorf("%w; and revoking %q again failed: %v (run `loki auth revoke %s`)", err, id, rerr, id))
		}
		return authFailed("add-device", fmt.Errorf("%w (device %q not kept)", err, id))
	}
	if abs, err := filepath.Abs(loginFile); err == nil {
		loginFile = abs
	}
	if *asJSON {
		b, _ := json.Marshal(struct {
			Username string `json:"username"`
			Password string `json:"password"`
		}{cred.Username, cred.Password})
		fmt.Fprintln(stdout, string(b))
	} else {
		fmt.Fprintf(stdout, "username: %s\npassword: %s\n", cred.Username, cred.Password)
	}
	fmt.Fprintf(stderr, "loki: added device %q%s; it logs in to the MQTT listener with this username and password, saved for an agent on this host in %s (jotunheim --id %s reads it)\n",
		id, appliedNote(store), loginFile, id)
	return nil
}

func authAddHomeAssistant(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("auth add-homeassistant", `Usage: loki auth add-homeassistant NAME [--json] [flags]

Creates the MQTT login NAME for Home Assistant's MQTT integration: username
NAME and a random password (Loki's identities keep only its bcrypt hash).
It may connect to the MQTT listener only; it reads and writes the discovery
prefix homeassistant/#, reads every device's status and states, and may
publish commands on jotunheim/ID/set/ENTITY, but never on a device's cmd
topic. Enter the printed username and password in Home Assistant's MQTT
integration (docs/DEVICES.md, "Home Assistant"); 'loki auth revoke NAME'
deletes it.`, stderr)
	af := addAuthFlags(fs, stderr)
	asJSON := fs.Bool("json", false, `print {"username": ..., "password": ...}`)
	pos, err := parseAuthArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "auth add-homeassistant: want one NAME, got %d arguments", len(pos))
	}
	name := pos[0]
	if err := auth.ValidName(name); err != nil {
		return badInput("auth add-homeassistant: %v", err)
	}
	store, err := af.openStore()
	if err != nil {
		return authFailed("add-homeassistant", err)
	}
	defer store.Close()
	cred, err := store.AddHomeAssistant(ctx, name)
	if err != nil {
		return authFailed("add-homeassistant", err)
	}
	if *asJSON {
		b, _ := json.Marshal(struct {
			Username string `json:"username"`
			Password string `json:"password"`
		}{cred.Username, cred.Password})
		fmt.Fprintln(stdout, string(b))
	} else {
		fmt.Fprintf(stdout, "username: %s\npassword: %s\n", cred.Username, cred.Password)
	}
	fmt.Fprintf(stderr, "loki: added Home Assistant login %q%s; enter this username and password in Home Assistant's MQTT integration (the password is not shown again)\n",
		name, appliedNote(store))
	return nil
}

func authList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("auth list", `Usage: loki auth list [--json] [flags]

Lists every identity: name, role, kind (nkey for NATS identities, mqtt for
device logins), when it was created and whether it is one 'loki up' runs
with. It never shows a secret.`, stderr)
	af := addAuthFlags(fs, stderr)
	asJSON := fs.Bool("json", false, "print the identities as JSON")
	pos, err := parseAuthArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError(fs, "auth list: unexpected argument %q", pos[0])
	}
	store, err := af.openStore()
	if err != nil {
		return authFailed("list", err)
	}
	defer store.Close()
	ids, err := store.List(ctx)
	if err != nil {
		return authFailed("list", err)
	}
	for i := range ids {
		// Not a secret, but of no use to a reader; `loki auth export` has it.
		ids[i].PasswordHash = ""
	}
	if *asJSON {
		if ids == nil {
			ids = []auth.Identity{}
		}
		b, _ := json.MarshalIndent(ids, "", "  ")
		fmt.Fprintln(stdout, string(b))
		return nil
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tROLE\tKIND\tCREATED\tBUILT-IN")
	for _, id := range ids {
		kind := "mqtt"
		if id.PublicKey != "" {
			kind = "nkey"
		}
		builtIn := "no"
		if id.BuiltIn {
			builtIn = "yes"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", id.Name, id.Role, kind, id.Created.UTC().Format(time.RFC3339), builtIn)
	}
	return tw.Flush()
}

func authRevoke(ctx context.Context, args []string, _, stderr io.Writer) error {
	fs := newFlags("auth revoke", `Usage: loki auth revoke NAME [flags]

Deletes the identity NAME. While 'loki up' runs, its connections are closed
at once and it cannot connect again. A device's login saved by 'loki auth
add-device' (DATA-DIR/auth/devices/ID.json) is removed too. The identities
'loki up' runs with (loki, hel, fenrir, jormungandr, gateway, auth,
jotunheim, client, admin) cannot be revoked.`, stderr)
	af := addAuthFlags(fs, stderr)
	pos, err := parseAuthArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageError(fs, "auth revoke: want one NAME, got %d arguments", len(pos))
	}
	name := pos[0]
	store, err := af.openStore()
	if err != nil {
		return authFailed("revoke", err)
	}
	defer store.Close()
	if err := store.Revoke(ctx, name); err != nil {
		return authFailed("revoke", err)
	}
	if store.Live() {
		fmt.Fprintf(stderr, "loki: revoked %q; its connections are closed\n", name)
	} else {
		fmt.Fprintf(stderr, "loki: revoked %q%s\n", name, appliedNote(store))
	}
	// A device's saved login goes with it.
	authDir := filepath.Join(*af.dataDir, "auth")
	removed, err := auth.RemoveDeviceLogin(authDir, name)
	if err != nil {
		return authFailed("revoke", err)
	}
	if removed {
		fmt.Fprintf(stderr, "loki: removed its saved login %s\n", auth.DeviceLoginFile(authDir, name))
	}
	return nil
}

func authExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("auth export", `Usage: loki auth export [-o|--output FILE] [flags]

Writes every identity as a nats-server configuration fragment (an
authorization block with each identity's permissions), so that a nats-server
Loki does not run grants the same rights. It holds no secret: only public
keys and bcrypt hashes. Include it from the server's configuration with
'include ./`+auth.ExportFile+`' and apply a new export with
'nats-server --signal reload'.`, stderr)
	af := addAuthFlags(fs, stderr)
	out := fs.String("output", "", "write to this `FILE` instead of stdout")
	shortAlias(fs, "o", "output")
	pos, err := parseAuthArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError(fs, "auth export: unexpected argument %q", pos[0])
	}
	store, err := af.openStore()
	if err != nil {
		return authFailed("export", err)
	}
	defer store.Close()
	ids, err := store.List(ctx)
	if err != nil {
		return authFailed("export", err)
	}
	var b bytes.Buffer
	if err := auth.ExportIdentities(&b, ids); err != nil {
		return authFailed("export", err)
	}
	if *out == "" {
		_, err := stdout.Write(b.Bytes())
		return err
	}
	if err := os.WriteFile(*out, b.Bytes(), 0o644); err != nil {
		return authFailed("export", err)
	}
	fmt.Fprintf(stderr, "loki: wrote %d identities to %s\n", len(ids), *out)
	return nil
}

func authContext(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("auth context", `Usage: loki auth context [--role client|admin] [--name CTX] [flags]

Prints the nats CLI command that saves (and selects) a context for the local
built-in identity of role, whose seed 'loki up' keeps in DATA-DIR/auth.`, stderr)
	dataDir := fs.String("data-dir", defaultDataDir(), "data dir whose identities (DATA-DIR/auth) to use (env LOKI_DATA_DIR)")
	url := fs.String("nats-url", envOr("NATS_URL", nats.DefaultURL), "NATS server URL the context connects to (env NATS_URL)")
	roleFlag := fs.String("role", string(subjects.RoleClient), "role: client or admin")
	name := fs.String("name", "", `context name (default "loki", or "loki-admin" for --role admin)`)
	pos, err := parseAuthArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return usageError(fs, "auth context: unexpected argument %q", pos[0])
	}
	role, err := personRole("context", *roleFlag)
	if err != nil {
		return err
	}
	ctxName := *name
	if ctxName == "" {
		ctxName = "loki"
		if role == subjects.RoleAdmin {
			ctxName = "loki-admin"
		}
	}
	dir, err := filepath.Abs(filepath.Join(*dataDir, "auth"))
	if err != nil {
		return authFailed("context", err)
	}
	cmd, err := natsContextCommandFor(dir, *url, ctxName, role)
	if err != nil {
		return authFailed("context", err)
	}
	fmt.Fprintln(stdout, cmd)
	return nil
}

// natsContextCommandFor is the nats CLI command that saves (and selects) a
// context named ctxName for the built-in identity of role in the identity
// directory dir. The built-in identities are created first when no `loki up`
// ever ran there.
func natsContextCommandFor(dir, url, ctxName string, role subjects.Role) (string, error) {
	seed := auth.SeedFile(dir, string(role))
	if !fileExists(seed) {
		a, err := auth.Open(dir)
		if err != nil {
			return "", err
		}
		_ = a.Close()
	}
	b, err := os.ReadFile(seed)
	if err != nil {
		return "", err
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return "", fmt.Errorf("%s: %w", seed, err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("%s: %w", seed, err)
	}
	return natsContextSave(ctxName, url, seed, pub, role), nil
}

// natsContextSave is the nats CLI command that saves a context for the
// identity of role with public key pub whose seed is in seedFile. A client
// context is also selected (made the default); an admin one never is, so
// admin rights are always asked for by name (--context).
func natsContextSave(ctxName, url, seedFile, pub string, role subjects.Role) string {
	inbox, _ := subjects.Inbox(pub)
	cmd := fmt.Sprintf("nats context save %s --server %s --nkey %s --inbox-prefix %s", ctxName, url, seedFile, inbox)
	if role != subjects.RoleAdmin {
		cmd += " --select"
	}
	return cmd
}
