package jotunheim

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// MaxRequestBytes caps the body of a request to the service.
const MaxRequestBytes = wire.MaxMessageBytes

// replyMargin is how much earlier than the caller's deadline a command
// gives up, so that the caller gets the service's DEADLINE_EXCEEDED, which
// names the device, rather than its own timeout.
func replyMargin(d time.Duration) time.Duration { return min(d/20, 100*time.Millisecond) }

func marshal(m proto.Message) ([]byte, nats.Header, error) {
	b, err := protojson.Marshal(m)
	if err != nil {
		return nil, nil, fmt.Errorf("encode %T: %w", m, err)
	}
	return b, nil, nil
}

// deviceRequest decodes a DeviceRequest body, or a bare device id.
func deviceRequest(data []byte) (string, error) {
	if len(data) > MaxRequestBytes {
		return "", fault.New(fault.InvalidArgument, "request is %d bytes: at most %d", len(data), MaxRequestBytes)
	}
	id := strings.TrimSpace(string(data))
	if strings.HasPrefix(id, "{") {
		req := &jv1.DeviceRequest{}
		if err := protojson.Unmarshal(data, req); err != nil {
			return "", fault.New(fault.InvalidArgument, "body: want a device id or a protojson DeviceRequest: %v", err)
		}
		id = req.GetId()
	}
	if err := subjects.ValidDeviceID(id); err != nil {
		return "", fault.New(fault.InvalidArgument, "%v", err)
	}
	return id, nil
}

func (s *Service) handleList(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	// The watched copy of the registry, which holds this replica's own
	// writes at once: reading 1,000 records from the bucket for every list
	// would cost the server more than the fleet's telemetry.
	s.cacheMu.RLock()
	ids := slices.Sorted(maps.Keys(s.cache))
	s.cacheMu.RUnlock()
	// Each record is encoded on its own, so that a list larger than one
	// message can go out in parts (a record holds its manifest: the list
	// of 1,000 sim devices is past NATS's default 1 MiB).
	items := make([][]byte, 0, len(ids))
	for _, id := range ids {
		d := s.cached(id)
		if d == nil {
			continue // removed meanwhile
		}
		b, err := protojson.Marshal(d)
		if err != nil {
			return nil, nil, fmt.Errorf("encode device %q: %w", id, err)
		}
		items = append(items, b)
	}
	b, err := microsvc.Parts{Field: "devices", Ask: HeaderChunks, Part: HeaderChunks, What: "devices",
		Instead: subjects.DevicesGet + " one device (jotunheim.Client asks for parts)",
		Limit:   int(s.nc.MaxPayload()) - microsvc.PartsOverhead}.Reply(r, items)
	return b, nil, err
}

func (s *Service) handleGet(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	id, err := deviceRequest(r.Data())
	if err != nil {
		return nil, nil, err
	}
	d, _, err := s.get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	return marshal(d)
}

func (s *Service) handleRemove(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	id, err := deviceRequest(r.Data())
	if err != nil {
		return nil, nil, err
	}
	d, _, err := s.get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if err := s.removeTools(ctx, d); err != nil {
		return nil, nil, fault.Wrap(fault.Unavailable, err, "device %s: unregister its tools: %s", id, fault.MessageOf(err))
	}
	if err := s.kv.Delete(ctx, id); err != nil {
		return nil, nil, fault.Wrap(fault.Unavailable, err, "device registry: delete %q: %v", id, err)
	}
	s.log.Info("device removed", logKeyDevice, id)
	return nil, nil, nil
}

func (s *Service) handleCmd(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	if len(r.Data()) > MaxRequestBytes {
		return nil, nil, fault.New(fault.InvalidArgument, "request is %d bytes: at most %d", len(r.Data()), MaxRequestBytes)
	}
	req := &jv1.CommandRequest{}
	if err := protojson.Unmarshal(r.Data(), req); err != nil {
		return nil, nil, fault.New(fault.InvalidArgument, "body: want a protojson CommandRequest: %v", err)
	}
	if err := subjects.ValidDeviceID(req.GetDevice()); err != nil {
		return nil, nil, fault.New(fault.InvalidArgument, "device: %v", err)
	}
	cmd := req.GetCommand()
	if n := cmd.GetName(); n == "" || len(n) > 64 {
		return nil, nil, fault.New(fault.InvalidArgument, "command.name: want 1 to 64 bytes, got %d", len(n))
	}
	if e := cmd.GetEntity(); e != "" {
		if err := subjects.ValidEntity(e); err != nil {
			return nil, nil, fault.New(fault.InvalidArgument, "command.entity: %v", err)
		}
	}
	data, err := s.command(ctx, req.GetDevice(), cmd)
	return data, nil, err
}

