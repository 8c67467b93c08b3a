package jotunheim_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
)

// waitBudgetEvent waits for an event of kind whose data names budget.
func (p *platform) waitBudgetEvent(from int, kind, budget string) *jv1.Event {
	p.t.Helper()
	var ev *jv1.Event
	p.wait(from, kind+" event of budget "+budget, func(m msg) bool {
		if m.kind != subjects.DeviceEvent {
			return false
		}
		e, err := wire.DecodeEvent(m.data)
		if err != nil || e.GetKind() != kind || e.GetData().GetStructValue().GetFields()["budget"].GetStringValue() != budget {
			return false
		}
		ev = e
		return true
	})
	return ev
}

func TestBandwidthBudgetThrottlesTelemetryButNotCommands(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "metered")
	cfg := testConfig(t, s, "metered")
	cfg.Telemetry.Period = time.Second
	cfg.Limits.BandwidthWindow = time.Hour
	cfg.Limits.BandwidthBudget = 16 << 10
	r := runAgent(t, cfg)

	p.waitManifest(0, jv1.Manifest_REASON_CONNECT)
	ev := p.waitBudgetEvent(0, "warning", "bandwidth")
	if lim := ev.GetData().GetStructValue().GetFields()["limit_bytes"].GetNumberValue(); lim != 16<<10 {
		t.Errorf("event limit_bytes: got %v, want %d", lim, 16<<10)
	}
	eventually(t, "telemetry throttled", func() bool { return r.agent.Stats().Resources.Throttled > 0 })

	// Over the budget, states stop but commands and their results do not.
	if res := p.command(jotunheim.CmdPing, "", nil, 0); !res.GetOk() {
		t.Fatalf("ping over the bandwidth budget: got %v, want ok", res)
	}
	res := p.command(jotunheim.CmdRead, jotunheim.DiagThrottled, nil, 0)
	if !res.GetOk() || res.GetData().GetNumberValue() < 1 {
		t.Fatalf("read %s: got %v, want a count of at least 1", jotunheim.DiagThrottled, res)
	}
	st := r.agent.Stats().Resources
	if st.TxBytes+st.RxBytes < 16<<10 || st.TxTotal < st.TxBytes {
		t.Errorf("stats: got %+v, want the window at the budget", st)
	}
	// The crossing is reported once, not per skipped message.
	p.mu.Lock()
	n := 0
	for _, m := range p.msgs {
		if e, err := wire.DecodeEvent(m.data); m.kind == subjects.DeviceEvent && err == nil &&
			e.GetData().GetStructValue().GetFields()["budget"].GetStringValue() == "bandwidth" {
			n++
		}
	}
	p.mu.Unlock()
	if n != 1 {
		t.Errorf("bandwidth events: got %d, want 1", n)
	}
}

func TestMemoryExhaustionRefusesCommands(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "starving")
	cfg := testConfig(t, s, "starving")
	cfg.Limits.MemoryMax = 1 << 20 // any real process is larger
	r := runAgent(t, cfg)

	man := p.waitManifest(0, jv1.Manifest_REASON_CONNECT)
	if got := man.GetLimits().GetMemoryBytes(); got != 1<<20 {
		t.Errorf("manifest limits.memory_bytes: got %d, want %d", got, 1<<20)
	}
	ev := p.waitBudgetEvent(0, "warning", "memory_max")
	if f := ev.GetData().GetStructValue().GetFields(); f["rss_bytes"].GetNumberValue() < 1<<20 || !f["refusing_commands"].GetBoolValue() {
		t.Errorf("memory event data: got %v", f)
	}
	res := p.command(jotunheim.CmdPing, "", nil, 0)
	if res.GetOk() || res.GetCode() != string(fault.ResourceExhausted) || !strings.Contains(res.GetMessage(), "memory_max") ||
		!strings.Contains(res.GetMessage(), "MiB") {
		t.Fatalf("ping while memory is exhausted: got %v, want RESOURCE_EXHAUSTED naming the memory figure", res)
	}
	if st := r.agent.Stats(); st.Resources.MemoryRefused < 1 || st.Commands != 0 || st.Resources.MemoryRSS < 1<<20 {
		t.Errorf("stats: got %+v, want a refused command and none run", st)
	}
}

