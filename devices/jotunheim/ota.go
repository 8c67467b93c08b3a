package jotunheim

// OTA updates in the agent (docs/OTA.md): the platform offers a signed
// release on ota/offer; the agent checks it, downloads it in chunks over
// ota/get → ota/chunk into the installer's staging (devices/ota), installs
// it and returns ErrUpdated from Run so that cmd/jotunheim execs the new
// current. A new release commits once it is connected, accepted and its
// board answers within the health window; otherwise it rolls back.

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/loki-iot/loki/devices/ota"
	"github.com/loki-iot/loki/internal/atomicfile"
	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

// The phases of OTAProgress.
const (
	PhaseChecking    = "checking"
	PhaseDownloading = "downloading"
	PhaseVerifying   = "verifying"
	PhaseInstalling  = "installing"
	PhaseRestarting  = "restarting"
	PhaseCommitted   = "committed"
	PhaseRolledBack  = "rolled_back"
	PhaseRefused     = "refused"
	PhaseFailed      = "failed"
)

// CmdOTARollback rolls back to the previous release (docs/DEVICES.md).
const CmdOTARollback = "ota.rollback"

// OTAInfoFile is the agent's note beside the installer's files: the
// rollout and health window of the release it installed, so that the new
// process reports under the same rollout and uses the offered window.
const OTAInfoFile = "agent-ota.json"

// Bounds of an offer's health window.
const (
	minOfferWindow = 5 * time.Second
	maxOfferWindow = time.Hour
)

// Download tuning: chunks in flight, the wait before asking again, and
// how long a download may go without a byte before it fails.
const (
	chunksInFlight = 4
	chunkRetry     = 5 * time.Second
	downloadStall  = 2 * time.Minute
)

// WithOTA hands the agent the installer cmd/jotunheim opened and booted
// (ota.Installer.Boot) for cfg.OTA.Dir. Without it, New opens the
// directory itself (without Boot).
func WithOTA(inst *ota.Installer) Option { return func(a *Agent) { a.otaInst = inst } }

// otaInfo is the content of OTAInfoFile.
type otaInfo struct {
	RolloutID     string `json:"rollout_id"`
	Version       string `json:"version"`
	HealthSeconds uint32 `json:"health_window_seconds"`
}

// otaAgent is the agent's OTA state; nil when OTA is off.
type otaAgent struct {
	inst   *ota.Installer
	pub    ed25519.PublicKey
	target ota.Target
	info   otaInfo

	offers   chan *jv1.OTAOffer
	chunks   chan *jv1.OTAChunk
	accepted chan struct{} // a session was accepted (otaLoop)
	nudge    chan struct{} // a session was accepted (the download)

	mu         sync.Mutex
	pending    *ota.Pending  // the running release awaiting Commit
	rolledBack *ota.Rollback // to report once connected
	report     *jv1.OTAProgress
}

// poke signals ch without blocking.
func poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// openOTA sets up a.ota when cfg.OTA.Dir is set.
func (a *Agent) openOTA() error {
	c := a.cfg.OTA
	if c.Dir == "" {
		return nil
	}
	data, err := os.ReadFile(c.PublicKeyFile)
	if err != nil {
		return fmt.Errorf("%w: %s: ota.public_key_file: %v", ErrConfig, a.cfg.at("ota.public_key_file"), err)
	}
	pub, err := ota.ParsePublicKey(data)
	if err != nil {
		return fmt.Errorf("%w: %s: ota.public_key_file: %s: %v", ErrConfig, a.cfg.at("ota.public_key_file"), c.PublicKeyFile, err)
	}
	inst := a.otaInst
	if inst == nil {
		if inst, err = ota.Open(c.Dir, ota.WithBootLimit(c.BootLimit), ota.WithFactory(FirmwareVersion, 0)); err != nil {
			return fmt.Errorf("%w: %s: ota.dir: %v", ErrConfig, a.cfg.at("ota.dir"), err)
		}
	}
	model := c.Model
	if model == "" {
		model = a.cfg.Device.Model
	}
	o := &otaAgent{
		inst: inst, pub: pub, target: ota.Target{OS: runtime.GOOS, Arch: runtime.GOARCH, Model: model},
		offers: make(chan *jv1.OTAOffer, 1), chunks: make(chan *jv1.OTAChunk, 2*chunksInFlight),
		accepted: make(chan struct{}, 1), nudge: make(chan struct{}, 1),
	}
	if b, err := os.ReadFile(filepath.Join(c.Dir, OTAInfoFile)); err == nil {
		_ = json.Unmarshal(b, &o.info) // informative only
	}
	st := inst.State()
	o.pending = st.Pending
	if rb := st.LastRollback; rb != nil && !rb.Reported {
		o.rolledBack = rb
	}
	a.ota = o
	return nil
}

