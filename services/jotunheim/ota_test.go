package jotunheim_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"sync"
	"testing"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/devices/ota"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natstest"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go/jetstream"
)

// otaKey is an operator key pair with its public key file.
type otaKey struct {
	pub  ed25519.PublicKey
	priv ed25519.PrivateKey
	file string
}

func newOTAKey(t *testing.T) otaKey {
	t.Helper()
	pub, priv, err := ota.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "operator.pub")
	if err := os.WriteFile(file, ota.MarshalPublicKey(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	return otaKey{pub: pub, priv: priv, file: file}
}

// otaConfig trusts key.
func otaConfig(key otaKey) jotunheim.Config {
	cfg := testConfig()
	cfg.OTAKeys = []string{key.file}
	cfg.OTAChunkBytes = 1000 // several chunks for a small binary
	return cfg
}

// putBinary puts data in the firmware object store as name and returns
// the manifest of a release of it.
func (e *env) putBinary(t *testing.T, name, version string, data []byte) ota.Manifest {
	t.Helper()
	js, err := jetstream.New(natstest.Connect(t, e.srv))
	if err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(ctxT(t), subjects.FirmwareBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obs.PutBytes(ctxT(t), name, data); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	return ota.Manifest{Name: "jotunheim", Version: version, Target: ota.Target{OS: "linux", Arch: "arm"},
		Size: uint64(len(data)), SHA256: hex.EncodeToString(sum[:]), SecurityCounter: 2}
}

func signed(t *testing.T, m ota.Manifest, priv ed25519.PrivateKey) jotunheim.PublishRequest {
	t.Helper()
	canon, err := m.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	var sig []byte
	if priv != nil {
		if sig, err = ota.Sign(m, priv); err != nil {
			t.Fatal(err)
		}
	}
	return jotunheim.PublishRequest{Manifest: string(canon), Signature: sig, Object: m.Name + "-" + m.Version}
}

func binary(t *testing.T, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func TestOTAPublishRefuses(t *testing.T) {
	key, other := newOTAKey(t), newOTAKey(t)
	e, _ := setup(t, otaConfig(key))
	m := e.putBinary(t, "jotunheim-v2", "v2", binary(t, 5000))

	tampered := m
	tampered.SHA256 = hex.EncodeToString(make([]byte, 32))
	wrongSize := m
	wrongSize.Size++
	for _, tc := range []struct {
		name     string
		req      jotunheim.PublishRequest
		wantCode fault.Code
		wantMsg  string
	}{
		{name: "unsigned", req: signed(t, m, nil), wantCode: fault.InvalidArgument, wantMsg: "unsigned"},
		{name: "other key", req: signed(t, m, other.priv), wantCode: fault.InvalidArgument, wantMsg: "does not verify"},
		{name: "digest mismatch", req: func() jotunheim.PublishRequest {
			r := signed(t, tampered, key.priv)
			r.Object = "jotunheim-v2"
			return r
		}(), wantCode: fault.InvalidArgument, wantMsg: "SHA-256"},
		{name: "size mismatch", req: func() jotunheim.PublishRequest {
			r := signed(t, wrongSize, key.priv)
			r.Object = "jotunheim-v2"
			return r
		}(), wantCode: fault.InvalidArgument, wantMsg: "bytes"},
		{name: "no object", req: func() jotunheim.PublishRequest {
			r := signed(t, m, key.priv)
			r.Object = "missing"
			return r
		}(), wantCode: fault.NotFound, wantMsg: "missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.jc.PublishRelease(ctxT(t), tc.req)
			wantCode(t, err, tc.wantCode)
			wantMessage(t, err, tc.wantMsg)
		})
	}
	rels, err := e.jc.Releases(ctxT(t))
	if err != nil || len(rels) != 0 {
		t.Fatalf("got %d releases, %v; want none recorded", len(rels), err)
	}
	rel, err := e.jc.PublishRelease(ctxT(t), signed(t, m, key.priv))
	if err != nil {
		t.Fatal(err)
	}
	if rel.Manifest != m {
		t.Fatalf("got %+v, want %+v", rel.Manifest, m)
	}
	if rels, err = e.jc.Releases(ctxT(t)); err != nil || len(rels) != 1 {
		t.Fatalf("got %d releases, %v; want 1", len(rels), err)
	}
}

func TestOTAPublishWithoutKey(t *testing.T) {
	key := newOTAKey(t)
	e, _ := setup(t, testConfig())
	m := e.putBinary(t, "jotunheim-v2", "v2", binary(t, 100))
	_, err := e.jc.PublishRelease(ctxT(t), signed(t, m, key.priv))
	wantCode(t, err, fault.FailedPrecondition)
	wantMessage(t, err, "ota_keys")
}

// otaDevice is a bare device that takes offers: it fetches the binary in
// chunks, checks its SHA-256 and size, and reports progress ending in
// final (committed, or rolled_back).
type otaDevice struct {
	*device
	final string

	mu      sync.Mutex
	offers  int
	gotSum  string
	chunks  chan *jv1.OTAChunk
	offered chan *jv1.OTAOffer
}

func (e *env) otaDevice(t *testing.T, id, final string) *otaDevice {
	t.Helper()
	d := &otaDevice{device: e.connectDemo(t, id), final: final,
		chunks: make(chan *jv1.OTAChunk, 16), offered: make(chan *jv1.OTAOffer, 16)}
	sub := func(kind string, deliver func([]byte)) {
		tok := d.c.Subscribe(topic(t, id, kind), 1, func(_ mqtt.Client, msg mqtt.Message) { deliver(msg.Payload()) })
		if !tok.WaitTimeout(wait) || tok.Error() != nil {
			t.Fatalf("device %s: subscribe %s: %v", id, kind, tok.Error())
		}
	}
	sub(subjects.DeviceOTAOffer, func(b []byte) {
		o := &jv1.OTAOffer{}
		if err := wire.Decode(b, o, 0); err != nil {
			t.Errorf("device %s: offer: %v", id, err)
			return
		}
		d.offered <- o
	})
	sub(subjects.DeviceOTAChunk, func(b []byte) {
		c := &jv1.OTAChunk{}
		if err := wire.Decode(b, c, 0); err != nil {
			t.Errorf("device %s: chunk: %v", id, err)
			return
		}
		d.chunks <- c
	})
	go func() {
		for o := range d.offered {
			d.mu.Lock()
			d.offers++
			d.mu.Unlock()
			d.update(o)
		}
	}()
	t.Cleanup(func() { close(d.offered) })
	return d
}

func (d *otaDevice) offerCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.offers
}

func (d *otaDevice) report(o *jv1.OTAOffer, version, phase string, percent uint32, running, reason string) {
	d.publish(subjects.DeviceOTAProgress, &jv1.OTAProgress{RolloutId: o.GetRolloutId(), Version: version, Phase: phase,
		Percent: percent, RunningVersion: running, Reason: reason})
}

// update plays one update: as firmware would, it trusts nothing until
// the bytes match the manifest.
func (d *otaDevice) update(o *jv1.OTAOffer) {
	m, err := ota.DecodeManifest([]byte(o.GetManifest()))
	if err != nil {
		d.t.Errorf("device %s: offered manifest: %v", d.id, err)
		return
	}
	d.report(o, m.Version, "checking", 0, "v1", "")
	var got []byte
	for uint64(len(got)) < m.Size {
		d.publish(subjects.DeviceOTAGet, &jv1.OTAChunkRequest{RolloutId: o.GetRolloutId(), Offset: uint64(len(got)), Length: o.GetChunkBytes()})
		c := <-d.chunks
		if c.GetError() != "" || c.GetOffset() != uint64(len(got)) || len(c.GetData()) == 0 {
			d.t.Errorf("device %s: chunk at %d: offset %d, %d bytes, error %q", d.id, len(got), c.GetOffset(), len(c.GetData()), c.GetError())
			return
		}
		got = append(got, c.GetData()...)
		d.report(o, m.Version, "downloading", uint32(uint64(len(got))*100/m.Size), "v1", "")
	}
	sum := sha256.Sum256(got)
	d.mu.Lock()
	d.gotSum = hex.EncodeToString(sum[:])
	d.mu.Unlock()
	d.report(o, m.Version, "verifying", 100, "v1", "")
	if d.gotSum != m.SHA256 {
		d.report(o, m.Version, "failed", 0, "v1", "digest mismatch")
		return
	}
	d.report(o, m.Version, "installing", 0, "v1", "")
	d.report(o, m.Version, "restarting", 0, "v1", "")
	if d.final == jotunheim.PhaseCommitted {
		d.report(o, m.Version, jotunheim.PhaseCommitted, 0, m.Version, "")
	} else {
		d.report(o, m.Version, jotunheim.PhaseRolledBack, 0, "v1", "health window: board did not answer")
	}
}

// publishRelease publishes a signed release of data as version.
func (e *env) publishRelease(t *testing.T, key otaKey, version string, data []byte) ota.Manifest {
	t.Helper()
	m := e.putBinary(t, "jotunheim-"+version, version, data)
	if _, err := e.jc.PublishRelease(ctxT(t), signed(t, m, key.priv)); err != nil {
		t.Fatal(err)
	}
	return m
}

// rolloutState returns rollout id as devices.ota.status answers it.
func (e *env) rolloutState(t *testing.T, id string) *jotunheim.Rollout {
	t.Helper()
	ros, err := e.jc.RolloutStatus(ctxT(t), id)
	if err != nil || len(ros) != 1 {
		t.Fatalf("status %s: %d rollouts, %v", id, len(ros), err)
	}
	return ros[0]
}

func TestOTARolloutAll(t *testing.T) {
	key := newOTAKey(t)
	e, _ := setup(t, otaConfig(key))
	data := binary(t, 4500)
	m := e.publishRelease(t, key, "v2.0.0", data)
	var devs []*otaDevice
	for _, id := range []string{"ota-a", "ota-b", "ota-c"} {
		devs = append(devs, e.otaDevice(t, id, jotunheim.PhaseCommitted))
	}
	events, err := e.jc.Watch(ctxT(t), "", "ota")
	if err != nil {
		t.Fatal(err)
	}
	ro, err := e.jc.Rollout(ctxT(t), jotunheim.RolloutRequest{Name: m.Name, Version: m.Version, All: true})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "rollout completed", func() bool { return e.rolloutState(t, ro.ID).State == jotunheim.RolloutCompleted })
	st := e.rolloutState(t, ro.ID)
	for _, d := range devs {
		ds := st.Devices[d.id]
		if ds == nil || ds.Phase != jotunheim.PhaseCommitted || ds.Running != m.Version {
			t.Fatalf("device %s: got %+v, want committed running %s", d.id, ds, m.Version)
		}
		d.mu.Lock()
		sum := d.gotSum
		d.mu.Unlock()
		if sum != m.SHA256 {
			t.Fatalf("device %s reassembled SHA-256 %s, want %s", d.id, sum, m.SHA256)
		}
	}
	select {
	case ev := <-events:
		if ev.GetKind() != "ota" || ev.GetReason() == "" {
			t.Fatalf("got event %v, want an ota event with its phase", ev)
		}
	case <-ctxT(t).Done():
		t.Fatal("no ota event")
	}
}

