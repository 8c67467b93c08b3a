package engine_test

import (
	"context"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/loki/engine"
)

// TestAllocationClassesAreRefused runs, in process and with the default
// limits, each way a script can ask for a huge allocation in one instruction
// or built-in, and checks that the call fails with an error naming the limit,
// that the process did not allocate anything near what was asked for, and
// that the engine goes on answering.
func TestAllocationClassesAreRefused(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	const (
		// Far below what each attack asks for (gigabytes or more), far above
		// what the limits let through (16 MiB strings, 1 MiB results).
		maxTotalAlloc = 512 << 20
		maxHeapGrowth = 64 << 20
	)
	tests := []struct {
		name    string
		src     string
		returns engine.Type
		code    fault.Code
		msg     string
	}{
		{"doubling concatenation", `local s = "x" while true do s = s .. s end`, "",
			fault.ResourceExhausted, "'..': result of 33554432 bytes or more exceeds the 16777216-byte string limit"},
		{"concatenation of many operands", `local s = string.rep("x", 8 * 1024 * 1024) return s .. s .. s .. s .. s .. s .. s .. s`, "",
			fault.ResourceExhausted, "16777216-byte string limit"},
		{"large table.concat", `local s = string.rep("x", 1024 * 1024) local t = {} for i = 1, 4096 do t[i] = s end return table.concat(t)`, "",
			fault.ResourceExhausted, "table.concat: result exceeds the 16777216-byte string limit"},
		{"string.rep", `return string.rep("x", 2^40)`, "",
			fault.ResourceExhausted, "string.rep: result of 1099511627776 bytes exceeds the 16777216-byte string limit"},
		{"string.format width", `return string.format("%99999999d", 1)`, "",
			fault.ScriptError, "invalid format (width or precision too long)"},
		{"string.format output", `local s = string.rep("x", 9 * 1024 * 1024) return string.format("%s%s", s, s)`, "",
			fault.ResourceExhausted, "string.format: result exceeds the 16777216-byte string limit"},
		{"string.gsub output", `local s = string.rep("x", 1024 * 1024) return (s:gsub("x", "yyyyyyyyyyyyyyyyyyyy"))`, "",
			fault.ResourceExhausted, "string.gsub: result exceeds the 16777216-byte string limit"},
		{"huge table.insert position", `local t = {} for i = 1, 64 do local u = {} table.insert(u, 2^40, true) t[i] = u end return #t`, "",
			"", ""},
		{"sparse index", `local t = {} for i = 1, 64 do local u = {} u[2^26 - 1] = true t[i] = u end return #t`, "",
			"", ""},
		{"deep result", `local t = {} local c = t for i = 1, 10000 do c.x = {} c = c.x end return t`, "",
			fault.ScriptError, "nested deeper than 64 levels"},
		{"wide result", `local t = {} for i = 1, 200000 do t[i] = i end return t`, engine.Array,
			fault.ResourceExhausted, "result exceeds the 1048576-byte limit"},
		{"wide object result", `local t = {} for i = 1, 100000 do t["k" .. i] = true end return t`, engine.Object,
			fault.ResourceExhausted, "result exceeds the 1048576-byte limit"},
		{"wide result by sharing", `local s = string.rep("x", 1024) local t = {} for i = 1, 100000 do t[i] = s end return t`, engine.Array,
			fault.ResourceExhausted, "result exceeds the 1048576-byte limit"},
		{"wide emit", `local t = {} for i = 1, 100000 do t[i] = i end emit(t)`, "",
			fault.ResourceExhausted, "emit value exceeds the 262144-byte limit"},
		{"huge error message", `error(string.rep("x", 8 * 1024 * 1024))`, "",
			fault.ScriptError, "bytes truncated)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			// A generous timeout: these scripts build large tables first, slow
			// under -race on a loaded machine; the limits, not the deadline,
			// must stop them.
			out, err := run(t, en, tc.src, runOpts{returns: tc.returns, timeout: time.Minute})
			runtime.GC()
			runtime.ReadMemStats(&after)
			if tc.code == "" {
				if err != nil {
					t.Fatalf("got error %v, want none (output %s)", err, out)
				}
			} else {
				wantCode(t, err, tc.code, tc.msg)
			}
			t.Logf("allocated %d MiB in the call; heap %d MiB before, %d MiB after",
				(after.TotalAlloc-before.TotalAlloc)>>20, before.HeapAlloc>>20, after.HeapAlloc>>20)
			if grew := after.TotalAlloc - before.TotalAlloc; grew > maxTotalAlloc {
				t.Errorf("the call allocated %d MiB, want at most %d MiB", grew>>20, maxTotalAlloc>>20)
			}
			if after.HeapAlloc > before.HeapAlloc+maxHeapGrowth {
				t.Errorf("the heap grew from %d MiB to %d MiB, want at most %d MiB more",
					before.HeapAlloc>>20, after.HeapAlloc>>20, maxHeapGrowth>>20)
			}
			if got := mustRun(t, en, "return 1 + 2"); got != "3" {
				t.Fatalf("after the attack: got %s, want 3", got)
			}
		})
	}
}