// healthWindow is the window of the pending release: the offer's, when
// the info file is about it, else the config's.
func (o *otaAgent) healthWindow(cfg OTAConfig) time.Duration {
	if o.pending != nil && o.info.Version == o.pending.Version && o.info.HealthSeconds > 0 {
		return time.Duration(o.info.HealthSeconds) * time.Second
	}
	return cfg.HealthWindow
}

// otaLoop runs offers, the health window and the reports until ctx ends;
// it cancels ctx with ErrUpdated once current changed (an install or a
// rollback).
func (a *Agent) otaLoop(ctx context.Context, cancel context.CancelCauseFunc) {
	o := a.ota
	if o == nil {
		return
	}
	var window <-chan time.Time
	o.mu.Lock()
	if o.pending != nil {
		w := o.healthWindow(a.cfg.OTA)
		t := time.NewTimer(time.Until(a.started.Add(w)))
		defer t.Stop()
		window = t.C
		a.log.Info("new release on trial: it commits once connected, accepted and its board answers",
			"version", o.pending.Version, "attempt", o.pending.Attempts, "health_window", w)
	}
	o.mu.Unlock()
	for {
		select {
		case <-ctx.Done():
			return
		case <-o.accepted:
			a.otaReports()
			if a.otaHealthy() {
				window = nil
			}
		case <-window:
			o.mu.Lock()
			p := o.pending
			o.mu.Unlock()
			if p == nil {
				continue
			}
			reason := fmt.Sprintf("health window passed: %s was not connected, accepted and answering within %v", p.Version, o.healthWindow(a.cfg.OTA))
			if a.otaRollback(reason) {
				cancel(ErrUpdated)
				return
			}
		case off := <-o.offers:
			if a.otaUpdate(ctx, off) {
				cancel(ErrUpdated)
				return
			}
		}
	}
}

// otaHealthy commits the pending release when its board answers; it
// reports whether nothing is left on trial.
func (a *Agent) otaHealthy() bool {
	o := a.ota
	o.mu.Lock()
	p := o.pending
	o.mu.Unlock()
	if p == nil {
		return true
	}
	if err := a.boardAnswers(); err != nil {
		a.log.Warn("OTA health: the board does not answer yet", logErr, err)
		return false
	}
	if err := o.inst.Commit(); err != nil {
		a.log.Error("OTA commit", logErr, err)
		return false
	}
	a.log.Info("new release committed", "version", p.Version)
	o.mu.Lock()
	o.pending = nil
	o.report = &jv1.OTAProgress{RolloutId: o.info.RolloutID, Version: p.Version, Phase: PhaseCommitted, RunningVersion: FirmwareVersion}
	o.mu.Unlock()
	a.otaReports()
	return true
}

// otaReports sends a rolled_back (then AckRollback) or committed report
// not sent yet; a failed one is sent again on the next connection.
func (a *Agent) otaReports() {
	o := a.ota
	o.mu.Lock()
	rb, rep := o.rolledBack, o.report
	o.mu.Unlock()
	if rb != nil {
		p := &jv1.OTAProgress{RolloutId: o.info.RolloutID, Version: rb.Version, Phase: PhaseRolledBack, Reason: rb.Reason, RunningVersion: FirmwareVersion}
		if err := a.publish(a.topics.otaProgress, 1, false, p); err != nil {
			a.log.Warn("report rollback", logErr, err)
		} else {
			if err := o.inst.AckRollback(); err != nil {
				a.log.Warn("OTA AckRollback", logErr, err)
			}
			o.mu.Lock()
			o.rolledBack = nil
			o.mu.Unlock()
		}
	}
	if rep != nil {
		if err := a.publish(a.topics.otaProgress, 1, false, rep); err != nil {
			a.log.Warn("report commit", logErr, err)
			return
		}
		o.mu.Lock()
		o.report = nil
		o.mu.Unlock()
	}
}

// boardAnswers reads the board's first sensor, or its info without one.
func (a *Agent) boardAnswers() error {
	dev := a.hw.device()
	if s := dev.Config().Sensors; len(s) > 0 {
		_, err := a.hw.readSensor(s[0].Name)
		return err
	}
	_ = dev.Info()
	return nil
}

// otaRollback rolls the pending release back for reason; it reports
// whether current changed (the caller restarts into it).
func (a *Agent) otaRollback(reason string) bool {
	o := a.ota
	o.mu.Lock()
	p := o.pending
	o.mu.Unlock()
	if p == nil {
		return false
	}
	a.log.Error("rolling back", "version", p.Version, "reason", reason)
	if _, err := o.inst.Rollback(reason); err != nil {
		a.log.Error("OTA rollback failed: running on", logErr, err)
		return false
	}
	return true
}

