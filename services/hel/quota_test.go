package hel_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/hel"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// helStreamBytes is what JetStream stores for Hel's KV buckets and object
// stores.
func helStreamBytes(t *testing.T, nc *nats.Conn) int64 {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := ctxT(t)
	names := js.StreamNames(ctx)
	var total int64
	for name := range names.Name() {
		if !strings.HasPrefix(name, subjects.HelKVStreamPrefix) && !strings.HasPrefix(name, subjects.HelObjStreamPrefix) {
			continue
		}
		st, err := js.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		total += int64(st.CachedInfo().State.Bytes)
	}
	if err := names.Err(); err != nil {
		t.Fatal(err)
	}
	return total
}

// dirBytes sums the regular files under dir.
func dirBytes(t *testing.T, dir string) int64 {
	t.Helper()
	var total int64
	err := filepath.WalkDir(dir, func(_ string, d os.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		if err == nil {
			total += info.Size()
		}
		return err
	})
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return total
}

const totalQuota = 1 << 20

// TestTotalQuotaConcurrentWriters has many writers fill many buckets,
// object stores and namespaces at once: together they never pass the total
// quota, the refusals name it, and the quota is nearly used (the accounting
// is not so cautious that it wastes it).
func TestTotalQuotaConcurrentWriters(t *testing.T) {
	e := setup(t, func(c *hel.Config) { c.MaxTotalBytes = totalQuota })
	ctx := ctxT(t)
	val := bytes.Repeat([]byte("v"), 8<<10)
	var stored, refused atomic.Int64
	var firstRefusal atomic.Value
	var wg sync.WaitGroup
	write := func(kind string, w int, put func(i int) error) {
		defer wg.Done()
		for i := 0; i < 400; i++ {
			err := put(i)
			if fault.CodeOf(err) == fault.ResourceExhausted {
				refused.Add(1)
				firstRefusal.CompareAndSwap(nil, fault.MessageOf(err))
				return
			}
			if err != nil {
				t.Errorf("%s writer %d: %v", kind, w, err)
				return
			}
			stored.Add(int64(len(val)))
		}
	}
	for w := range 12 {
		wg.Add(1)
		go write("kv", w, func(i int) error {
			_, err := e.c.KVPut(ctx, fmt.Sprintf("b%d", w%6), fmt.Sprintf("w%d.k%d", w, i), hel.Bytes(val))
			return err
		})
	}
	for w := range 3 {
		wg.Add(1)
		go write("object", w, func(i int) error {
			// Unknown size: reserved chunk by chunk as the upload arrives.
			_, err := e.c.PutObject(ctx, fmt.Sprintf("o%d", w), fmt.Sprintf("obj%d", i), bytes.NewReader(val), -1)
			return err
		})
	}
	for w := range 3 {
		wg.Add(1)
		go write("file", w, func(i int) error {
			return e.c.AppendFile(ctx, fmt.Sprintf("ns%d", w), "log", val)
		})
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	js := helStreamBytes(t, e.nc)
	files := dirBytes(t, e.cfg.Files.Root)
	if js+files > totalQuota {
		t.Fatalf("stored %d bytes (%d in JetStream, %d in files), want at most the %d-byte total quota", js+files, js, files, totalQuota)
	}
	if refused.Load() == 0 {
		t.Fatalf("no write was refused, want the writers to fill the %d-byte quota", totalQuota)
	}
	if msg, _ := firstRefusal.Load().(string); !strings.Contains(msg, "total quota of 1048576 bytes (max_total_bytes)") {
		t.Fatalf("got refusal %q, want it to name the total quota", msg)
	}
	if js+files < totalQuota*3/4 {
		t.Fatalf("stored %d bytes when the writers were refused, want at least 3/4 of the %d-byte quota", js+files, totalQuota)
	}
	t.Logf("stored %d bytes of values; JetStream holds %d bytes, files %d; %d writers refused", stored.Load(), js, files, refused.Load())

	// Deleting through Hel makes room at once.
	for w := range 3 {
		if err := e.c.DeleteFile(ctx, fmt.Sprintf("ns%d", w), "log"); err != nil {
			t.Fatal(err)
		}
		for i := 0; ; i++ {
			err := e.c.DeleteObject(ctx, fmt.Sprintf("o%d", w), fmt.Sprintf("obj%d", i))
			if fault.CodeOf(err) == fault.NotFound {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := e.c.KVPut(ctx, "after", "k", hel.Bytes(val)); err != nil {
		t.Fatalf("put after deleting files and objects: got %v, want it stored", err)
	}
}

// TestTotalQuotaRefusesBeforeBytesMove checks that a write over the total
// quota changes nothing: no bucket data, no file, no object.
func TestTotalQuotaRefusesBeforeBytesMove(t *testing.T) {
	e := setup(t, func(c *hel.Config) { c.MaxTotalBytes = 64 << 10 })
	ctx := ctxT(t)
	big := bytes.Repeat([]byte("x"), 100<<10)
	tests := []struct {
		name string
		do   func() error
	}{
		{"kv put", func() error { _, err := e.c.KVPut(ctx, "kb", "k", hel.Bytes(big[:70<<10])); return err }},
		{"file write", func() error { return e.c.WriteFile(ctx, "fns", "f", big) }},
		{"object of known size", func() error {
			_, err := e.c.PutObject(ctx, "ob", "o", bytes.NewReader(big), int64(len(big)))
			return err
		}},
		{"object of unknown size", func() error {
			_, err := e.c.PutObject(ctx, "ob", "o", io.MultiReader(bytes.NewReader(big)), -1)
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := helStreamBytes(t, e.nc) + dirBytes(t, e.cfg.Files.Root)
			err := tc.do()
			wantCode(t, err, fault.ResourceExhausted)
			if !strings.Contains(fault.MessageOf(err), "max_total_bytes") {
				t.Fatalf("got %q, want it to name max_total_bytes", fault.MessageOf(err))
			}
			after := helStreamBytes(t, e.nc) + dirBytes(t, e.cfg.Files.Root)
			if after > before+8<<10 {
				t.Fatalf("stored bytes went from %d to %d, want the refused write to store nothing", before, after)
			}
		})
	}
	if _, err := e.c.KVPut(ctx, "kb", "small", hel.Bytes([]byte("fits"))); err != nil {
		t.Fatalf("small put: got %v, want it stored", err)
	}
}
