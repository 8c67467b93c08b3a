// Package auth keeps Loki's bus identities: NATS nkey users for components,
// people and programs, and MQTT username/password users for devices and for
// tools' MQTT connections to the local listener. Each identity holds one
// role, and its NATS permissions are built by subjects.RolePermissions.
//
// An Authority owns one directory (0700): identities.json (public keys and
// bcrypt password hashes, never a secret) and the nkey seeds of the built-in
// identities `loki up` connects with (0600 each). It holds an exclusive lock
// on the directory while open, so two processes never edit it at once.
package auth

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/atomicfile"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
	"golang.org/x/crypto/bcrypt"
)

// Errors callers match with errors.Is.
var (
	// ErrExists is an identity name already taken.
	ErrExists = errors.New("identity already exists")
	// ErrNotFound is an unknown identity name.
	ErrNotFound = errors.New("no such identity")
	// ErrBuiltIn is an attempt to revoke an identity `loki up` runs with.
	ErrBuiltIn = errors.New("built-in identity")
	// ErrInvalid is a malformed name, role or device id.
	ErrInvalid = errors.New("invalid identity")
	// ErrLocked is a directory another process has open.
	ErrLocked = errors.New("identity directory in use")
)

// Identity is one entry of the store. It never holds a secret.
type Identity struct {
	Name string        `json:"name"`
	Role subjects.Role `json:"role"`
	// PublicKey is the nkey of NATS identities.
	PublicKey string `json:"public_key,omitempty"`
	// PasswordHash is the bcrypt hash of MQTT identities' passwords.
	PasswordHash string `json:"password_hash,omitempty"`
	// DeviceID is the device a RoleDevice identity speaks for.
	DeviceID string    `json:"device_id,omitempty"`
	Created  time.Time `json:"created"`
	// BuiltIn marks the identities `loki up` creates and connects with.
	BuiltIn bool `json:"built_in,omitempty"`
}

// Permissions returns the identity's NATS permissions.
func (id Identity) Permissions() (subjects.Permissions, error) {
	switch id.Role {
	case subjects.RoleDevice:
		return subjects.RolePermissions(id.Role, "", id.DeviceID)
	case subjects.RoleScriptMQTT:
		return subjects.Permissions{}, fmt.Errorf("%w: script MQTT identities are never stored", ErrInvalid)
	}
	return subjects.RolePermissions(id.Role, id.PublicKey)
}

// Credential is a secret handed out once, when an identity is created.
type Credential struct {
	Identity Identity `json:"identity"`
	// Seed is the nkey seed of a NATS identity, decorated as nats tools read it.
	Seed string `json:"seed,omitempty"`
	// Username and Password are an MQTT identity's login.
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
}

// BuiltIns are the identities `loki up` creates on first start: one per
// component, the isolated workers' (whose processes read its seed), plus
// the local client and admin the CLI uses by default.
var BuiltIns = append(slices.Clone(subjects.ComponentRoles), subjects.RoleLokiWorker, subjects.RoleClient, subjects.RoleAdmin)

const storeFile = "identities.json"

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidName returns an error unless name can name an identity: 1 to 64 of
// [A-Za-z0-9_-] (it is an MQTT username for devices).
func ValidName(name string) error {
	if !nameRE.MatchString(name) {
		return fmt.Errorf("%w: name %q must be 1 to 64 of [A-Za-z0-9_-]", ErrInvalid, name)
	}
	return nil
}

// Authority owns an identity directory. Its methods are safe for
// concurrent use. Changes are saved before they are applied, and applied
// to a running server through the function given to OnChange.
type Authority struct {
	dir  string
	lock *os.File

	mu       sync.Mutex
	ids      map[string]Identity
	scripts  map[string]scriptUser // key: sorted filters joined by " "
	onChange func(nkeys []*server.NkeyUser, users []*server.User) error
}

type scriptUser struct {
	user, pass string
	filters    []string
}

