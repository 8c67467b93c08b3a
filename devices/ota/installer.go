package ota

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/atomicfile"
)

// File names inside an Installer's directory. The supervisor (systemd, an
// init script, or the agent re-executing itself) always starts Current.
const (
	// CurrentFile is the binary to run: always present, always a verified
	// release (or the factory binary).
	CurrentFile = "current"
	// PreviousFile is the release before the last install, kept for
	// rollback; absent before the first install and after a rollback.
	PreviousFile = "previous"
	// NewFile is a staged release: verified, fsynced, waiting for Install.
	NewFile = "new"
	// StateFile is the installer's state (State as JSON), replaced
	// atomically on every change.
	StateFile = "ota.json"
	// partFile receives a download before it is verified.
	partFile = "new.part"
	// previousTmp is the link to current that becomes previous.
	previousTmp = "previous.tmp"
)

// DefaultBootLimit is how many starts a pending release gets before Boot
// rolls it back (RAUC counts 3 attempts per slot).
const DefaultBootLimit = 3

// Release identifies one binary the installer knows.
type Release struct {
	// Version is the manifest's version ("" for an unknown factory binary).
	Version string `json:"version"`
	// SecurityCounter is the manifest's security counter.
	SecurityCounter uint64 `json:"security_counter"`
	// SHA256 is the binary's digest, lower-case hex.
	SHA256 string `json:"sha256"`
}

// Pending is an installed release that has not committed yet.
type Pending struct {
	Release
	// Attempts counts the starts Boot has seen of this release.
	Attempts int `json:"attempts"`
	// Since is when it was installed (UTC).
	Since time.Time `json:"since"`
}

// Rollback records a release the installer replaced by an older one.
type Rollback struct {
	// Version is the release rolled back from.
	Version string `json:"version"`
	// Reason says why: the boot limit, or the caller's reason.
	Reason string `json:"reason"`
	// At is when (UTC).
	At time.Time `json:"at"`
	// Reported is set by AckRollback once the platform was told.
	Reported bool `json:"reported,omitempty"`
}

// installing is the journal of an install in flight.
type installing struct {
	From Release  `json:"from"`
	To   Manifest `json:"to"`
}

// rollingBack is the journal of a rollback in flight: current goes from
// From back to To (the file previous).
type rollingBack struct {
	From   Release `json:"from"`
	To     Release `json:"to"`
	Reason string  `json:"reason"`
}

// State is the content of StateFile. Installed is the last committed
// release; while Pending is set, current holds Pending and previous holds
// Installed. Staged, when set, is the manifest of the verified file new.
type State struct {
	// Installed is the last committed release (or the factory binary).
	Installed Release `json:"installed"`
	// SecurityFloor is the highest security counter ever committed: Stage
	// refuses anything lower (anti-rollback). It never decreases.
	SecurityFloor uint64 `json:"security_floor"`
	// Previous is the release in the file previous, if any.
	Previous *Release `json:"previous,omitempty"`
	// Staged is the manifest of the verified file new, if any.
	Staged *Manifest `json:"staged,omitempty"`
	// Pending is the release in current awaiting Commit, if any.
	Pending *Pending `json:"pending,omitempty"`
	// LastRollback is the most recent rollback, if any.
	LastRollback *Rollback `json:"last_rollback,omitempty"`

	// Installing and RollingBack are the journals of an operation in
	// flight, for Recover; State never returns them set.
	Installing  *installing  `json:"installing,omitempty"`
	RollingBack *rollingBack `json:"rolling_back,omitempty"`
}

// Step names a point in Install or a rollback after which a power cut is
// survivable; tests stop there to prove it (see docs/OTA.md).
type Step int

// The steps, in order. Install runs StepJournal to StepPending; a
// rollback runs StepRollbackJournal to StepRollbackDone.
const (
	// StepJournal: the state file records the install in flight.
	StepJournal Step = iota + 1
	// StepPrevious: previous is a hard link to (or copy of) current.
	StepPrevious
	// StepSwap: new is renamed over current, the directory fsynced.
	StepSwap
	// StepPending: the state file records the pending release.
	StepPending
	// StepRollbackJournal: the state file records the rollback in flight.
	StepRollbackJournal
	// StepRollbackSwap: previous is renamed over current.
	StepRollbackSwap
	// StepRollbackDone: the state file records the rollback.
	StepRollbackDone
)

