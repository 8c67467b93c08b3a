package ota_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/loki-iot/loki/devices/ota"
)

// TestUpdateCommits stages and installs v2 over a running v1, then starts
// current as a real process: it boots v2, which commits.
func TestUpdateCommits(t *testing.T) {
	v1, v2 := agents(t)
	d, inst := newDevice(t, v1, 1)
	if out, code := run(t, d.dir); code != 0 || out != "version v1\n" {
		t.Fatalf("factory: got %q (exit %d), want %q", out, code, "version v1\n")
	}
	m, sig := d.release(t, v2, 2)
	if err := inst.Stage(bytes.NewReader(v2.data), m, sig, d.pub, d.target); err != nil {
		t.Fatal(err)
	}
	if got := fileSum(t, d.dir, ota.CurrentFile); got != v1.sum {
		t.Fatalf("current after Stage: got %s, want v1 %s", got, v1.sum)
	}
	if err := inst.Install(); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, d.dir); code != 0 || out != "version v2\ncommitted\n" {
		t.Fatalf("after install: got %q (exit %d), want %q", out, code, "version v2\ncommitted\n")
	}
	inst, err := ota.Open(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	s := inst.State()
	if s.Installed.Version != "v2" || s.Installed.SHA256 != v2.sum || s.SecurityFloor != 2 || s.Pending != nil {
		t.Fatalf("state: got installed %+v floor %d pending %+v, want v2, floor 2, nothing pending", s.Installed, s.SecurityFloor, s.Pending)
	}
	if s.Previous == nil || s.Previous.SHA256 != v1.sum || fileSum(t, d.dir, ota.PreviousFile) != v1.sum {
		t.Fatalf("previous: got %+v, want v1", s.Previous)
	}
	if out, code := run(t, d.dir); code != 0 || out != "version v2\n" {
		t.Fatalf("next start: got %q (exit %d), want %q", out, code, "version v2\n")
	}
}

// TestCrashingReleaseRollsBack installs a v2 that crashes at every start:
// a supervisor restarts it until the boot limit, then Boot rolls back and
// the same start re-executes into v1.
func TestCrashingReleaseRollsBack(t *testing.T) {
	v1, v2 := agents(t)
	d, inst := newDevice(t, v1, 1)
	m, sig := d.release(t, v2, 2)
	if err := inst.Stage(bytes.NewReader(v2.data), m, sig, d.pub, d.target); err != nil {
		t.Fatal(err)
	}
	if err := inst.Install(); err != nil {
		t.Fatal(err)
	}
	for attempt := 1; attempt <= ota.DefaultBootLimit; attempt++ {
		out, code := run(t, d.dir, "FAKEAGENT_CRASH=v2")
		if code != 3 || out != "version v2\ncrash\n" {
			t.Fatalf("start %d: got %q (exit %d), want v2 crashing", attempt, out, code)
		}
	}
	// The next start rolls back, re-executes into v1, which reports it.
	out, code := run(t, d.dir, "FAKEAGENT_CRASH=v2")
	if code != 0 || !strings.HasPrefix(out, "rolled_back v2: boot limit") || !strings.HasSuffix(out, "version v1\n") {
		t.Fatalf("start %d: got %q (exit %d), want a rollback then v1", ota.DefaultBootLimit+1, out, code)
	}
	if out, code := run(t, d.dir, "FAKEAGENT_CRASH=v2"); code != 0 || out != "version v1\n" {
		t.Fatalf("next start: got %q (exit %d), want v1 and no second report", out, code)
	}
	if got := fileSum(t, d.dir, ota.CurrentFile); got != v1.sum {
		t.Fatalf("current: got %s, want v1 %s", got, v1.sum)
	}
	inst, err := ota.Open(d.dir)
	if err != nil {
		t.Fatal(err)
	}
	s := inst.State()
	if s.Installed.Version != "v1" || s.Pending != nil || s.SecurityFloor != 1 || s.LastRollback == nil || s.LastRollback.Version != "v2" {
		t.Fatalf("state: got %+v, want v1 installed, floor 1, rollback of v2", s)
	}
	if _, err := os.Stat(filepath.Join(d.dir, ota.PreviousFile)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("previous after rollback: got %v, want no file", err)
	}
	// The same release may be tried again once fixed: the floor never moved.
	if err := inst.Stage(bytes.NewReader(v2.data), m, sig, d.pub, d.target); err != nil {
		t.Fatalf("restage: %v", err)
	}
}

