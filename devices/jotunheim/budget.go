package jotunheim

import (
	"bytes"
	"context"
	"fmt"
	"github.com/loki-iot/loki/internal/bytesize"
	"math"
	"os"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

// Resource budgets: the agent watches its own memory (process RSS and the
// system's available memory), its CPU use and the bytes it exchanges with
// the broker, reports them as diagnostic sensors, and acts when a limit of
// [limits] is crossed: an Event{kind: "warning", data: {budget: ...}} once
// per crossing, telemetry skipped while over the bandwidth budget, and
// every new command refused with RESOURCE_EXHAUSTED while memory is
// exhausted. Commands and their results are never throttled.

// ByteSize is a number of bytes in the config: a TOML integer, or a string
// with an optional unit: "512", "64KiB", "48MiB", "1GiB" (powers of 1024)
// or "10kB", "1MB", "1GB" (powers of 1000).
type ByteSize int64

// ParseByteSize parses a size such as "48MiB", "1MB" or "4096"
// (internal/bytesize, as every size in Loki's configs).
func ParseByteSize(s string) (ByteSize, error) {
	n, err := bytesize.Parse(s) // < 2^62: fits an int64
	if err != nil {
		return 0, err
	}
	return ByteSize(n), nil
}

// UnmarshalTOML accepts an integer or a size string.
func (b *ByteSize) UnmarshalTOML(v any) error {
	switch x := v.(type) {
	case int64:
		if x < 0 {
			return fmt.Errorf("size %d: must not be negative", x)
		}
		*b = ByteSize(x)
		return nil
	case string:
		n, err := ParseByteSize(x)
		if err != nil {
			return err
		}
		*b = n
		return nil
	}
	return fmt.Errorf("size: want an integer or a string such as \"48MiB\", got %T", v)
}

// String formats b with a binary unit when it is a whole number of them.
func (b ByteSize) String() string {
	switch {
	case b >= 1<<30 && b%(1<<30) == 0:
		return fmt.Sprintf("%dGiB", b>>30)
	case b >= 1<<20 && b%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", b>>20)
	case b >= 1<<10 && b%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", b>>10)
	}
	return fmt.Sprintf("%dB", int64(b))
}

// mib formats n bytes in MiB for messages.
func mib(n uint64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// validateBudgets checks the [limits] and [telemetry] keys of budgets and
// the spool; Validate calls it.
func (c Config) validateBudgets() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s: %s", ErrConfig, c.at(key), key, fmt.Sprintf(format, args...))
	}
	l := c.Limits
	for _, k := range []struct {
		key string
		v   ByteSize
	}{{"limits.memory_warn", l.MemoryWarn}, {"limits.memory_max", l.MemoryMax}, {"limits.system_memory_warn", l.SystemMemoryWarn},
		{"limits.system_memory_min", l.SystemMemoryMin}, {"limits.bandwidth_budget", l.BandwidthBudget},
		{"telemetry.spool_max_bytes", c.Telemetry.SpoolMaxBytes}} {
		if k.v < 0 {
			return bad(k.key, "%d must not be negative", k.v)
		}
	}
	if l.MemoryMax > 0 && l.MemoryWarn >= l.MemoryMax {
		return bad("limits.memory_warn", "%v must be below memory_max (%v)", l.MemoryWarn, l.MemoryMax)
	}
	if l.SystemMemoryWarn > 0 && l.SystemMemoryWarn <= l.SystemMemoryMin {
		return bad("limits.system_memory_warn", "%v must be above system_memory_min (%v): it warns before the minimum is reached", l.SystemMemoryWarn, l.SystemMemoryMin)
	}
	if l.BandwidthWindow < time.Second || l.BandwidthWindow > maxPeriod {
		return bad("limits.bandwidth_window", "%v must be from 1s to %v", l.BandwidthWindow, maxPeriod)
	}
	if l.BandwidthBudget > 0 && l.BandwidthBudget < 1024 {
		return bad("limits.bandwidth_budget", "%v is too small to connect (the manifest alone is larger): 0 (unlimited) or at least 1KiB", l.BandwidthBudget)
	}
	t := c.Telemetry
	if t.SpoolMaxMessages < 1 || t.SpoolMaxMessages > 1_000_000 {
		return bad("telemetry.spool_max_messages", "%d must be 1 to 1000000", t.SpoolMaxMessages)
	}
	if t.SpoolMaxBytes < 4096 || t.SpoolMaxBytes > 1<<30 {
		return bad("telemetry.spool_max_bytes", "%v must be 4KiB to 1GiB", t.SpoolMaxBytes)
	}
	return nil
}

