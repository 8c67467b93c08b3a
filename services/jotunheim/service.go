// Package jotunheim is the platform side of Jotunheim, Loki's devices: the
// device registry on JetStream KV, presence, the bridge that turns device
// messages (MQTT topics jotunheim/<id>/..., NATS subjects jotunheim.<id>...)
// into NATS request/reply, and the device tools: every sensor and actuator
// of an accepted device becomes a Loki tool, kept in step with the device's
// manifest.
//
// It serves the NATS micro service "jotunheim" on devices.list, devices.get,
// devices.cmd, devices.caps and devices.remove, and publishes device events
// on devices.events.<id>.<kind>. Scripts reach devices through the Lua
// module returned by NewModule; Go programs through Client. The wire
// protocol is devices/wire and docs/DEVICES.md.
package jotunheim

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/middleware"
	"github.com/loki-iot/loki/internal/replicas"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"
)

// Version is the service version reported in $SRV.INFO.
const Version = "0.1.0"

// HeaderChunks on a devices.list request says the caller takes a list
// larger than one message in parts: each part but the last comes to the
// reply subject with this header set to its number (from 1), holding a
// DeviceList of some of the devices in order; the final reply, without
// the header, holds the rest. Without it, such a list is
// RESOURCE_EXHAUSTED.
const HeaderChunks = "Jotunheim-Chunks"

// HeaderTimeout (request) carries the caller's remaining deadline as a Go
// duration ("1.5s") on devices.cmd and devices.caps.
const HeaderTimeout = "Jotunheim-Timeout"

// Log keys.
const (
	logKeyDevice = "device"
	logKeyKind   = "kind"
	logKeyTool   = "tool"
	logKeyErr    = "err"
	logKeyReason = "reason"
)

// Offline reasons recorded in Device.offline_reason.
const (
	reasonStatusOffline   = "device published offline (its will or a clean stop)"
	reasonHeartbeatMissed = "heartbeat missed"
)

// sweepInterval is how often a replica looks for devices whose heartbeats
// stopped.
const sweepInterval = 500 * time.Millisecond

// Service is one replica of the device service. Any number of replicas
// share device messages and requests through queue groups and share state
// through the registry bucket. Its methods are safe for concurrent use.
type Service struct {
	cfg   Config
	nc    *nats.Conn
	log   *slog.Logger
	ready chan struct{}
	loki  *loki.Client
	stats *counters
	warn  *logLimiter

	// Set in Run before anything is served.
	kv      jetstream.KeyValue
	started time.Time

	mu      sync.Mutex
	pending map[string]pendingCmd

	cacheMu sync.RWMutex
	cache   map[string]cachedDevice // the registry as the KV watch, or this replica's own writes, last saw it

	syncs *syncQueue // tool syncs of accepted manifests

	calls  chan struct{} // running device tool calls
	callWG sync.WaitGroup

	ota otaState // OTA releases and rollouts (ota.go)
}

// pendingCmd is a command waiting for its device's result.
type pendingCmd struct {
	device string
	ch     chan *jv1.CommandResult
}

// New validates cfg and prepares a replica on nc (owned by the caller);
// Run opens the registry and serves.
func New(cfg Config, nc *nats.Conn, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nc == nil {
		return nil, errors.New("jotunheim: nil NATS connection")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "jotunheim")
	s := &Service{
		cfg: cfg, nc: nc, log: log, ready: make(chan struct{}),
		loki:    loki.NewClient(nc),
		stats:   newCounters(cfg.Metrics),
		warn:    newLogLimiter(log, time.Minute),
		pending: map[string]pendingCmd{},
		cache:   map[string]cachedDevice{},
		calls:   make(chan struct{}, cfg.Workers),
	}
	s.syncs = newSyncQueue(cfg.Workers, s.syncManifest)
	keys, err := loadOTAKeys(cfg.OTAKeys)
	if err != nil {
		return nil, err
	}
	s.ota.keys = keys
	return s, nil
}

