package gateway_test

import (
	"testing"

	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/metrics"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/emptypb"
)

func TestMetricsCountRPCs(t *testing.T) {
	reg := metrics.New()
	cfg := gateway.DefaultConfig()
	cfg.Metrics = reg
	e := start(t, cfg)
	c := e.dial(t)
	ctx := ctxT(t)
	if _, _, err := c.Execute(ctx, "add", map[string]any{"a": 1, "b": 2}); err != nil {
		t.Fatal(err)
	}
	_, err := c.Get(ctx, "no_such_tool")
	checkCode(t, err, codes.NotFound)
	for _, m := range []string{"/loki.scripts.v1.Scripts/Script_no_such_tool", "/made.Up/Method"} {
		err := c.Conn().Invoke(ctx, m, &emptypb.Empty{}, &emptypb.Empty{})
		checkCode(t, err, codes.Unimplemented)
	}
	// A per-tool RPC without its required argument a.
	err = c.Conn().Invoke(ctx, "/"+gateway.ScriptsService+"/Script_add", &emptypb.Empty{}, &emptypb.Empty{})
	checkCode(t, err, codes.InvalidArgument)
	if err := reg.Ready(); err != nil {
		t.Errorf("readiness of a serving gateway: got %v, want ready", err)
	}

	mfs, err := reg.Prometheus().Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[[2]string]float64{}
	hist := map[string]uint64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			l := labels(m)
			switch mf.GetName() {
			case "loki_gateway_rpcs_total":
				got[[2]string{l["method"], l["code"]}] = m.GetCounter().GetValue()
			case "loki_gateway_rpc_duration_seconds":
				hist[l["method"]] = m.GetHistogram().GetSampleCount()
			}
		}
	}
	for _, tc := range []struct {
		name   string
		method string
		code   string
		want   float64
	}{
		{"ExecuteScript", "/loki.v1.Loki/ExecuteScript", "OK", 1},
		{"GetScript not found", "/loki.v1.Loki/GetScript", "NotFound", 1},
		{"per-tool RPC", "/" + gateway.ScriptsService + "/Script_add", "InvalidArgument", 1},
		{"unknown methods under one label", metrics.UnknownMethod, "Unimplemented", 2},
	} {
		if g := got[[2]string{tc.method, tc.code}]; g != tc.want {
			t.Errorf("%s: loki_gateway_rpcs_total{method=%q,code=%q} got %v, want %v", tc.name, tc.method, tc.code, g, tc.want)
		}
	}
	if hist["/loki.v1.Loki/ExecuteScript"] != 1 {
		t.Errorf("ExecuteScript duration samples: got %d, want 1", hist["/loki.v1.Loki/ExecuteScript"])
	}
	for k := range got {
		if k[0] == "/made.Up/Method" || k[0] == "/loki.scripts.v1.Scripts/Script_no_such_tool" {
			t.Errorf("method %q has its own series; want it counted as %q", k[0], metrics.UnknownMethod)
		}
	}
}

func labels(m *dto.Metric) map[string]string {
	out := map[string]string{}
	for _, lp := range m.GetLabel() {
		out[lp.GetName()] = lp.GetValue()
	}
	return out
}