// bwSlots is how many slots the bandwidth window is counted in: the
// window slides in steps of window/bwSlots.
const bwSlots = 20

// bandwidth counts bytes sent and received in a sliding window.
type bandwidth struct {
	budget int64 // bytes per window; 0: unlimited
	window time.Duration
	slot   time.Duration

	mu               sync.Mutex
	slots            [bwSlots]bwSlot
	txTotal, rxTotal uint64
	over             bool // over budget at the last check: a crossing was reported
}

type bwSlot struct {
	idx    int64
	tx, rx int64
}

func newBandwidth(budget ByteSize, window time.Duration) *bandwidth {
	return &bandwidth{budget: int64(budget), window: window, slot: max(window/bwSlots, time.Millisecond)}
}

func (b *bandwidth) add(tx, rx int) {
	idx := time.Now().UnixNano() / int64(b.slot)
	b.mu.Lock()
	defer b.mu.Unlock()
	s := &b.slots[idx%bwSlots]
	if s.idx != idx {
		*s = bwSlot{idx: idx}
	}
	s.tx += int64(tx)
	s.rx += int64(rx)
	b.txTotal += uint64(tx)
	b.rxTotal += uint64(rx)
}

func (b *bandwidth) sent(n int)     { b.add(n, 0) }
func (b *bandwidth) received(n int) { b.add(0, n) }

// window returns the bytes sent and received in the window.
func (b *bandwidth) inWindow() (tx, rx int64) {
	idx := time.Now().UnixNano() / int64(b.slot)
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.slots {
		if s.idx > idx-bwSlots && s.idx <= idx {
			tx += s.tx
			rx += s.rx
		}
	}
	return tx, rx
}

// exceeded reports whether the window's bytes reached the budget.
func (b *bandwidth) exceeded() bool {
	if b.budget <= 0 {
		return false
	}
	tx, rx := b.inWindow()
	return tx+rx >= b.budget
}

// crossing records whether the budget is exceeded now and reports a
// change: +1 when it was just crossed, -1 when back under, 0 otherwise.
func (b *bandwidth) crossing(exceeded bool) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	switch {
	case exceeded && !b.over:
		b.over = true
		return 1
	case !exceeded && b.over:
		b.over = false
		return -1
	}
	return 0
}

// memSample is one measurement of the process and the system.
type memSample struct {
	at       time.Time
	rss      uint64 // process resident memory, bytes
	sysAvail uint64 // system MemAvailable, bytes; 0: unknown
}

// levels of a memory budget.
const (
	levelOK = iota
	levelWarn
	levelExhausted
)

// resources samples memory and CPU and remembers the budgets' levels.
type resources struct {
	mu        sync.Mutex
	mem       memSample
	cpuAt     time.Time
	cpuTime   time.Duration
	cpuPct    float64
	procLevel int
	sysLevel  int
}

// memFresh is how old a memory sample may be when a command asks.
const memFresh = time.Second

// sampleEvery is the resource monitor's period: CPU use is the average
// over it.
const sampleEvery = 5 * time.Second

// memory returns a memory sample at most maxAge old.
func (r *resources) memory(maxAge time.Duration) memSample {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.mem.at.IsZero() || time.Since(r.mem.at) > maxAge {
		r.mem = memSample{at: time.Now(), rss: processRSS(), sysAvail: systemAvailable()}
	}
	return r.mem
}

// cpu updates the CPU percentage over the time since the previous call.
func (r *resources) cpu() float64 {
	now, used := time.Now(), processCPU()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.cpuAt.IsZero() {
		if wall := now.Sub(r.cpuAt); wall > 0 && used >= r.cpuTime {
			r.cpuPct = math.Round(float64(used-r.cpuTime)/float64(wall)*1000) / 10
		}
	}
	r.cpuAt, r.cpuTime = now, used
	return r.cpuPct
}

func (r *resources) cpuPercent() float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cpuPct
}

