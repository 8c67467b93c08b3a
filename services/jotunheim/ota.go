package jotunheim

// The platform side of OTA updates (docs/OTA.md): signed releases recorded
// on devices.ota.publish, rollouts driven from devices.ota.rollout, the
// chunks devices fetch and the progress they report.
//
// State lives in the OTA bucket: release.<name>.<version> holds a Release,
// rollout.<id> a Rollout with every target device's state, updated with
// compare-and-set so that any replica may drive any rollout and a restart
// resumes it. Binaries live in the firmware object store; a replica serves
// chunks from the bytes of the release it last read, which it keeps in
// memory (one release at a time, at most ota_max_release_bytes): the
// object store has no random access, and a fleet downloads one release at
// a time.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/loki-iot/loki/devices/ota"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/replicas"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// Device phases of a rollout. The device reports checking, downloading,
// verifying, installing, restarting, committed, rolled_back, refused and
// failed; the platform sets pending and offered.
const (
	PhasePending    = "pending"
	PhaseOffered    = "offered"
	PhaseCommitted  = "committed"
	PhaseRolledBack = "rolled_back"
	PhaseRefused    = "refused"
	PhaseFailed     = "failed"
)

// Rollout states.
const (
	RolloutRunning   = "running"
	RolloutHalted    = "halted"
	RolloutCompleted = "completed"
)

// Rollout strategies.
const (
	StrategyAll    = "all"
	StrategyCanary = "canary"
)

// devicePhases are the phases a device may report.
var devicePhases = []string{"checking", "downloading", "verifying", "installing", "restarting",
	PhaseCommitted, PhaseRolledBack, PhaseRefused, PhaseFailed}

// pastChecking are the phases of a device that accepted an offer and is
// updating.
var pastChecking = []string{"downloading", "verifying", "installing", "restarting"}

// PublishRequest is the body of devices.ota.publish: a signed manifest and
// the name of the binary an admin put in the firmware object store.
type PublishRequest struct {
	// Manifest is the manifest's JSON; it is recorded in its canonical form.
	Manifest string `json:"manifest"`
	// Signature is the ed25519 signature over the manifest (base64 in JSON).
	Signature []byte `json:"signature"`
	// Object is the binary's name in the firmware object store.
	Object string `json:"object"`
}

// Release is a published release: its manifest, signature and binary.
type Release struct {
	Manifest    ota.Manifest `json:"manifest"`
	Canonical   string       `json:"canonical"`
	Signature   []byte       `json:"signature"`
	Object      string       `json:"object"`
	PublishedAt time.Time    `json:"published_at"`
}

// RolloutRequest is the body of devices.ota.rollout. Exactly one of
// Devices, Model and All chooses the targets.
type RolloutRequest struct {
	// Name and Version name a published release.
	Name    string `json:"name"`
	Version string `json:"version"`
	// Devices are device ids; Model every known device of that model; All
	// every known device (of the release's model when it names one).
	Devices []string `json:"devices,omitempty"`
	Model   string   `json:"model,omitempty"`
	All     bool     `json:"all,omitempty"`
	// Strategy is "all" (the default) or "canary": CanaryPercent of the
	// targets (at least one; default 10) first, the rest once every one of
	// them committed.
	Strategy      string `json:"strategy,omitempty"`
	CanaryPercent int    `json:"canary_percent,omitempty"`
	// FailureThreshold halts the rollout when this many devices failed,
	// refused or rolled back: a count ("1", the default) or a percentage of
	// the targets ("10%").
	FailureThreshold string `json:"failure_threshold,omitempty"`
	// HealthWindowSeconds is passed on to the devices (0: their default).
	HealthWindowSeconds uint32 `json:"health_window_seconds,omitempty"`
}

