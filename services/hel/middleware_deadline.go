package hel

import (
	"context"
	"time"

	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/nats-io/nats.go"
)

// withDeadline bounds next by the request's Hel-Timeout header (the
// caller's remaining deadline), capped at maxTimeout, or by def when the
// header is absent. A malformed header is INVALID_ARGUMENT.
func withDeadline(def, maxTimeout time.Duration, next microsvc.Handler) microsvc.Handler {
	return func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
		d := def
		if v := r.Header().Get(HeaderTimeout); v != "" {
			var err error
			if d, err = parseDuration(HeaderTimeout, v); err != nil {
				return nil, nil, err
			}
			d = min(d, maxTimeout)
		}
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return next(ctx, r)
	}
}
