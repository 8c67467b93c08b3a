package microsvc_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/metrics"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// TestMetricsBusyQueuedAndCodes: the gauges show a running and a queued
// request while they wait, a refusal is counted under its code, and the
// requests that ran are counted and timed when they finish.
func TestMetricsBusyQueuedAndCodes(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	reg := metrics.New()
	svc, err := microsvc.Start(nc, microsvc.Config{Name: "svc", Version: "1.0.0", Metrics: reg}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	if err := svc.AddEndpoints(time.Second, microsvc.Endpoint{Name: "slow", Subject: "svc.slow", Workers: 1, Queue: 1,
		Handler: func(context.Context, *microsvc.Request) ([]byte, nats.Header, error) {
			<-release
			return []byte("ok"), nil, nil
		}}); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			_ = svc.Stop(time.Second)
		}
	}()
	client := natstest.Connect(t, srv)
	replies := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := client.Request("svc.slow", nil, 10*time.Second)
			replies <- err
		}()
	}
	want := func(family, code string) float64 { return gather(t, reg, family, code) }
	deadline := time.Now().Add(10 * time.Second)
	for want("loki_service_busy", "") != 1 || want("loki_service_queued", "") != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("busy %v, queued %v: want 1 and 1", want("loki_service_busy", ""), want("loki_service_queued", ""))
		}
		time.Sleep(5 * time.Millisecond)
	}
	m, err := client.Request("svc.slow", nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if code := m.Header.Get(micro.ErrorCodeHeader); code != string(fault.ResourceExhausted) {
		t.Fatalf("third request with one running and one queued: got code %q, want RESOURCE_EXHAUSTED", code)
	}
	close(release)
	for range 2 {
		if err := <-replies; err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		family, code string
		want         float64
	}{
		{"loki_service_requests_total", metrics.OK, 2},
		{"loki_service_requests_total", string(fault.ResourceExhausted), 1},
		{"loki_service_request_duration_seconds", "", 2},
		{"loki_service_busy", "", 0},
		{"loki_service_queued", "", 0},
	} {
		if got := want(tc.family, tc.code); got != tc.want {
			t.Errorf("%s{code=%q}: got %v, want %v", tc.family, tc.code, got, tc.want)
		}
	}
	stopped = true
	if err := svc.Stop(time.Second); err != nil {
		t.Fatal(err)
	}
	if got := want("loki_service_busy", ""); got != 0 {
		t.Errorf("busy after Stop: got %v, want no series", got)
	}
}

// gather sums family's series of service "svc" (with code, when not "");
// a histogram counts its samples.
func gather(t *testing.T, reg *metrics.Registry, family, code string) float64 {
	t.Helper()
	mfs, err := reg.Prometheus().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != family {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if (lp.GetName() == "service" && lp.GetValue() != "svc") || (code != "" && lp.GetName() == "code" && lp.GetValue() != code) {
					continue next
				}
			}
			sum += m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}