// Ready is closed once the registry is loaded, device messages are heard
// and the endpoints serve.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Run opens (or creates) the registry bucket, follows it, listens to the
// devices and serves the endpoints until ctx is cancelled; then it stops
// taking messages and requests and waits up to DrainTimeout for running
// ones.
func (s *Service) Run(ctx context.Context) error {
	s.started = time.Now()
	kv, err := s.openBucket(ctx)
	if err != nil {
		return err
	}
	s.kv = kv
	if err := s.openOTA(ctx); err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait() // after cancel, below: defers run last first
	defer s.callWG.Wait()
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.ota.ctx = runCtx

	loaded := make(chan error, 1)
	wg.Go(func() { s.follow(runCtx, loaded) })
	select {
	case err := <-loaded:
		if err != nil {
			return err
		}
	case <-ctx.Done():
		return nil
	}
	defer s.attachDeviceGauges()()

	// Every device message arrives on one channel, in the order the server
	// delivered it, and is handed to the shard of its device: messages of
	// one device are handled in order, different devices at once.
	in := make(chan *nats.Msg, 4096)
	shards := make([]chan *nats.Msg, s.cfg.MessageWorkers)
	for i := range shards {
		shards[i] = make(chan *nats.Msg, max(1, s.cfg.MessageQueue/s.cfg.MessageWorkers))
		wg.Go(func() {
			for m := range shards[i] {
				s.handleSafely(runCtx, m)
			}
		})
	}
	var subs []*nats.Subscription
	unsubscribe := func() {
		for _, sub := range subs {
			_ = sub.Unsubscribe()
		}
		subs = nil
	}
	defer unsubscribe()
	for _, k := range []string{subjects.DeviceStatus, subjects.DeviceManifest, subjects.DeviceState,
		subjects.DeviceEvent, subjects.DeviceHeartbeat, subjects.DeviceCall, subjects.DeviceResult,
		subjects.DeviceOTAGet, subjects.DeviceOTAProgress} {
		subj, err := subjects.DeviceSubjectAll(k)
		if err != nil {
			return fmt.Errorf("jotunheim: %w", err)
		}
		var sub *nats.Subscription
		if k == subjects.DeviceResult {
			// Every replica: only the one holding the command's id uses it.
			sub, err = s.nc.ChanSubscribe(subj, in)
		} else {
			sub, err = s.nc.ChanQueueSubscribe(subj, "q", in)
		}
		if err != nil {
			return fmt.Errorf("jotunheim: subscribe %s: %w", subj, err)
		}
		subs = append(subs, sub)
	}
	for range s.cfg.Workers {
		wg.Go(func() { s.syncs.work(runCtx) })
	}
	dispatched := make(chan struct{})
	go func() {
		defer close(dispatched)
		defer func() {
			for _, sh := range shards {
				close(sh)
			}
		}()
		for {
			select {
			case m := <-in:
				s.dispatch(m, shards)
			case <-runCtx.Done():
				return
			}
		}
	}()

	svc, err := microsvc.Start(s.nc, microsvc.Config{
		Metrics:     s.cfg.Metrics,
		Name:        subjects.JotunheimService,
		Version:     Version,
		Description: "Jotunheim devices: registry, presence, commands and device tools",
	}, s.log)
	if err != nil {
		return fmt.Errorf("jotunheim: %w", err)
	}
	var endpoints []microsvc.Endpoint
	// An offline device is UNAVAILABLE to a command: news for the caller,
	// not an error of the service's to log.
	deviceFaults := []fault.Code{fault.Internal}
	for _, e := range []struct {
		name, subj string
		h          microsvc.Handler
		def        time.Duration
		logged     []fault.Code
		workers    int
	}{
		{"list", subjects.DevicesList, s.handleList, s.cfg.CommandTimeout, nil, s.cfg.Workers},
		{"get", subjects.DevicesGet, s.handleGet, s.cfg.CommandTimeout, nil, s.cfg.Workers},
		// A command mostly waits for its device: a worker each.
		{"cmd", subjects.DevicesCmd, s.handleCmd, s.cfg.CommandTimeout, deviceFaults, s.cfg.Commands},
		{"caps", subjects.DevicesCaps, s.handleCaps, s.cfg.CapsTimeout, deviceFaults, s.cfg.Workers},
		{"remove", subjects.DevicesRemove, s.handleRemove, s.cfg.CommandTimeout, nil, s.cfg.Workers},
		{"ota_publish", subjects.DevicesOTAPublish, s.handleOTAPublish, s.cfg.CommandTimeout, nil, s.cfg.Workers},
		{"ota_releases", subjects.DevicesOTAReleases, s.handleOTAReleases, s.cfg.CommandTimeout, nil, s.cfg.Workers},
		{"ota_rollout", subjects.DevicesOTARollout, s.handleOTARollout, s.cfg.CommandTimeout, nil, s.cfg.Workers},
		{"ota_status", subjects.DevicesOTAStatus, s.handleOTAStatus, s.cfg.CommandTimeout, nil, s.cfg.Workers},
	} {
		endpoints = append(endpoints, microsvc.Endpoint{
			Name: e.name, Subject: e.subj,
			Handler: middleware.ErrorLog(s.log, e.subj, middleware.Deadline(HeaderTimeout, e.def, s.cfg.MaxCommandTimeout, e.h), e.logged...),
			Workers: e.workers, Queue: s.cfg.Queue,
		})
	}
	if err := svc.AddEndpoints(s.cfg.DrainTimeout, endpoints...); err != nil {
		_ = svc.Stop(s.cfg.DrainTimeout)
		return fmt.Errorf("jotunheim: %w", err)
	}
	wg.Go(func() { s.sweep(runCtx) })
	wg.Go(func() { s.resumeRollouts(runCtx) })
	close(s.ready)
	<-ctx.Done()
	unsubscribe()
	err = svc.Stop(s.cfg.DrainTimeout)
	cancel()
	<-dispatched
	return err
}

