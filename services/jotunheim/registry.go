package jotunheim

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// casAttempts bounds the read-modify-write retries of one record update
// racing other replicas.
const casAttempts = 16

var decodeOpts = protojson.UnmarshalOptions{DiscardUnknown: true}

func decodeDevice(b []byte) (*jv1.Device, error) {
	d := &jv1.Device{}
	if err := decodeOpts.Unmarshal(b, d); err != nil {
		return nil, err
	}
	return d, nil
}

// get reads device id's record: NOT_FOUND when there is none.
func (s *Service) get(ctx context.Context, id string) (*jv1.Device, uint64, error) {
	e, err := s.kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, 0, fault.New(fault.NotFound, "no device %q (it never connected with an accepted manifest, or was removed)", id)
	}
	if err != nil {
		return nil, 0, fault.Wrap(fault.Unavailable, err, "device registry: read %q: %v", id, err)
	}
	d, err := decodeDevice(e.Value())
	if err != nil {
		return nil, 0, fmt.Errorf("device registry: decode %q: %w", id, err)
	}
	return d, e.Revision(), nil
}

// update applies change to device id's record with optimistic concurrency,
// retrying when another replica wrote in between. change gets a copy of the
// current record (nil when there is none) and returns the record to store,
// or nil to store nothing. update returns the record before and after
// (after is nil when nothing was stored).
func (s *Service) update(ctx context.Context, id string, change func(cur *jv1.Device) *jv1.Device) (before, after *jv1.Device, err error) {
	for range casAttempts {
		cur, rev, err := s.get(ctx, id)
		if err != nil && fault.CodeOf(err) != fault.NotFound {
			return nil, nil, err
		}
		var in *jv1.Device
		if cur != nil {
			in = proto.Clone(cur).(*jv1.Device)
		}
		next := change(in)
		if next == nil {
			return cur, nil, nil
		}
		next.Id = id
		b, err := protojson.Marshal(next)
		if err != nil {
			return nil, nil, fmt.Errorf("device registry: encode %q: %w", id, err)
		}
		var newRev uint64
		if cur == nil {
			newRev, err = s.kv.Create(ctx, id, b)
		} else {
			newRev, err = s.kv.Update(ctx, id, b, rev)
		}
		if err == nil {
			s.remember(id, proto.Clone(next).(*jv1.Device), newRev)
			return cur, next, nil
		}
		if !isWrongRevision(err) {
			return nil, nil, fault.Wrap(fault.Unavailable, err, "device registry: write %q: %v", id, err)
		}
	}
	return nil, nil, fault.New(fault.Unavailable, "device registry: %q changed %d times while being updated", id, casAttempts)
}

// isWrongRevision reports a CAS update that lost a race.
func isWrongRevision(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		(errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant))
}

// setPresence records a status message: online or offline.
func (s *Service) setPresence(ctx context.Context, id string, online bool) {
	now := unixNow()
	before, after, err := s.update(ctx, id, func(d *jv1.Device) *jv1.Device {
		switch {
		case d == nil: // no accepted manifest yet: nothing to record
			return nil
		case online:
			if !d.GetOnline() {
				d.Since, d.OfflineReason = now, ""
			}
			d.Online, d.LastSeen = true, now
		case !d.GetOnline():
			return nil
		default:
			d.Online, d.Since, d.OfflineReason = false, now, reasonStatusOffline
		}
		return d
	})
	if err != nil && ctx.Err() != nil {
		s.log.Warn("presence not recorded: the service is stopping", logKeyDevice, id, "online", online)
	} else if err != nil {
		s.log.Error("record presence", logKeyDevice, id, logKeyErr, err)
		return
	}
	if after != nil && before.GetOnline() != after.GetOnline() {
		s.presenceEvent(id, after)
	}
}

// presenceEvent publishes online or offline for d's state.
func (s *Service) presenceEvent(id string, d *jv1.Device) {
	if d.GetOnline() {
		s.publishEvent(id, &jv1.DeviceEvent{Kind: "online"})
		s.log.Info("device online", logKeyDevice, id)
		s.otaOnline(id)
		return
	}
	s.publishEvent(id, &jv1.DeviceEvent{Kind: "offline", Reason: d.GetOfflineReason()})
	s.log.Info("device offline", logKeyDevice, id, logKeyReason, d.GetOfflineReason())
}

