package middleware

import (
	"context"
	"log/slog"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/nats-io/nats.go"
)

// Log keys of ErrorLog.
const (
	logKeySubject = "subject"
	logKeyErr     = "err"
)

// ErrorLog logs the details of INTERNAL errors, which callers only see as
// "internal error", and of UNAVAILABLE ones, which point at a dependency
// of the service (JetStream, hardware, a remote host).
func ErrorLog(log *slog.Logger, subject string, next microsvc.Handler) microsvc.Handler {
	return func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
		data, hdr, err := next(ctx, r)
		switch fault.CodeOf(err) {
		case fault.Internal, fault.Unavailable:
			log.Error("request failed", logKeySubject, subject, logKeyErr, err)
		}
		return data, hdr, err
	}
}
