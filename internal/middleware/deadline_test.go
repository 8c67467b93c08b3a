package middleware_test

import (
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/middleware"
	"github.com/nats-io/nats.go"
)

func TestParseTimeout(t *testing.T) {
	tests := []struct {
		name, v  string
		want     time.Duration
		wantCode fault.Code
	}{
		{name: "seconds", v: "1.5s", want: 1500 * time.Millisecond},
		{name: "nanosecond", v: "1ns", want: time.Nanosecond},
		{name: "zero", v: "0s", wantCode: fault.InvalidArgument},
		{name: "negative", v: "-1s", wantCode: fault.InvalidArgument},
		{name: "no unit", v: "5", wantCode: fault.InvalidArgument},
		{name: "garbage", v: "soon", wantCode: fault.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := middleware.ParseTimeout("X-Timeout", tc.v)
			if fault.CodeOf(err) != tc.wantCode || got != tc.want {
				t.Fatalf("got %v, %v; want %v, code %q", got, err, tc.want, tc.wantCode)
			}
		})
	}
}

func TestSetTimeoutRoundTrips(t *testing.T) {
	h := nats.Header{}
	middleware.SetTimeout(h, "X-Timeout", time.Now().Add(time.Hour))
	d, err := middleware.ParseTimeout("X-Timeout", h.Get("X-Timeout"))
	if err != nil || d <= 59*time.Minute || d > time.Hour {
		t.Fatalf("got %v, %v; want just under 1h", d, err)
	}
	middleware.SetTimeout(h, "X-Timeout", time.Now().Add(-time.Second))
	if d, err := middleware.ParseTimeout("X-Timeout", h.Get("X-Timeout")); err != nil || d != time.Nanosecond {
		t.Fatalf("past deadline: got %v, %v; want 1ns", d, err)
	}
}