// rollbackRefused rolls back a pending release the platform refused.
func (a *Agent) rollbackRefused(err error) bool {
	return a.ota != nil && a.otaRollback("refused by the platform: "+err.Error())
}

// manualRollback is the ota.rollback command.
func (a *Agent) manualRollback(args map[string]any) (any, error) {
	if a.ota == nil {
		return nil, fault.New(fault.FailedPrecondition, "device %s: OTA is not configured", a.cfg.Device.ID)
	}
	reason := "manual rollback"
	if r, ok := args["reason"].(string); ok && r != "" {
		reason += ": " + trunc(r)
	}
	rb, err := a.ota.inst.Rollback(reason)
	switch {
	case errors.Is(err, ota.ErrState), errors.Is(err, ota.ErrDowngrade):
		return nil, fault.New(fault.FailedPrecondition, "device %s: %v", a.cfg.Device.ID, err)
	case err != nil:
		return nil, fault.Wrap(fault.Unavailable, err, "device %s: rollback: %v", a.cfg.Device.ID, err)
	}
	a.log.Warn("rolled back by command", "from", rb.Version, "reason", reason)
	return map[string]any{"rolled_back": rb.Version, "running": a.ota.inst.State().Installed.Version, "restarting": true}, nil
}

// handleOffer queues an offer for otaLoop.
func (a *Agent) handleOffer(off *jv1.OTAOffer) {
	select {
	case a.ota.offers <- off:
	default:
		a.log.Warn("OTA offer dropped: another one is being handled", "rollout", off.GetRolloutId())
	}
}

// handleChunk hands a chunk to the download.
func (a *Agent) handleChunk(c *jv1.OTAChunk) {
	select {
	case a.ota.chunks <- c:
	default: // no download waits for it, or it is far behind: asked again
	}
}

// progress publishes one OTAProgress (QoS 1); a failure is logged.
func (a *Agent) progress(off *jv1.OTAOffer, version, phase string, percent uint32, reason string) {
	p := &jv1.OTAProgress{RolloutId: off.GetRolloutId(), Version: version, Phase: phase, Percent: percent, Reason: reason, RunningVersion: FirmwareVersion}
	if err := a.publish(a.topics.otaProgress, 1, false, p); err != nil {
		a.log.Warn("report OTA progress", "phase", phase, logErr, err)
	}
}

// otaUpdate runs one offer to its end; it reports whether a release was
// installed (the caller restarts into it).
func (a *Agent) otaUpdate(ctx context.Context, off *jv1.OTAOffer) bool {
	o := a.ota
	a.progress(off, "", PhaseChecking, 0, "")
	m, err := ota.DecodeManifest([]byte(off.GetManifest()))
	if err != nil {
		a.otaRefused(off, "", err)
		return false
	}
	log := a.log.With("rollout", off.GetRolloutId(), "version", m.Version)
	log.Info("OTA offer")
	// The checks Stage makes before reading a byte, so that a refusal is
	// told apart from a failed download; Stage makes them again.
	if err := ota.Verify(m, off.GetSignature(), o.pub); err != nil {
		a.otaRefused(off, m.Version, err)
		return false
	}
	if err := m.Matches(o.target); err != nil {
		a.otaRefused(off, m.Version, err)
		return false
	}
	st := o.inst.State()
	if m.SecurityCounter < st.SecurityFloor {
		a.otaRefused(off, m.Version, fmt.Errorf("%w: counter %d is below the device's floor %d", ota.ErrDowngrade, m.SecurityCounter, st.SecurityFloor))
		return false
	}
	if st.Pending != nil {
		a.otaRefused(off, m.Version, fmt.Errorf("%w: %s is pending its health window", ota.ErrState, st.Pending.Version))
		return false
	}
	chunk := uint64(a.cfg.Limits.MaxMessageBytes-512) / 4 * 3 // base64 in protojson
	if c := uint64(off.GetChunkBytes()); c > 0 && c < chunk {
		chunk = c
	}
	r := &chunkReader{a: a, ctx: ctx, off: off, version: m.Version, size: m.Size, chunk: chunk, got: map[uint64][]byte{}, lastPct: -1}
	if err := o.inst.Stage(r, m, off.GetSignature(), o.pub, o.target); err != nil {
		if !r.started {
			a.otaRefused(off, m.Version, err)
		} else {
			log.Error("OTA download failed", logErr, err)
			a.progress(off, m.Version, PhaseFailed, 0, err.Error())
		}
		return false
	}
	a.progress(off, m.Version, PhaseInstalling, 0, "")
	w := a.cfg.OTA.HealthWindow
	if s := off.GetHealthWindowSeconds(); s > 0 {
		w = min(max(time.Duration(s)*time.Second, minOfferWindow), maxOfferWindow)
	}
	info := otaInfo{RolloutID: off.GetRolloutId(), Version: m.Version, HealthSeconds: uint32(w / time.Second)}
	b, _ := json.Marshal(info)
	if err := atomicfile.Write(filepath.Join(a.cfg.OTA.Dir, OTAInfoFile), append(b, '\n'), 0o600); err != nil {
		log.Warn("OTA info file", logErr, err)
	}
	if err := o.inst.Install(); err != nil {
		log.Error("OTA install failed", logErr, err)
		a.progress(off, m.Version, PhaseFailed, 0, "install: "+err.Error())
		if rerr := o.inst.Recover(); rerr != nil {
			log.Error("OTA recover", logErr, rerr)
		}
		// Recover may have finished the swap: current is then the new release.
		return o.inst.State().Pending != nil
	}
	log.Info("OTA installed: restarting into it")
	a.progress(off, m.Version, PhaseRestarting, 0, "")
	return true
}