// DeviceRollout is one device's state in a rollout.
type DeviceRollout struct {
	Phase   string    `json:"phase"`
	Percent uint32    `json:"percent,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Running string    `json:"running_version,omitempty"`
	Canary  bool      `json:"canary,omitempty"`
	Updated time.Time `json:"updated"`
}

// Rollout is a rollout's record in the OTA bucket.
type Rollout struct {
	ID                  string                    `json:"id"`
	Name                string                    `json:"name"`
	Version             string                    `json:"version"`
	Strategy            string                    `json:"strategy"`
	CanaryPercent       int                       `json:"canary_percent,omitempty"`
	FailureThreshold    string                    `json:"failure_threshold"`
	FailureLimit        int                       `json:"failure_limit"`
	HealthWindowSeconds uint32                    `json:"health_window_seconds,omitempty"`
	State               string                    `json:"state"`
	Reason              string                    `json:"reason,omitempty"`
	Created             time.Time                 `json:"created"`
	Updated             time.Time                 `json:"updated"`
	Devices             map[string]*DeviceRollout `json:"devices"`
}

// phaseFailed reports whether phase ends a device's update unsuccessfully.
func phaseFailed(phase string) bool {
	return phase == PhaseRolledBack || phase == PhaseRefused || phase == PhaseFailed
}

// StatusRequest is the body of devices.ota.status; an empty ID asks for
// every rollout.
type StatusRequest struct {
	ID string `json:"id,omitempty"`
}

// releaseList and rolloutList are the replies of devices.ota.releases and
// devices.ota.status.
type releaseList struct {
	Releases []*Release `json:"releases"`
}

type rolloutList struct {
	Rollouts []*Rollout `json:"rollouts"`
}

// keyToken escapes a manifest token for a KV key ([-/_=.a-zA-Z0-9]): '+'
// becomes "=2B" and, when dots is set, '.' becomes "=2E", so that
// release.<name>.<version> is unambiguous.
func keyToken(s string, dots bool) string {
	s = strings.ReplaceAll(s, "+", "=2B")
	if dots {
		s = strings.ReplaceAll(s, ".", "=2E")
	}
	return s
}

func releaseKey(name, version string) string {
	return "release." + keyToken(name, true) + "." + keyToken(version, false)
}

func rolloutKey(id string) string { return "rollout." + id }

// otaState is a replica's OTA state.
type otaState struct {
	kv   jetstream.KeyValue
	obj  jetstream.ObjectStore
	keys []ed25519.PublicKey
	ctx  context.Context // Run's; for work started by device messages

	mu     sync.Mutex // the cache below; held while it is filled
	object string
	digest string
	data   []byte
}

// loadOTAKeys reads the public keys of cfg.OTAKeys.
func loadOTAKeys(paths []string) ([]ed25519.PublicKey, error) {
	var keys []ed25519.PublicKey
	for i, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("%w: ota_keys[%d]: %v", ErrConfig, i, err)
		}
		k, err := ota.ParsePublicKey(b)
		if err != nil {
			return nil, fmt.Errorf("%w: ota_keys[%d] = %q: %v", ErrConfig, i, p, err)
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// openOTA opens (or creates) the OTA bucket and the firmware object store.
func (s *Service) openOTA(ctx context.Context) error {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return fmt.Errorf("jotunheim: %w", err)
	}
	err = replicas.Setup(ctx, s.log, subjects.OTABucket, func(ctx context.Context) (err error) {
		s.ota.kv, err = js.KeyValue(ctx, subjects.OTABucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			s.ota.kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket:      subjects.OTABucket,
				Description: "Jotunheim OTA: releases (release.<name>.<version>) and rollouts (rollout.<id>)",
				History:     1,
				Storage:     jetstream.FileStorage,
				Replicas:    s.cfg.Replicas,
			})
			if errors.Is(err, jetstream.ErrBucketExists) {
				s.ota.kv, err = js.KeyValue(ctx, subjects.OTABucket)
			}
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("jotunheim: open bucket %s: %w", subjects.OTABucket, err)
	}
	err = replicas.Setup(ctx, s.log, subjects.FirmwareBucket, func(ctx context.Context) (err error) {
		s.ota.obj, err = js.ObjectStore(ctx, subjects.FirmwareBucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			s.ota.obj, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
				Bucket:      subjects.FirmwareBucket,
				Description: "Jotunheim release binaries (docs/OTA.md)",
				Storage:     jetstream.FileStorage,
				Replicas:    s.cfg.Replicas,
			})
			if errors.Is(err, jetstream.ErrBucketExists) {
				s.ota.obj, err = js.ObjectStore(ctx, subjects.FirmwareBucket)
			}
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("jotunheim: open object store %s: %w", subjects.FirmwareBucket, err)
	}
	return nil
}

func jsonReply(v any) ([]byte, nats.Header, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, nil, fmt.Errorf("encode %T: %w", v, err)
	}
	return b, nil, nil
}

// decodeRequest decodes a JSON request body into v, refusing unknown
// fields and trailing data.
func decodeRequest(data []byte, v any) error {
	if len(data) > MaxRequestBytes {
		return fault.New(fault.InvalidArgument, "request is %d bytes: at most %d", len(data), MaxRequestBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fault.New(fault.InvalidArgument, "body: want the JSON of a %T: %v", v, err)
	}
	if dec.More() {
		return fault.New(fault.InvalidArgument, "body: trailing data after the JSON")
	}
	return nil
}

// DecodePublishRequest decodes the body of devices.ota.publish and checks
// its manifest's fields.
func DecodePublishRequest(data []byte) (PublishRequest, ota.Manifest, error) {
	var req PublishRequest
	if err := decodeRequest(data, &req); err != nil {
		return req, ota.Manifest{}, err
	}
	m, err := ota.DecodeManifest([]byte(req.Manifest))
	if err != nil {
		return req, m, fault.New(fault.InvalidArgument, "manifest: %v", err)
	}
	if len(req.Signature) == 0 {
		return req, m, fault.New(fault.InvalidArgument, "release %s %s is unsigned: sign it with 'loki ota sign'", m.Name, m.Version)
	}
	if req.Object == "" {
		return req, m, fault.New(fault.InvalidArgument, "object: name the binary in the object store %s", subjects.FirmwareBucket)
	}
	return req, m, nil
}

func (s *Service) handleOTAPublish(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	req, m, err := DecodePublishRequest(r.Data())
	if err != nil {
		return nil, nil, err
	}
	if len(s.ota.keys) == 0 {
		return nil, nil, fault.New(fault.FailedPrecondition,
			"no release signing key is trusted: set [jotunheim] ota_keys to the operator's public key files ('loki ota keygen')")
	}
	verified := false
	for _, k := range s.ota.keys {
		if ota.Verify(m, req.Signature, k) == nil {
			verified = true
			break
		}
	}
	if !verified {
		return nil, nil, fault.New(fault.InvalidArgument,
			"release %s %s: the signature does not verify under any key of [jotunheim] ota_keys", m.Name, m.Version)
	}
	if m.Size > uint64(s.cfg.OTAMaxReleaseBytes) {
		return nil, nil, fault.New(fault.InvalidArgument, "release %s %s is %d bytes: at most %d ([jotunheim] ota_max_release_bytes)",
			m.Name, m.Version, m.Size, s.cfg.OTAMaxReleaseBytes)
	}
	info, err := s.ota.obj.GetInfo(ctx, req.Object)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, nil, fault.New(fault.NotFound, "no object %q in %s: put the binary there first", req.Object, subjects.FirmwareBucket)
	}
	if err != nil {
		return nil, nil, fault.Wrap(fault.Unavailable, err, "object store %s: %v", subjects.FirmwareBucket, err)
	}
	if info.Size != m.Size {
		return nil, nil, fault.New(fault.InvalidArgument, "object %q is %d bytes, the manifest says %d", req.Object, info.Size, m.Size)
	}
	if got := objectDigestHex(info.Digest); got != m.SHA256 {
		return nil, nil, fault.New(fault.InvalidArgument, "object %q has SHA-256 %s, the manifest says %s", req.Object, orNone(got), m.SHA256)
	}
	canon, _ := m.Canonical() // DecodeManifest validated it
	rel := &Release{Manifest: m, Canonical: string(canon), Signature: req.Signature, Object: req.Object, PublishedAt: time.Now().UTC()}
	b, err := json.Marshal(rel)
	if err != nil {
		return nil, nil, err
	}
	key := releaseKey(m.Name, m.Version)
	if _, err := s.ota.kv.Create(ctx, key, b); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return nil, nil, fault.Wrap(fault.Unavailable, err, "OTA bucket: record %s: %v", key, err)
		}
		old, gerr := s.release(ctx, m.Name, m.Version)
		if gerr != nil {
			return nil, nil, gerr
		}
		if old.Canonical != rel.Canonical || old.Object != rel.Object {
			return nil, nil, fault.New(fault.AlreadyExists, "release %s %s is already published with another manifest or object", m.Name, m.Version)
		}
		return jsonReply(old)
	}
	s.log.Info("OTA release published", "release", m.Name, "version", m.Version, "object", req.Object)
	return jsonReply(rel)
}

func orNone(s string) string {
	if s == "" {
		return "(none recorded)"
	}
	return s
}

// objectDigestHex turns the object store's "SHA-256=<base64url>" into hex.
func objectDigestHex(d string) string {
	v, ok := strings.CutPrefix(d, "SHA-256=")
	if !ok {
		return ""
	}
	b, err := base64.URLEncoding.DecodeString(v)
	if err != nil {
		return ""
	}
	return hex.EncodeToString(b)
}

// release reads a published release.
func (s *Service) release(ctx context.Context, name, version string) (*Release, error) {
	e, err := s.ota.kv.Get(ctx, releaseKey(name, version))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fault.New(fault.NotFound, "no release %s@%s: publish it with 'loki ota publish'", name, version)
	}
	if err != nil {
		return nil, fault.Wrap(fault.Unavailable, err, "OTA bucket: %v", err)
	}
	rel := &Release{}
	if err := json.Unmarshal(e.Value(), rel); err != nil {
		return nil, fmt.Errorf("OTA bucket: decode %s: %w", e.Key(), err)
	}
	return rel, nil
}

// keysWith lists the OTA bucket's keys under prefix.
func (s *Service) keysWith(ctx context.Context, prefix string) ([]string, error) {
	l, err := s.ota.kv.ListKeysFiltered(ctx, prefix+">")
	if err != nil {
		return nil, fault.Wrap(fault.Unavailable, err, "OTA bucket: list: %v", err)
	}
	var keys []string
	for k := range l.Keys() {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys, nil
}

func (s *Service) handleOTAReleases(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	keys, err := s.keysWith(ctx, "release.")
	if err != nil {
		return nil, nil, err
	}
	out := releaseList{Releases: []*Release{}}
	for _, k := range keys {
		e, err := s.ota.kv.Get(ctx, k)
		if err != nil {
			continue // deleted meanwhile
		}
		rel := &Release{}
		if json.Unmarshal(e.Value(), rel) == nil {
			out.Releases = append(out.Releases, rel)
		}
	}
	return jsonReply(out)
}

// parseThreshold turns "N" or "N%" of n targets into a count (at least 1).
func parseThreshold(s string, n int) (int, error) {
	if s == "" {
		return 1, nil
	}
	if p, ok := strings.CutSuffix(s, "%"); ok {
		v, err := strconv.Atoi(p)
		if err != nil || v < 1 || v > 100 {
			return 0, fault.New(fault.InvalidArgument, "failure_threshold %q: want a count or 1%% to 100%%", s)
		}
		return max(1, int(math.Ceil(float64(n*v)/100))), nil
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 {
		return 0, fault.New(fault.InvalidArgument, "failure_threshold %q: want a count of at least 1 or a percentage", s)
	}
	return v, nil
}

func (s *Service) handleOTARollout(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	var req RolloutRequest
	if err := decodeRequest(r.Data(), &req); err != nil {
		return nil, nil, err
	}
	rel, err := s.release(ctx, req.Name, req.Version)
	if err != nil {
		return nil, nil, err
	}
	chosen := 0
	for _, c := range []bool{len(req.Devices) > 0, req.Model != "", req.All} {
		if c {
			chosen++
		}
	}
	if chosen != 1 {
		return nil, nil, fault.New(fault.InvalidArgument, "targets: name exactly one of devices, model or all")
	}
	var targets []string
	switch {
	case len(req.Devices) > 0:
		for _, id := range req.Devices {
			if err := subjects.ValidDeviceID(id); err != nil {
				return nil, nil, fault.New(fault.InvalidArgument, "devices: %v", err)
			}
			if s.cached(id) == nil {
				if _, _, err := s.get(ctx, id); err != nil {
					return nil, nil, err
				}
			}
			if !slices.Contains(targets, id) {
				targets = append(targets, id)
			}
		}
	default:
		model := req.Model
		if req.All {
			model = rel.Manifest.Target.Model
		}
		s.cacheMu.RLock()
		for id, c := range s.cache {
			if model == "" || c.d.GetManifest().GetModel() == model {
				targets = append(targets, id)
			}
		}
		s.cacheMu.RUnlock()
		if len(targets) == 0 {
			return nil, nil, fault.New(fault.FailedPrecondition, "no known device matches (model %q)", model)
		}
	}
	sort.Strings(targets)
	ro := &Rollout{ID: nuid.Next(), Name: rel.Manifest.Name, Version: rel.Manifest.Version, Strategy: req.Strategy,
		FailureThreshold: req.FailureThreshold, HealthWindowSeconds: req.HealthWindowSeconds, State: RolloutRunning,
		Created: time.Now().UTC(), Devices: map[string]*DeviceRollout{}}
	if ro.Strategy == "" {
		ro.Strategy = StrategyAll
	}
	if ro.FailureThreshold == "" {
		ro.FailureThreshold = "1"
	}
	if ro.FailureLimit, err = parseThreshold(ro.FailureThreshold, len(targets)); err != nil {
		return nil, nil, err
	}
	ncanary := 0
	switch ro.Strategy {
	case StrategyAll:
	case StrategyCanary:
		ro.CanaryPercent = req.CanaryPercent
		if ro.CanaryPercent == 0 {
			ro.CanaryPercent = 10
		}
		if ro.CanaryPercent < 1 || ro.CanaryPercent > 99 {
			return nil, nil, fault.New(fault.InvalidArgument, "canary_percent %d: want 1 to 99", req.CanaryPercent)
		}
		ncanary = max(1, int(math.Ceil(float64(len(targets)*ro.CanaryPercent)/100)))
	default:
		return nil, nil, fault.New(fault.InvalidArgument, "strategy %q: want %q or %q", req.Strategy, StrategyAll, StrategyCanary)
	}
	ro.Updated = ro.Created
	for i, id := range targets {
		ro.Devices[id] = &DeviceRollout{Phase: PhasePending, Canary: i < ncanary, Updated: ro.Created}
	}
	b, err := json.Marshal(ro)
	if err != nil {
		return nil, nil, err
	}
	if _, err := s.ota.kv.Create(ctx, rolloutKey(ro.ID), b); err != nil {
		return nil, nil, fault.Wrap(fault.Unavailable, err, "OTA bucket: record rollout: %v", err)
	}
	s.log.Info("OTA rollout started", "rollout", ro.ID, "release", ro.Name, "version", ro.Version, "devices", len(targets), "strategy", ro.Strategy)
	if next := s.advance(ctx, ro.ID, nil); next != nil {
		ro = next
	}
	return jsonReply(ro)
}

func (s *Service) handleOTAStatus(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	var req StatusRequest
	if len(bytes.TrimSpace(r.Data())) > 0 {
		if err := decodeRequest(r.Data(), &req); err != nil {
			return nil, nil, err
		}
	}
	out := rolloutList{Rollouts: []*Rollout{}}
	if req.ID != "" {
		ro, _, err := s.rollout(ctx, req.ID)
		if err != nil {
			return nil, nil, err
		}
		out.Rollouts = append(out.Rollouts, ro)
		return jsonReply(out)
	}
	keys, err := s.keysWith(ctx, "rollout.")
	if err != nil {
		return nil, nil, err
	}
	for _, k := range keys {
		if ro, _, err := s.rollout(ctx, strings.TrimPrefix(k, "rollout.")); err == nil {
			out.Rollouts = append(out.Rollouts, ro)
		}
	}
	sort.Slice(out.Rollouts, func(i, j int) bool { return out.Rollouts[i].Created.Before(out.Rollouts[j].Created) })
	return jsonReply(out)
}

// rollout reads rollout id and its revision.
func (s *Service) rollout(ctx context.Context, id string) (*Rollout, uint64, error) {
	e, err := s.ota.kv.Get(ctx, rolloutKey(id))
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrInvalidKey) {
		return nil, 0, fault.New(fault.NotFound, "no rollout %q", id)
	}
	if err != nil {
		return nil, 0, fault.Wrap(fault.Unavailable, err, "OTA bucket: %v", err)
	}
	ro := &Rollout{}
	if err := json.Unmarshal(e.Value(), ro); err != nil {
		return nil, 0, fmt.Errorf("OTA bucket: decode rollout %s: %w", id, err)
	}
	return ro, e.Revision(), nil
}

// otaCASAttempts bounds the retries of a rollout update: every device of
// a rollout writes the same record.
const otaCASAttempts = 64

// updateRollout applies change to rollout id with compare-and-set; change
// returns false to write nothing. It returns the record written (nil when
// nothing was).
func (s *Service) updateRollout(ctx context.Context, id string, change func(*Rollout) bool) (*Rollout, error) {
	for range otaCASAttempts {
		ro, rev, err := s.rollout(ctx, id)
		if err != nil {
			return nil, err
		}
		if !change(ro) {
			return nil, nil
		}
		ro.Updated = time.Now().UTC()
		b, err := json.Marshal(ro)
		if err != nil {
			return nil, err
		}
		if _, err := s.ota.kv.Update(ctx, rolloutKey(id), b, rev); err == nil {
			return ro, nil
		} else if !isWrongRevision(err) {
			return nil, fault.Wrap(fault.Unavailable, err, "OTA bucket: update rollout %s: %v", id, err)
		}
	}
	return nil, fault.New(fault.Unavailable, "OTA bucket: rollout %s changed %d times while being updated", id, otaCASAttempts)
}

// advance moves rollout id on: halts it at its failure threshold,
// completes it when every device is done, and offers the release to the
// online devices whose turn it is and which are pending (or, for those in
// reoffer, offered without an answer yet). It returns the record written,
// or nil.
func (s *Service) advance(ctx context.Context, id string, reoffer map[string]bool) *Rollout {
	var offer []string
	ro, err := s.updateRollout(ctx, id, func(ro *Rollout) bool {
		offer = nil
		if ro.State != RolloutRunning {
			return false
		}
		var failed []string
		done, canaryLeft := 0, false
		for _, dev := range slices.Sorted(maps.Keys(ro.Devices)) {
			st := ro.Devices[dev]
			switch {
			case phaseFailed(st.Phase):
				failed = append(failed, dev+" "+st.Phase+reasonSuffix(st.Reason))
				done++
			case st.Phase == PhaseCommitted:
				done++
			case st.Canary:
				canaryLeft = true
			}
		}
		if len(failed) >= ro.FailureLimit {
			ro.State = RolloutHalted
			ro.Reason = fmt.Sprintf("%d of %d devices failed (threshold %s): %s", len(failed), len(ro.Devices),
				ro.FailureThreshold, strings.Join(failed, "; "))
			return true
		}
		if done == len(ro.Devices) {
			ro.State = RolloutCompleted
			if len(failed) > 0 {
				ro.Reason = fmt.Sprintf("%d devices failed: %s", len(failed), strings.Join(failed, "; "))
			}
			return true
		}
		now := time.Now().UTC()
		for _, dev := range slices.Sorted(maps.Keys(ro.Devices)) {
			st := ro.Devices[dev]
			if canaryLeft && !st.Canary {
				continue
			}
			if !(st.Phase == PhasePending || (st.Phase == PhaseOffered && reoffer[dev])) {
				continue
			}
			if d := s.cached(dev); d == nil || !d.GetOnline() {
				continue
			}
			st.Phase, st.Updated = PhaseOffered, now
			offer = append(offer, dev)
		}
		return len(offer) > 0
	})
	if err != nil {
		s.log.Warn("OTA rollout not advanced", "rollout", id, logKeyErr, err)
		return nil
	}
	if ro == nil {
		return nil
	}
	if ro.State != RolloutRunning {
		s.log.Info("OTA rollout "+ro.State, "rollout", id, logKeyReason, ro.Reason)
		return ro
	}
	if len(offer) == 0 {
		return ro
	}
	rel, err := s.release(ctx, ro.Name, ro.Version)
	if err != nil {
		s.log.Error("OTA rollout: release", "rollout", id, logKeyErr, err)
		return ro
	}
	for _, dev := range offer {
		s.toDevice(dev, subjects.DeviceOTAOffer, &jv1.OTAOffer{RolloutId: id, Manifest: rel.Canonical, Signature: rel.Signature,
			ChunkBytes: uint32(s.cfg.OTAChunkBytes), HealthWindowSeconds: ro.HealthWindowSeconds})
		s.publishEvent(dev, &jv1.DeviceEvent{Kind: "ota", Reason: fmt.Sprintf("rollout %s: %s %s offered", id, ro.Name, ro.Version)})
	}
	return ro
}

func reasonSuffix(r string) string {
	if r == "" {
		return ""
	}
	return " (" + r + ")"
}

// resumeRollouts re-drives every running rollout after a start: devices
// offered before it are offered again (the offer, or the device's answer,
// may have been lost with the replica), pending ones that are online get
// their offer.
func (s *Service) resumeRollouts(ctx context.Context) {
	keys, err := s.keysWith(ctx, "rollout.")
	if err != nil {
		s.log.Warn("OTA rollouts not resumed", logKeyErr, err)
		return
	}
	for _, k := range keys {
		id := strings.TrimPrefix(k, "rollout.")
		ro, _, err := s.rollout(ctx, id)
		if err != nil || ro.State != RolloutRunning {
			continue
		}
		re := map[string]bool{}
		for dev, st := range ro.Devices {
			if st.Phase == PhaseOffered {
				re[dev] = true
			}
		}
		s.advance(ctx, id, re)
	}
}

// otaOnline offers running rollouts to device id, which just came online.
func (s *Service) otaOnline(id string) {
	ctx := s.ota.ctx
	if ctx == nil || s.ota.kv == nil {
		return
	}
	go func() {
		keys, err := s.keysWith(ctx, "rollout.")
		if err != nil {
			return
		}
		for _, k := range keys {
			rid := strings.TrimPrefix(k, "rollout.")
			ro, _, err := s.rollout(ctx, rid)
			if err != nil || ro.State != RolloutRunning || ro.Devices[id] == nil {
				continue
			}
			s.advance(ctx, rid, map[string]bool{id: true})
		}
	}()
}

// handleOTAGet answers a device's chunk request on its ota/chunk topic.
func (s *Service) handleOTAGet(ctx context.Context, id string, data []byte) {
	req := &jv1.OTAChunkRequest{}
	if err := wire.Decode(data, req, 0); err != nil {
		s.bad(subjects.DeviceOTAGet, id, err)
		return
	}
	out := &jv1.OTAChunk{RolloutId: req.GetRolloutId(), Offset: req.GetOffset()}
	b, err := s.chunk(ctx, id, req)
	if err != nil {
		out.Error = err.Error()
	} else {
		out.Data = b
	}
	s.toDevice(id, subjects.DeviceOTAChunk, out)
}

// chunk returns the bytes device id asked for.
func (s *Service) chunk(ctx context.Context, id string, req *jv1.OTAChunkRequest) ([]byte, error) {
	ro, _, err := s.rollout(ctx, req.GetRolloutId())
	if err != nil {
		return nil, err
	}
	if ro.Devices[id] == nil {
		return nil, fmt.Errorf("device %s is not a target of rollout %s", id, ro.ID)
	}
	if ro.State == RolloutHalted {
		return nil, fmt.Errorf("rollout %s is halted: %s", ro.ID, ro.Reason)
	}
	rel, err := s.release(ctx, ro.Name, ro.Version)
	if err != nil {
		return nil, err
	}
	bin, err := s.binary(ctx, rel)
	if err != nil {
		return nil, err
	}
	off := req.GetOffset()
	if off > uint64(len(bin)) {
		return nil, fmt.Errorf("offset %d is past the end (%d bytes)", off, len(bin))
	}
	n := uint64(req.GetLength())
	if n == 0 || n > uint64(s.cfg.OTAChunkBytes) {
		n = uint64(s.cfg.OTAChunkBytes)
	}
	end := min(off+n, uint64(len(bin)))
	return bin[off:end], nil
}

// binary returns rel's bytes, from this replica's cache of the last
// release read, or read whole from the object store and checked against
// the manifest.
func (s *Service) binary(ctx context.Context, rel *Release) ([]byte, error) {
	s.ota.mu.Lock()
	defer s.ota.mu.Unlock()
	if s.ota.object == rel.Object && s.ota.digest == rel.Manifest.SHA256 {
		return s.ota.data, nil
	}
	b, err := s.ota.obj.GetBytes(ctx, rel.Object)
	if err != nil {
		return nil, fmt.Errorf("read %s from %s: %v", rel.Object, subjects.FirmwareBucket, err)
	}
	sum := sha256.Sum256(b)
	if uint64(len(b)) != rel.Manifest.Size || hex.EncodeToString(sum[:]) != rel.Manifest.SHA256 {
		return nil, fmt.Errorf("object %s no longer matches release %s %s", rel.Object, rel.Manifest.Name, rel.Manifest.Version)
	}
	s.ota.object, s.ota.digest, s.ota.data = rel.Object, rel.Manifest.SHA256, b
	return b, nil
}

// handleOTAProgress records a device's progress report in its rollout,
// publishes it as an "ota" device event, and moves the rollout on.
func (s *Service) handleOTAProgress(ctx context.Context, id string, data []byte) {
	p := &jv1.OTAProgress{}
	if err := wire.Decode(data, p, 0); err != nil {
		s.bad(subjects.DeviceOTAProgress, id, err)
		return
	}
	if !slices.Contains(devicePhases, p.GetPhase()) {
		s.bad(subjects.DeviceOTAProgress, id, fmt.Errorf("unknown phase %q", p.GetPhase()))
		return
	}
	phase, reason := p.GetPhase(), p.GetReason()
	ro, err := s.updateRollout(ctx, p.GetRolloutId(), func(ro *Rollout) bool {
		st := ro.Devices[id]
		if st == nil {
			return false
		}
		if phase == PhaseCommitted && p.GetRunningVersion() != ro.Version {
			phase = PhaseFailed
			reason = fmt.Sprintf("reported committed but runs %q, not %q", p.GetRunningVersion(), ro.Version)
		}
		if st.Phase == PhaseCommitted || (phaseFailed(st.Phase) && st.Phase == phase) {
			return false // final, or a repeated report
		}
		if (phase == "checking" || phase == PhaseRefused) && slices.Contains(pastChecking, st.Phase) {
			// A repeated offer (a resumed rollout) reaching a device busy
			// with the first: its refusal is not the update's.
			return false
		}
		st.Phase, st.Percent, st.Reason, st.Running, st.Updated = phase, p.GetPercent(), reason, p.GetRunningVersion(), time.Now().UTC()
		return true
	})
	if err != nil {
		s.warn.log(id, "ota", "OTA progress not recorded", logKeyDevice, id, "rollout", p.GetRolloutId(), logKeyErr, err)
		return
	}
	if ro == nil {
		return
	}
	msg := fmt.Sprintf("rollout %s: %s %s %s", ro.ID, ro.Name, ro.Version, phase)
	if phase == "downloading" {
		msg += fmt.Sprintf(" %d%%", p.GetPercent())
	}
	s.publishEvent(id, &jv1.DeviceEvent{Kind: "ota", Reason: msg + reasonSuffix(reason)})
	if phase == PhaseCommitted || phaseFailed(phase) {
		s.advance(ctx, ro.ID, nil)
	}
}