func TestOTACanaryHalts(t *testing.T) {
	key := newOTAKey(t)
	e, _ := setup(t, otaConfig(key))
	m := e.publishRelease(t, key, "v3", binary(t, 2500))
	// Sorted ids: the first (10% of 4, rounded up: 1) is the canary.
	canary := e.otaDevice(t, "can-0", jotunheim.PhaseRolledBack)
	var rest []*otaDevice
	for _, id := range []string{"can-1", "can-2", "can-3"} {
		rest = append(rest, e.otaDevice(t, id, jotunheim.PhaseCommitted))
	}
	ro, err := e.jc.Rollout(ctxT(t), jotunheim.RolloutRequest{Name: m.Name, Version: m.Version,
		Devices: []string{"can-3", "can-2", "can-1", "can-0"}, Strategy: jotunheim.StrategyCanary, CanaryPercent: 10, FailureThreshold: "1"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "rollout halted", func() bool { return e.rolloutState(t, ro.ID).State == jotunheim.RolloutHalted })
	st := e.rolloutState(t, ro.ID)
	if ds := st.Devices[canary.id]; ds.Phase != jotunheim.PhaseRolledBack || !ds.Canary {
		t.Fatalf("canary: got %+v, want rolled_back", ds)
	}
	wantMessage(t, errorOf(st.Reason), "can-0 rolled_back", "health window")
	// The rest waited for the canary and are never offered the release.
	for _, d := range rest {
		if n := d.offerCount(); n != 0 {
			t.Fatalf("device %s got %d offers, want none", d.id, n)
		}
		if ds := st.Devices[d.id]; ds.Phase != jotunheim.PhasePending {
			t.Fatalf("device %s: got %+v, want pending", d.id, ds)
		}
	}
}

// errorOf makes a reason checkable with wantMessage.
type reasonError string

func (r reasonError) Error() string { return string(r) }

func errorOf(s string) error {
	if s == "" {
		return nil
	}
	return reasonError(s)
}

func TestOTAResumesAfterRestart(t *testing.T) {
	key := newOTAKey(t)
	e := setupBare(t)
	_, stop := e.replica(t, otaConfig(key))
	m := e.publishRelease(t, key, "v4", binary(t, 3000))
	// A device that hears the offer but does not answer before the
	// replica stops.
	mute := e.connectDemo(t, "mute")
	offers := make(chan []byte, 4)
	tok := mute.c.Subscribe(topic(t, "mute", subjects.DeviceOTAOffer), 1, func(_ mqtt.Client, msg mqtt.Message) { offers <- msg.Payload() })
	if !tok.WaitTimeout(wait) || tok.Error() != nil {
		t.Fatal(tok.Error())
	}
	ro, err := e.jc.Rollout(ctxT(t), jotunheim.RolloutRequest{Name: m.Name, Version: m.Version, Devices: []string{"mute"}})
	if err != nil {
		t.Fatal(err)
	}
	first := waitPayload(t, offers)
	stop()
	_, _ = e.replica(t, otaConfig(key))
	again := waitPayload(t, offers)
	if !bytes.Equal(first, again) {
		t.Fatalf("re-offer differs: %s, want %s", again, first)
	}
	o := &jv1.OTAOffer{}
	if err := wire.Decode(again, o, 0); err != nil || o.GetRolloutId() != ro.ID {
		t.Fatalf("got %v (%v), want an offer of rollout %s", o, err, ro.ID)
	}
	mute.publish(subjects.DeviceOTAProgress, &jv1.OTAProgress{RolloutId: ro.ID, Version: m.Version, Phase: "committed", RunningVersion: m.Version})
	eventually(t, "rollout completed", func() bool { return e.rolloutState(t, ro.ID).State == jotunheim.RolloutCompleted })
}

func waitPayload(t *testing.T, ch <-chan []byte) []byte {
	t.Helper()
	select {
	case b := <-ch:
		return b
	case <-ctxT(t).Done():
		t.Fatal("no offer")
		return nil
	}
}

// FuzzPublishRequest: any body decodes to a valid manifest or is
// INVALID_ARGUMENT.
func FuzzPublishRequest(f *testing.F) {
	for _, s := range []string{"", "{", `{"manifest":"{}","signature":"AA==","object":"x"}`,
		`{"manifest":"{\"name\":\"jotunheim\",\"security_counter\":7,\"sha256\":\"abababababababababababababababababababababababababababababababab\",\"size\":1234,\"target\":{\"arch\":\"arm\",\"model\":\"pi-zero\",\"os\":\"linux\"},\"version\":\"v1.4.0\"}","signature":"AA==","object":"x"}`,
		`{"zz":1}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		_, m, err := jotunheim.DecodePublishRequest(data)
		if err != nil {
			if fault.CodeOf(err) != fault.InvalidArgument {
				t.Fatalf("got %v, want INVALID_ARGUMENT", err)
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("accepted an invalid manifest: %v", err)
		}
	})
}

func TestOTACanaryThenRest(t *testing.T) {
	key := newOTAKey(t)
	e, _ := setup(t, otaConfig(key))
	m := e.publishRelease(t, key, "v5", binary(t, 1500))
	var devs []*otaDevice
	for _, id := range []string{"cr-0", "cr-1", "cr-2"} {
		devs = append(devs, e.otaDevice(t, id, jotunheim.PhaseCommitted))
	}
	ro, err := e.jc.Rollout(ctxT(t), jotunheim.RolloutRequest{Name: m.Name, Version: m.Version, Model: "bare-paho",
		Strategy: jotunheim.StrategyCanary, CanaryPercent: 34})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(ro.Devices); n != 3 {
		t.Fatalf("got %d targets, want 3", n)
	}
	eventually(t, "rollout completed", func() bool { return e.rolloutState(t, ro.ID).State == jotunheim.RolloutCompleted })
	st := e.rolloutState(t, ro.ID)
	canaries := 0
	for _, d := range devs {
		if ds := st.Devices[d.id]; ds.Phase != jotunheim.PhaseCommitted {
			t.Fatalf("device %s: got %+v, want committed", d.id, ds)
		} else if ds.Canary {
			canaries++
		}
	}
	if canaries != 2 {
		t.Fatalf("got %d canaries, want 2 (34%% of 3, rounded up)", canaries)
	}
}

// A device busy with an update that refuses a repeated offer (as one
// resumed after a restart) keeps its state: the refusal is not counted.
func TestOTARepeatedOfferRefusalIgnored(t *testing.T) {
	key := newOTAKey(t)
	e, _ := setup(t, otaConfig(key))
	m := e.publishRelease(t, key, "v6", binary(t, 100))
	d := e.connectDemo(t, "busy")
	ro, err := e.jc.Rollout(ctxT(t), jotunheim.RolloutRequest{Name: m.Name, Version: m.Version, Devices: []string{"busy"}})
	if err != nil {
		t.Fatal(err)
	}
	report := func(phase, running, reason string) {
		d.publish(subjects.DeviceOTAProgress, &jv1.OTAProgress{RolloutId: ro.ID, Version: m.Version, Phase: phase, RunningVersion: running, Reason: reason})
	}
	report("installing", "v1", "")
	report(jotunheim.PhaseRefused, "v1", "an update is pending")
	report("restarting", "v1", "")
	eventually(t, "restarting recorded", func() bool {
		return e.rolloutState(t, ro.ID).Devices["busy"].Phase == "restarting"
	})
	if st := e.rolloutState(t, ro.ID); st.State != jotunheim.RolloutRunning {
		t.Fatalf("got %s (%s), want running", st.State, st.Reason)
	}
	report(jotunheim.PhaseCommitted, m.Version, "")
	eventually(t, "rollout completed", func() bool { return e.rolloutState(t, ro.ID).State == jotunheim.RolloutCompleted })
}