// openBucket opens the registry bucket, creating it on first use; an
// existing bucket's settings are left as they are.
func (s *Service) openBucket(ctx context.Context) (jetstream.KeyValue, error) {
	js, err := jetstream.New(s.nc)
	if err != nil {
		return nil, fmt.Errorf("jotunheim: %w", err)
	}
	var kv jetstream.KeyValue
	err = replicas.Setup(ctx, s.log, subjects.DevicesBucket, func(ctx context.Context) (err error) {
		kv, err = js.KeyValue(ctx, subjects.DevicesBucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
				Bucket:      subjects.DevicesBucket,
				Description: "Jotunheim device registry: one protojson Device per device id",
				History:     4,
				Storage:     jetstream.FileStorage,
				Replicas:    s.cfg.Replicas,
			})
			if errors.Is(err, jetstream.ErrBucketExists) { // another replica won the race
				kv, err = js.KeyValue(ctx, subjects.DevicesBucket)
			}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("jotunheim: open bucket %s (is JetStream enabled on the server?): %w", subjects.DevicesBucket, err)
	}
	replicas.Keep(s.log, subjects.DevicesBucket, replicas.OfKV(ctx, kv), s.cfg.Replicas)
	return kv, nil
}

// follow keeps s.cache in step with the bucket until ctx ends; loaded gets
// nil once the initial values are in, or the error that stopped it first.
func (s *Service) follow(ctx context.Context, loaded chan<- error) {
	w, err := s.kv.WatchAll(ctx)
	if err != nil {
		loaded <- fmt.Errorf("jotunheim: watch %s: %w", subjects.DevicesBucket, err)
		return
	}
	defer func() { _ = w.Stop() }()
	first := true
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				if first {
					loaded <- fmt.Errorf("jotunheim: watch %s ended", subjects.DevicesBucket)
				}
				return
			}
			if e == nil {
				if first {
					first = false
					loaded <- nil
				}
				continue
			}
			if e.Operation() == jetstream.KeyValuePut {
				if d, err := decodeDevice(e.Value()); err == nil {
					s.remember(e.Key(), d, e.Revision())
				}
				continue
			}
			s.cacheMu.Lock()
			if e.Revision() > s.cache[e.Key()].rev {
				delete(s.cache, e.Key())
			}
			s.cacheMu.Unlock()
		}
	}
}

// cachedDevice is a record and its revision in the bucket.
type cachedDevice struct {
	d   *jv1.Device
	rev uint64
}

// remember puts revision rev of device id's record d in the cache, unless
// the cache holds a newer one: a replica sees its own writes at once, and
// the watch, which delivers them again later, never takes it back.
func (s *Service) remember(id string, d *jv1.Device, rev uint64) {
	s.cacheMu.Lock()
	if rev > s.cache[id].rev {
		s.cache[id] = cachedDevice{d: d, rev: rev}
	}
	s.cacheMu.Unlock()
}

// cached returns device id's record as the cache holds it, or nil.
func (s *Service) cached(id string) *jv1.Device {
	s.cacheMu.RLock()
	defer s.cacheMu.RUnlock()
	return s.cache[id].d
}

