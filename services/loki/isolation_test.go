package loki_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/fstest"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/metrics"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/services/loki/isolate"
	lua "github.com/yuin/gopher-lua"
)

// testWorkerEnv makes the test binary a Loki worker: the supervisor in
// these tests re-executes the test binary, the usual Go pattern, instead of
// building cmd/loki.
const testWorkerEnv = "LOKI_TEST_ISOLATE_WORKER"

func TestMain(m *testing.M) {
	if os.Getenv(testWorkerEnv) == "1" {
		os.Exit(testWorkerMain())
	}
	os.Exit(m.Run())
}

func testWorkerMain() int {
	link, err := isolate.Attach()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	if err := loki.ServeWorker(context.Background(), link, loki.WorkerConfig{Modules: []engine.Module{clockModule{}}}, log); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// clockModule gives scripts clock.sleep(ms): a wait that costs no CPU, as
// a call waiting on the network does.
type clockModule struct{}

func (clockModule) Name() string { return "clock" }

func (clockModule) Open(L *lua.LState, c *engine.Call) lua.LValue {
	t := L.NewTable()
	L.SetField(t, "sleep", L.NewFunction(func(L *lua.LState) int {
		select {
		case <-time.After(time.Duration(L.CheckInt(1)) * time.Millisecond):
		case <-c.Ctx.Done():
		}
		return 0
	}))
	return t
}

// workers records what the supervisor's workers do.
type workers struct {
	mu     sync.Mutex
	rss0   map[int]uint64 // RSS when the last call was sent
	hwm    map[int]uint64 // highest VmHWM polled since then
	polled map[int]bool
	exits  map[int]*os.ProcessState
	ran    map[string]int // the worker that ran a tool last
	ready  chan int
	called chan int
}

func newWorkers() *workers {
	return &workers{rss0: map[int]uint64{}, hwm: map[int]uint64{}, polled: map[int]bool{}, exits: map[int]*os.ProcessState{}, ran: map[string]int{},
		ready: make(chan int, 64), called: make(chan int, 1024)}
}

func (w *workers) observer() isolate.Observer {
	return isolate.Observer{
		Ready: func(pid int) {
			select {
			case w.ready <- pid:
			default:
			}
		},
		Call: func(pid int, name string) {
			_ = isolate.ResetPeakRSS(pid)
			_, rss := isolate.PeakRSS(pid)
			w.mu.Lock()
			w.rss0[pid], w.hwm[pid] = rss, rss
			w.ran[name] = pid
			first := !w.polled[pid]
			w.polled[pid] = true
			w.mu.Unlock()
			if first {
				go w.poll(pid)
			}
			select {
			case w.called <- pid:
			default:
			}
		},
		Exit: func(pid int, st *os.ProcessState) {
			w.mu.Lock()
			w.exits[pid] = st
			w.mu.Unlock()
		},
	}
}

// poll follows the VmHWM of worker pid every millisecond while it lives.
func (w *workers) poll(pid int) {
	for {
		peak, _ := isolate.PeakRSS(pid)
		if peak == 0 {
			return
		}
		w.mu.Lock()
		w.hwm[pid] = max(w.hwm[pid], peak)
		_, dead := w.exits[pid]
		w.mu.Unlock()
		if dead {
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func (w *workers) pidOf(tool string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ran[tool]
}

// growth is how far worker pid's resident memory grew over its last call:
// its peak RSS at exit (ru_maxrss) less its RSS when the call was sent.
// A child started with vfork carries its parent's peak from before exec in
// ru_maxrss: when that may be what it holds (it is not above this test
// process's own peak), the highest VmHWM polled during the call stands in.
func (w *workers) growth(pid int) (grew uint64, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	st, dead := w.exits[pid]
	if !dead {
		return 0, false
	}
	ru, isRU := st.SysUsage().(*syscall.Rusage)
	if !isRU {
		return 0, false
	}
	peak := uint64(ru.Maxrss) << 10
	if self, _ := isolate.PeakRSS(os.Getpid()); peak <= self {
		peak = w.hwm[pid]
	}
	if peak < w.rss0[pid] {
		return 0, true
	}
	return peak - w.rss0[pid], true
}

func isolationConfig(w *workers, n int) loki.Config {
	return loki.Config{
		Concurrency: 8,
		Modules:     []engine.Module{clockModule{}},
		Isolation: loki.IsolationConfig{
			Workers: n,
			Command: func() (*exec.Cmd, error) {
				cmd := exec.Command(os.Args[0])
				cmd.Env = append(os.Environ(), testWorkerEnv+"=1")
				return cmd, nil
			},
			Stderr:   testStderr(),
			Observer: w.observer(),
		},
	}
}

func testStderr() io.Writer {
	if p := os.Getenv("LOKI_TEST_WORKER_STDERR"); p != "" {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
		if err == nil {
			return f
		}
	}
	return io.Discard
}

// isolationTools: each attack allocates without end in its own way; every
// one declares a memory limit, so it runs in a worker.
const isolationTools = `
[[tools]]
name = "add_iso"
returns = "number"
memory = "64MiB"
script = "return a + b"
  [[tools.params]]
  name = "a"
  type = "number"
  [[tools.params]]
  name = "b"
  type = "number"

[[tools]]
name = "add_local"
returns = "number"
script = "return a + b"
  [[tools.params]]
  name = "a"
  type = "number"
  [[tools.params]]
  name = "b"
  type = "number"

[[tools]]
name = "sparse_index"
memory = "128MiB"
timeout = "60s"
script = '''
local t = {}
local n = 1
while n < 2^40 do n = n * 2; t[n] = true end
return "no allocation"
'''

[[tools]]
name = "doubling_concat"
memory = "128MiB"
timeout = "60s"
script = '''
local s = "x"
while true do s = s .. s end
'''

[[tools]]
name = "insert_position"
memory = "128MiB"
timeout = "60s"
script = '''
local t = {}
local n = 1
while n < 2^40 do n = n * 2; table.insert(t, n, 1) end
return "no allocation"
'''

[[tools]]
name = "large_concat"
memory = "128MiB"
timeout = "60s"
script = '''
local piece = string.rep("x", 1048576)
local parts = {}
local keep = {}
for i = 1, 100000 do
  parts[i] = piece
  keep[#keep + 1] = table.concat(parts)
end
'''

[[tools]]
name = "wide_result"
memory = "128MiB"
timeout = "60s"
returns = "array"
script = '''
local t = {}
for i = 1, 1e9 do t[i] = {i, "item"} end
return t
'''

[[tools]]
name = "deep_result"
memory = "128MiB"
timeout = "60s"
script = '''
local root = {}
local cur = root
for i = 1, 1e9 do local n = {v = i}; cur.next = n; cur = n end
return root
'''

[[tools]]
name = "busy"
cpu = "300ms"
timeout = "60s"
script = "while true do end"

[[tools]]
name = "nap"
cpu = "300ms"
timeout = "60s"
returns = "string"
script = '''
clock.sleep(1500)
return "rested"
'''

[[tools]]
name = "hang"
memory = "64MiB"
timeout = "60s"
script = "clock.sleep(60000)"

[[tools]]
name = "spin_iso"
memory = "64MiB"
timeout = "300ms"
script = "while true do end"

[[tools]]
name = "stream_forever"
memory = "64MiB"
timeout = "60s"
script = '''
local i = 0
while true do i = i + 1; emit(i); clock.sleep(5) end
'''

[[tools]]
name = "stream_iso"
memory = "64MiB"
returns = "string"
script = '''
for i = 1, 3 do emit({i = i}) end
return "done"
'''
`

// setupIsolated starts a server with the isolation tools and a replica with
// n workers connected in process, as under `loki up`; opts adjust its
// config.
func setupIsolated(tb testing.TB, n int, opts ...func(*loki.Config)) (*workers, *loki.Client) {
	return setupIsolatedWith(tb, isolationTools, n, opts...)
}

// setupIsolatedWith is setupIsolated with the tools of src.
func setupIsolatedWith(tb testing.TB, src string, n int, opts ...func(*loki.Config)) (*workers, *loki.Client) {
	tb.Helper()
	w := newWorkers()
	srv := natstest.Start(tb)
	nc := natstest.Connect(tb, srv)
	tools, err := loki.ParseTools("isolation.toml", []byte(src), fstest.MapFS{})
	if err != nil {
		tb.Fatal(err)
	}
	reg, err := loki.OpenRegistry(context.Background(), nc, quietLog())
	if err != nil {
		tb.Fatal(err)
	}
	if err := reg.Put(context.Background(), tools...); err != nil {
		tb.Fatal(err)
	}
	snc, err := srv.Connect("loki")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(snc.Close)
	cfg := isolationConfig(w, n)
	for _, o := range opts {
		o(&cfg)
	}
	svc, err := loki.New(cfg, snc, quietLog())
	if err != nil {
		tb.Fatal(err)
	}
	natstest.RunService(tb, svc)
	return w, loki.NewClient(nc)
}

func callWithin(c *loki.Client, d time.Duration, tool, args string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	res, err := c.Call(ctx, tool, []byte(args))
	return string(res.JSON), err
}

// keepCalling calls add_local and add_iso until stop is closed, failing t
// on any error: calls must go on while another call attacks its worker.
func keepCalling(t *testing.T, c *loki.Client, stop <-chan struct{}) (wait func() int) {
	var n atomic.Int64
	var wg sync.WaitGroup
	for _, tool := range []string{"add_local", "add_iso"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				got, err := callWithin(c, 30*time.Second, tool, `{"a":2,"b":3}`)
				if err != nil || got != "5" {
					t.Errorf("%s during the attack: got %q, %v", tool, got, err)
					return
				}
				n.Add(1)
			}
		}()
	}
	return func() int { wg.Wait(); return int(n.Load()) }
}

func TestIsolatedMemoryLimitStopsEachAttack(t *testing.T) {
	w, c := setupIsolated(t, 2)
	for _, tc := range []struct {
		tool  string
		limit uint64
	}{
		{"sparse_index", 128 << 20}, {"doubling_concat", 128 << 20},
		{"insert_position", 128 << 20}, {"large_concat", 128 << 20}, {"wide_result", 128 << 20}, {"deep_result", 128 << 20},
	} {
		tool := tc.tool
		t.Run(tool, func(t *testing.T) {
			stop := make(chan struct{})
			wait := keepCalling(t, c, stop)
			got, err := callWithin(c, 60*time.Second, tool, `{}`)
			close(stop)
			if others := wait(); others == 0 {
				t.Errorf("no other call completed during the attack")
			}
			if err == nil && got == `"no allocation"` {
				t.Logf("the engine refused the allocation in process: nothing to stop")
				return
			}
			if code := fault.CodeOf(err); code != fault.ResourceExhausted {
				t.Fatalf("got %q, %v, want RESOURCE_EXHAUSTED", got, err)
			}
			// A cap of the engine may stop the script before its limit
			// does; then its worker lives on.
			if !strings.Contains(fault.MessageOf(err), "memory limit") {
				t.Logf("stopped by a cap of the engine, its worker lives on: %v", err)
				return
			}
			if want := fmt.Sprintf("tool %q passed its memory limit of %s", tool, isolate.FormatSize(tc.limit)); !strings.Contains(fault.MessageOf(err), want) {
				t.Errorf("message %q does not say %q", fault.MessageOf(err), want)
			}
			pid := w.pidOf(tool)
			deadline := time.Now().Add(10 * time.Second)
			for _, dead := w.growth(pid); !dead; _, dead = w.growth(pid) {
				if time.Now().After(deadline) {
					t.Fatalf("the call reports its memory limit (%v) but its worker did not exit", err)
				}
				time.Sleep(10 * time.Millisecond)
			}
			grew, _ := w.growth(pid)
			t.Logf("%s: worker %d grew by %.1f MiB (limit %s): %v", tool, pid, float64(grew)/(1<<20), isolate.FormatSize(tc.limit), err)
			if bound := tc.limit * 11 / 10; grew > bound && !raceEnabled {
				t.Errorf("worker grew by %d bytes, more than the limit + 10%% (%d)", grew, bound)
			}
		})
	}
}

func TestIsolatedCPULimit(t *testing.T) {
	_, c := setupIsolated(t, 2)
	t.Run("busy loop stopped", func(t *testing.T) {
		_, err := callWithin(c, 60*time.Second, "busy", `{}`)
		if code := fault.CodeOf(err); code != fault.ResourceExhausted {
			t.Fatalf("got %v, want RESOURCE_EXHAUSTED", err)
		}
		if want := `tool "busy" passed its cpu limit of 300ms`; !strings.Contains(fault.MessageOf(err), want) {
			t.Errorf("message %q does not say %q", fault.MessageOf(err), want)
		}
	})
	t.Run("waiting does not burn cpu", func(t *testing.T) {
		got, err := callWithin(c, 60*time.Second, "nap", `{}`)
		if err != nil || got != `"rested"` {
			t.Fatalf("got %q, %v, want \"rested\"", got, err)
		}
	})
}

func TestKilledWorkerCostsOnlyItsCall(t *testing.T) {
	reg := metrics.New()
	w, c := setupIsolated(t, 2, func(cfg *loki.Config) { cfg.Metrics = reg })
	// Warm: a worker answers.
	if got, err := callWithin(c, 30*time.Second, "add_iso", `{"a":1,"b":1}`); err != nil || got != "2" {
		t.Fatalf("add_iso: got %q, %v", got, err)
	}
	for len(w.called) > 0 {
		<-w.called
	}
	hangErr := make(chan error, 1)
	go func() {
		_, err := callWithin(c, 60*time.Second, "hang", `{}`)
		hangErr <- err
	}()
	pid := <-w.called
	stop := make(chan struct{})
	wait := keepCalling(t, c, stop)
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := <-hangErr
	if code := fault.CodeOf(err); code != fault.Unavailable {
		t.Fatalf("hang: got %v, want UNAVAILABLE", err)
	}
	if !strings.Contains(fault.MessageOf(err), "killed") {
		t.Errorf("message %q does not say the worker was killed", fault.MessageOf(err))
	}
	// The replacement serves calls.
	time.Sleep(200 * time.Millisecond)
	close(stop)
	if wait() == 0 {
		t.Errorf("no other call completed while the worker was killed")
	}
	for i := range 10 {
		if got, err := callWithin(c, 30*time.Second, "add_iso", `{"a":1,"b":1}`); err != nil || got != "2" {
			t.Fatalf("call %d after the kill: got %q, %v", i, got, err)
		}
	}
	// The metrics saw the kill and the replacement.
	waitFor(t, func() bool {
		m := gatherIsolation(t, reg)
		return m["signaled"] == 1 && m["starts"] == m["workers"]+m["signaled"]+m["exited"] && m["workers"] >= 1
	})
}

// gatherIsolation reads the worker metrics: workers (alive), starts, and
// exits by how.
func gatherIsolation(t *testing.T, reg *metrics.Registry) map[string]float64 {
	t.Helper()
	mfs, err := reg.Prometheus().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "loki_isolation_workers":
				out["workers"] = m.GetGauge().GetValue()
			case "loki_isolation_worker_starts_total":
				out["starts"] = m.GetCounter().GetValue()
			case "loki_isolation_worker_exits_total":
				for _, l := range m.GetLabel() {
					out[l.GetValue()] = m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}

func TestIsolatedStream(t *testing.T) {
	_, c := setupIsolated(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var chunks []string
	res, err := c.Stream(ctx, "stream_iso", []byte(`{}`), func(ch loki.Chunk) error {
		chunks = append(chunks, string(ch.JSON))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res.JSON); got != `"done"` {
		t.Errorf("result: got %s, want \"done\"", got)
	}
	if want := []string{`{"i":1}`, `{"i":2}`, `{"i":3}`}; fmt.Sprint(chunks) != fmt.Sprint(want) {
		t.Errorf("chunks: got %v, want %v", chunks, want)
	}
}

func TestIsolationModes(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    loki.IsolationMode
		memory  uint64
		tool    string
		wantIso bool
	}{
		{name: "auto, tool with a limit", mode: loki.IsolateAuto, tool: "add_iso", wantIso: true},
		{name: "auto, tool without", mode: loki.IsolateAuto, tool: "add_local", wantIso: false},
		{name: "auto, default limit", mode: loki.IsolateAuto, memory: 64 << 20, tool: "add_local", wantIso: true},
		{name: "always", mode: loki.IsolateAlways, tool: "add_local", wantIso: true},
		{name: "never", mode: loki.IsolateNever, tool: "add_iso", wantIso: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorkers()
			srv := natstest.Start(t)
			nc := natstest.Connect(t, srv)
			registerTools(t, nc, isolationTools)
			cfg := isolationConfig(w, 1)
			cfg.Isolation.Mode, cfg.Isolation.Memory = tc.mode, tc.memory
			startLoki(t, srv, cfg)
			if got, err := callWithin(loki.NewClient(nc), 30*time.Second, tc.tool, `{"a":1,"b":2}`); err != nil || got != "3" {
				t.Fatalf("got %q, %v", got, err)
			}
			if got := len(w.called) > 0; got != tc.wantIso {
				t.Errorf("ran in a worker: got %v, want %v", got, tc.wantIso)
			}
		})
	}
}

func TestToolLimitsConfig(t *testing.T) {
	for _, tc := range []struct {
		name, src string
		want      []string
	}{
		{name: "bad memory unit", src: "[[tools]]\nname = \"x\"\nmemory = \"64XB\"\nscript = \"return 1\"\n",
			want: []string{"test.toml:1", `tool "x"`, `memory = "64XB"`}},
		{name: "memory too small", src: "[[tools]]\nname = \"x\"\nmemory = \"1KiB\"\nscript = \"return 1\"\n",
			want: []string{"test.toml:1", `tool "x"`, "memory 1 KiB", "at least 4 MiB"}},
		{name: "bad cpu", src: "\n[[tools]]\nname = \"y\"\ncpu = \"fast\"\nscript = \"return 1\"\n",
			want: []string{"test.toml:2", `tool "y"`, `cpu = "fast"`}},
		{name: "negative cpu", src: "[[tools]]\nname = \"y\"\ncpu = \"-1s\"\nscript = \"return 1\"\n",
			want: []string{`tool "y"`, `cpu = "-1s"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := loki.ParseTools("test.toml", []byte(tc.src), fstest.MapFS{})
			if !errors.Is(err, loki.ErrConfig) {
				t.Fatalf("got %v, want ErrConfig", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	tools, err := loki.ParseTools("test.toml", []byte("[[tools]]\nname = \"x\"\nmemory = \"1.5GiB\"\ncpu = \"250ms\"\nscript = \"return 1\"\n"), fstest.MapFS{})
	if err != nil {
		t.Fatal(err)
	}
	if got := tools[0].Memory; got != 3<<29 {
		t.Errorf("memory: got %d, want %d", got, 3<<29)
	}
	if got := tools[0].CPU; got != 250*time.Millisecond {
		t.Errorf("cpu: got %s, want 250ms", got)
	}
}

func TestIsolatedTimeout(t *testing.T) {
	_, c := setupIsolated(t, 1)
	_, err := callWithin(c, 30*time.Second, "spin_iso", `{}`)
	if code := fault.CodeOf(err); code != fault.DeadlineExceeded {
		t.Fatalf("got %v, want DEADLINE_EXCEEDED", err)
	}
	if got, err := callWithin(c, 30*time.Second, "add_iso", `{"a":1,"b":1}`); err != nil || got != "2" {
		t.Fatalf("after the timeout: got %q, %v", got, err)
	}
}

func TestWorkerThatCannotStart(t *testing.T) {
	_, c := setupIsolated(t, 1, func(cfg *loki.Config) {
		cfg.Isolation.Command = func() (*exec.Cmd, error) { return exec.Command(filepath.Join(t.TempDir(), "no-such-loki")), nil }
	})
	_, err := callWithin(c, 30*time.Second, "add_iso", `{"a":1,"b":1}`)
	if code := fault.CodeOf(err); code != fault.Unavailable {
		t.Fatalf("got %v, want UNAVAILABLE", err)
	}
	if !strings.Contains(fault.MessageOf(err), "no worker process could be started") {
		t.Errorf("message %q does not say no worker could start", fault.MessageOf(err))
	}
	// Tools without limits still run, in process.
	if got, err := callWithin(c, 30*time.Second, "add_local", `{"a":1,"b":1}`); err != nil || got != "2" {
		t.Fatalf("add_local: got %q, %v", got, err)
	}
}

// TestIsolatedStreamCancel: a caller that stops reading a stream cancels
// the script in its worker, which lives on to serve the next call.
func TestIsolatedStreamCancel(t *testing.T) {
	w, c := setupIsolated(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errEnough := errors.New("enough")
	n := 0
	_, err := c.Stream(ctx, "stream_forever", []byte(`{}`), func(loki.Chunk) error {
		if n++; n == 3 {
			return errEnough
		}
		return nil
	})
	if !errors.Is(err, errEnough) {
		t.Fatalf("got %v, want the callback's error", err)
	}
	pid := w.pidOf("stream_forever")
	if got, err := callWithin(c, 30*time.Second, "add_iso", `{"a":1,"b":1}`); err != nil || got != "2" {
		t.Fatalf("after the cancel: got %q, %v", got, err)
	}
	if got := w.pidOf("add_iso"); got != pid {
		t.Errorf("add_iso ran in worker %d, want %d: the cancelled call's worker was replaced, not told to stop", got, pid)
	}
}

// TestWorkerKeepsToolsPastItsCache: a worker keeps at most isolate.MaxKeys
// tools compiled; calling more tools than that on one worker, then the
// first again, still works (the supervisor and the worker forget
// together, and the first tool is set up again).
func TestWorkerKeepsToolsPastItsCache(t *testing.T) {
	var src strings.Builder
	n := isolate.MaxKeys + 2
	for i := range n {
		fmt.Fprintf(&src, "[[tools]]\nname = \"t%d\"\nreturns = \"number\"\nmemory = \"64MiB\"\nscript = \"return %d\"\n", i, i)
	}
	_, c := setupIsolatedWith(t, src.String(), 1)
	for _, i := range append(rangeN(n), 0, 1, n-1) {
		got, err := callWithin(c, 30*time.Second, fmt.Sprintf("t%d", i), `{}`)
		if err != nil || got != strconv.Itoa(i) {
			t.Fatalf("t%d: got %q, %v; want %d", i, got, err, i)
		}
	}
}

func rangeN(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}