// Option configures an Installer.
type Option func(*Installer)

// WithBootLimit sets how many starts a pending release gets before Boot
// rolls it back (default DefaultBootLimit; values below 1 mean 1).
func WithBootLimit(n int) Option {
	return func(i *Installer) { i.bootLimit = max(n, 1) }
}

// WithFreeSpace replaces the free-space probe (default: statfs on dir,
// the blocks available to an unprivileged user) with f, which returns the
// bytes free in dir.
func WithFreeSpace(f func(dir string) (uint64, error)) Option {
	return func(i *Installer) { i.freeSpace = f }
}

// WithReserve sets the bytes Stage keeps free beyond the binary itself
// (default 1 MiB): room for the state file and the logs of the next boot.
func WithReserve(n uint64) Option {
	return func(i *Installer) { i.reserve = n }
}

// WithFactory names the binary already in current when the directory has
// no state file yet: its version and security counter (the initial
// anti-rollback floor). Without it, the factory release has version "" and
// counter 0. Ignored once the state file exists.
func WithFactory(version string, securityCounter uint64) Option {
	return func(i *Installer) { i.factory = Release{Version: version, SecurityCounter: securityCounter} }
}

// WithClock replaces time.Now for the times recorded in the state.
func WithClock(now func() time.Time) Option {
	return func(i *Installer) { i.now = now }
}

// Installer manages one directory holding a device's binary: stage,
// install, boot counting, commit and rollback. Its methods are safe for
// concurrent use; one process at a time may use a directory. Every change
// is atomic on disk (see docs/OTA.md), and after an error or a power cut
// Recover (which Boot runs) brings the directory back to a consistent
// state with a verified current.
type Installer struct {
	dir       string
	bootLimit int
	reserve   uint64
	freeSpace func(string) (uint64, error)
	factory   Release
	now       func() time.Time
	afterStep func(Step) error // tests: stop after a step, as a power cut would

	mu    sync.Mutex
	state State
}

// Open returns the Installer of dir. dir must hold current; when it holds
// no state file yet, Open hashes current and records it as the installed
// release (see WithFactory). Open changes nothing else: Boot (or Recover)
// finishes or undoes an operation a power cut interrupted.
func Open(dir string, opts ...Option) (*Installer, error) {
	i := &Installer{
		dir:       dir,
		bootLimit: DefaultBootLimit,
		reserve:   1 << 20,
		freeSpace: statfsFree,
		now:       time.Now,
	}
	for _, o := range opts {
		o(i)
	}
	data, err := os.ReadFile(i.path(StateFile))
	switch {
	case err == nil:
		if err := json.Unmarshal(data, &i.state); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrState, i.path(StateFile), err)
		}
		return i, nil
	case !errors.Is(err, fs.ErrNotExist):
		return nil, err
	}
	sum, err := hashFile(i.path(CurrentFile))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrState, err)
	}
	f := i.factory
	f.SHA256 = sum
	i.state = State{Installed: f, SecurityFloor: f.SecurityCounter}
	if err := i.save(); err != nil {
		return nil, err
	}
	return i, nil
}

// Current returns the path of the binary to run (dir/current).
func (i *Installer) Current() string { return i.path(CurrentFile) }

// State returns a copy of the installer's state.
func (i *Installer) State() State {
	i.mu.Lock()
	defer i.mu.Unlock()
	s := i.state
	if s.Previous != nil {
		p := *s.Previous
		s.Previous = &p
	}
	if s.Staged != nil {
		m := *s.Staged
		s.Staged = &m
	}
	if s.Pending != nil {
		p := *s.Pending
		s.Pending = &p
	}
	if s.LastRollback != nil {
		r := *s.LastRollback
		s.LastRollback = &r
	}
	s.Installing, s.RollingBack = nil, nil
	return s
}

