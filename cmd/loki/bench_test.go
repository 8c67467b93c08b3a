package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestBenchAuthRuns: `loki bench --auth` calls through both servers (the
// caller and Loki hold their roles' permissions) without an error. The
// figures themselves are for docs/BENCHMARKS.md, not for a test.
func TestBenchAuthRuns(t *testing.T) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"bench", "--auth", "--rounds", "1", "--requests", "20", "--callers", "2",
		"--duration", "100ms", "--log-level", "warn"}, &out, &errOut)
	if err != nil {
		t.Fatalf("bench --auth: %v\n%s", err, errOut.String())
	}
	for _, name := range []string{"loki exec, no auth", "loki exec, auth + permissions"} {
		var row string
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.HasPrefix(l, "| "+name+" |") {
				row = l
			}
		}
		if row == "" || !strings.HasSuffix(row, "| 0 |") {
			t.Errorf("row %q: got %q, want one with 0 errors in:\n%s", name, row, out.String())
		}
	}
}