// dispatch hands a device message to its device's shard, or handles a
// command result at once (it only wakes a waiting request).
func (s *Service) dispatch(m *nats.Msg, shards []chan *nats.Msg) {
	id, kind, _, err := subjects.ParseDeviceSubject(m.Subject)
	if err != nil {
		s.bad("subject", "", err)
		return
	}
	if kind == subjects.DeviceResult {
		s.handleResult(id, m.Data)
		return
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	select {
	case shards[h.Sum32()%uint32(len(shards))] <- m:
	default:
		s.stats.drop(kind)
		s.warn.log(id, "queue", "device message dropped: the device service is busy", logKeyDevice, id, logKeyKind, kind)
	}
}

// handleSafely handles one device message; a panic is logged and counted,
// never the end of the service.
func (s *Service) handleSafely(ctx context.Context, m *nats.Msg) {
	defer func() {
		if r := recover(); r != nil {
			s.stats.bad("panic")
			s.log.Error("panic handling a device message", "subject", m.Subject, logKeyErr, r, "stack", string(debug.Stack()))
		}
	}()
	id, kind, entity, _ := subjects.ParseDeviceSubject(m.Subject) // dispatch checked it
	base := ctx
	ctx, cancel := context.WithTimeout(ctx, s.cfg.CommandTimeout)
	defer cancel()
	switch kind {
	case subjects.DeviceStatus:
		online, err := wire.Presence(m.Data)
		if err != nil {
			s.bad(kind, id, err)
			return
		}
		s.setPresence(ctx, id, online)
	case subjects.DeviceManifest:
		s.handleManifest(ctx, id, m.Data)
	case subjects.DeviceState:
		st, err := wire.DecodeState(entity, m.Data)
		if err != nil {
			s.bad(kind, id, err)
			return
		}
		if s.touch(ctx, id, false) {
			s.publishEvent(id, &jv1.DeviceEvent{Kind: "state", State: st})
		}
	case subjects.DeviceEvent:
		ev, err := wire.DecodeEvent(m.Data)
		if err != nil {
			s.bad(kind, id, err)
			return
		}
		if s.touch(ctx, id, false) {
			s.publishEvent(id, &jv1.DeviceEvent{Kind: "event", Event: ev})
		}
	case subjects.DeviceHeartbeat:
		if err := wire.Decode(m.Data, &jv1.Heartbeat{}, 0); err != nil {
			s.bad(kind, id, err)
			return
		}
		s.touch(ctx, id, true)
	case subjects.DeviceCall:
		c, err := wire.DecodeToolCall(m.Data)
		if err != nil {
			s.bad(kind, id, err)
			return
		}
		s.startCall(base, id, c)
	case subjects.DeviceOTAGet:
		s.handleOTAGet(ctx, id, m.Data)
	case subjects.DeviceOTAProgress:
		s.handleOTAProgress(ctx, id, m.Data)
	}
}

// bad counts and logs (rate-limited) a device message refused as malformed.
func (s *Service) bad(kind, id string, err error) {
	s.stats.bad(kind)
	s.warn.log(id, kind, "device message refused", logKeyDevice, id, logKeyKind, kind, logKeyErr, err)
}

// publishEvent publishes ev on devices.events.<id>.<ev.kind>.
func (s *Service) publishEvent(id string, ev *jv1.DeviceEvent) {
	ev.Device = id
	if ev.At == 0 {
		ev.At = unixNow()
	}
	subj, err := subjects.DeviceEventSubject(id, ev.GetKind())
	if err != nil {
		s.log.Error("device event", logKeyDevice, id, logKeyErr, err)
		return
	}
	s.publish(subj, ev)
}

// toDevice publishes m on the device's topic of kind.
func (s *Service) toDevice(id, kind string, m proto.Message) {
	subj, err := subjects.DeviceSubject(id, kind)
	if err != nil {
		s.log.Error("device subject", logKeyDevice, id, logKeyErr, err)
		return
	}
	s.publish(subj, m)
}

func (s *Service) publish(subj string, m proto.Message) {
	b, err := wire.Encode(m)
	if err == nil {
		err = s.nc.Publish(subj, b)
	}
	if err != nil {
		s.log.Warn("publish", "subject", subj, logKeyErr, err)
	}
}

func unixNow() float64 { return float64(time.Now().UnixNano()) / 1e9 }

func unixTime(f float64) time.Time { return time.Unix(0, int64(f*1e9)) }
