package hel

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/helbucket"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

// Hel never creates or updates a stream itself when the server checks who
// connects: it may not (see subjects.RoleHel), so that a compromised Hel
// cannot make a stream that captures other components' subjects. It asks
// the bucket broker (subjects.AuthHelBucket, served by the identity
// service of `loki up`, or by `loki serve auth`) instead. On a server
// without authentication (tests, a development server) every client may
// create streams and there may be no broker, so Hel creates its buckets
// directly, marked as Hel's all the same.

// brokerWait is how long Hel waits for a bucket broker to appear: at
// start-up `loki up` starts Hel and the identity service together.
const brokerWait = 10 * time.Second

// createKV creates KV bucket cfg, or brings an existing one to cfg, with
// the discard policy discard (KV buckets' is DiscardNew; Hel's cache asks
// for DiscardOld). The broker applies discard; created directly, the
// bucket gets the jetstream library's DiscardNew and the caller changes it.
// It returns jetstream.ErrLimitMarkerTTLNotSupported as the jetstream
// library does.
func (s *Service) createKV(ctx context.Context, cfg jetstream.KeyValueConfig, discard jetstream.DiscardPolicy) (jetstream.KeyValue, error) {
	cfg.Metadata = helbucket.Mark(cfg.Metadata)
	if !s.nc.AuthRequired() {
		return s.js.CreateOrUpdateKeyValue(ctx, cfg)
	}
	if err := s.askBroker(ctx, helbucket.Request{KV: &cfg, DiscardOld: discard == jetstream.DiscardOld}); err != nil {
		return nil, err
	}
	return s.js.KeyValue(ctx, cfg.Bucket)
}

// createObjectStore is createKV for object stores.
func (s *Service) createObjectStore(ctx context.Context, cfg jetstream.ObjectStoreConfig) (jetstream.ObjectStore, error) {
	cfg.Metadata = helbucket.Mark(cfg.Metadata)
	if !s.nc.AuthRequired() {
		return s.js.CreateOrUpdateObjectStore(ctx, cfg)
	}
	if err := s.askBroker(ctx, helbucket.Request{Object: &cfg}); err != nil {
		return nil, err
	}
	return s.js.ObjectStore(ctx, cfg.Bucket)
}

// askBroker sends req to the bucket broker, waiting up to brokerWait (or
// ctx) for one to answer.
func (s *Service) askBroker(ctx context.Context, req helbucket.Request) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(brokerWait)
	wait := 50 * time.Millisecond
	for {
		// The broker may take its own whole budget (placing a replicated
		// bucket on a cluster that is still starting): wait a little longer.
		rctx, cancel := context.WithTimeout(ctx, brokerWait+5*time.Second)
		m, err := s.nc.RequestWithContext(rctx, subjects.AuthHelBucket, body)
		cancel()
		if err == nil {
			return brokerError(m)
		}
		if !errors.Is(err, nats.ErrNoResponders) {
			return err
		}
		if time.Now().Add(wait).After(deadline) {
			return fault.Wrap(fault.Unavailable, err,
				"no bucket broker answers on %s (`loki up` serves it; against another server, run `loki serve auth`)", subjects.AuthHelBucket)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		wait = min(2*wait, time.Second)
	}
}

// brokerError is the error of the broker's answer m, nil on success.
func brokerError(m *nats.Msg) error {
	code := m.Header.Get(micro.ErrorCodeHeader)
	if code == "" {
		return nil
	}
	msg := m.Header.Get(micro.ErrorHeader)
	if msg == helbucket.LimitMarkerTTLUnsupported {
		return jetstream.ErrLimitMarkerTTLNotSupported
	}
	c := fault.Code(code)
	if !c.Valid() {
		c = fault.Internal
	}
	return fault.New(c, "bucket broker: %s", msg)
}