func TestDiagnosticSensors(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "diag")
	cfg := testConfig(t, s, "diag")
	cfg.Telemetry.Period = time.Second
	r := runAgent(t, cfg)

	man := p.waitManifest(0, jv1.Manifest_REASON_CONNECT)
	names := map[string]*jv1.Sensor{}
	for _, sn := range man.GetSensors() {
		names[sn.GetName()] = sn
	}
	for _, n := range []string{jotunheim.DiagMemoryRSS, jotunheim.DiagMemoryAvailable, jotunheim.DiagCPU, jotunheim.DiagTxBytes,
		jotunheim.DiagRxBytes, jotunheim.DiagThrottled, jotunheim.DiagSpooled, jotunheim.DiagSpoolDropped} {
		sn := names[n]
		if sn == nil || sn.GetKind() != jotunheim.KindDiagnostic || sn.GetValueType() != "number" {
			t.Errorf("manifest sensor %s: got %v, want a number of kind %s", n, sn, jotunheim.KindDiagnostic)
		}
	}
	if err := wire.ValidateManifest("diag", man); err != nil {
		t.Errorf("manifest with diagnostics: %v", err)
	}
	res := p.command(jotunheim.CmdRead, jotunheim.DiagMemoryRSS, nil, 0)
	if !res.GetOk() || res.GetData().GetNumberValue() <= 0 {
		t.Fatalf("read %s: got %v, want bytes", jotunheim.DiagMemoryRSS, res)
	}
	res = p.command(jotunheim.CmdRead, jotunheim.DiagTxBytes, nil, 0)
	if !res.GetOk() || res.GetData().GetNumberValue() <= 0 {
		t.Fatalf("read %s: got %v, want the bytes sent", jotunheim.DiagTxBytes, res)
	}
	res = p.command(jotunheim.CmdState, jotunheim.DiagCPU, nil, 0)
	if !res.GetOk() || res.GetData().GetStructValue().GetFields()["unit"].GetStringValue() != "%" {
		t.Fatalf("state %s: got %v", jotunheim.DiagCPU, res)
	}
	// Published as states every telemetry period.
	p.waitState(0, jotunheim.DiagCPU, func(v any) bool { _, ok := v.(float64); return ok })
	p.waitState(0, jotunheim.DiagRxBytes, func(v any) bool { f, ok := v.(float64); return ok && f > 0 })
	if st := r.agent.Stats().Resources; st.MemoryRSS == 0 || st.TxTotal == 0 || st.RxTotal == 0 {
		t.Errorf("stats: got %+v", st)
	}

	// A board entity may not take a diagnostic name.
	bc := hardware.SimBoardConfig()
	bc.Sensors[0].Name = "SYS_CPU"
	if err := r.agent.UpdateBoard(bc); !errors.Is(err, jotunheim.ErrConfig) || !strings.Contains(err.Error(), "SYS_CPU") {
		t.Fatalf("board with an entity named SYS_CPU: got %v, want ErrConfig naming it", err)
	}
}

func TestBudgetConfig(t *testing.T) {
	const base = "[device]\nid = \"a\"\n[board]\nsim = true\n"
	cfg, err := jotunheim.ParseConfig("/etc/j/dev.toml", []byte(base+`[limits]
memory_warn = "32MiB"
memory_max = "48MiB"
system_memory_warn = "64MB"
system_memory_min = 16777216
bandwidth_window = "10m"
bandwidth_budget = "1.5MiB"
[telemetry]
spool_max_messages = 50
spool_max_bytes = "256KiB"
spool_file = "spool.bin"
`))
	if err != nil {
		t.Fatal(err)
	}
	l, tc := cfg.Limits, cfg.Telemetry
	if l.MemoryWarn != 32<<20 || l.MemoryMax != 48<<20 || l.SystemMemoryWarn != 64e6 || l.SystemMemoryMin != 16<<20 ||
		l.BandwidthWindow != 10*time.Minute || l.BandwidthBudget != 3<<19 || tc.SpoolMaxMessages != 50 || tc.SpoolMaxBytes != 256<<10 ||
		tc.SpoolFile != "/etc/j/spool.bin" {
		t.Fatalf("got %+v %+v", l, tc)
	}
	def := jotunheim.DefaultConfig()
	if def.Limits.BandwidthWindow != time.Minute || def.Limits.BandwidthBudget != 0 || def.Limits.MemoryMax != 0 ||
		def.Telemetry.SpoolMaxMessages != 1000 || def.Telemetry.SpoolMaxBytes != 1<<20 {
		t.Errorf("defaults: got %+v %+v", def.Limits, def.Telemetry)
	}

	for _, tc := range []struct {
		name, toml, want string
	}{
		{"bad size", "[limits]\nmemory_max = \"lots\"\n", "dev.toml:6: limits.memory_max: size \"lots\""},
		{"negative size", "[limits]\nmemory_max = -5\n", "dev.toml:6: limits.memory_max"},
		{"size type", "[limits]\nmemory_max = true\n", "dev.toml:6: limits.memory_max"},
		{"warn over max", "[limits]\nmemory_max = \"16MiB\"\nmemory_warn = \"32MiB\"\n", "dev.toml:7: limits.memory_warn"},
		{"system warn under min", "[limits]\nsystem_memory_min = \"64MiB\"\nsystem_memory_warn = \"32MiB\"\n", "dev.toml:7: limits.system_memory_warn"},
		{"window", "[limits]\nbandwidth_window = \"0s\"\n", "dev.toml:6: limits.bandwidth_window"},
		{"tiny budget", "[limits]\nbandwidth_budget = 100\n", "dev.toml:6: limits.bandwidth_budget"},
		{"spool count", "[telemetry]\nspool_max_messages = 0\n", "dev.toml:6: telemetry.spool_max_messages"},
		{"spool bytes", "[telemetry]\nspool_max_bytes = \"1KiB\"\n", "dev.toml:6: telemetry.spool_max_bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := jotunheim.ParseConfig("dev.toml", []byte(base+tc.toml))
			if !errors.Is(err, jotunheim.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestParseByteSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want jotunheim.ByteSize
		ok   bool
	}{
		{"4096", 4096, true}, {"48MiB", 48 << 20, true}, {"1 GiB", 1 << 30, true}, {"10kB", 10000, true},
		{"1MB", 1e6, true}, {"512k", 512 << 10, true}, {"7B", 7, true}, {"", 0, false}, {"-1MiB", 0, false},
		{"MiB", 0, false}, {"NaN", 0, false}, {"1e30GiB", 0, false},
	} {
		got, err := jotunheim.ParseByteSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseByteSize(%q): got %v, %v; want %v, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}