// TestStageRefused feeds Stage every kind of bad release: each is refused
// with its error and the directory is byte for byte as before.
func TestStageRefused(t *testing.T) {
	v1, v2 := agents(t)
	tampered := bytes.Clone(v2.data)
	tampered[len(tampered)/2] ^= 0x01
	_, otherKey, err := ota.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		opts    []ota.Option
		edit    func(d *device, m *ota.Manifest, sig *[]byte, data *[]byte)
		wantErr error
	}{
		{name: "tampered binary", wantErr: ota.ErrDigest,
			edit: func(_ *device, _ *ota.Manifest, _ *[]byte, data *[]byte) { *data = tampered }},
		{name: "signed by another key", wantErr: ota.ErrSignature,
			edit: func(_ *device, m *ota.Manifest, sig *[]byte, _ *[]byte) { *sig, _ = ota.Sign(*m, otherKey) }},
		{name: "manifest edited after signing", wantErr: ota.ErrSignature,
			edit: func(_ *device, m *ota.Manifest, _ *[]byte, _ *[]byte) { m.SecurityCounter = 9 }},
		{name: "truncated signature", wantErr: ota.ErrSignature,
			edit: func(_ *device, _ *ota.Manifest, sig *[]byte, _ *[]byte) { *sig = (*sig)[:10] }},
		{name: "wrong arch", wantErr: ota.ErrTarget,
			edit: func(d *device, m *ota.Manifest, sig *[]byte, _ *[]byte) {
				m.Target.Arch = "riscv64"
				*sig, _ = ota.Sign(*m, d.priv)
			}},
		{name: "wrong model", wantErr: ota.ErrTarget,
			edit: func(d *device, m *ota.Manifest, sig *[]byte, _ *[]byte) {
				m.Target.Model = "other-board"
				*sig, _ = ota.Sign(*m, d.priv)
			}},
		{name: "lower security counter", wantErr: ota.ErrDowngrade,
			edit: func(d *device, m *ota.Manifest, sig *[]byte, _ *[]byte) {
				m.SecurityCounter = 4
				*sig, _ = ota.Sign(*m, d.priv)
			}},
		{name: "binary shorter than the manifest", wantErr: ota.ErrSize,
			edit: func(_ *device, _ *ota.Manifest, _ *[]byte, data *[]byte) { *data = (*data)[:len(*data)-1] }},
		{name: "binary longer than the manifest", wantErr: ota.ErrSize,
			edit: func(_ *device, _ *ota.Manifest, _ *[]byte, data *[]byte) { *data = append(bytes.Clone(*data), 0) }},
		{name: "not enough space", wantErr: ota.ErrSpace,
			opts: []ota.Option{ota.WithFreeSpace(func(string) (uint64, error) { return 4096, nil })}},
		{name: "free space unknown", wantErr: ota.ErrSpace,
			opts: []ota.Option{ota.WithFreeSpace(func(string) (uint64, error) { return 0, errors.New("statfs: boom") })}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, inst := newDevice(t, v1, 5, tc.opts...)
			m, sig := d.release(t, v2, 5)
			data := v2.data
			if tc.edit != nil {
				tc.edit(d, &m, &sig, &data)
			}
			before := snapshot(t, d.dir)
			stateBefore := inst.State()
			err := inst.Stage(bytes.NewReader(data), m, sig, d.pub, d.target)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if after := snapshot(t, d.dir); !reflect.DeepEqual(after, before) {
				t.Fatalf("directory changed: got %v, want %v", names(after), names(before))
			}
			if got := inst.State(); !reflect.DeepEqual(got, stateBefore) {
				t.Fatalf("state: got %+v, want %+v", got, stateBefore)
			}
			if err := inst.Install(); !errors.Is(err, ota.ErrState) {
				t.Fatalf("install after a refused stage: got %v, want %v", err, ota.ErrState)
			}
		})
	}
}

