package loki_test

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/metrics"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/loki"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func TestMetricsMoveAfterCalls(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	registerTools(t, nc, testTools)
	reg := metrics.New()
	web, err := metrics.Listen("127.0.0.1:0", reg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = web.Close() })

	svc, err := loki.New(loki.Config{Metrics: reg}, natstest.Connect(t, srv), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if code := status(t, web.URL()+"/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("/readyz before Run: got %d, want 503", code)
	}
	natstest.RunService(t, svc)
	if code := status(t, web.URL()+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz once ready: got %d, want 200", code)
	}

	before := scrapeMetrics(t, web.URL())
	okCalls := map[string]string{"tool": "add", "code": metrics.OK}
	if got := value(before, "loki_tool_calls_total", okCalls); got != 0 {
		t.Fatalf("add OK calls before any call: got %v, want 0", got)
	}
	c := loki.NewClient(nc)
	if _, err := call(t, c, "add", `{"a":1,"b":2}`); err != nil {
		t.Fatal(err)
	}
	if _, err := call(t, c, "add", `{"a":"one"}`); fault.CodeOf(err) != fault.InvalidArgument {
		t.Fatalf("add with a string: got %v, want INVALID_ARGUMENT", err)
	}

	after := scrapeMetrics(t, web.URL())
	tests := []struct {
		name   string
		family string
		labels map[string]string
		want   float64
	}{
		{"OK calls", "loki_tool_calls_total", okCalls, 1},
		{"INVALID_ARGUMENT calls", "loki_tool_calls_total", map[string]string{"tool": "add", "code": string(fault.InvalidArgument)}, 1},
		{"duration histogram", "loki_tool_call_duration_seconds", map[string]string{"tool": "add"}, 2},
		{"running", "loki_tool_calls_running", map[string]string{"tool": "add"}, 0},
		{"exec endpoint OK", "loki_service_requests_total", map[string]string{"service": "loki", "endpoint": "exec", "code": metrics.OK}, 1},
		{"exec endpoint histogram", "loki_service_request_duration_seconds", map[string]string{"service": "loki", "endpoint": "exec"}, 2},
		{"exec queue", "loki_service_queued", map[string]string{"service": "loki", "endpoint": "exec"}, 0},
		{"registry tools", "loki_registry_tools", nil, float64(len(svc.Registry().List()))},
		{"memory not over", "loki_memory_over_limit", nil, 0},
	}
	for _, tc := range tests {
		if got := value(after, tc.family, tc.labels); got != tc.want {
			t.Errorf("%s: %s%v got %v, want %v", tc.name, tc.family, tc.labels, got, tc.want)
		}
	}
	if got := value(after, "loki_registry_revision", nil); got < 1 {
		t.Errorf("registry revision: got %v, want at least 1", got)
	}
}

func TestMetricsCountMemoryRefusals(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	registerTools(t, nc, testTools)
	reg := metrics.New()
	// Any heap is over one byte: the guard refuses every call.
	startLoki(t, srv, loki.Config{Metrics: reg, MemoryLimit: 1, MemoryCheck: time.Millisecond})
	c := loki.NewClient(nc)
	waitFor(t, func() bool {
		_, err := c.Call(context.Background(), "add", []byte(`{"a":1}`))
		return fault.CodeOf(err) == fault.ResourceExhausted
	})
	mfs, err := reg.Prometheus().Gather()
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		byName[mf.GetName()] = mf
	}
	if got := value(byName, "loki_memory_refused_calls_total", nil); got < 1 {
		t.Errorf("memory refusals: got %v, want at least 1", got)
	}
	if got := value(byName, "loki_tool_calls_total", map[string]string{"tool": "add", "code": string(fault.ResourceExhausted)}); got < 1 {
		t.Errorf("add RESOURCE_EXHAUSTED calls: got %v, want at least 1", got)
	}
}

func status(t *testing.T, url string) int {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode
}

// scrapeMetrics reads /metrics over HTTP with the Prometheus text parser.
func scrapeMetrics(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: got %d, want 200", resp.StatusCode)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

// value is the value of the family's metric with labels (a histogram's
// sample count); 0 when there is none yet.
func value(mfs map[string]*dto.MetricFamily, family string, labels map[string]string) float64 {
	for _, m := range mfs[family].GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		match := true
		for k, v := range labels {
			if have[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue()
		case m.Gauge != nil:
			return m.GetGauge().GetValue()
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	return 0
}