// Stage verifies a release and writes it to dir/new, without touching
// current, previous or anything the device runs. In order it checks: the
// manifest's fields (ErrManifest), its signature under pub (ErrSignature),
// its target against the device's (ErrTarget), its security counter
// against the floor (ErrDowngrade), that no update is pending or being
// installed (ErrState), and the free space (ErrSpace); only then does it
// read r, streaming into dir/new.part while hashing, and check the length
// (ErrSize) and the SHA-256 (ErrDigest). A verified file is fsynced and
// renamed to dir/new, and the manifest recorded as staged. On any error
// a refusal the directory is as before (a previously staged release stays
// staged); after an I/O error Recover tidies it.
func (i *Installer) Stage(r io.Reader, m Manifest, sig []byte, pub ed25519.PublicKey, target Target) error {
	if err := Verify(m, sig, pub); err != nil {
		return err
	}
	if err := m.Matches(target); err != nil {
		return err
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if m.SecurityCounter < i.state.SecurityFloor {
		return fmt.Errorf("%w: %s %s has counter %d, device floor is %d", ErrDowngrade, m.Name, m.Version, m.SecurityCounter, i.state.SecurityFloor)
	}
	if i.state.Pending != nil || i.state.Installing != nil || i.state.RollingBack != nil {
		return fmt.Errorf("%w: an update is pending or in flight; commit or roll back first", ErrState)
	}
	free, err := i.freeSpace(i.dir)
	if err != nil {
		return fmt.Errorf("%w: %s: %v", ErrSpace, i.dir, err)
	}
	if need := m.Size + i.reserve; need < m.Size || free < need {
		return fmt.Errorf("%w: %s needs %d bytes (%d + %d reserve), %d free", ErrSpace, i.dir, m.Size+i.reserve, m.Size, i.reserve, free)
	}
	part := i.path(partFile)
	if err := writeVerified(part, r, m); err != nil {
		_ = os.Remove(part)
		return err
	}
	if err := os.Rename(part, i.path(NewFile)); err != nil {
		_ = os.Remove(part)
		return err
	}
	if err := syncDir(i.dir); err != nil {
		return err
	}
	staged := m
	return i.update(func(s *State) { s.Staged = &staged })
}

// writeVerified streams r into path (mode 0755), checking the length and
// digest against m, and fsyncs it.
func writeVerified(path string, r io.Reader, m Manifest) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }() // a no-op after the Close below
	if err := f.Chmod(0o755); err != nil {
		return err
	}
	h := sha256.New()
	// One byte past the size tells a longer binary from an exact one
	// without reading an unbounded stream.
	n, err := io.Copy(io.MultiWriter(f, h), io.LimitReader(r, int64(min(m.Size, 1<<62))+1))
	if err != nil {
		return err
	}
	if uint64(n) != m.Size {
		more := ""
		if uint64(n) > m.Size {
			more = " or more"
		}
		return fmt.Errorf("%w: %s %s: got %d bytes%s, want %d", ErrSize, m.Name, m.Version, n, more, m.Size)
	}
	if got := digestHex(h.Sum(nil)); got != m.SHA256 {
		return fmt.Errorf("%w: %s %s: got sha256 %s, want %s", ErrDigest, m.Name, m.Version, got, m.SHA256)
	}
	if err := f.Sync(); err != nil {
		return err
	}
	return f.Close()
}