// processRSS is VmRSS of /proc/self/status, or, where there is no /proc,
// the memory the Go runtime holds from the OS.
func processRSS() uint64 {
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		if v, ok := procField(b, "VmRSS:"); ok {
			return v
		}
	}
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return s[0].Value.Uint64() - s[1].Value.Uint64()
}

// systemAvailable is MemAvailable of /proc/meminfo; 0 when unknown.
func systemAvailable() uint64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0
	}
	v, _ := procField(b, "MemAvailable:")
	return v
}

// procField finds "name  1234 kB" in a /proc file and returns bytes.
func procField(b []byte, name string) (uint64, bool) {
	i := bytes.Index(b, []byte(name))
	if i < 0 {
		return 0, false
	}
	line, _, _ := bytes.Cut(b[i+len(name):], []byte("\n"))
	f := strings.Fields(string(line))
	if len(f) == 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return 0, false
	}
	if len(f) > 1 && strings.EqualFold(f[1], "kB") {
		n *= 1024
	}
	return n, true
}

// clockTicks is USER_HZ, the unit of /proc/self/stat's times: 100 on
// every Linux architecture Go supports.
const clockTicks = 100

// processCPU is the CPU time the process used: utime+stime of
// /proc/self/stat, or the Go runtime's estimate where there is no /proc.
func processCPU() time.Duration {
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		// Fields after the command name, which is in parentheses and may
		// hold spaces: state is field 3, utime 14, stime 15.
		if i := bytes.LastIndexByte(b, ')'); i >= 0 {
			f := strings.Fields(string(b[i+1:]))
			if len(f) > 12 {
				ut, err1 := strconv.ParseUint(f[11], 10, 64)
				st, err2 := strconv.ParseUint(f[12], 10, 64)
				if err1 == nil && err2 == nil {
					return time.Duration(ut+st) * time.Second / clockTicks
				}
			}
		}
	}
	s := []metrics.Sample{{Name: "/cpu/classes/user:cpu-seconds"}, {Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(s)
	var sec float64
	for _, x := range s {
		if x.Value.Kind() == metrics.KindFloat64 {
			sec += x.Value.Float64()
		}
	}
	return time.Duration(sec * float64(time.Second))
}

// Budget names in events' data.
const (
	budgetBandwidth  = "bandwidth"
	budgetMemoryWarn = "memory_warn"
	budgetMemoryMax  = "memory_max"
	budgetSystemWarn = "system_memory_warn"
	budgetSystemMin  = "system_memory_min"
	budgetSpool      = "spool"
)

// Event kinds of budgets.
const (
	eventWarning   = "warning"
	eventRecovered = "recovered"
)

// memLevels returns the levels of the process and system budgets for m.
func (l LimitsConfig) memLevels(m memSample) (proc, sys int) {
	switch {
	case l.MemoryMax > 0 && m.rss >= uint64(l.MemoryMax):
		proc = levelExhausted
	case l.MemoryWarn > 0 && m.rss >= uint64(l.MemoryWarn):
		proc = levelWarn
	}
	if m.sysAvail > 0 {
		switch {
		case l.SystemMemoryMin > 0 && m.sysAvail <= uint64(l.SystemMemoryMin):
			sys = levelExhausted
		case l.SystemMemoryWarn > 0 && m.sysAvail <= uint64(l.SystemMemoryWarn):
			sys = levelWarn
		}
	}
	return proc, sys
}

// memoryRefusal is the RESOURCE_EXHAUSTED error commands get while memory
// is exhausted, or nil.
func (a *Agent) memoryRefusal() error {
	l := a.cfg.Limits
	if l.MemoryMax <= 0 && l.SystemMemoryMin <= 0 {
		return nil
	}
	m := a.res.memory(memFresh)
	proc, sys := l.memLevels(m)
	switch {
	case proc == levelExhausted:
		return fault.New(fault.ResourceExhausted, "device %s: memory exhausted: process RSS %s is over limits.memory_max %s; command refused",
			a.cfg.Device.ID, mib(m.rss), l.MemoryMax)
	case sys == levelExhausted:
		return fault.New(fault.ResourceExhausted, "device %s: memory exhausted: the system has %s available, at or below limits.system_memory_min %s; command refused",
			a.cfg.Device.ID, mib(m.sysAvail), l.SystemMemoryMin)
	}
	return nil
}

// monitor samples memory and CPU every sampleEvery until ctx ends and
// reports memory budgets crossing (both ways) as events.
func (a *Agent) monitor(ctx context.Context) {
	a.res.cpu()
	for {
		a.checkMemory()
		a.checkBandwidth()
		if !sleep(ctx, sampleEvery) {
			return
		}
		a.res.cpu()
	}
}

// checkMemory samples memory and publishes an event when a budget's level
// changed since the last check.
func (a *Agent) checkMemory() {
	l := a.cfg.Limits
	m := a.res.memory(0)
	proc, sys := l.memLevels(m)
	a.res.mu.Lock()
	prevProc, prevSys := a.res.procLevel, a.res.sysLevel
	a.res.procLevel, a.res.sysLevel = proc, sys
	a.res.mu.Unlock()
	if proc != prevProc {
		names := [...]string{budgetMemoryWarn, budgetMemoryWarn, budgetMemoryMax}
		limits := [...]ByteSize{l.MemoryWarn, l.MemoryWarn, l.MemoryMax}
		a.budgetEvent(proc > prevProc, names[max(proc, prevProc)], map[string]any{
			"rss_bytes": float64(m.rss), "limit_bytes": float64(limits[max(proc, prevProc)]), "refusing_commands": proc == levelExhausted,
		})
	}
	if sys != prevSys {
		names := [...]string{budgetSystemWarn, budgetSystemWarn, budgetSystemMin}
		limits := [...]ByteSize{l.SystemMemoryWarn, l.SystemMemoryWarn, l.SystemMemoryMin}
		a.budgetEvent(sys > prevSys, names[max(sys, prevSys)], map[string]any{
			"available_bytes": float64(m.sysAvail), "limit_bytes": float64(limits[max(sys, prevSys)]), "refusing_commands": sys == levelExhausted,
		})
	}
}

// checkBandwidth notes the bandwidth budget's crossing both ways; over it
// publishes the event once per crossing.
func (a *Agent) checkBandwidth() bool {
	over := a.bw.exceeded()
	if c := a.bw.crossing(over); c != 0 {
		tx, rx := a.bw.inWindow()
		a.budgetEvent(c > 0, budgetBandwidth, map[string]any{
			"window_bytes": float64(tx + rx), "limit_bytes": float64(a.bw.budget), "window_seconds": a.bw.window.Seconds(),
			"throttled": float64(a.throttled.Load()),
		})
	}
	return over
}

// budgetEvent logs and publishes a budget's crossing: kind "warning" when
// over, "recovered" when back under. Budget events are never throttled.
func (a *Agent) budgetEvent(over bool, budget string, data map[string]any) {
	data["budget"] = budget
	kind := eventWarning
	if over {
		a.log.Warn("over a resource budget", "budget", budget, "data", data)
	} else {
		kind = eventRecovered
		a.log.Info("back within a resource budget", "budget", budget, "data", data)
	}
	a.emitEvent(kind, "", data, false)
}

// ResourceStats are the resource figures of Agent.Stats.
type ResourceStats struct {
	// MemoryRSS is the process's resident memory in bytes; SystemAvailable
	// the system's available memory (0 where unknown).
	MemoryRSS, SystemAvailable uint64
	// CPUPercent is the process's CPU use over the last sampling period
	// (5 s), in percent of one CPU.
	CPUPercent float64
	// TxBytes and RxBytes are the bytes (topic and payload) sent to and
	// received from the broker in the bandwidth window; TxTotal and RxTotal
	// since the start.
	TxBytes, RxBytes, TxTotal, RxTotal uint64
	// Throttled counts telemetry messages skipped over the bandwidth
	// budget; MemoryRefused commands refused while memory was exhausted.
	Throttled, MemoryRefused uint64
}

func (a *Agent) resourceStats() ResourceStats {
	m := a.res.memory(memFresh)
	tx, rx := a.bw.inWindow()
	a.bw.mu.Lock()
	txT, rxT := a.bw.txTotal, a.bw.rxTotal
	a.bw.mu.Unlock()
	return ResourceStats{MemoryRSS: m.rss, SystemAvailable: m.sysAvail, CPUPercent: a.res.cpuPercent(),
		TxBytes: uint64(tx), RxBytes: uint64(rx), TxTotal: txT, RxTotal: rxT,
		Throttled: a.throttled.Load(), MemoryRefused: a.memRefused.Load()}
}

// KindDiagnostic is the kind of the agent's diagnostic sensors: its own
// resource figures, readable like any sensor.
const KindDiagnostic = "diagnostic"

// Diagnostic sensor names. A board entity may not take one of them.
const (
	DiagMemoryRSS       = "sys_memory_rss"
	DiagMemoryAvailable = "sys_memory_available"
	DiagCPU             = "sys_cpu"
	DiagTxBytes         = "sys_tx_bytes"
	DiagRxBytes         = "sys_rx_bytes"
	DiagThrottled       = "sys_throttled"
	DiagSpooled         = "sys_spooled"
	DiagSpoolDropped    = "sys_spool_dropped"
)

// diagSensors is what the manifest says of the diagnostic sensors, in
// order.
var diagSensors = []*jv1.Sensor{
	{Name: DiagMemoryRSS, Kind: KindDiagnostic, Unit: "B", DeviceClass: "data_size", ValueType: "number"},
	{Name: DiagMemoryAvailable, Kind: KindDiagnostic, Unit: "B", DeviceClass: "data_size", ValueType: "number"},
	{Name: DiagCPU, Kind: KindDiagnostic, Unit: "%", ValueType: "number"},
	{Name: DiagTxBytes, Kind: KindDiagnostic, Unit: "B", DeviceClass: "data_size", ValueType: "number"},
	{Name: DiagRxBytes, Kind: KindDiagnostic, Unit: "B", DeviceClass: "data_size", ValueType: "number"},
	{Name: DiagThrottled, Kind: KindDiagnostic, ValueType: "number"},
	{Name: DiagSpooled, Kind: KindDiagnostic, ValueType: "number"},
	{Name: DiagSpoolDropped, Kind: KindDiagnostic, ValueType: "number"},
}

// isDiagnostic reports whether name is a diagnostic sensor (ignoring case,
// as entity names are unique ignoring case).
func isDiagnostic(name string) bool {
	for _, s := range diagSensors {
		if strings.EqualFold(s.GetName(), name) {
			return true
		}
	}
	return false
}

// diagValue returns diagnostic sensor name's value now.
func (a *Agent) diagValue(name string) (float64, bool) {
	switch name {
	case DiagMemoryRSS:
		return float64(a.res.memory(memFresh).rss), true
	case DiagMemoryAvailable:
		return float64(a.res.memory(memFresh).sysAvail), true
	case DiagCPU:
		return a.res.cpuPercent(), true
	case DiagTxBytes:
		tx, _ := a.bw.inWindow()
		return float64(tx), true
	case DiagRxBytes:
		_, rx := a.bw.inWindow()
		return float64(rx), true
	case DiagThrottled:
		return float64(a.throttled.Load()), true
	case DiagSpooled:
		return float64(a.spool.stats().Messages), true
	case DiagSpoolDropped:
		return float64(a.spool.stats().Dropped), true
	}
	return 0, false
}

// publishDiagStates publishes the diagnostic sensors' states.
func (a *Agent) publishDiagStates(force bool) {
	for _, s := range diagSensors {
		if v, ok := a.diagValue(s.GetName()); ok {
			a.publishState(s.GetName(), v, s.GetUnit(), unixNow(), force)
		}
	}
}

// checkDiagNames refuses a board with an entity named like a diagnostic
// sensor.
func checkDiagNames(bc hardware.BoardConfig) error {
	var names []string
	for _, s := range bc.Sensors {
		names = append(names, s.Name)
	}
	for _, ac := range bc.Actuators {
		names = append(names, ac.Name)
	}
	for _, p := range bc.Pins {
		names = append(names, p.Name)
	}
	for _, n := range names {
		if isDiagnostic(n) {
			return fmt.Errorf("%w: board %q: entity %q has the name of one of the agent's diagnostic sensors (%s): rename it",
				ErrConfig, bc.Name, n, diagNames())
		}
	}
	return nil
}

func diagNames() string {
	var n []string
	for _, s := range diagSensors {
		n = append(n, s.GetName())
	}
	return strings.Join(n, ", ")
}

// budgetCounters are the Agent's budget counters (embedded in Agent).
type budgetCounters struct {
	throttled  atomic.Uint64
	memRefused atomic.Uint64
}
