package ota_test

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"testing"

	"github.com/loki-iot/loki/devices/ota"
)

// agentBin is one build of testdata/fakeagent.
type agentBin struct {
	version string
	data    []byte
	sum     string
}

var (
	buildOnce sync.Once
	buildDir  string
	builds    map[string]agentBin
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// agents builds the fake agent once per test binary as v1 and v2, each
// with its version linked in (go build -ldflags -X).
func agents(t *testing.T) (v1, v2 agentBin) {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "ota-agents-")
		if buildErr != nil {
			return
		}
		builds = map[string]agentBin{}
		for _, v := range []string{"v1", "v2"} {
			out := filepath.Join(buildDir, "fakeagent-"+v)
			cmd := exec.Command("go", "build", "-o", out, "-ldflags", "-X main.version="+v, "./testdata/fakeagent")
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
			if b, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", v, err, b)
				return
			}
			data, err := os.ReadFile(out)
			if err != nil {
				buildErr = err
				return
			}
			builds[v] = agentBin{version: v, data: data, sum: sum(data)}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builds["v1"], builds["v2"]
}

func sum(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// device is a Linux device's update directory with the test's pinned key.
type device struct {
	dir    string
	target ota.Target
	pub    ed25519.PublicKey
	priv   ed25519.PrivateKey
}

var hostTarget = ota.Target{OS: runtime.GOOS, Arch: runtime.GOARCH, Model: "test-board"}

// newDevice makes a directory whose current is factory, recorded as
// version v1 with security counter floor.
func newDevice(t *testing.T, factory agentBin, floor uint64, opts ...ota.Option) (*device, *ota.Installer) {
	t.Helper()
	pub, priv, err := ota.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	d := &device{dir: t.TempDir(), target: hostTarget, pub: pub, priv: priv}
	if err := os.WriteFile(filepath.Join(d.dir, ota.CurrentFile), factory.data, 0o755); err != nil {
		t.Fatal(err)
	}
	inst, err := ota.Open(d.dir, append([]ota.Option{ota.WithFactory(factory.version, floor)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return d, inst
}

// release returns b's manifest with counter, and its signature.
func (d *device) release(t *testing.T, b agentBin, counter uint64) (ota.Manifest, []byte) {
	t.Helper()
	m := ota.Manifest{
		Name: "fakeagent", Version: b.version,
		Target: ota.Target{OS: d.target.OS, Arch: d.target.Arch, Model: d.target.Model},
		Size:   uint64(len(b.data)), SHA256: b.sum, SecurityCounter: counter,
	}
	sig, err := ota.Sign(m, d.priv)
	if err != nil {
		t.Fatal(err)
	}
	return m, sig
}

// snapshot maps every file in dir to its SHA-256.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	s := map[string]string{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		s[e.Name()] = sum(data)
	}
	return s
}

func names(s map[string]string) []string { return slices.Sorted(maps.Keys(s)) }

// fileSum is the SHA-256 of dir/name, "" when it does not exist.
func fileSum(t *testing.T, dir, name string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, os.ErrNotExist) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return sum(data)
}

// run starts dir/current as a supervisor would and returns its output
// and exit code.
func run(t *testing.T, dir string, env ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(filepath.Join(dir, ota.CurrentFile))
	cmd.Env = append(os.Environ(), append([]string{"FAKEAGENT_DIR=" + dir}, env...)...)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	t.Fatalf("run current: %v\n%s", err, out)
	return "", 0
}