// TestRefusedStageKeepsStaged: a bad release does not disturb a release
// staged before it.
func TestRefusedStageKeepsStaged(t *testing.T) {
	v1, v2 := agents(t)
	d, inst := newDevice(t, v1, 1)
	m, sig := d.release(t, v2, 2)
	if err := inst.Stage(bytes.NewReader(v2.data), m, sig, d.pub, d.target); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, d.dir)
	if err := inst.Stage(bytes.NewReader(v1.data), m, sig, d.pub, d.target); !errors.Is(err, ota.ErrDigest) {
		t.Fatalf("got %v, want %v", err, ota.ErrDigest)
	}
	if after := snapshot(t, d.dir); !reflect.DeepEqual(after, before) {
		t.Fatalf("directory changed: got %v, want %v", after, before)
	}
	if err := inst.Install(); err != nil {
		t.Fatal(err)
	}
	if out, code := run(t, d.dir); code != 0 || out != "version v2\ncommitted\n" {
		t.Fatalf("got %q (exit %d), want v2 committing", out, code)
	}
}

// checkConsistent asserts what every crash must leave: current is one of
// the two verified binaries, the state agrees with the files, no temporary
// file remains, and current runs.
func checkConsistent(t *testing.T, d *device, inst *ota.Installer, v1, v2 agentBin) string {
	t.Helper()
	s := inst.State()
	files := snapshot(t, d.dir)
	for name := range files {
		switch name {
		case ota.CurrentFile, ota.PreviousFile, ota.NewFile, ota.StateFile:
		default:
			t.Fatalf("leftover file %q in %v", name, names(files))
		}
	}
	cur := files[ota.CurrentFile]
	switch cur {
	case v1.sum:
		if s.Pending != nil || s.Installed.SHA256 != v1.sum {
			t.Fatalf("current is v1 but state is %+v", s)
		}
	case v2.sum:
		if s.Pending == nil || s.Pending.SHA256 != v2.sum || s.Previous == nil || s.Previous.SHA256 != v1.sum || files[ota.PreviousFile] != v1.sum {
			t.Fatalf("current is v2 but state is %+v, previous %s", s, files[ota.PreviousFile])
		}
	default:
		t.Fatalf("current is neither v1 nor v2: %s", cur)
	}
	if s.Staged != nil && files[ota.NewFile] != s.Staged.SHA256 {
		t.Fatalf("staged %s but new is %q", s.Staged.Version, files[ota.NewFile])
	}
	if s.Staged == nil && files[ota.NewFile] != "" {
		t.Fatal("new without a staged release")
	}
	if s.Previous != nil && files[ota.PreviousFile] != s.Previous.SHA256 {
		t.Fatalf("previous %s but the file is %q", s.Previous.Version, files[ota.PreviousFile])
	}
	if cur == v1.sum {
		return "v1"
	}
	return "v2"
}