// Install swaps the staged release in: it re-hashes new (ErrDigest if it
// changed since Stage), records the install in the state file, makes
// previous a hard link to current (a copy where links are unsupported),
// renames new over current, fsyncs the directory and records the release
// as pending with 0 attempts. current exists and is verified after every
// step. The caller then restarts into Current; Boot counts the start.
// After an error, Recover finishes or undoes the install.
func (i *Installer) Install() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	s := i.state
	if s.Staged == nil || s.Pending != nil || s.Installing != nil || s.RollingBack != nil {
		return fmt.Errorf("%w: install needs a staged release and no pending one", ErrState)
	}
	to := *s.Staged
	if to.SecurityCounter < s.SecurityFloor {
		return fmt.Errorf("%w: %s %s has counter %d, device floor is %d", ErrDowngrade, to.Name, to.Version, to.SecurityCounter, s.SecurityFloor)
	}
	sum, err := hashFile(i.path(NewFile))
	if err != nil {
		return err
	}
	if sum != to.SHA256 {
		return fmt.Errorf("%w: staged %s %s: got sha256 %s, want %s", ErrDigest, to.Name, to.Version, sum, to.SHA256)
	}
	from := s.Installed
	if err := i.update(func(s *State) { s.Installing = &installing{From: from, To: to} }); err != nil {
		return err
	}
	if err := i.step(StepJournal); err != nil {
		return err
	}
	if err := i.linkPrevious(); err != nil {
		return err
	}
	if err := i.step(StepPrevious); err != nil {
		return err
	}
	if err := os.Rename(i.path(NewFile), i.path(CurrentFile)); err != nil {
		return err
	}
	if err := syncDir(i.dir); err != nil {
		return err
	}
	if err := i.step(StepSwap); err != nil {
		return err
	}
	if err := i.update(func(s *State) { i.finishInstall(s) }); err != nil {
		return err
	}
	return i.step(StepPending)
}

// finishInstall turns the install journal into a pending release.
func (i *Installer) finishInstall(s *State) {
	j := s.Installing
	from := j.From
	s.Previous = &from
	s.Pending = &Pending{
		Release: Release{Version: j.To.Version, SecurityCounter: j.To.SecurityCounter, SHA256: j.To.SHA256},
		Since:   i.now().UTC(),
	}
	s.Staged, s.Installing = nil, nil
}

// linkPrevious makes previous the same file as current: a hard link via
// previous.tmp and a rename, so that current never disappears and an old
// previous is replaced atomically.
func (i *Installer) linkPrevious() error {
	tmp := i.path(previousTmp)
	_ = os.Remove(tmp)
	if err := os.Link(i.path(CurrentFile), tmp); err != nil {
		if err := copyFile(i.path(CurrentFile), tmp); err != nil {
			_ = os.Remove(tmp)
			return err
		}
	}
	if err := os.Rename(tmp, i.path(PreviousFile)); err != nil {
		return err
	}
	return syncDir(i.dir)
}

// Decision is Boot's answer.
type Decision struct {
	// Reexec means current changed under the running process (a rollback):
	// the caller must exec Current before doing anything else.
	Reexec bool
	// Pending is the release being tried, and Attempt this start's number
	// (1 to the boot limit), when the running release is not committed:
	// the caller commits after its health window, or restarts.
	Pending *Pending
	// RolledBack is the last rollback while it has not been reported
	// (see AckRollback): the caller reports rolled_back with its Version
	// and Reason once connected, then calls AckRollback. Boot returns it
	// again at every start until then, so a rollback survives the re-exec
	// and a crash before the report.
	RolledBack *Rollback
}

// Boot is called once at every start of the agent, before it connects.
// It runs Recover (re-exec when that finished a rollback, since current
// changed under the running process), then counts a start of a pending
// release in the state file. A pending release that already had its boot
// limit of starts without a Commit is rolled back: previous is renamed
// over current and the Decision says to re-exec. A committed release
// needs nothing. After an error current is still a verified binary (a
// corrupt previous, ErrDigest, is never swapped in): the caller logs it,
// runs on, and reports it.
func (i *Installer) Boot() (Decision, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	swapped, err := i.recover()
	if err != nil {
		return Decision{}, err
	}
	d := Decision{Reexec: swapped}
	if p := i.state.Pending; p != nil && !swapped {
		if p.Attempts >= i.bootLimit {
			if _, err := i.rollback(fmt.Sprintf("boot limit: %d starts of %s without a commit", p.Attempts, p.Version)); err != nil {
				return Decision{}, err
			}
			d.Reexec = true
		} else {
			if err := i.update(func(s *State) { s.Pending.Attempts++ }); err != nil {
				return Decision{}, err
			}
			cp := *i.state.Pending
			d.Pending = &cp
		}
	}
	if rb := i.state.LastRollback; rb != nil && !rb.Reported {
		cp := *rb
		d.RolledBack = &cp
	}
	return d, nil
}

