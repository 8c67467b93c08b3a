package metrics_test

import (
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/metrics"
	"github.com/loki-iot/loki/internal/natstest"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func listen(t *testing.T, reg *metrics.Registry) *metrics.Server {
	t.Helper()
	srv, err := metrics.Listen("127.0.0.1:0", reg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func scrape(t *testing.T, base string) map[string]*dto.MetricFamily {
	t.Helper()
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("GET /metrics: got %d, want 200", code)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	return mfs
}

// find returns the metric of family name whose labels include want.
func find(mfs map[string]*dto.MetricFamily, name string, want map[string]string) *dto.Metric {
	mf := mfs[name]
	if mf == nil {
		return nil
	}
next:
	for _, m := range mf.GetMetric() {
		for k, v := range want {
			found := false
			for _, lp := range m.GetLabel() {
				if lp.GetName() == k && lp.GetValue() == v {
					found = true
				}
			}
			if !found {
				continue next
			}
		}
		return m
	}
	return nil
}

func TestReadyzFalseUntilChecksPass(t *testing.T) {
	reg := metrics.New()
	started := make(chan struct{})
	reg.AddCheck("svc", metrics.ReadyWhenClosed(started))
	srv := listen(t, reg)

	if code, body := get(t, srv.URL()+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while starting: got %d %q, want 200", code, body)
	}
	code, body := get(t, srv.URL()+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "svc: starting") {
		t.Errorf("/readyz while starting: got %d %q, want 503 naming svc", code, body)
	}
	close(started)
	if code, body := get(t, srv.URL()+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz once ready: got %d %q, want 200", code, body)
	}
}

func TestNATSConnectedCheck(t *testing.T) {
	reg := metrics.New()
	nc := natstest.Connect(t, natstest.Start(t))
	reg.AddCheck("nats", metrics.NATSConnected(nc))
	if err := reg.Ready(); err != nil {
		t.Fatalf("connected: got %v, want ready", err)
	}
	nc.Close()
	if err := reg.Ready(); err == nil || !strings.Contains(err.Error(), "nats: NATS connection is CLOSED") {
		t.Errorf("closed: got %v, want not ready naming the connection", err)
	}
}

func TestListenBusyPort(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	if _, err := metrics.Listen(lis.Addr().String(), metrics.New(), quietLog()); err == nil || !strings.Contains(err.Error(), lis.Addr().String()) {
		t.Errorf("busy port: got %v, want an error naming the address", err)
	}
}

func TestCollectorsOverHTTP(t *testing.T) {
	reg := metrics.New()
	srv := listen(t, reg)

	// Two replicas of one endpoint in a process count into the same series.
	e1 := reg.Services().Endpoint("hel", "kv_get")
	e2 := reg.Services().Endpoint("hel", "kv_get")
	e1.Observe(metrics.OK, time.Millisecond)
	e2.Observe(metrics.OK, 2*time.Millisecond)
	e2.Refused("RESOURCE_EXHAUSTED")
	e1.TrackPool(func() int64 { return 2 }, func() int64 { return 1 })
	e2.TrackPool(func() int64 { return 3 }, func() int64 { return 0 })

	tool := reg.Tools().Tool("add")
	tool.Started()
	tool.Finished("SCRIPT_ERROR", time.Millisecond)
	reg.Tools().MemoryRefused()
	detach := reg.Tools().AttachReplica(func() int { return 7 }, func() uint64 { return 42 }, func() bool { return false })
	reg.Gateway().Method("/loki.v1.Loki/ListScripts").Observe("OK", time.Millisecond)

	mfs := scrape(t, srv.URL())
	lbl := map[string]string{"service": "hel", "endpoint": "kv_get"}
	checks := []struct {
		name   string
		family string
		labels map[string]string
		value  func(*dto.Metric) float64
		want   float64
	}{
		{"service OK count", "loki_service_requests_total", map[string]string{"service": "hel", "endpoint": "kv_get", "code": "OK"}, counter, 2},
		{"service refusals", "loki_service_requests_total", map[string]string{"code": "RESOURCE_EXHAUSTED"}, counter, 1},
		{"service histogram", "loki_service_request_duration_seconds", lbl, histCount, 2},
		{"busy summed", "loki_service_busy", lbl, gauge, 5},
		{"queued summed", "loki_service_queued", lbl, gauge, 1},
		{"tool calls", "loki_tool_calls_total", map[string]string{"tool": "add", "code": "SCRIPT_ERROR"}, counter, 1},
		{"tool running back to 0", "loki_tool_calls_running", map[string]string{"tool": "add"}, gauge, 0},
		{"memory refusals", "loki_memory_refused_calls_total", nil, counter, 1},
		{"registry tools", "loki_registry_tools", nil, gauge, 7},
		{"registry revision", "loki_registry_revision", nil, gauge, 42},
		{"gateway rpcs", "loki_gateway_rpcs_total", map[string]string{"method": "/loki.v1.Loki/ListScripts", "code": "OK"}, counter, 1},
		{"go runtime", "go_goroutines", nil, gauge, -1},
	}
	for _, tc := range checks {
		m := find(mfs, tc.family, tc.labels)
		if m == nil {
			t.Errorf("%s: no %s%v", tc.name, tc.family, tc.labels)
			continue
		}
		if got := tc.value(m); tc.want >= 0 && got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, got, tc.want)
		}
	}

	e1.Close()
	e2.Close()
	detach()
	mfs = scrape(t, srv.URL())
	if m := find(mfs, "loki_service_busy", lbl); m != nil {
		t.Errorf("busy after Close: got %v, want no series", gauge(m))
	}
	if m := find(mfs, "loki_registry_tools", nil); m != nil {
		t.Errorf("registry tools after detach: got %v, want no series", gauge(m))
	}
}

func TestNilRegistryRecordsNothing(t *testing.T) {
	var reg *metrics.Registry
	reg.AddCheck("x", func() error { return nil })
	reg.Services().Endpoint("a", "b").Observe(metrics.OK, time.Second)
	reg.Services().Endpoint("a", "b").TrackPool(nil, nil)
	reg.Tools().Tool("t").Finished(metrics.OK, time.Second)
	reg.Tools().AttachReplica(nil, nil, nil)()
	reg.Gateway().Method("m").Observe("OK", time.Second)
	if err := reg.Ready(); err != nil {
		t.Errorf("nil registry: got %v, want ready", err)
	}
}

func counter(m *dto.Metric) float64   { return m.GetCounter().GetValue() }
func gauge(m *dto.Metric) float64     { return m.GetGauge().GetValue() }
func histCount(m *dto.Metric) float64 { return float64(m.GetHistogram().GetSampleCount()) }