// TestInstallCrashAtEachStep stops Install after each step, as a power cut
// would, then recovers as the next start does.
func TestInstallCrashAtEachStep(t *testing.T) {
	v1, v2 := agents(t)
	for _, tc := range []struct {
		name string
		step ota.Step
		want string
	}{
		{"after the journal", ota.StepJournal, "v1"},
		{"after previous", ota.StepPrevious, "v1"},
		{"after the swap", ota.StepSwap, "v2"},
		{"after the pending state", ota.StepPending, "v2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, inst := newDevice(t, v1, 1, ota.WithCrashAfter(tc.step))
			m, sig := d.release(t, v2, 2)
			if err := inst.Stage(bytes.NewReader(v2.data), m, sig, d.pub, d.target); err != nil {
				t.Fatal(err)
			}
			if err := inst.Install(); !errors.Is(err, ota.ErrCrash) {
				t.Fatalf("install: got %v, want %v", err, ota.ErrCrash)
			}
			inst, err := ota.Open(d.dir)
			if err != nil {
				t.Fatal(err)
			}
			if err := inst.Recover(); err != nil {
				t.Fatal(err)
			}
			if got := checkConsistent(t, d, inst, v1, v2); got != tc.want {
				t.Fatalf("current: got %s, want %s", got, tc.want)
			}
			if tc.want == "v1" {
				// Undone, still staged: installing again completes.
				if s := inst.State(); s.Staged == nil || s.Staged.Version != "v2" {
					t.Fatalf("staged: got %+v, want v2", s.Staged)
				}
				if err := inst.Install(); err != nil {
					t.Fatal(err)
				}
			}
			if out, code := run(t, d.dir); code != 0 || out != "version v2\ncommitted\n" {
				t.Fatalf("got %q (exit %d), want v2 committing", out, code)
			}
		})
	}
}

// TestRollbackCrashAtEachStep stops a manual rollback of a pending release
// after each step; Recover finishes it.
func TestRollbackCrashAtEachStep(t *testing.T) {
	v1, v2 := agents(t)
	for _, tc := range []struct {
		name   string
		step   ota.Step
		reexec bool
	}{
		{"after the journal", ota.StepRollbackJournal, true},
		{"after the swap", ota.StepRollbackSwap, false},
		{"after the state", ota.StepRollbackDone, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, inst := newDevice(t, v1, 1, ota.WithCrashAfter(tc.step))
			m, sig := d.release(t, v2, 2)
			if err := inst.Stage(bytes.NewReader(v2.data), m, sig, d.pub, d.target); err != nil {
				t.Fatal(err)
			}
			if err := inst.Install(); err != nil {
				t.Fatal(err)
			}
			if _, err := inst.Rollback("operator"); !errors.Is(err, ota.ErrCrash) {
				t.Fatalf("rollback: got %v, want %v", err, ota.ErrCrash)
			}
			// The next start runs Boot, which recovers.
			inst, err := ota.Open(d.dir)
			if err != nil {
				t.Fatal(err)
			}
			dec, err := inst.Boot()
			if err != nil {
				t.Fatal(err)
			}
			if got := checkConsistent(t, d, inst, v1, v2); got != "v1" {
				t.Fatalf("current: got %s, want v1", got)
			}
			// Cut before its rename, the rollback changes current under the
			// process that finishes it: that process must re-exec.
			if dec.Reexec != tc.reexec || dec.Pending != nil {
				t.Fatalf("boot: got %+v, want reexec %v and nothing pending", dec, tc.reexec)
			}
			if rb := dec.RolledBack; rb == nil || rb.Version != "v2" || rb.Reason != "operator" {
				t.Fatalf("rolled back: got %+v, want v2 for %q", rb, "operator")
			}
			if out, code := run(t, d.dir); code != 0 || out != "rolled_back v2: operator\nversion v1\n" {
				t.Fatalf("got %q (exit %d), want the rollback reported, then v1", out, code)
			}
			if out, code := run(t, d.dir); code != 0 || out != "version v1\n" {
				t.Fatalf("got %q (exit %d), want v1", out, code)
			}
		})
	}
}