// command sends cmd to device id and waits for its result, until ctx's
// deadline or cmd's timeout_ms, whichever is first.
func (s *Service) command(ctx context.Context, id string, cmd *jv1.Command) ([]byte, error) {
	// The registry as this replica's watch last saw it (a millisecond
	// behind at most) spares every command a read of the bucket; a device
	// the watch has not seen yet is read from the bucket.
	d := s.cached(id)
	if d == nil {
		var err error
		if d, _, err = s.get(ctx, id); err != nil {
			return nil, err
		}
	}
	if !d.GetOnline() {
		return nil, offlineError(d)
	}
	wait := s.cfg.CommandTimeout
	if dl, ok := ctx.Deadline(); ok {
		wait = time.Until(dl)
	}
	if ms := cmd.GetTimeoutMs(); ms > 0 {
		wait = min(wait, time.Duration(ms)*time.Millisecond)
	}
	wait -= replyMargin(wait)
	if wait <= 0 {
		return nil, fault.New(fault.DeadlineExceeded, "no time left to command device %s", id)
	}
	cmd = proto.Clone(cmd).(*jv1.Command)
	cmd.Id = nuid.Next()
	cmd.TimeoutMs = uint32(max(wait.Milliseconds(), 1))
	b, err := wire.Encode(cmd)
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "command: %v", err)
	}
	if limit := d.GetManifest().GetLimits().GetMaxMessageBytes(); limit > 0 && len(b) > int(limit) {
		return nil, fault.New(fault.InvalidArgument, "command is %d bytes: device %s accepts at most %d", len(b), id, limit)
	}
	subj, err := subjects.DeviceSubject(id, subjects.DeviceCmd)
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	ch := make(chan *jv1.CommandResult, 1)
	s.mu.Lock()
	s.pending[cmd.Id] = pendingCmd{device: id, ch: ch}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.pending, cmd.Id)
		s.mu.Unlock()
	}()
	if err := s.nc.Publish(subj, b); err != nil {
		return nil, fault.Wrap(fault.Unavailable, err, "send command to device %s: %v", id, err)
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case res := <-ch:
		return resultData(id, res)
	case <-timer.C:
	case <-ctx.Done():
	}
	return nil, fault.New(fault.DeadlineExceeded, "device %s did not answer command %s within %v", id, cmd.GetName(), wait.Round(time.Millisecond))
}

// offlineError is UNAVAILABLE naming the offline device d.
func offlineError(d *jv1.Device) error {
	msg := fmt.Sprintf("device %s is offline", d.GetId())
	if since := d.GetSince(); since > 0 {
		msg += " (since " + unixTime(since).UTC().Format(time.RFC3339) + ")"
	}
	if r := d.GetOfflineReason(); r != "" {
		msg += ": " + r
	}
	return fault.New(fault.Unavailable, "%s", msg)
}

// resultData is a result's data as JSON, or its error as a *fault.Error
// with the device's code (INTERNAL when it is not one Loki knows).
func resultData(id string, res *jv1.CommandResult) ([]byte, error) {
	if !res.GetOk() {
		code := fault.Code(res.GetCode())
		if !code.Valid() {
			code = fault.Internal
		}
		msg := res.GetMessage()
		if msg == "" {
			msg = "command failed (" + res.GetCode() + ")"
		}
		return nil, fault.New(code, "device %s: %s", id, msg)
	}
	if res.GetData() == nil {
		return []byte("null"), nil
	}
	b, err := protojson.Marshal(res.GetData())
	if err != nil {
		return nil, fault.New(fault.Internal, "device %s: encode result data: %v", id, err)
	}
	if !json.Valid(b) {
		return nil, fault.New(fault.Internal, "device %s: result data is not JSON", id)
	}
	return b, nil
}

// handleResult hands a device's CommandResult to the command waiting for
// it on this replica, if any. A result naming another device's command is
// refused.
func (s *Service) handleResult(id string, data []byte) {
	res, err := wire.DecodeResult(data)
	if err != nil {
		s.bad(subjects.DeviceResult, id, err)
		return
	}
	s.mu.Lock()
	p, ok := s.pending[res.GetId()]
	s.mu.Unlock()
	if !ok {
		return // another replica's, or too late
	}
	if p.device != id {
		s.bad(subjects.DeviceResult, id, fmt.Errorf("%w: result for command %s of device %s", wire.ErrDecode, res.GetId(), p.device))
		return
	}
	select {
	case p.ch <- res:
	default: // a duplicate (QoS 1 redelivery)
	}
}

func (s *Service) handleCaps(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	id, err := deviceRequest(r.Data())
	if err != nil {
		return nil, nil, err
	}
	d, _, err := s.get(ctx, id)
	if err != nil {
		return nil, nil, err
	}
	if !d.GetOnline() {
		return nil, nil, offlineError(d)
	}
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl.Add(-replyMargin(time.Until(dl))))
		defer cancel()
	}
	// The answer is a manifest any replica may handle: wait for the record
	// it produces, or for its refusal.
	w, err := s.kv.Watch(ctx, id, jetstream.UpdatesOnly())
	if err != nil {
		return nil, nil, fault.Wrap(fault.Unavailable, err, "device registry: watch %q: %v", id, err)
	}
	defer func() { _ = w.Stop() }()
	refusedSubj, _ := subjects.DeviceEventSubject(id, "refused")
	refused := make(chan *nats.Msg, 1)
	sub, err := s.nc.ChanSubscribe(refusedSubj, refused)
	if err != nil {
		return nil, nil, fault.Wrap(fault.Unavailable, err, "subscribe %s: %v", refusedSubj, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	reqID := nuid.Next()
	s.toDevice(id, subjects.DeviceCapsGet, &jv1.CapsRequest{Id: reqID})
	start := time.Now()
	for {
		select {
		case e := <-w.Updates():
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			if d, err := decodeDevice(e.Value()); err == nil && d.GetManifest().GetRequestId() == reqID {
				return marshal(d)
			}
		case m := <-refused:
			ev := &jv1.DeviceEvent{}
			_ = protojson.Unmarshal(m.Data, ev)
			return nil, nil, fault.New(fault.FailedPrecondition, "device %s answered with a manifest that was refused: %s", id, ev.GetReason())
		case <-ctx.Done():
			return nil, nil, fault.New(fault.DeadlineExceeded, "device %s did not answer the capability request within %v",
				id, time.Since(start).Round(time.Millisecond))
		}
	}
}
