package hel

import (
	"context"
	"log/slog"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/nats-io/nats.go"
)

// withErrorLog logs the details of INTERNAL errors, which callers only see
// as "internal error", and of UNAVAILABLE ones, which point at JetStream.
func withErrorLog(log *slog.Logger, subject string, next microsvc.Handler) microsvc.Handler {
	return func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
		data, hdr, err := next(ctx, r)
		switch fault.CodeOf(err) {
		case fault.Internal, fault.Unavailable:
			log.Error("request failed", logKeySubject, subject, logKeyErr, err)
		}
		return data, hdr, err
	}
}
