// Package middleware holds the cross-cutting parts of the child services'
// NATS handlers: the caller's deadline and the logging of errors callers
// only see as a code. One file per concern.
package middleware

import (
	"context"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/nats-io/nats.go"
)

// Deadline bounds next by the request's header (the caller's remaining
// deadline as a Go duration, "1.5s"), capped at maxTimeout, or by def when
// the header is absent. A malformed or non-positive header is
// INVALID_ARGUMENT.
func Deadline(header string, def, maxTimeout time.Duration, next microsvc.Handler) microsvc.Handler {
	return func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
		d := def
		if v := r.Header().Get(header); v != "" {
			var err error
			if d, err = ParseTimeout(header, v); err != nil {
				return nil, nil, err
			}
			d = min(d, maxTimeout)
		}
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return next(ctx, r)
	}
}

// ParseTimeout parses the value v of a timeout header: a positive Go
// duration, or INVALID_ARGUMENT naming the header.
func ParseTimeout(header, v string) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fault.New(fault.InvalidArgument, "%s %q: want a positive duration such as \"1.5s\"", header, v)
	}
	return d, nil
}

// SetTimeout sets header on h to the time left before dl, the form Deadline
// reads. A deadline already past is sent as 1ns, so the service fails the
// request at once instead of applying its default.
func SetTimeout(h nats.Header, header string, dl time.Time) {
	if d := time.Until(dl); d > 0 {
		h.Set(header, d.String())
	} else {
		h.Set(header, "1ns")
	}
}