// heartbeatPeriod is d's heartbeat period; 0 when it sends none.
func heartbeatPeriod(d *jv1.Device) time.Duration {
	return time.Duration(d.GetManifest().GetHeartbeatSeconds()) * time.Second
}

// touch records that device id was heard from, and reports whether it has a
// record. To spare the bucket a write per message, last_seen is written
// only once half a heartbeat period has passed since the last write; and
// to spare it a read per message, the watched copy of the registry decides
// first whether a write is due (a fleet of 1,000 sending 7 states every 10 s
// would otherwise read the bucket 700 times a second). A heartbeat brings
// back a device the sweeper marked offline.
func (s *Service) touch(ctx context.Context, id string, heartbeat bool) bool {
	now := unixNow()
	if cached := s.cached(id); cached != nil && !touchDue(cached, now, heartbeat) {
		return true
	}
	known := false
	before, after, err := s.update(ctx, id, func(d *jv1.Device) *jv1.Device {
		if d == nil {
			return nil
		}
		known = true
		if !touchDue(d, now, heartbeat) {
			return nil
		}
		if heartbeat && !d.GetOnline() && d.GetOfflineReason() == reasonHeartbeatMissed {
			d.Online, d.Since, d.OfflineReason = true, now, ""
		}
		d.LastSeen = now
		return d
	})
	if err != nil {
		s.log.Warn("record last seen", logKeyDevice, id, logKeyErr, err)
		return known
	}
	if after != nil && before.GetOnline() != after.GetOnline() {
		s.presenceEvent(id, after)
	}
	return known
}

// touchDue reports whether a message from device d heard at now (a
// heartbeat or not) changes its record: it brings back a device whose
// heartbeats were missed, or half a heartbeat period has passed since
// last_seen was written.
func touchDue(d *jv1.Device, now float64, heartbeat bool) bool {
	if heartbeat && !d.GetOnline() && d.GetOfflineReason() == reasonHeartbeatMissed {
		return true
	}
	period := heartbeatPeriod(d)
	if period == 0 {
		period = 10 * time.Second
	}
	return time.Duration((now-d.GetLastSeen())*1e9) >= period/2
}

// sweep marks offline, until ctx ends, the online devices that sent
// nothing for HeartbeatMisses heartbeat periods. Every replica sweeps; the
// CAS update lets one of them record it.
func (s *Service) sweep(ctx context.Context) {
	t := time.NewTicker(sweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, id := range s.stale(time.Now()) {
			before, after, err := s.update(ctx, id, func(d *jv1.Device) *jv1.Device {
				if d == nil || !d.GetOnline() || !s.isStale(d, time.Now()) {
					return nil
				}
				d.Online, d.Since, d.OfflineReason = false, unixNow(), reasonHeartbeatMissed
				return d
			})
			if err != nil {
				s.log.Warn("mark device offline", logKeyDevice, id, logKeyErr, err)
				continue
			}
			if after != nil && before.GetOnline() {
				s.presenceEvent(id, after)
			}
		}
	}
}

// stale returns the ids of cached online devices past their heartbeat window.
func (s *Service) stale(now time.Time) []string {
	s.cacheMu.RLock()
	defer s.cacheMu.RUnlock()
	var ids []string
	for id, c := range s.cache {
		if d := c.d; d.GetOnline() && s.isStale(d, now) {
			ids = append(ids, id)
		}
	}
	return ids
}

// isStale reports whether d, which sends heartbeats, has been silent for
// HeartbeatMisses periods. Time before this replica started does not
// count: messages sent while no replica ran were never recorded.
func (s *Service) isStale(d *jv1.Device, now time.Time) bool {
	period := heartbeatPeriod(d)
	if period == 0 {
		return false
	}
	last := unixTime(d.GetLastSeen())
	if last.Before(s.started) {
		last = s.started
	}
	return now.Sub(last) > time.Duration(s.cfg.HeartbeatMisses)*period
}
