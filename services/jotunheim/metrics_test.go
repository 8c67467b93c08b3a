package jotunheim_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/metrics"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// scrapeDevices reads loki_devices{state} from the metrics endpoint at
// base, as Prometheus would, and returns the online and offline counts
// (-1 when a state is missing).
func scrapeDevices(t *testing.T, base string) (online, offline float64) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	online, offline = -1, -1
	mf := mfs["loki_devices"]
	if mf != nil && mf.GetType() != dto.MetricType_GAUGE {
		t.Fatalf("loki_devices: got type %v, want a gauge", mf.GetType())
	}
	for _, m := range mf.GetMetric() {
		for _, l := range m.GetLabel() {
			if l.GetName() != "state" {
				continue
			}
			switch l.GetValue() {
			case "online":
				online = m.GetGauge().GetValue()
			case "offline":
				offline = m.GetGauge().GetValue()
			}
		}
	}
	return online, offline
}

// TestDeviceCountMetrics: loki_devices{state} counts the registry's
// devices online and offline, once for the process however many replicas
// it runs, and follows a bare device connecting and going offline.
func TestDeviceCountMetrics(t *testing.T) {
	e := setupBare(t)
	reg := metrics.New()
	cfg := testConfig()
	cfg.Metrics = reg
	e.replica(t, cfg)
	e.replica(t, cfg) // both see every device: combined, not added up
	srv, err := metrics.Listen("127.0.0.1:0", reg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })

	if on, off := scrapeDevices(t, srv.URL()); on != 0 || off != 0 {
		t.Fatalf("no device yet: got online %v, offline %v, want 0 and 0", on, off)
	}
	d := e.connectDemo(t, "demo")
	waitDevices(t, srv.URL(), 1, 0)
	d.kill()
	waitDevices(t, srv.URL(), 0, 1)
}

// waitDevices scrapes until loki_devices reads online and offline.
func waitDevices(t *testing.T, base string, online, offline float64) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for {
		on, off := scrapeDevices(t, base)
		if on == online && off == offline {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("loki_devices: got online %v, offline %v, want %v and %v", on, off, online, offline)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