// AckRollback records that the last rollback was reported to the
// platform: Boot stops returning it. A no-op without one.
func (i *Installer) AckRollback() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if rb := i.state.LastRollback; rb == nil || rb.Reported {
		return nil
	}
	return i.update(func(s *State) {
		rb := *s.LastRollback
		rb.Reported = true
		s.LastRollback = &rb
	})
}

// Commit declares the pending release healthy: it becomes the installed
// release and its security counter raises the floor. previous is kept for
// a manual rollback. ErrState when nothing is pending.
func (i *Installer) Commit() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.state.Pending == nil || i.state.Installing != nil || i.state.RollingBack != nil {
		return fmt.Errorf("%w: nothing pending to commit", ErrState)
	}
	return i.update(func(s *State) {
		s.Installed = s.Pending.Release
		s.SecurityFloor = max(s.SecurityFloor, s.Pending.SecurityCounter)
		s.Pending = nil
	})
}

// Rollback replaces current by previous for reason (the operator's
// command) and returns the record; the caller then execs Current. A
// pending release always rolls back; a committed one only to a previous
// release whose security counter is not below the floor (ErrDowngrade).
// ErrState when there is no previous release.
func (i *Installer) Rollback(reason string) (Rollback, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.state.Installing != nil || i.state.RollingBack != nil {
		return Rollback{}, fmt.Errorf("%w: an operation is in flight; run Recover", ErrState)
	}
	rb, err := i.rollback(reason)
	if err != nil {
		return Rollback{}, err
	}
	return *rb, nil
}

// rollback runs the rollback steps; i.mu is held.
func (i *Installer) rollback(reason string) (*Rollback, error) {
	s := i.state
	if s.Previous == nil {
		return nil, fmt.Errorf("%w: no previous release to roll back to", ErrState)
	}
	from := s.Installed
	if s.Pending != nil {
		from = s.Pending.Release
	} else if s.Previous.SecurityCounter < s.SecurityFloor {
		return nil, fmt.Errorf("%w: previous %s has counter %d, device floor is %d", ErrDowngrade, s.Previous.Version, s.Previous.SecurityCounter, s.SecurityFloor)
	}
	to := *s.Previous
	sum, err := hashFile(i.path(PreviousFile))
	if err != nil {
		return nil, fmt.Errorf("%w: previous: %v", ErrState, err)
	}
	if sum != to.SHA256 {
		return nil, fmt.Errorf("%w: previous %s: got sha256 %s, want %s", ErrDigest, to.Version, sum, to.SHA256)
	}
	if err := i.update(func(s *State) { s.RollingBack = &rollingBack{From: from, To: to, Reason: reason} }); err != nil {
		return nil, err
	}
	if err := i.step(StepRollbackJournal); err != nil {
		return nil, err
	}
	if err := i.swapPrevious(); err != nil {
		return nil, err
	}
	if err := i.step(StepRollbackSwap); err != nil {
		return nil, err
	}
	if err := i.update(func(s *State) { i.finishRollback(s) }); err != nil {
		return nil, err
	}
	rb := *i.state.LastRollback
	return &rb, i.step(StepRollbackDone)
}

func (i *Installer) swapPrevious() error {
	if err := os.Rename(i.path(PreviousFile), i.path(CurrentFile)); err != nil {
		return err
	}
	return syncDir(i.dir)
}

// finishRollback turns the rollback journal into the rolled-back state.
func (i *Installer) finishRollback(s *State) {
	j := s.RollingBack
	s.Installed = j.To
	s.Previous, s.Pending, s.RollingBack = nil, nil, nil
	s.LastRollback = &Rollback{Version: j.From.Version, Reason: j.Reason, At: i.now().UTC()}
}

