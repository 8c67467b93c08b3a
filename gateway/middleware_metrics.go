package gateway

import (
	"context"
	"strings"
	"time"

	"github.com/loki-iot/loki/internal/metrics"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// metered counts every RPC by method and gRPC code and times it. It runs
// outermost, so calls refused by authentication and handlers that panicked
// (answered INTERNAL by the recoverer) are counted too. A method the
// gateway does not serve is counted as metrics.UnknownMethod: callers name
// methods, and must not grow the label set.
type metered struct {
	m     *metrics.Gateway
	known func(method string) bool
}

func (m metered) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	m.observe(info.FullMethod, err, start)
	return resp, err
}

func (m metered) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	m.observe(info.FullMethod, err, start)
	return err
}

func (m metered) observe(method string, err error, start time.Time) {
	if !m.known(method) {
		method = metrics.UnknownMethod
	}
	m.m.Method(method).Observe(status.Code(err).String(), time.Since(start))
}

// servesMethod reports whether full (/service/method) is one of the
// gateway's static methods or a per-tool RPC of the current registry.
func (g *Gateway) servesMethod(full string) bool {
	if _, ok := g.staticMethods[full]; ok {
		return true
	}
	svc, method, _ := strings.Cut(strings.TrimPrefix(full, "/"), "/")
	if svc != ScriptsService {
		return false
	}
	_, ok := g.scripts.Load().methods[method]
	return ok
}