// TestRecoverRemovesLeftovers: a download cut short and a new file whose
// stage never recorded it are removed.
func TestRecoverRemovesLeftovers(t *testing.T) {
	v1, v2 := agents(t)
	d, inst := newDevice(t, v1, 1)
	before := snapshot(t, d.dir)
	for name, data := range map[string][]byte{"new.part": v2.data[:100], ota.NewFile: v2.data, "previous.tmp": v1.data} {
		if err := os.WriteFile(filepath.Join(d.dir, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := inst.Recover(); err != nil {
		t.Fatal(err)
	}
	if after := snapshot(t, d.dir); !reflect.DeepEqual(after, before) {
		t.Fatalf("got %v, want %v", names(after), names(before))
	}
}

// TestManualRollback rolls back a committed release to one with the same
// security counter, and refuses one below the floor.
func TestManualRollback(t *testing.T) {
	v1, v2 := agents(t)
	for _, tc := range []struct {
		name    string
		counter uint64
		wantErr error
	}{
		{"same security counter", 1, nil},
		{"higher security counter committed", 2, ota.ErrDowngrade},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, inst := newDevice(t, v1, 1)
			m, sig := d.release(t, v2, tc.counter)
			if err := inst.Stage(bytes.NewReader(v2.data), m, sig, d.pub, d.target); err != nil {
				t.Fatal(err)
			}
			if err := inst.Install(); err != nil {
				t.Fatal(err)
			}
			if _, err := inst.Boot(); err != nil {
				t.Fatal(err)
			}
			if err := inst.Commit(); err != nil {
				t.Fatal(err)
			}
			before := snapshot(t, d.dir)
			_, err := inst.Rollback("operator")
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			want := "rolled_back v2: operator\nversion v1\n"
			if tc.wantErr != nil {
				want = "version v2\n"
				if after := snapshot(t, d.dir); !reflect.DeepEqual(after, before) {
					t.Fatalf("directory changed: got %v, want %v", after, before)
				}
			}
			if out, code := run(t, d.dir); code != 0 || out != want {
				t.Fatalf("got %q (exit %d), want %q", out, code, want)
			}
		})
	}
}

// TestStateErrors: operations the state does not allow are refused.
func TestStateErrors(t *testing.T) {
	v1, v2 := agents(t)
	d, inst := newDevice(t, v1, 1)
	if err := inst.Install(); !errors.Is(err, ota.ErrState) {
		t.Fatalf("install with nothing staged: got %v, want %v", err, ota.ErrState)
	}
	if err := inst.Commit(); !errors.Is(err, ota.ErrState) {
		t.Fatalf("commit with nothing pending: got %v, want %v", err, ota.ErrState)
	}
	if _, err := inst.Rollback("x"); !errors.Is(err, ota.ErrState) {
		t.Fatalf("rollback without previous: got %v, want %v", err, ota.ErrState)
	}
	m, sig := d.release(t, v2, 2)
	if err := inst.Stage(bytes.NewReader(v2.data), m, sig, d.pub, d.target); err != nil {
		t.Fatal(err)
	}
	if err := inst.Install(); err != nil {
		t.Fatal(err)
	}
	if err := inst.Stage(bytes.NewReader(v2.data), m, sig, d.pub, d.target); !errors.Is(err, ota.ErrState) {
		t.Fatalf("stage while pending: got %v, want %v", err, ota.ErrState)
	}
	dec, err := inst.Boot()
	if err != nil {
		t.Fatal(err)
	}
	if dec.Reexec || dec.Pending == nil || dec.Pending.Attempts != 1 {
		t.Fatalf("boot: got %+v, want attempt 1 of v2", dec)
	}
}

// TestStagedBinaryChanged: Install re-verifies new and refuses a file
// changed since Stage.
func TestStagedBinaryChanged(t *testing.T) {
	v1, v2 := agents(t)
	d, inst := newDevice(t, v1, 1)
	m, sig := d.release(t, v2, 2)
	if err := inst.Stage(bytes.NewReader(v2.data), m, sig, d.pub, d.target); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, ota.NewFile), v1.data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := inst.Install(); !errors.Is(err, ota.ErrDigest) {
		t.Fatalf("got %v, want %v", err, ota.ErrDigest)
	}
	if got := fileSum(t, d.dir, ota.CurrentFile); got != v1.sum {
		t.Fatalf("current: got %s, want v1", got)
	}
}
