// Package bench measures request/reply latency and throughput of a call
// against a baseline measured in the same run, so ratios stay meaningful on
// noisy machines.
package bench

import (
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Target is one kind of call to measure. Call must be safe for concurrent use.
type Target struct {
	Name string
	Call func(ctx context.Context) error
}

// Config sets the workload.
type Config struct {
	// Sequential is the number of one-at-a-time calls timed for p50/p99.
	Sequential int
	// Concurrency is the number of callers in the throughput phase.
	Concurrency int
	// Duration of each throughput phase.
	Duration time.Duration
	// Rounds alternates baseline and target this many times; the median round is reported.
	Rounds int
	// Warmup calls before each phase.
	Warmup int
}

// DefaultConfig is 2000 sequential calls, 32 callers for 3s, 3 rounds.
func DefaultConfig() Config {
	return Config{Sequential: 2000, Concurrency: 32, Duration: 3 * time.Second, Rounds: 3, Warmup: 200}
}

// Result is one target's figures (the median over rounds).
type Result struct {
	Name       string
	P50, P99   time.Duration
	Throughput float64 // calls per second at Config.Concurrency
	Errors     int64
}

// Report holds the baseline first, then each target.
type Report struct {
	Config  Config
	Results []Result
}

// Run measures baseline and targets, alternating them round by round.
func Run(ctx context.Context, cfg Config, baseline Target, targets ...Target) (*Report, error) {
	all := append([]Target{baseline}, targets...)
	rounds := make([][]Result, len(all))
	for r := 0; r < cfg.Rounds; r++ {
		for i, t := range all {
			res, err := measure(ctx, cfg, t)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", t.Name, err)
			}
			rounds[i] = append(rounds[i], res)
		}
	}
	rep := &Report{Config: cfg}
	for i, t := range all {
		rep.Results = append(rep.Results, median(t.Name, rounds[i]))
	}
	return rep, nil
}

func measure(ctx context.Context, cfg Config, t Target) (Result, error) {
	res := Result{Name: t.Name}
	for range cfg.Warmup {
		if err := t.Call(ctx); err != nil {
			return res, fmt.Errorf("warm-up call failed: %w", err)
		}
	}
	lat := make([]time.Duration, 0, cfg.Sequential)
	for range cfg.Sequential {
		start := time.Now()
		if err := t.Call(ctx); err != nil {
			return res, fmt.Errorf("sequential call failed: %w", err)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		res.P50 = lat[len(lat)/2]
		res.P99 = lat[min(len(lat)-1, len(lat)*99/100)]
	}

	var calls, errs atomic.Int64
	phase, cancel := context.WithTimeout(ctx, cfg.Duration)
	defer cancel()
	var wg sync.WaitGroup
	start := time.Now()
	for range cfg.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for phase.Err() == nil {
				if err := t.Call(ctx); err != nil {
					errs.Add(1)
					continue
				}
				calls.Add(1)
			}
		}()
	}
	wg.Wait()
	res.Throughput = float64(calls.Load()) / time.Since(start).Seconds()
	res.Errors = errs.Load()
	return res, ctx.Err()
}

func median(name string, rs []Result) Result {
	pick := func(less func(a, b Result) bool) Result {
		s := slices.Clone(rs)
		sort.Slice(s, func(i, j int) bool { return less(s[i], s[j]) })
		return s[len(s)/2]
	}
	out := Result{Name: name}
	out.P50 = pick(func(a, b Result) bool { return a.P50 < b.P50 }).P50
	out.P99 = pick(func(a, b Result) bool { return a.P99 < b.P99 }).P99
	out.Throughput = pick(func(a, b Result) bool { return a.Throughput < b.Throughput }).Throughput
	for _, r := range rs {
		out.Errors += r.Errors
	}
	return out
}

// Markdown writes the report as a table with ratios against the baseline.
func (r *Report) Markdown(w io.Writer) {
	base := r.Results[0]
	fmt.Fprintf(w, "| call | p50 | p99 | throughput (%d callers) | p50 / baseline | throughput / baseline | errors |\n", r.Config.Concurrency)
	fmt.Fprintln(w, "|---|---:|---:|---:|---:|---:|---:|")
	for _, res := range r.Results {
		fmt.Fprintf(w, "| %s | %s | %s | %.0f/s | %.2f× | %.2f× | %d |\n", res.Name,
			round(res.P50), round(res.P99), res.Throughput,
			float64(res.P50)/float64(base.P50), res.Throughput/base.Throughput, res.Errors)
	}
}

func round(d time.Duration) time.Duration {
	if d < time.Millisecond {
		return d.Round(100 * time.Nanosecond)
	}
	return d.Round(10 * time.Microsecond)
}
