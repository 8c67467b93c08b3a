package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"
)

// TestBenchFleet: `loki bench devices` brings a small fleet online, pings
// every device and hears telemetry from all of them, with nothing refused,
// dropped or warned about. The figures are for docs/BENCHMARKS.md.
func TestBenchFleet(t *testing.T) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"bench", "devices", "--count", "20", "--in-process", "--ramp", "500ms",
		"--telemetry", "1s", "--steady", "2500ms", "--probe", "0", "--log-level", "warn"}, &out, &errOut)
	if err != nil {
		t.Fatalf("bench devices: %v\n%s", err, errOut.String())
	}
	for _, row := range []string{"| all devices online", "| one ping to every device", "| steady telemetry"} {
		var line string
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.HasPrefix(l, row) {
				line = l
			}
		}
		if !strings.HasSuffix(line, "| **yes** |") {
			t.Errorf("row %q: got %q, want one whose target is met, in:\n%s", row, line, out.String())
		}
	}
	if !strings.Contains(out.String(), "20 of 20 answered") {
		t.Errorf("want 20 of 20 pings answered in:\n%s", out.String())
	}
}

// TestBenchFleetAgentsOnly: the child side of `loki bench devices`
// answers "stats" with its fleet's counts and stops its agents when its
// input ends.
func TestBenchFleetAgentsOnly(t *testing.T) {
	ctx := context.Background()
	st, err := startFleetStack(ctx, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cfg := defaultFleetConfig()
	cfg.Count, cfg.Ramp = 5, 100*time.Millisecond
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := runFleetChild(ctx, cfg, st.srv.MQTTURL(), inR, outW)
		_ = outW.CloseWithError(io.EOF)
		done <- err
	}()
	lines := bufio.NewScanner(outR)
	read := func() fleetStats {
		t.Helper()
		if !lines.Scan() {
			t.Fatalf("no stats line: %v", lines.Err())
		}
		var s fleetStats
		if err := json.Unmarshal(lines.Bytes(), &s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := io.WriteString(inW, "stats\n"); err != nil {
			t.Fatal(err)
		}
		if s := read(); s.Online == cfg.Count {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("online: got %d of %d", s.Online, cfg.Count)
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = inW.Close()
	final := read()
	if final.Agents != cfg.Count || final.Online != 0 || final.Connects != cfg.Count {
		t.Fatalf("after stop: got %+v, want %d agents, none online, one connect each", final, cfg.Count)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
