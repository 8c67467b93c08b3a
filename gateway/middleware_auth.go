package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/loki-iot/loki/internal/fault"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// authenticator checks bearer tokens and the rights of their roles. It
// compares SHA-256 digests of the presented and configured tokens in
// constant time, and checks every configured token of both roles, so
// neither a token's length nor its position or list shows in the timing.
type authenticator struct {
	// tokens are the configured tokens' digests; setTokens swaps the whole
	// list, and each call checks against the list it loaded first.
	tokens atomic.Pointer[[]tokenDigest]
	// exempt reports methods that need no token (health and reflection,
	// unless configured otherwise).
	exempt func(fullMethod string) bool
	// rights are the accesses each role's NATS permissions allow.
	rights map[subjects.Role]map[*busAccess]bool
	// devices verifies device logins (Basic credentials).
	devices *deviceAuth
	log     *slog.Logger
}

// tokenDigest is a configured token's digest and the role it grants.
type tokenDigest struct {
	sum  [sha256.Size]byte
	role subjects.Role
}

func newAuthenticator(cfg Config, log *slog.Logger) (*authenticator, error) {
	rights, err := roleRights(subjects.RoleClient, subjects.RoleAdmin)
	if err != nil {
		return nil, err
	}
	a := &authenticator{log: log, rights: rights, exempt: func(string) bool { return false }}
	a.setTokens(cfg.Tokens, cfg.AdminTokens)
	if !cfg.AuthHealthAndReflection {
		a.exempt = isHealthOrReflection
	}
	return a, nil
}

// setTokens makes tokens (client role) and adminTokens the accepted
// tokens, for calls that start from now on.
func (a *authenticator) setTokens(tokens, adminTokens []string) {
	digests := make([]tokenDigest, 0, len(tokens)+len(adminTokens))
	for _, t := range tokens {
		digests = append(digests, tokenDigest{sum: sha256.Sum256([]byte(t)), role: subjects.RoleClient})
	}
	for _, t := range adminTokens {
		digests = append(digests, tokenDigest{sum: sha256.Sum256([]byte(t)), role: subjects.RoleAdmin})
	}
	a.tokens.Store(&digests)
}

// isHealthOrReflection reports methods of grpc.health.v1.Health and of both
// reflection services.
func isHealthOrReflection(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1.ServerReflection/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1alpha.ServerReflection/")
}

// check returns the call's context when the call may proceed (with the
// caller's device principal when it presented a device login), an
// UNAUTHENTICATED status error when it lacks a valid token or device login,
// and a PERMISSION_DENIED one when the token's role or the device may not
// make it. A device login ("authorization: Basic ...") is always verified,
// with or without configured tokens; without configured tokens every other
// caller has the client role.
func (a *authenticator) check(ctx context.Context, fullMethod string) (context.Context, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	for _, v := range values {
		if scheme, cred, ok := strings.Cut(v, " "); ok && strings.EqualFold(scheme, "basic") {
			if a.exempt(fullMethod) {
				return ctx, nil
			}
			return a.checkDevice(ctx, cred, fullMethod)
		}
	}
	if fullMethod == lokiv1.DeviceLink_Connect_FullMethodName {
		// A token, even an admin's, names no device to act as.
		return ctx, statusError(a.log, fault.New(fault.Unauthenticated,
			"DeviceLink/Connect needs the device's login: send metadata \"authorization: Basic base64(username:password)\""), "", "")
	}
	return ctx, a.checkToken(values, fullMethod)
}

// checkToken is check for bearer tokens.
func (a *authenticator) checkToken(values []string, fullMethod string) error {
	tokens := *a.tokens.Load()
	if len(tokens) == 0 {
		return a.authorize(tokens, subjects.RoleClient, fullMethod)
	}
	if a.exempt(fullMethod) {
		return nil
	}
	if len(values) == 0 {
		return statusError(a.log, fault.New(fault.Unauthenticated,
			"missing bearer token: send metadata \"authorization: Bearer <token>\""), "", "")
	}
	for _, v := range values {
		scheme, tok, ok := strings.Cut(v, " ")
		if !ok || !strings.EqualFold(scheme, "bearer") {
			continue
		}
		if role, ok := roleOf(tokens, strings.TrimSpace(tok)); ok {
			return a.authorize(tokens, role, fullMethod)
		}
	}
	return statusError(a.log, fault.New(fault.Unauthenticated, "invalid bearer token"), "", "")
}

// roleOf returns the role of tok among the configured tokens, comparing
// it with every one of them.
func roleOf(tokens []tokenDigest, tok string) (subjects.Role, bool) {
	d := sha256.Sum256([]byte(tok))
	match := -1
	for i := range tokens {
		eq := subtle.ConstantTimeCompare(d[:], tokens[i].sum[:])
		match = subtle.ConstantTimeSelect(eq, i, match)
	}
	if match < 0 {
		return "", false
	}
	return tokens[match].role, true
}

// authorize returns nil when role may call fullMethod, else a
// PERMISSION_DENIED status error naming the role it needs. Methods the
// gateway does not serve pass: they are answered UNIMPLEMENTED without
// touching NATS. tokens are those the call was checked against.
func (a *authenticator) authorize(tokens []tokenDigest, role subjects.Role, fullMethod string) error {
	acc, ok := accessOf(fullMethod)
	if !ok || a.rights[role][acc] {
		return nil
	}
	method := fullMethod[strings.LastIndexByte(fullMethod, '/')+1:]
	var msg string
	switch {
	case !a.rights[subjects.RoleAdmin][acc]:
		msg = fmt.Sprintf("%s is not allowed through the gateway", method)
	case len(tokens) == 0:
		msg = fmt.Sprintf("%s needs an admin token: this gateway has no tokens configured, so every caller has the client role (set admin_tokens)", method)
	default:
		msg = fmt.Sprintf("%s needs an admin token; this is a %s token", method, role)
	}
	return statusError(a.log, fault.New(fault.PermissionDenied, "%s", msg), "", "")
}

func (a *authenticator) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := a.check(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (a *authenticator) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := a.check(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	if ctx != ss.Context() {
		ss = withContext{ServerStream: ss, ctx: ctx}
	}
	return handler(srv, ss)
}

// withContext is a stream whose context carries the caller's principal.
type withContext struct {
	grpc.ServerStream
	ctx context.Context
}

func (s withContext) Context() context.Context { return s.ctx }
