package hel

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/nats-io/nats.go"
)

// storeAckTimeout bounds how long a KV or cache write waits for JetStream,
// whatever the caller's deadline. A replicated bucket acknowledges a write
// once a majority of its replicas hold it; with the majority down it never
// answers (the request is not refused, only unanswered), so without this
// bound a caller would wait out its whole deadline to learn nothing. A new
// leader is elected well within it when one replica of three fails.
const storeAckTimeout = 5 * time.Second

var errNoAck = errors.New("no acknowledgement from JetStream")

// bounded runs a write with storeAckTimeout and turns running out of it,
// while the caller still had time, into UNAVAILABLE naming the store.
func bounded(h handler) handler {
	return func(ctx context.Context, req request, r *microsvc.Request) ([]byte, nats.Header, error) {
		wctx, cancel := context.WithTimeoutCause(ctx, storeAckTimeout, errNoAck)
		defer cancel()
		body, hdr, err := h(wctx, req, r)
		if err != nil && ctx.Err() == nil && errors.Is(context.Cause(wctx), errNoAck) {
			store := "the cache"
			if req.bucket != "" {
				store = fmt.Sprintf("bucket %q", req.bucket)
			}
			return nil, nil, fault.Wrap(fault.Unavailable, err,
				"%s: the store did not acknowledge the write within %s: fewer than a majority of its replicas are reachable (no quorum), or it is electing a leader; try again later",
				store, storeAckTimeout)
		}
		return body, hdr, err
	}
}
