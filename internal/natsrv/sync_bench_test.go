package natsrv_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/nats-io/nats.go/jetstream"
)

// BenchmarkKVPutSync measures the cost of fsyncing every JetStream write
// before it is acknowledged (`loki up`'s default, [nats] sync = "always")
// against nats-server's default of an fsync every 2 minutes, in the same
// run, on two servers side by side. A put is a client's request over TCP
// and the server's acknowledgement: "sequential" one at a time,
// "32-writers" from 32 goroutines at once. Rounds (round=N in the name)
// alternate the settings, phase by phase rather than put by put: an fsync
// stalls other writes to the same filesystem, which would bill the
// interval setting for the other's fsyncs. "disk-fsync" is the disk's own
// price, a 256-byte append and fsync on the same filesystem.
//
// The stores are under $TMPDIR (b.TempDir): point TMPDIR at the disk to
// measure, since fsync on a tmpfs costs nothing. Run with -count 1:
//
//	go test -run '^$' -bench KVPutSync ./internal/natsrv/
func BenchmarkKVPutSync(b *testing.B) {
	type setting struct {
		name string
		kv   jetstream.KeyValue
	}
	ctx := context.Background()
	var settings []setting
	for _, s := range []struct {
		name string
		cfg  natsrv.Config
	}{
		{"sync=always", natsrv.Config{SyncAlways: true}},
		{"sync=2m", natsrv.Config{SyncInterval: 2 * time.Minute}},
	} {
		cfg := s.cfg
		cfg.Name, cfg.DataDir, cfg.Port = "bench", b.TempDir(), -1
		srv, err := natsrv.Start(cfg, nil)
		if err != nil {
			b.Fatal(err)
		}
		defer srv.Shutdown()
		nc, err := natsrv.Dial(ctx, srv.ClientURL(), "bench", nil)
		if err != nil {
			b.Fatal(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			b.Fatal(err)
		}
		kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "bench", Storage: jetstream.FileStorage, History: 1})
		if err != nil {
			b.Fatal(err)
		}
		settings = append(settings, setting{s.name, kv})
	}
	value := make([]byte, 256) // about a small KV value or tool definition
	raw, err := os.Create(filepath.Join(b.TempDir(), "fsync"))
	if err != nil {
		b.Fatal(err)
	}
	defer raw.Close()
	const rounds = 3
	for r := range rounds {
		b.Run(fmt.Sprintf("disk-fsync/round=%d", r+1), func(b *testing.B) {
			for range b.N {
				if _, err := raw.Write(value); err != nil {
					b.Fatal(err)
				}
				if err := raw.Sync(); err != nil {
					b.Fatal(err)
				}
			}
		})
		for j := range settings {
			s := settings[(r+j)%2]
			b.Run(fmt.Sprintf("sequential/round=%d/%s", r+1, s.name), func(b *testing.B) {
				for i := range b.N {
					if _, err := s.kv.Put(ctx, fmt.Sprintf("k%d", i%1000), value); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
		for j := range settings {
			s := settings[(r+j+1)%2]
			b.Run(fmt.Sprintf("32-writers/round=%d/%s", r+1, s.name), func(b *testing.B) {
				var n atomic.Int64
				b.SetParallelism(max(1, 32/runtime.GOMAXPROCS(0)))
				start := time.Now()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, err := s.kv.Put(ctx, fmt.Sprintf("k%d", n.Add(1)%1000), value); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "puts/s")
			})
		}
	}
}
