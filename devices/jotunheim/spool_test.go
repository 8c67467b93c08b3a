package jotunheim_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/wire"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
)

// delivered is one state the platform received.
type delivered struct {
	entity string
	at     float64
}

// statesSince returns the states the platform received after from, in
// order.
func (p *platform) statesSince(from int) []delivered {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []delivered
	for _, m := range p.msgs[from:] {
		if m.kind != subjects.DeviceState {
			continue
		}
		st, err := wire.DecodeState(m.entity, m.data)
		if err != nil {
			p.t.Errorf("state %s: %v", m.entity, err)
			continue
		}
		out = append(out, delivered{m.entity, st.GetAt()})
	}
	return out
}

// noDuplicates fails the test when a state (entity and at) arrived twice:
// nothing acknowledged is sent again.
func noDuplicates(t *testing.T, states []delivered) {
	t.Helper()
	seen := map[delivered]bool{}
	for _, d := range states {
		if seen[d] {
			t.Errorf("state %s at %f delivered twice", d.entity, d.at)
		}
		seen[d] = true
	}
}

// inOrder fails the test when an entity's states arrived out of order.
func inOrder(t *testing.T, states []delivered) {
	t.Helper()
	last := map[string]float64{}
	for _, d := range states {
		if d.at < last[d.entity] {
			t.Errorf("state %s at %f after one at %f: out of order", d.entity, d.at, last[d.entity])
		}
		last[d.entity] = d.at
	}
}

// statesBefore counts the states received after from whose at is at most
// at.
func (p *platform) statesBefore(from int, at float64) int {
	n := 0
	for _, d := range p.statesSince(from) {
		if d.at <= at {
			n++
		}
	}
	return n
}

// goOffline stops the server and waits until the agent spooled at least n
// messages.
func goOffline(t *testing.T, s *server, r *running, n int) {
	t.Helper()
	s.stop()
	eventually(t, "agent offline", func() bool { return !r.agent.Stats().Online })
	eventually(t, "telemetry spooled", func() bool { return r.agent.Stats().Spool.Messages >= n })
}

func TestSpoolDeliversInOrderAfterReconnect(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "field")
	cfg := testConfig(t, s, "field")
	cfg.Telemetry.Period = time.Second
	r := runAgent(t, cfg)
	p.waitManifest(0, jv1.Manifest_REASON_CONNECT)

	// Two outages: what the first delivered is not sent again after the second.
	for outage := range 2 {
		goOffline(t, s, r, 20)
		offlineAt := float64(time.Now().UnixNano()) / 1e9
		from := p.mark()
		s.start()
		p.waitManifest(from, jv1.Manifest_REASON_CONNECT)
		eventually(t, "spool delivered", func() bool {
			st := r.agent.Stats()
			return st.Online && st.Spool.Messages == 0
		})
		// The broker acknowledged them; the platform gets them just after.
		eventually(t, "states from the outage at the platform", func() bool { return p.statesBefore(from, offlineAt) >= 20 })
		if st := r.agent.Stats().Spool; st.Dropped != 0 || st.Delivered < uint64(20*(outage+1)) {
			t.Errorf("outage %d: spool %+v; want at least 20 delivered, none dropped", outage, st)
		}
		inOrder(t, p.statesSince(from))
	}
	noDuplicates(t, p.statesSince(0))
}

func TestSpoolDropsOldestAndReportsIt(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "small")
	cfg := testConfig(t, s, "small")
	cfg.Telemetry.Period = time.Second
	cfg.Telemetry.SpoolMaxMessages = 10
	r := runAgent(t, cfg)
	p.waitManifest(0, jv1.Manifest_REASON_CONNECT)

	s.stop()
	eventually(t, "spool over its bound", func() bool { return r.agent.Stats().Spool.Dropped > 0 })
	from := p.mark()
	s.start()
	ev := p.waitBudgetEvent(from, "warning", "spool")
	eventually(t, "spool delivered", func() bool { st := r.agent.Stats(); return st.Online && st.Spool.Messages == 0 })
	st := r.agent.Stats().Spool
	if n := ev.GetData().GetStructValue().GetFields()["dropped"].GetNumberValue(); n < 1 || uint64(n) != st.Dropped {
		t.Errorf("event dropped: got %v, want the %d dropped", n, st.Dropped)
	}
	if st.Delivered != 10 {
		t.Errorf("delivered from the spool: got %d, want its bound 10", st.Delivered)
	}
	res := p.command(jotunheim.CmdRead, jotunheim.DiagSpoolDropped, nil, 0)
	if !res.GetOk() || uint64(res.GetData().GetNumberValue()) != st.Dropped {
		t.Errorf("read %s: got %v, want %d", jotunheim.DiagSpoolDropped, res, st.Dropped)
	}
}