func (a *Agent) otaRefused(off *jv1.OTAOffer, version string, err error) {
	a.log.Warn("OTA offer refused", "rollout", off.GetRolloutId(), "version", version, logErr, err)
	a.progress(off, version, PhaseRefused, 0, err.Error())
}

// chunkReader reads the offered binary from the platform in chunks, a few
// requests in flight, asking again for what does not come (after a
// reconnect the download resumes where it was). It asks for nothing
// before Stage's first Read, which follows Stage's checks.
type chunkReader struct {
	a       *Agent
	ctx     context.Context
	off     *jv1.OTAOffer
	version string
	size    uint64
	chunk   uint64

	started bool
	buf     []byte
	want    uint64            // offset of the next byte Read returns after buf
	asked   uint64            // requests are out for [want, asked)
	got     map[uint64][]byte // chunks received ahead of want
	lastPct int
	stall   time.Time // when the last byte arrived
}

func (r *chunkReader) Read(p []byte) (int, error) {
	if !r.started {
		r.started, r.stall = true, time.Now()
		r.a.progress(r.off, r.version, PhaseDownloading, 0, "")
		r.lastPct = 0
	}
	for len(r.buf) == 0 {
		if r.want >= r.size {
			r.a.progress(r.off, r.version, PhaseVerifying, 0, "")
			return 0, io.EOF
		}
		if err := r.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// length is the length of the chunk at off.
func (r *chunkReader) length(off uint64) uint64 { return min(r.chunk, r.size-off) }

// fill asks for chunks up to the window and waits until the one at want
// arrived (into buf).
func (r *chunkReader) fill() error {
	for r.asked < r.size && r.asked < r.want+chunksInFlight*r.chunk {
		n := r.length(r.asked)
		if _, ok := r.got[r.asked]; !ok {
			req := &jv1.OTAChunkRequest{RolloutId: r.off.GetRolloutId(), Offset: r.asked, Length: uint32(n)}
			if err := r.a.publish(r.a.topics.otaGet, 0, false, req); err != nil {
				r.a.log.Debug("OTA chunk request", logErr, err)
			}
		}
		r.asked += n
	}
	if d, ok := r.got[r.want]; ok {
		delete(r.got, r.want)
		r.buf = d
		r.want += uint64(len(d))
		if pct := int(r.want * 100 / r.size); pct/10 > r.lastPct/10 && pct < 100 {
			r.lastPct = pct
			r.a.progress(r.off, r.version, PhaseDownloading, uint32(pct), "")
		}
		return nil
	}
	t := time.NewTimer(chunkRetry)
	defer t.Stop()
	select {
	case <-r.ctx.Done():
		return r.ctx.Err()
	case c := <-r.a.ota.chunks:
		if c.GetRolloutId() != r.off.GetRolloutId() {
			return nil
		}
		if c.GetError() != "" {
			return fmt.Errorf("the platform: %s", c.GetError())
		}
		off := c.GetOffset()
		if off < r.want || off >= r.asked || (off-r.want)%r.chunk != 0 || uint64(len(c.GetData())) != r.length(off) {
			return nil // a duplicate or a stale answer
		}
		r.got[off] = c.GetData()
		r.stall = time.Now()
	case <-r.a.ota.nudge:
		r.asked = r.want // reconnected: ask again for what is missing
	case <-t.C:
		if time.Since(r.stall) > downloadStall {
			return fmt.Errorf("download stalled at %d of %d bytes for %v", r.want, r.size, downloadStall)
		}
		r.asked = r.want
	}
	return nil
}
