package main

import (
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

var metricsURL = regexp.MustCompile(`metrics +(http://\S+)/metrics`)

func TestUpServesMetrics(t *testing.T) {
	url, stop, out := startUpOut(t, t.TempDir(), "--metrics-listen", "127.0.0.1:0")
	defer stop()
	m := metricsURL.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no metrics URL in the banner:\n%s", out)
	}
	base := m[1]
	if code, body := httpGet(t, base+"/readyz"); code != http.StatusOK {
		t.Fatalf("/readyz after Loki is up: got %d %q, want 200", code, body)
	}
	if got, err := cli(t, "call", "add", "a=1", "b=2", "--nats-url", url); err != nil || got != "3" {
		t.Fatalf("call add: got %q, %v, want 3", got, err)
	}
	// count keeps its counter in Hel, climate reads Fenrir's sim board.
	for _, call := range [][]string{{"count", "name=m"}, {"climate"}} {
		if _, err := cli(t, append(append([]string{"call"}, call...), "--nats-url", url)...); err != nil {
			t.Fatalf("call %v: %v", call, err)
		}
	}
	_, body := httpGet(t, base+"/metrics")
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse /metrics: %v", err)
	}
	if got := sample(mfs, "loki_tool_calls_total", "tool", "add", "code", "OK"); got != 1 {
		t.Errorf(`loki_tool_calls_total{tool="add",code="OK"}: got %v, want 1`, got)
	}
	// Every micro service of the process reports under its name.
	if got := sample(mfs, "loki_service_requests_total", "service", "loki", "endpoint", "exec"); got < 1 {
		t.Errorf(`loki_service_requests_total{service="loki",endpoint="exec"}: got %v, want at least 1`, got)
	}
	for _, svc := range []string{"hel", "fenrir"} {
		var total float64
		for _, mf := range mfs {
			if mf.GetName() != "loki_service_requests_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "service" && l.GetValue() == svc {
						total += m.GetCounter().GetValue()
					}
				}
			}
		}
		if total < 1 {
			t.Errorf(`loki_service_requests_total{service=%q}: got %v, want at least 1 after a call that uses it`, svc, total)
		}
	}
	if got := sample(mfs, "loki_registry_tools"); got < 1 {
		t.Errorf("loki_registry_tools: got %v, want the example tools", got)
	}
}

func TestUpMetricsListenBusyPortNamesFlag(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	dir := t.TempDir()
	t.Setenv("LOKI_DATA_DIR", dir)
	_, err = cli(t, "up", "--data-dir", dir, "--nats-port", "-1", "--grpc-port", "0", "--mqtt-port", "0",
		"--log-level", "error", "--metrics-listen", lis.Addr().String())
	if err == nil || !strings.Contains(err.Error(), "--metrics-listen "+lis.Addr().String()) {
		t.Errorf("busy metrics port: got %v, want an error naming --metrics-listen", err)
	}
}

func httpGet(t *testing.T, url string) (int, string) {
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

// sample sums the family's counters and gauges whose labels match the
// name/value pairs kv.
func sample(mfs map[string]*dto.MetricFamily, family string, kv ...string) float64 {
	var sum float64
next:
	for _, m := range mfs[family].GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if have[kv[i]] != kv[i+1] {
				continue next
			}
		}
		sum += m.GetCounter().GetValue() + m.GetGauge().GetValue()
	}
	return sum
}
