package gateway

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"google.golang.org/grpc"
)

// recoverer turns a handler panic into an INTERNAL status (logged with the
// stack), so one bad request cannot take the gateway down: grpc-go does not
// recover handler panics itself.
type recoverer struct{ log *slog.Logger }

func (r recoverer) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (resp any, err error) {
	defer r.recover(info.FullMethod, &err)
	return handler(ctx, req)
}

func (r recoverer) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	defer r.recover(info.FullMethod, &err)
	return handler(srv, ss)
}

func (r recoverer) recover(method string, err *error) {
	if p := recover(); p != nil {
		r.log.Error("handler panicked", keyMethod, method, "panic", p, "stack", string(debug.Stack()))
		*err = statusError(r.log, fmt.Errorf("panic in %s: %v", method, p), "", "")
	}
}
