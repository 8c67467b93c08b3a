package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"strings"

	"github.com/loki-iot/loki/internal/fault"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// authenticator checks bearer tokens. It compares SHA-256 digests of the
// presented and configured tokens in constant time, and checks every
// configured token, so neither a token's length nor its position in the
// list shows in the timing.
type authenticator struct {
	digests []([sha256.Size]byte)
	// exempt reports methods that need no token (health and reflection,
	// unless configured otherwise).
	exempt func(fullMethod string) bool
	log    *slog.Logger
}

func newAuthenticator(cfg Config, log *slog.Logger) *authenticator {
	a := &authenticator{log: log, exempt: func(string) bool { return false }}
	for _, t := range cfg.Tokens {
		a.digests = append(a.digests, sha256.Sum256([]byte(t)))
	}
	if !cfg.AuthHealthAndReflection {
		a.exempt = isHealthOrReflection
	}
	return a
}

// isHealthOrReflection reports methods of grpc.health.v1.Health and of both
// reflection services.
func isHealthOrReflection(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1.ServerReflection/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1alpha.ServerReflection/")
}

// check returns nil when the call may proceed, else an UNAUTHENTICATED
// status error.
func (a *authenticator) check(ctx context.Context, fullMethod string) error {
	if len(a.digests) == 0 || a.exempt(fullMethod) {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	if len(values) == 0 {
		return statusError(a.log, fault.New(fault.Unauthenticated,
			"missing bearer token: send metadata \"authorization: Bearer <token>\""), "", "")
	}
	for _, v := range values {
		scheme, tok, ok := strings.Cut(v, " ")
		if ok && strings.EqualFold(scheme, "bearer") && a.valid(strings.TrimSpace(tok)) {
			return nil
		}
	}
	return statusError(a.log, fault.New(fault.Unauthenticated, "invalid bearer token"), "", "")
}

func (a *authenticator) valid(tok string) bool {
	d := sha256.Sum256([]byte(tok))
	match := 0
	for i := range a.digests {
		match |= subtle.ConstantTimeCompare(d[:], a.digests[i][:])
	}
	return match == 1
}

func (a *authenticator) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := a.check(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (a *authenticator) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := a.check(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}
