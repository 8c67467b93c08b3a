package jotunheim_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/ota"
	"github.com/loki-iot/loki/devices/wire"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// The OTA tests run real agent processes: cmd/jotunheim built twice, as
// v1 and v2, the test playing the platform.

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// agentBinaries builds cmd/jotunheim as v1 and v2 (once per test run).
func agentBinaries(t *testing.T) (v1, v2 string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the agent twice")
	}
	buildOnce.Do(func() {
		if buildDir, buildErr = os.MkdirTemp("", "jotunheim-ota-"); buildErr != nil {
			return
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, v := range []string{"v1", "v2"} {
			wg.Go(func() {
				cmd := exec.Command("go", "build", "-trimpath", "-ldflags",
					"-s -w -X github.com/loki-iot/loki/devices/jotunheim.FirmwareVersion="+v,
					"-o", filepath.Join(buildDir, v), "github.com/loki-iot/loki/cmd/jotunheim")
				if out, err := cmd.CombinedOutput(); err != nil {
					errs[i] = fmt.Errorf("build %s: %v\n%s", v, err, out)
				}
			})
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil && buildErr == nil {
				buildErr = err
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(buildDir, "v1"), filepath.Join(buildDir, "v2")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// otaRig is one device process with an OTA directory, and the platform.
type otaRig struct {
	t    *testing.T
	p    *platform
	dir  string // the installer's directory
	priv ed25519.PrivateKey
	v2   []byte

	mu    sync.Mutex
	serve []byte // what the platform serves for the binary
}

func newOTARig(t *testing.T, id, healthWindow string) *otaRig {
	t.Helper()
	v1, v2 := agentBinaries(t)
	s := startServer(t)
	p := newPlatform(t, s, id)
	root := t.TempDir()
	r := &otaRig{t: t, p: p, dir: filepath.Join(root, "ota")}
	if err := os.Mkdir(r.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	b1, err := os.ReadFile(v1)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(r.dir, ota.CurrentFile), b1, 0o755); err != nil {
		t.Fatal(err)
	}
	if r.v2, err = os.ReadFile(v2); err != nil {
		t.Fatal(err)
	}
	r.serve = r.v2
	pub, priv, err := ota.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	r.priv = priv
	if err := os.WriteFile(filepath.Join(root, "ota.pub"), ota.MarshalPublicKey(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`[device]
id = %q
model = "test"

[transport]
broker = %q
password = "x"

[board]
sim = true

[resilience]
backoff_base = "20ms"
backoff_cap = "200ms"
negotiate_timeout = "1s"

[telemetry]
state_file = "state.json"

[homeassistant]
enabled = false

[ota]
dir = "ota"
public_key_file = "ota.pub"
health_window = %q
`, id, s.srv.MQTTURL(), healthWindow)
	cfgFile := filepath.Join(root, "agent.toml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	// Serve chunks of the binary, as the platform does.
	get, err := subjects.DeviceSubject(id, subjects.DeviceOTAGet)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.nc.Subscribe(get, func(m *nats.Msg) {
		req := &jv1.OTAChunkRequest{}
		if err := wire.Decode(m.Data, req, wire.MaxMessageBytes); err != nil {
			t.Errorf("chunk request: %v", err)
			return
		}
		r.mu.Lock()
		bin := r.serve
		r.mu.Unlock()
		c := &jv1.OTAChunk{RolloutId: req.GetRolloutId(), Offset: req.GetOffset()}
		if end := req.GetOffset() + uint64(req.GetLength()); end <= uint64(len(bin)) {
			c.Data = bin[req.GetOffset():end]
		} else {
			c.Error = "out of range"
		}
		p.publish(subjects.DeviceOTAChunk, c)
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// The device process, started as ota/current.
	out := &lockedBuffer{}
	cmd := exec.Command(filepath.Join(r.dir, ota.CurrentFile), "--config", cfgFile, "--log-level", "debug")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			t.Errorf("the agent did not stop on SIGTERM")
		}
		if t.Failed() || os.Getenv("JOTUNHEIM_TEST_LOG") != "" {
			t.Logf("agent output:\n%s", out.String())
		}
	})
	return r
}

// offer publishes an offer of the v2 binary's signed manifest.
func (r *otaRig) offer(rollout string, mutate func(*ota.Manifest), priv ed25519.PrivateKey) {
	r.t.Helper()
	sum := sha256.Sum256(r.v2)
	m := ota.Manifest{Name: "jotunheim", Version: "v2", Target: ota.Target{OS: runtime.GOOS, Arch: runtime.GOARCH, Model: "test"},
		Size: uint64(len(r.v2)), SHA256: hex.EncodeToString(sum[:]), SecurityCounter: 1}
	if mutate != nil {
		mutate(&m)
	}
	canon, err := m.Canonical()
	if err != nil {
		r.t.Fatal(err)
	}
	if priv == nil {
		priv = r.priv
	}
	sig, err := ota.Sign(m, priv)
	if err != nil {
		r.t.Fatal(err)
	}
	r.p.publish(subjects.DeviceOTAOffer, &jv1.OTAOffer{RolloutId: rollout, Manifest: string(canon), Signature: sig, ChunkBytes: 32 << 10})
}

func decodeProgress(m msg) (*jv1.OTAProgress, bool) {
	if m.kind != subjects.DeviceOTAProgress {
		return nil, false
	}
	p := &jv1.OTAProgress{}
	if err := wire.Decode(m.data, p, wire.MaxMessageBytes); err != nil {
		return nil, false
	}
	return p, true
}

// waitPhase waits for a progress report of rollout in phase.
func (r *otaRig) waitPhase(from int, rollout, phase string) *jv1.OTAProgress {
	r.t.Helper()
	var got *jv1.OTAProgress
	r.p.wait(from, "OTA phase "+phase, func(m msg) bool {
		p, ok := decodeProgress(m)
		if ok && p.GetRolloutId() == rollout && p.GetPhase() == phase {
			got = p
			return true
		}
		return false
	})
	return got
}

// phases lists rollout's phases after from, repeats collapsed.
func (r *otaRig) phases(from int, rollout string) []string {
	r.p.mu.Lock()
	defer r.p.mu.Unlock()
	var out []string
	for _, m := range r.p.msgs[from:] {
		if p, ok := decodeProgress(m); ok && p.GetRolloutId() == rollout {
			if len(out) == 0 || out[len(out)-1] != p.GetPhase() {
				out = append(out, p.GetPhase())
			}
		}
	}
	return out
}

// waitFirmware waits for a CONNECT manifest with firmware version v.
func (r *otaRig) waitFirmware(from int, v string) {
	r.t.Helper()
	r.p.wait(from, "manifest of "+v, func(m msg) bool {
		if m.kind != subjects.DeviceManifest {
			return false
		}
		x, err := wire.DecodeManifest(r.p.id, m.data)
		return err == nil && x.GetReason() == jv1.Manifest_REASON_CONNECT && x.GetFirmwareVersion() == v &&
			containsName(x.GetFeatures(), "ota")
	})
}

func (r *otaRig) state() ota.State {
	r.t.Helper()
	b, err := os.ReadFile(filepath.Join(r.dir, ota.StateFile))
	if err != nil {
		r.t.Fatal(err)
	}
	var s ota.State
	if err := json.Unmarshal(b, &s); err != nil {
		r.t.Fatal(err)
	}
	return s
}

// snapshot is the directory's files and contents.
func (r *otaRig) snapshot() map[string]string {
	r.t.Helper()
	entries, err := os.ReadDir(r.dir)
	if err != nil {
		r.t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(r.dir, e.Name()))
		if err != nil {
			r.t.Fatal(err)
		}
		out[e.Name()] = string(b)
	}
	return out
}

// An offered v2 is checked, downloaded, verified and installed; the agent
// restarts into it, which commits once accepted and its board answers.
func TestOTAUpdateCommits(t *testing.T) {
	t.Parallel()
	r := newOTARig(t, "ota-commit", "20s")
	r.waitFirmware(0, "v1")
	from := r.p.mark()
	r.offer("r1", nil, nil)
	r.waitPhase(from, "r1", jotunheim.PhaseRestarting)
	restart := r.p.mark()
	r.waitFirmware(restart, "v2")
	c := r.waitPhase(restart, "r1", jotunheim.PhaseCommitted)
	if c.GetVersion() != "v2" || c.GetRunningVersion() != "v2" {
		t.Fatalf("committed report %v, want version and running_version v2", c)
	}
	got := strings.Join(r.phases(from, "r1"), " ")
	if want := "checking downloading verifying installing restarting committed"; got != want {
		t.Fatalf("phases %q, want %q", got, want)
	}
	var pcts []uint32
	r.p.mu.Lock()
	for _, m := range r.p.msgs[from:] {
		if p, ok := decodeProgress(m); ok && p.GetPhase() == jotunheim.PhaseDownloading {
			pcts = append(pcts, p.GetPercent())
		}
	}
	r.p.mu.Unlock()
	if len(pcts) < 5 || len(pcts) > 12 {
		t.Errorf("downloading percents %v: want a report about every 10%%", pcts)
	}
	st := r.state()
	if st.Installed.Version != "v2" || st.Pending != nil || st.SecurityFloor != 1 || st.Previous == nil || st.Previous.Version != "v1" {
		t.Fatalf("state after commit: %+v", st)
	}
	cur, err := os.ReadFile(filepath.Join(r.dir, ota.CurrentFile))
	if err != nil || !bytes.Equal(cur, r.v2) {
		t.Fatalf("current is not v2 (%v)", err)
	}
}

// A wrong signature is refused before anything is downloaded, a tampered
// binary fails its digest: the directory is unchanged and v1 runs on.
func TestOTARefusesBadReleases(t *testing.T) {
	t.Parallel()
	r := newOTARig(t, "ota-bad", "20s")
	r.waitFirmware(0, "v1")
	before := r.snapshot()

	_, other, err := ota.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		rollout, phase, reason string
		mutate                 func(*ota.Manifest)
		priv                   ed25519.PrivateKey
	}{
		{"wrong-key", jotunheim.PhaseRefused, "signature", nil, other},
		{"wrong-target", jotunheim.PhaseRefused, "target", func(m *ota.Manifest) { m.Target.Model = "other" }, nil},
		{"tampered", jotunheim.PhaseFailed, "sha256", nil, nil},
	} {
		if tc.rollout == "tampered" {
			bad := bytes.Clone(r.v2)
			bad[len(bad)/2] ^= 0xff
			r.mu.Lock()
			r.serve = bad
			r.mu.Unlock()
		}
		from := r.p.mark()
		r.offer(tc.rollout, tc.mutate, tc.priv)
		p := r.waitPhase(from, tc.rollout, tc.phase)
		if !strings.Contains(p.GetReason(), tc.reason) || p.GetRunningVersion() != "v1" {
			t.Errorf("%s: report %v, want a reason with %q from v1", tc.rollout, p, tc.reason)
		}
		phases := r.phases(from, tc.rollout)
		if tc.phase == jotunheim.PhaseRefused && strings.Join(phases, " ") != "checking refused" {
			t.Errorf("%s: phases %v, want checking then refused (nothing downloaded)", tc.rollout, phases)
		}
		if after := r.snapshot(); len(after) != len(before) {
			t.Errorf("%s: directory changed: %d files, was %d", tc.rollout, len(after), len(before))
		} else {
			for name, content := range before {
				if after[name] != content {
					t.Errorf("%s: %s changed", tc.rollout, name)
				}
			}
		}
	}
	if res := r.p.command("ping", "", nil, 0); !res.GetOk() {
		t.Fatalf("v1 does not answer after the refusals: %v", res)
	}
}

// A v2 the platform never accepts fails its health window: the device
// rolls back to v1, which reports rolled_back with the reason.
func TestOTAHealthWindowRollsBack(t *testing.T) {
	t.Parallel()
	r := newOTARig(t, "ota-rollback", "3s")
	r.p.setAnswer(func(m *jv1.Manifest) *jv1.Negotiation {
		if m.GetFirmwareVersion() == "v2" {
			return nil // the platform does not accept v2
		}
		return &jv1.Negotiation{Accepted: true, PlatformProtocol: wire.Version}
	})
	r.waitFirmware(0, "v1")
	from := r.p.mark()
	r.offer("r2", nil, nil)
	r.waitPhase(from, "r2", jotunheim.PhaseRestarting)
	restart := r.p.mark()
	r.waitFirmware(restart, "v2")
	rb := r.waitPhase(restart, "r2", jotunheim.PhaseRolledBack)
	if rb.GetVersion() != "v2" || rb.GetRunningVersion() != "v1" || !strings.Contains(rb.GetReason(), "health window") {
		t.Fatalf("rolled_back report %v: want v2 rolled back to v1 for its health window", rb)
	}
	eventually(t, "the rollback acknowledged", func() bool {
		st := r.state()
		return st.LastRollback != nil && st.LastRollback.Reported
	})
	st := r.state()
	if st.Installed.Version != "v1" || st.Pending != nil || st.Previous != nil || st.SecurityFloor != 0 {
		t.Fatalf("state after rollback: %+v", st)
	}
	if res := r.p.command("ping", "", nil, 0); !res.GetOk() {
		t.Fatalf("v1 does not answer after the rollback: %v", res)
	}
}
