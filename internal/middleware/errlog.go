package middleware

import (
	"context"
	"log/slog"
	"slices"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/nats-io/nats.go"
)

// Log keys of ErrorLog.
const (
	logKeySubject = "subject"
	logKeyErr     = "err"
)

// ErrorLog logs the details of errors with one of codes — by default
// INTERNAL, which callers only see as "internal error", and UNAVAILABLE,
// which points at a dependency of the service (JetStream, hardware).
func ErrorLog(log *slog.Logger, subject string, next microsvc.Handler, codes ...fault.Code) microsvc.Handler {
	if len(codes) == 0 {
		codes = []fault.Code{fault.Internal, fault.Unavailable}
	}
	return func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
		data, hdr, err := next(ctx, r)
		if err != nil && slices.Contains(codes, fault.CodeOf(err)) {
			log.Error("request failed", logKeySubject, subject, logKeyErr, err)
		}
		return data, hdr, err
	}
}