// Recover brings the directory to a consistent state after a crash or a
// power cut: an interrupted install is finished if new was already
// renamed over current and undone otherwise (the release stays staged if
// new still verifies); an interrupted rollback is finished; leftover
// new.part and previous.tmp files are removed, and an unrecorded or
// corrupt new is dropped. It is idempotent. It changes which binary
// current is only when it finishes a rollback cut short before its rename:
// a process running the binary must then exec Current, which is why an
// agent calls Boot (which says so) rather than Recover. An error wrapping
// ErrState means the files match no state the installer leaves behind.
func (i *Installer) Recover() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	_, err := i.recover()
	return err
}

// recover is Recover with i.mu held; swapped reports that it renamed
// previous over current.
func (i *Installer) recover() (swapped bool, err error) {
	for _, name := range []string{partFile, previousTmp} {
		if err := os.Remove(i.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return swapped, err
		}
	}
	if j := i.state.RollingBack; j != nil {
		cur, err := hashFile(i.path(CurrentFile))
		if err != nil {
			return swapped, fmt.Errorf("%w: current: %v", ErrState, err)
		}
		if cur != j.To.SHA256 {
			prev, err := hashFile(i.path(PreviousFile))
			if cur != j.From.SHA256 || err != nil || prev != j.To.SHA256 {
				return swapped, fmt.Errorf("%w: rollback from %s to %s interrupted and current (sha256 %s) is neither", ErrState, j.From.Version, j.To.Version, cur)
			}
			if err := i.swapPrevious(); err != nil {
				return swapped, err
			}
			swapped = true
		}
		if err := i.update(func(s *State) { i.finishRollback(s) }); err != nil {
			return swapped, err
		}
	}
	if j := i.state.Installing; j != nil {
		cur, err := hashFile(i.path(CurrentFile))
		if err != nil {
			return swapped, fmt.Errorf("%w: current: %v", ErrState, err)
		}
		switch cur {
		case j.To.SHA256: // the swap happened: previous holds From
			if err := i.update(func(s *State) { i.finishInstall(s) }); err != nil {
				return swapped, err
			}
		case j.From.SHA256: // undo: current never changed
			prev, perr := hashFile(i.path(PreviousFile))
			if err := i.update(func(s *State) {
				if perr == nil && prev == j.From.SHA256 {
					from := j.From
					s.Previous = &from
				}
				s.Installing = nil
			}); err != nil {
				return swapped, err
			}
		default:
			return swapped, fmt.Errorf("%w: install of %s interrupted and current (sha256 %s) is neither it nor %s", ErrState, j.To.Version, cur, j.From.Version)
		}
	}
	if m := i.state.Staged; m != nil {
		if sum, err := hashFile(i.path(NewFile)); err != nil || sum != m.SHA256 {
			if err := i.update(func(s *State) { s.Staged = nil }); err != nil {
				return swapped, err
			}
		}
	}
	if i.state.Staged == nil {
		if err := os.Remove(i.path(NewFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return swapped, err
		}
	}
	return swapped, nil
}

// update applies f to a copy of the state and saves it; i.state changes
// only when the file did. i.mu is held.
func (i *Installer) update(f func(*State)) error {
	old := i.state
	f(&i.state)
	if err := i.save(); err != nil {
		i.state = old
		return err
	}
	return nil
}

func (i *Installer) save() error {
	data, err := json.MarshalIndent(i.state, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(i.path(StateFile), append(data, '\n'), 0o600)
}

func (i *Installer) step(s Step) error {
	if i.afterStep == nil {
		return nil
	}
	return i.afterStep(s)
}

func (i *Installer) path(name string) string { return filepath.Join(i.dir, name) }

// hashFile returns the SHA-256 of the file at path, lower-case hex.
func hashFile(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer func() { _ = f.Close() }()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return digestHex(h.Sum(nil)), nil
}

// copyFile copies src to dst (mode 0755) and fsyncs dst.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer func() { _ = in.Close() }()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		_ = out.Close()
		return err
	}
	if err := out.Sync(); err != nil {
		_ = out.Close()
		return err
	}
	return out.Close()
}

// syncDir fsyncs a directory so that renames in it survive a power cut.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
