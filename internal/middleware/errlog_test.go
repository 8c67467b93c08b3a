package middleware_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/middleware"
	"github.com/nats-io/nats.go"
)

func TestErrorLog(t *testing.T) {
	failWith := func(code fault.Code) microsvc.Handler {
		return func(context.Context, *microsvc.Request) ([]byte, nats.Header, error) {
			return nil, nil, fault.New(code, "detail of %s", code)
		}
	}
	tests := []struct {
		name    string
		code    fault.Code
		codes   []fault.Code
		wantLog bool
	}{
		{"internal by default", fault.Internal, nil, true},
		{"unavailable by default", fault.Unavailable, nil, true},
		{"bad input is the caller's", fault.InvalidArgument, nil, false},
		{"unavailable when only internal is asked", fault.Unavailable, []fault.Code{fault.Internal}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			h := middleware.ErrorLog(slog.New(slog.NewTextHandler(&buf, nil)), "x.y", failWith(tc.code), tc.codes...)
			_, _, err := h(context.Background(), nil)
			if fault.CodeOf(err) != tc.code {
				t.Fatalf("got %v, want the handler's error passed through", err)
			}
			if logged := strings.Contains(buf.String(), "detail of"); logged != tc.wantLog {
				t.Fatalf("logged %v (%q), want %v", logged, buf.String(), tc.wantLog)
			}
		})
	}
}