func TestSpoolFileSurvivesRestart(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "disk")
	cfg := testConfig(t, s, "disk")
	cfg.Telemetry.Period = time.Second
	cfg.Telemetry.SpoolFile = filepath.Join(t.TempDir(), "spool", "telemetry.spool")
	first, err := jotunheim.New(cfg, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- first.Run(ctx) }()
	p.waitManifest(0, jv1.Manifest_REASON_CONNECT)
	s.stop()
	eventually(t, "telemetry spooled", func() bool { return first.Stats().Spool.Messages >= 10 })
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(waitLimit):
		t.Fatal("Run did not return")
	}
	spooled := first.Stats().Spool.Messages
	stoppedAt := float64(time.Now().UnixNano()) / 1e9

	// A torn record at the end (a power cut mid-write) is ignored.
	f, err := os.OpenFile(cfg.Telemetry.SpoolFile, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte{0, 0, 0, 40, 'D', 1, 2}); err != nil {
		t.Fatal(err)
	}
	f.Close()

	from := p.mark()
	s.start()
	r := runAgent(t, cfg)
	p.waitManifest(from, jv1.Manifest_REASON_CONNECT)
	eventually(t, "spool delivered", func() bool { st := r.agent.Stats(); return st.Online && st.Spool.Messages == 0 })
	eventually(t, "the spooled states at the platform", func() bool { return p.statesBefore(from, stoppedAt) >= spooled })
	// The states published after the spool (one connection keeps its order):
	// once one is here, so is everything the spool delivered.
	p.wait(from, "a state from after the restart", func(m msg) bool {
		st, err := wire.DecodeState(m.entity, m.data)
		return m.kind == subjects.DeviceState && err == nil && st.GetAt() > stoppedAt
	})
	if got := p.statesBefore(from, stoppedAt); got != spooled {
		t.Errorf("states from before the restart delivered: got %d, want the %d spooled", got, spooled)
	}
	inOrder(t, p.statesSince(from))
	noDuplicates(t, p.statesSince(0))
	// Delivered means gone from the file too.
	data, err := os.ReadFile(cfg.Telemetry.SpoolFile)
	if err != nil {
		t.Fatal(err)
	}
	if n, _, err := jotunheim.ReadSpool(data); err != nil || n != 0 {
		t.Errorf("spool file after delivery: got %d messages (%v), want none", n, err)
	}
}

func TestSpoolFileMustBeASpool(t *testing.T) {
	cfg := jotunheim.DefaultConfig()
	cfg.Device.ID = "x"
	cfg.Board.Sim = true
	cfg.Telemetry.SpoolFile = filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(cfg.Telemetry.SpoolFile, []byte("precious notes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := jotunheim.New(cfg, nil); !errors.Is(err, jotunheim.ErrConfig) {
		t.Fatalf("New with a spool_file that is not a spool: got %v, want ErrConfig", err)
	}
	if b, _ := os.ReadFile(cfg.Telemetry.SpoolFile); string(b) != "precious notes\n" {
		t.Errorf("the file was changed: %q", b)
	}
}

func FuzzReadSpool(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("JSPOOL1\n"))
	f.Add([]byte("JSP"))
	f.Add(append([]byte("JSPOOL1\n"), 0, 0, 0, 5, 'D', 0, 0, 0))
	f.Add(append([]byte("JSPOOL1\n"), 0xff, 0xff, 0xff, 0xff))
	f.Add([]byte("precious notes"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, _, err := jotunheim.ReadSpool(data)
		if err != nil && n != 0 {
			t.Fatalf("an error with %d messages", n)
		}
		if err == nil && !bytes.HasPrefix(data, []byte("JSPOOL1\n")) && len(data) >= 8 {
			t.Fatalf("accepted a file without the magic")
		}
	})
}