// BenchmarkLargeArgs decodes and binds the worst arguments the size cap
// lets through: MaxArgsBytes of empty arrays (the most values per byte).
// Decoding is linear and bounded by MaxArgsBytes; this is its cost.
func BenchmarkLargeArgs(b *testing.B) {
	body := []byte(`{"xs":[` + strings.Repeat("[],", (engine.MaxArgsBytes-20)/3) + `[]]}`)
	params := []engine.Param{{Name: "xs", Type: engine.Array}}
	p, err := engine.Compile("n", "return #xs")
	if err != nil {
		b.Fatal(err)
	}
	en := engine.New(engine.Config{}, nil)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		args, err := engine.DecodeArgs(params, body)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := en.Run(ctx, engine.Exec{Tool: "n", Program: p, Params: params, Args: args, Returns: engine.Integer}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRunAddUnderAttack measures the trivial tool while another
// goroutine runs, one after the other, scripts that each try to allocate
// gigabytes in a few instructions. It reports the trivial call's latency
// percentiles: the attacks are refused at their limits, so the calls beside
// them go on (on a 2-vCPU machine they share the CPU and the garbage
// collector with the attacker). Memory that a script accumulates over many
// instructions (a loop keeping 16 MiB arrays) is not bounded here but by
// the service's memory guard or a worker process.
func BenchmarkRunAddUnderAttack(b *testing.B) {
	var attacks []*engine.Program
	for _, src := range []string{
		`local s = "x" while true do s = s .. s end`,
		`local s = string.rep("x", 1024 * 1024) local t = {} for i = 1, 4096 do t[i] = s end return table.concat(t)`,
		`return string.rep("x", 2^40)`,
		`local u = {} u[2^20 - 1] = true return #u`, // the largest array growth: 16 MiB
		`local t = {} for i = 1, 200000 do t[i] = i end return t`,
	} {
		p, err := engine.Compile("attack", src)
		if err != nil {
			b.Fatal(err)
		}
		attacks = append(attacks, p)
	}
	// "quiet" is the same measurement with the attacker idle: the baseline
	// of the percentiles on this machine.
	b.Run("quiet", func(b *testing.B) { runAddBeside(b, nil) })
	b.Run("attacked", func(b *testing.B) { runAddBeside(b, attacks) })
}

// runAddBeside runs the trivial tool while another goroutine runs attacks
// (none: it idles), and reports the trivial call's latency percentiles.
func runAddBeside(b *testing.B, attacks []*engine.Program) {
	en := engine.New(engine.Config{}, nil)
	stop := make(chan struct{})
	done := make(chan struct{})
	var attacksRun int
	go func() {
		defer close(done)
		for i := 0; len(attacks) > 0; i++ {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, _ = en.Run(ctx, engine.Exec{Tool: "attack", Program: attacks[i%len(attacks)]})
			cancel()
			attacksRun++
		}
	}()
	e := addExec(b)
	ctx := context.Background()
	lat := make([]time.Duration, 0, 1<<16)
	for b.Loop() {
		t0 := time.Now()
		out, err := en.Run(ctx, e)
		lat = append(lat, time.Since(t0))
		if err != nil || string(out) != "3" {
			b.Fatalf("got %s, %v, want 3", out, err)
		}
	}
	close(stop)
	<-done
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(lat[len(lat)*999/1000].Nanoseconds()), "p99.9-ns")
	b.ReportMetric(float64(lat[len(lat)-1].Nanoseconds()), "max-ns")
	b.ReportMetric(float64(attacksRun), "attacks")
}

// TestHugeErrorMessageIsCut checks that a script's error message is cut to
// a size a reply header carries, whatever the script raised.
func TestHugeErrorMessageIsCut(t *testing.T) {
	en := engine.New(engine.Config{}, nil)
	for _, src := range []string{
		`error(string.rep("x", 8 * 1024 * 1024))`,
		`error(string.rep("é", 100000))`,
		`local t = {} t[1] = string.rep("y", 1024 * 1024) error(t)`,
	} {
		_, err := run(t, en, src, runOpts{})
		if err == nil || len(err.Error()) > 8<<10 {
			t.Fatalf("%s: got an error of %d bytes, want one under 8 KiB", src, len(err.Error()))
		}
		if msg := fault.MessageOf(err); !strings.HasPrefix(msg, `tool "t": line 1: `) {
			t.Fatalf("%s: got %.100q, want it to name the tool and line", src, msg)
		}
	}
}