// maxScriptUsers bounds the MQTT identities minted for tools' grants.
const maxScriptUsers = 4096

// Open opens (creating if needed) the identity directory dir, locks it, and
// creates any missing built-in identity. Close releases the lock.
func Open(dir string) (*Authority, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity directory %s: %w", dir, err)
	}
	// MkdirAll keeps an existing directory's mode; secrets need 0700.
	if err := os.Chmod(dir, 0o700); err != nil {
		return nil, fmt.Errorf("identity directory %s: %w", dir, err)
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	a := &Authority{dir: dir, lock: lock, ids: map[string]Identity{}, scripts: map[string]scriptUser{}}
	if err := a.load(); err != nil {
		_ = lock.Close()
		return nil, err
	}
	if err := a.ensureBuiltIns(); err != nil {
		_ = lock.Close()
		return nil, err
	}
	return a, nil
}

// Close releases the directory lock.
func (a *Authority) Close() error { return a.lock.Close() }

// Dir is the identity directory.
func (a *Authority) Dir() string { return a.dir }

// SeedFile is the path of a built-in identity's nkey seed file.
func SeedFile(dir string, name string) string { return filepath.Join(dir, name+".nk") }

func (a *Authority) load() error {
	b, err := os.ReadFile(filepath.Join(a.dir, storeFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	var f struct {
		Identities []Identity `json:"identities"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("%s: %w", filepath.Join(a.dir, storeFile), err)
	}
	keys := map[string]string{} // inbox token of the public key → identity name
	for _, id := range f.Identities {
		if err := checkStored(id); err != nil {
			return fmt.Errorf("%s: %w", filepath.Join(a.dir, storeFile), err)
		}
		if _, dup := a.ids[id.Name]; dup {
			return fmt.Errorf("%s: %w: identity %q is listed twice", filepath.Join(a.dir, storeFile), ErrInvalid, id.Name)
		}
		tok := subjects.InboxToken(id.PublicKey)
		if other, dup := keys[tok]; dup && id.PublicKey != "" {
			return fmt.Errorf("%s: %w: identities %q and %q have the same public key or inbox (_INBOX.%s)", filepath.Join(a.dir, storeFile), ErrInvalid, other, id.Name, tok)
		}
		keys[tok] = id.Name
		a.ids[id.Name] = id
	}
	return nil
}

// checkStored returns an error unless id, read from the store, is one that
// Add or AddDevice could have written: serverUsers trusts what it is given,
// so a NATS role holding a password would become an MQTT login, and a
// device holding a public key an nkey user allowed on NATS. Entries named
// after a built-in are left to ensureBuiltIns, which remakes any that does
// not match its seed and role.
func checkStored(id Identity) error {
	if err := ValidName(id.Name); err != nil || !id.Role.Valid() {
		return fmt.Errorf("%w: identity %q: bad name or role %q", ErrInvalid, id.Name, id.Role)
	}
	if slices.Contains(BuiltIns, subjects.Role(id.Name)) {
		return nil
	}
	switch {
	case id.BuiltIn:
		return fmt.Errorf("%w: identity %q is marked built-in but is not one of %v", ErrInvalid, id.Name, BuiltIns)
	case id.Role == subjects.RoleScriptMQTT:
		return fmt.Errorf("%w: identity %q: script MQTT identities are never stored", ErrInvalid, id.Name)
	case id.Role == subjects.RoleDevice:
		if _, err := bcrypt.Cost([]byte(id.PasswordHash)); err != nil || id.PublicKey != "" || id.DeviceID != id.Name {
			return fmt.Errorf("%w: device %q: want a bcrypt password hash, no public key and device_id %q", ErrInvalid, id.Name, id.Name)
		}
	case id.Role == subjects.RoleHomeAssistant:
		if _, err := bcrypt.Cost([]byte(id.PasswordHash)); err != nil || id.PublicKey != "" || id.DeviceID != "" {
			return fmt.Errorf("%w: Home Assistant login %q: want a bcrypt password hash, no public key and no device_id", ErrInvalid, id.Name)
		}
	default:
		if !nkeys.IsValidPublicUserKey(id.PublicKey) || id.PasswordHash != "" {
			return fmt.Errorf("%w: identity %q: want a user nkey public key and no password hash", ErrInvalid, id.Name)
		}
	}
	if _, err := id.Permissions(); err != nil {
		return fmt.Errorf("%w: identity %q: %v", ErrInvalid, id.Name, err)
	}
	return nil
}

// save writes the store atomically: a crash leaves the old or the new file.
func (a *Authority) save(ids map[string]Identity) error {
	list := make([]Identity, 0, len(ids))
	for _, id := range ids {
		list = append(list, id)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	b, err := json.MarshalIndent(struct {
		Identities []Identity `json:"identities"`
	}{list}, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(a.dir, storeFile), append(b, '\n'))
}

func (a *Authority) ensureBuiltIns() error {
	changed := false
	next := maps(a.ids)
	for _, role := range BuiltIns {
		name := string(role)
		seedPath := SeedFile(a.dir, name)
		id, ok := next[name]
		seed, err := os.ReadFile(seedPath)
		if ok && err == nil {
			kp, perr := nkeys.ParseDecoratedNKey(seed)
			if perr == nil {
				if pub, _ := kp.PublicKey(); pub == id.PublicKey && id.Role == role && id.BuiltIn {
					continue
				}
			}
		}
		// Missing or mismatched: (re)create the key pair.
		kp, err := nkeys.CreateUser()
		if err != nil {
			return err
		}
		pub, _ := kp.PublicKey()
		rawSeed, _ := kp.Seed()
		id = Identity{Name: name, Role: role, PublicKey: pub, Created: time.Now().UTC(), BuiltIn: true}
		if err := writeFileAtomic(seedPath, decorate(id, rawSeed)); err != nil {
			return err
		}
		next[name] = id
		changed = true
	}
	if !changed {
		return nil
	}
	if err := a.save(next); err != nil {
		return err
	}
	a.ids = next
	return nil
}

// decorate formats a seed the way nats tools read it (nkeys.ParseDecoratedNKey),
// with a comment that says whose it is and how to use it.
func decorate(id Identity, seed []byte) []byte {
	inbox, _ := subjects.Inbox(id.PublicKey)
	return fmt.Appendf(nil, `# Loki identity %q, role %s. Keep this file secret.
# nats CLI: nats --nkey FILE --inbox-prefix %s ...
-----BEGIN USER NKEY SEED-----
%s
------END USER NKEY SEED------
`, id.Name, id.Role, inbox, seed)
}

// OnChange sets the function that applies the identities to a running
// server (started with ServerUsers) on every later change. A change that
// cannot be applied is undone.
func (a *Authority) OnChange(apply func(nkeys []*server.NkeyUser, users []*server.User) error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.onChange = apply
}

func (a *Authority) applyLocked(ids map[string]Identity, scripts map[string]scriptUser) error {
	if a.onChange == nil {
		return nil
	}
	nk, users, err := serverUsers(ids, scripts)
	if err != nil {
		return err
	}
	return a.onChange(nk, users)
}

// ServerUsers returns the server-side users of every identity, for a
// server's Options.Nkeys and Options.Users.
func (a *Authority) ServerUsers() ([]*server.NkeyUser, []*server.User, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return serverUsers(a.ids, a.scripts)
}

func serverUsers(ids map[string]Identity, scripts map[string]scriptUser) ([]*server.NkeyUser, []*server.User, error) {
	var nk []*server.NkeyUser
	var users []*server.User
	names := make([]string, 0, len(ids))
	for n := range ids {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		id := ids[n]
		p, err := id.Permissions()
		if err != nil {
			return nil, nil, fmt.Errorf("identity %q: %w", n, err)
		}
		if id.PublicKey != "" {
			nk = append(nk, &server.NkeyUser{Nkey: id.PublicKey, Permissions: ServerPermissions(p)})
			continue
		}
		users = append(users, &server.User{Username: id.Name, Password: id.PasswordHash,
			Permissions: ServerPermissions(p), AllowedConnectionTypes: mqttOnly()})
	}
	for _, s := range scripts {
		p, err := subjects.RolePermissions(subjects.RoleScriptMQTT, "", s.filters...)
		if err != nil {
			return nil, nil, err
		}
		users = append(users, &server.User{Username: s.user, Password: s.pass,
			Permissions: ServerPermissions(p), AllowedConnectionTypes: mqttOnly()})
	}
	return nk, users, nil
}

func mqttOnly() map[string]struct{} { return map[string]struct{}{"MQTT": {}} }

// ServerPermissions converts p for nats-server. Responses to requests are
// not given through allow_responses: every service may publish to inboxes
// (subjects.InboxRoot), which streaming replies need.
func ServerPermissions(p subjects.Permissions) *server.Permissions {
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: orEmpty(p.PubAllow), Deny: p.PubDeny},
		Subscribe: &server.SubjectPermission{Allow: orEmpty(p.SubAllow), Deny: p.SubDeny},
	}
}

// orEmpty keeps an empty allow list meaning "nothing" (nil means "everything").
func orEmpty(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// List returns every stored identity, sorted by name.
func (a *Authority) List() []Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]Identity, 0, len(a.ids))
	for _, id := range a.ids {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Get returns the identity named name.
func (a *Authority) Get(name string) (Identity, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id, ok := a.ids[name]
	if !ok {
		return Identity{}, fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	return id, nil
}

// Add creates a NATS identity with role client or admin and returns its
// credential, which is not kept: only the public key is.
func (a *Authority) Add(name string, role subjects.Role) (Credential, error) {
	if err := ValidName(name); err != nil {
		return Credential{}, err
	}
	if !slices.Contains(subjects.PersonRoles, role) {
		return Credential{}, fmt.Errorf("%w: role %q: want client or admin (devices: AddDevice)", ErrInvalid, role)
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return Credential{}, err
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	id := Identity{Name: name, Role: role, PublicKey: pub, Created: time.Now().UTC()}
	if err := a.insert(id); err != nil {
		return Credential{}, err
	}
	return Credential{Identity: id, Seed: string(decorate(id, seed))}, nil
}

// AddDevice creates the MQTT identity of device deviceID: username
// deviceID, a random password (returned once, stored as a bcrypt hash),
// allowed only the device's own topic tree.
func (a *Authority) AddDevice(deviceID string) (Credential, error) {
	if err := subjects.ValidDeviceID(deviceID); err != nil {
		return Credential{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	pass, err := randomSecret()
	if err != nil {
		return Credential{}, err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.DefaultCost)
	if err != nil {
		return Credential{}, err
	}
	id := Identity{Name: deviceID, Role: subjects.RoleDevice, DeviceID: deviceID, PasswordHash: string(hash), Created: time.Now().UTC()}
	if err := a.insert(id); err != nil {
		return Credential{}, err
	}
	return Credential{Identity: id, Username: deviceID, Password: pass}, nil
}

// AddHomeAssistant creates the MQTT login name for Home Assistant's MQTT
// integration: username name, a random password (returned once, stored
// as a bcrypt hash), with subjects.RoleHomeAssistant's permissions: the
// discovery prefix, every device's status and states, and commands on
// set topics (never a device's cmd topic).
func (a *Authority) AddHomeAssistant(name string) (Credential, error) {
	if err := ValidName(name); err != nil {
		return Credential{}, err
	}
	pass, err := randomSecret()
	if err != nil {
		return Credential{}, err
	}
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.DefaultCost)
	if err != nil {
		return Credential{}, err
	}
	id := Identity{Name: name, Role: subjects.RoleHomeAssistant, PasswordHash: string(hash), Created: time.Now().UTC()}
	if err := a.insert(id); err != nil {
		return Credential{}, err
	}
	return Credential{Identity: id, Username: name, Password: pass}, nil
}

func (a *Authority) insert(id Identity) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if _, ok := a.ids[id.Name]; ok {
		return fmt.Errorf("%w: %q", ErrExists, id.Name)
	}
	if id.PublicKey != "" {
		// Inboxes are keyed by a prefix of the public key: never share one.
		for _, o := range a.ids {
			if o.PublicKey != "" && subjects.InboxToken(o.PublicKey) == subjects.InboxToken(id.PublicKey) {
				return fmt.Errorf("%w: the new key's inbox is %q's; try again", ErrExists, o.Name)
			}
		}
	}
	next := maps(a.ids)
	next[id.Name] = id
	return a.commitLocked(next)
}

// commitLocked saves next, applies it to the server, and only then makes
// it current. A failure to apply puts the old file back.
func (a *Authority) commitLocked(next map[string]Identity) error {
	if err := a.save(next); err != nil {
		return err
	}
	if err := a.applyLocked(next, a.scripts); err != nil {
		_ = a.save(a.ids)
		return fmt.Errorf("apply identities to the NATS server: %w", err)
	}
	a.ids = next
	return nil
}

// Revoke deletes the identity named name. With a running server, its
// connections are closed at once and it cannot connect again.
func (a *Authority) Revoke(name string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	id, ok := a.ids[name]
	if !ok {
		return fmt.Errorf("%w: %q", ErrNotFound, name)
	}
	if id.BuiltIn {
		return fmt.Errorf("%w: %q is one `loki up` runs with; to rotate it, stop Loki and delete %s",
			ErrBuiltIn, name, SeedFile(a.dir, name))
	}
	next := maps(a.ids)
	delete(next, name)
	return a.commitLocked(next)
}

// ScriptMQTT returns an MQTT login for the local listener that may publish
// and subscribe only to the given topic filters (and never to Loki's own
// subjects). Logins live in memory, one per set of filters, and are made
// again after a restart.
func (a *Authority) ScriptMQTT(filters []string) (user, pass string, err error) {
	fs := slices.Clone(filters)
	sort.Strings(fs)
	fs = slices.Compact(fs)
	if _, err := subjects.RolePermissions(subjects.RoleScriptMQTT, "", fs...); err != nil {
		return "", "", err
	}
	key := strings.Join(fs, " ")
	a.mu.Lock()
	defer a.mu.Unlock()
	if s, ok := a.scripts[key]; ok {
		return s.user, s.pass, nil
	}
	if len(a.scripts) >= maxScriptUsers {
		return "", "", fmt.Errorf("%w: more than %d distinct MQTT grants", ErrInvalid, maxScriptUsers)
	}
	p, err := randomSecret()
	if err != nil {
		return "", "", err
	}
	u, err := randomSecret()
	if err != nil {
		return "", "", err
	}
	s := scriptUser{user: "script-" + u[:16], pass: p, filters: fs}
	next := make(map[string]scriptUser, len(a.scripts)+1)
	for k, v := range a.scripts {
		next[k] = v
	}
	next[key] = s
	if err := a.applyLocked(a.ids, next); err != nil {
		return "", "", fmt.Errorf("apply identities to the NATS server: %w", err)
	}
	a.scripts = next
	return s.user, s.pass, nil
}

func randomSecret() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func maps(m map[string]Identity) map[string]Identity {
	out := make(map[string]Identity, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// writeFileAtomic writes data to path (0600), all or nothing.
func writeFileAtomic(path string, data []byte) error { return atomicfile.Write(path, data, 0o600) }
