package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/helbucket"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/replicas"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// brokerTimeout bounds the JetStream calls of one bucket request.
const brokerTimeout = 10 * time.Second

// BucketBroker serves the bucket broker alone (subjects.AuthHelBucket), as
// the micro service "auth": what `loki serve auth` runs, with the auth
// identity, next to a nats-server configured by `loki auth export`, where
// no `loki up` runs the identity service (which serves the broker too).
type BucketBroker struct {
	s *Service
}

// NewBucketBroker returns a bucket broker over nc, which must hold the
// auth role's rights.
func NewBucketBroker(nc *nats.Conn, log *slog.Logger) *BucketBroker {
	return &BucketBroker{s: &Service{nc: nc, log: log.With("component", "auth"), ready: make(chan struct{})}}
}

// Ready is closed once the broker serves.
func (b *BucketBroker) Ready() <-chan struct{} { return b.s.ready }

// Run serves until ctx ends, then drains.
func (b *BucketBroker) Run(ctx context.Context) error {
	svc, err := microsvc.Start(b.s.nc, microsvc.Config{
		Name: subjects.AuthService, Version: Version,
		Description: "Loki's bucket broker: creates Hel's buckets, which Hel may not",
	}, b.s.log)
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	const drain = 5 * time.Second
	if err := svc.AddEndpoints(drain,
		microsvc.Endpoint{Name: "hel-bucket", Subject: subjects.AuthHelBucket, Handler: b.s.helBucket},
	); err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	close(b.s.ready)
	<-ctx.Done()
	return svc.Stop(drain)
}

// helBucket answers subjects.AuthHelBucket, the bucket broker: it creates
// or updates one of Hel's KV buckets or object stores with the settings Hel
// passes, once helbucket.Request.Check accepts them. Only Hel and admins
// may publish there (the bus permissions say so); the broker trusts no
// one's settings beyond what Check allows. A stream of that name that
// exists already must be Hel's: marked as Hel's, or, made before the
// broker existed, with exactly the subjects its kind implies and nothing
// mirrored, sourced or republished. Every stream it makes or updates is
// marked as Hel's.
func (s *Service) helBucket(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	var req helbucket.Request
	dec := json.NewDecoder(bytes.NewReader(r.Data()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return nil, nil, fault.Wrap(fault.InvalidArgument, helbucket.ErrInvalid,
			"hel bucket: want {\"kv\":{\"bucket\":...}} or {\"object\":{\"bucket\":...}}: %v", err)
	}
	stream, subs, err := req.Check()
	if err != nil {
		return nil, nil, fault.Wrap(fault.InvalidArgument, err, "%v", err)
	}
	ctx, cancel := context.WithTimeout(ctx, brokerTimeout)
	defer cancel()
	js, err := jetstream.New(s.nc)
	if err != nil {
		return nil, nil, err
	}
	st, err := js.Stream(ctx, stream)
	switch {
	case err == nil:
		if c := st.CachedInfo().Config; !helbucket.IsHel(c.Metadata) && !onlySubjects(c, subs) {
			return nil, nil, fault.New(fault.FailedPrecondition,
				"hel bucket: stream %q exists and is not Hel's (no %s=%s and other subjects or sources)", stream, helbucket.OwnerKey, helbucket.Owner)
		}
	case !errors.Is(err, jetstream.ErrStreamNotFound):
		return nil, nil, jsFault(err, stream)
	}
	// On a cluster that has just started, a replicated bucket may find no
	// peers to be placed on for a moment: replicas.Setup tries again.
	err = replicas.Setup(ctx, nil, stream, func(ctx context.Context) (err error) {
		if req.KV != nil {
			c := *req.KV
			c.Metadata = helbucket.Mark(c.Metadata)
			_, err = js.CreateOrUpdateKeyValue(ctx, c)
		} else {
			c := *req.Object
			c.Metadata = helbucket.Mark(c.Metadata)
			_, err = js.CreateOrUpdateObjectStore(ctx, c)
		}
		return err
	})
	if err != nil {
		return nil, nil, jsFault(err, stream)
	}
	if st, err = js.Stream(ctx, stream); err != nil {
		return nil, nil, jsFault(err, stream)
	}
	c := st.CachedInfo().Config
	if !onlySubjects(c, subs) {
		// The jetstream library chose the subjects; this never happens.
		s.log.Error("hel bucket has unexpected subjects", "stream", stream, "subjects", c.Subjects)
		return nil, nil, fault.New(fault.Internal, "hel bucket %q: unexpected subjects", stream)
	}
	if req.DiscardOld && c.Discard != jetstream.DiscardOld {
		c.Discard = jetstream.DiscardOld
		if _, err := js.UpdateStream(ctx, c); err != nil {
			return nil, nil, jsFault(err, stream)
		}
	}
	s.log.Debug("hel bucket created or updated", "stream", stream)
	b, err := json.Marshal(helbucket.Reply{Stream: stream})
	return b, nil, err
}

// onlySubjects reports whether stream config c captures exactly subs and
// takes nothing from other streams nor sends anything elsewhere.
func onlySubjects(c jetstream.StreamConfig, subs []string) bool {
	got, want := slices.Clone(c.Subjects), slices.Clone(subs)
	slices.Sort(got)
	slices.Sort(want)
	return slices.Equal(got, want) && c.Mirror == nil && len(c.Sources) == 0 && c.RePublish == nil
}

// jsFault maps a JetStream error of the broker to what Hel is told.
func jsFault(err error, stream string) error {
	var api *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported):
		return fault.Wrap(fault.FailedPrecondition, err, helbucket.LimitMarkerTTLUnsupported)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fault.Wrap(fault.DeadlineExceeded, err, "hel bucket %q: JetStream did not answer", stream)
	case errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrJetStreamNotEnabled):
		return fault.Wrap(fault.Unavailable, err, "hel bucket %q: JetStream unavailable", stream)
	case errors.As(err, &api):
		switch {
		case api.ErrorCode == jetstream.JSErrCodeBadRequest:
			return fault.Wrap(fault.InvalidArgument, err, "hel bucket %q: %s", stream, api.Description)
		case strings.Contains(api.Description, "insufficient resources"), strings.Contains(api.Description, "exceed"):
			return fault.Wrap(fault.ResourceExhausted, err, "hel bucket %q: %s", stream, api.Description)
		}
		return fault.Wrap(fault.FailedPrecondition, err, "hel bucket %q: %s", stream, api.Description)
	}
	return err
}
