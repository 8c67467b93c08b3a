package gatewaybench_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/gateway/gatewaybench"
	"github.com/loki-iot/loki/internal/bench"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestRun checks the harness works end to end on a tiny workload; the
// figures themselves are for BenchmarkGateway and `loki bench --grpc`.
func TestRun(t *testing.T) {
	cfg := bench.Config{Sequential: 20, Concurrency: 4, Duration: 100 * time.Millisecond, Rounds: 1, Warmup: 5}
	rep, err := gatewaybench.Run(context.Background(), cfg, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(rep.Results), 3; got != want {
		t.Fatalf("got %d results, want %d", got, want)
	}
	for _, r := range rep.Results {
		if r.Errors != 0 || r.P50 <= 0 || r.Throughput <= 0 {
			t.Errorf("got %+v, want no errors and positive figures", r)
		}
	}
	var b bytes.Buffer
	rep.Markdown(&b)
	if !strings.Contains(b.String(), "gateway ExecuteScript") {
		t.Errorf("report lacks the gateway row:\n%s", b.String())
	}
}

// BenchmarkGateway runs the full comparison once and prints the table
// (go test -run '^$' -bench Gateway ./gateway/gatewaybench/).
func BenchmarkGateway(b *testing.B) {
	for b.Loop() {
		rep, err := gatewaybench.Run(context.Background(), bench.DefaultConfig(), quietLog())
		if err != nil {
			b.Fatal(err)
		}
		rep.Markdown(os.Stdout)
	}
}
