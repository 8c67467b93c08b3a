package hel_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/hel"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sha(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestObjectsRoundTrip(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	chunk := e.cfg.Objects.ChunkSize
	tests := []struct {
		name      string
		size      int
		knownSize bool
	}{
		{name: "empty", size: 0, knownSize: true},
		{name: "one byte", size: 1, knownSize: true},
		{name: "exactly one chunk", size: chunk, knownSize: true},
		{name: "many chunks, size known", size: 37*chunk + 123, knownSize: true},
		{name: "many chunks, size unknown", size: 20*chunk + 1, knownSize: false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			data := randomBytes(tc.size, uint64(i+1))
			size := int64(-1)
			if tc.knownSize {
				size = int64(len(data))
			}
			// A reader that hides its length, so the client cannot cheat.
			info, err := e.c.PutObject(ctx, "firmware", tc.name, struct{ io.Reader }{bytes.NewReader(data)}, size)
			if err != nil {
				t.Fatal(err)
			}
			if info.Size != uint64(tc.size) || info.SHA256 != sha(data) {
				t.Fatalf("put: got size %d sha %s, want %d %s", info.Size, info.SHA256, tc.size, sha(data))
			}
			var buf bytes.Buffer
			got, err := e.c.GetObject(ctx, "firmware", tc.name, &buf)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(buf.Bytes(), data) || got.SHA256 != sha(data) {
				t.Fatalf("get: got %d bytes sha %s, want %d bytes sha %s", buf.Len(), sha(buf.Bytes()), len(data), sha(data))
			}
			st, err := e.c.ObjectInfo(ctx, "firmware", tc.name)
			if err != nil || st.Size != uint64(tc.size) || st.SHA256 != sha(data) {
				t.Fatalf("info: got %+v %v, want size %d sha %s", st, err, tc.size, sha(data))
			}
		})
	}

	list, err := e.c.ListObjects(ctx, "firmware")
	if err != nil || len(list) != len(tests) {
		t.Fatalf("list: got %d objects %v, want %d", len(list), err, len(tests))
	}
	if err := e.c.DeleteObject(ctx, "firmware", "one byte"); err != nil {
		t.Fatal(err)
	}
	_, err = e.c.ObjectInfo(ctx, "firmware", "one byte")
	wantCode(t, err, fault.NotFound)
	_, err = e.c.GetObject(ctx, "firmware", "one byte", io.Discard)
	wantCode(t, err, fault.NotFound)
	_, err = e.c.GetObject(ctx, "no_such_bucket", "x", io.Discard)
	wantCode(t, err, fault.NotFound)
	if l, err := e.c.ListObjects(ctx, "no_such_bucket"); err != nil || len(l) != 0 {
		t.Fatalf("list of a missing bucket: got %v %v, want none", l, err)
	}
}

// TestObjectsDefaultChunk moves an object of several default-sized (128 KiB)
// chunks, the size the object store uses.
func TestObjectsDefaultChunk(t *testing.T) {
	e := setup(t, func(c *hel.Config) { c.Objects.ChunkSize = hel.DefaultConfig("").Objects.ChunkSize })
	ctx := ctxT(t)
	data := randomBytes(5*e.cfg.Objects.ChunkSize+7, 42)
	if _, err := e.c.PutObject(ctx, "images", "fw.bin", bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	info, err := e.c.GetObject(ctx, "images", "fw.bin", &buf)
	if err != nil {
		t.Fatal(err)
	}
	if info.Chunks != 6 || sha(buf.Bytes()) != sha(data) {
		t.Fatalf("got %d chunks sha %s, want 6 chunks sha %s", info.Chunks, sha(buf.Bytes()), sha(data))
	}
}

func TestObjectsQuota(t *testing.T) {
	e := setup(t, func(c *hel.Config) {
		c.Objects.Buckets = map[string]hel.Quota{"small": {MaxBytes: 256 << 10}}
	})
	ctx := ctxT(t)
	old := randomBytes(100<<10, 1)
	if _, err := e.c.PutObject(ctx, "small", "fw", bytes.NewReader(old), int64(len(old))); err != nil {
		t.Fatal(err)
	}
	big := randomBytes(200<<10, 2)
	tests := []struct {
		name string
		size int64
	}{
		{name: "size announced: refused before the transfer", size: int64(len(big))},
		{name: "size unknown: refused during the transfer", size: -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.c.PutObject(ctx, "small", "fw", bytes.NewReader(big), tc.size)
			wantCode(t, err, fault.ResourceExhausted)
			var buf bytes.Buffer
			if _, err := e.c.GetObject(ctx, "small", "fw", &buf); err != nil || sha(buf.Bytes()) != sha(old) {
				t.Fatalf("previous object after the refused upload: got sha %s %v, want %s", sha(buf.Bytes()), err, sha(old))
			}
		})
	}
	// Space is not leaked by the refused uploads.
	again := randomBytes(100<<10, 3)
	if _, err := e.c.PutObject(ctx, "small", "fw2", bytes.NewReader(again), -1); err != nil {
		t.Fatalf("upload that fits after refused ones: %v", err)
	}
}

// TestObjectsConcurrentQuota has uploads that each fit in the quota race
// each other past it: the stream limit refuses some, and every object must
// then read as its new content (upload succeeded) or its previous one.
func TestObjectsConcurrentQuota(t *testing.T) {
	e := setup(t, func(c *hel.Config) {
		c.Objects.Buckets = map[string]hel.Quota{"race": {MaxBytes: 400 << 10}}
	})
	ctx := ctxT(t)
	for round := range 4 {
		names := []string{fmt.Sprintf("a%d", round), fmt.Sprintf("b%d", round)}
		prev := map[string][]byte{}
		for i, n := range names {
			prev[n] = randomBytes(10<<10, uint64(100*round+i))
			if _, err := e.c.PutObject(ctx, "race", n, bytes.NewReader(prev[n]), -1); err != nil {
				t.Fatal(err)
			}
		}
		next := map[string][]byte{}
		errs := map[string]error{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for i, n := range names {
			next[n] = randomBytes(250<<10, uint64(100*round+10+i))
		}
		for _, n := range names {
			data := next[n]
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := e.c.PutObject(ctx, "race", n, bytes.NewReader(data), -1)
				mu.Lock()
				errs[n] = err
				mu.Unlock()
			}()
		}
		wg.Wait()
		for _, n := range names {
			want := next[n]
			if errs[n] != nil {
				wantCode(t, errs[n], fault.ResourceExhausted)
				want = prev[n]
			}
			gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			var buf bytes.Buffer
			_, err := e.c.GetObject(gctx, "race", n, &buf)
			cancel()
			if err != nil || sha(buf.Bytes()) != sha(want) {
				t.Fatalf("round %d object %s (upload error %v): got sha %s %v, want %s", round, n, errs[n], sha(buf.Bytes()), err, sha(want))
			}
		}
		for _, n := range names {
			if err := e.c.DeleteObject(ctx, "race", n); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// failingReader fails after n bytes.
type failingReader struct {
	r io.Reader
	n int
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errors.New("disk on fire")
	}
	if len(p) > f.n {
		p = p[:f.n]
	}
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

func TestObjectsAbortedUploadKeepsPrevious(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	old := randomBytes(3*e.cfg.Objects.ChunkSize, 7)
	if _, err := e.c.PutObject(ctx, "b", "o", bytes.NewReader(old), -1); err != nil {
		t.Fatal(err)
	}
	newer := randomBytes(10*e.cfg.Objects.ChunkSize, 8)
	_, err := e.c.PutObject(ctx, "b", "o", &failingReader{r: bytes.NewReader(newer), n: 5 * e.cfg.Objects.ChunkSize}, -1)
	if err == nil {
		t.Fatal("got nil, want the reader's error")
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = e.c.PutObject(cctx, "b", "o", bytes.NewReader(newer), -1)
	wantCode(t, err, fault.DeadlineExceeded)

	eventually(t, "previous object intact", func() bool {
		var buf bytes.Buffer
		info, err := e.c.GetObject(ctx, "b", "o", &buf)
		return err == nil && sha(buf.Bytes()) == sha(old) && info.SHA256 == sha(old)
	})
}

func TestObjectsInvalidNames(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	tests := []struct{ name, bucket, object string }{
		{name: "empty object", bucket: "b", object: ""},
		{name: "object with newline", bucket: "b", object: "a\nb"},
		{name: "object with NUL", bucket: "b", object: "a\x00b"},
		{name: "bucket with dot", bucket: "a.b", object: "o"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.c.PutObject(ctx, tc.bucket, tc.object, bytes.NewReader(nil), 0)
			wantCode(t, err, fault.InvalidArgument)
		})
	}
}

// TestObjectsRestoreMeta simulates what the object store client can leave
// after an upload the stream limit refused: the object's meta names the new
// upload, whose chunks were purged. Hel's repair must bring back the
// previous object, or remove the name if there was none.
func TestObjectsRestoreMeta(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	svc, err := hel.New(testConfig(t.TempDir()), nc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)
	c := hel.NewClient(nc)
	ctx := ctxT(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	store := subjects.HelObjBucketPrefix + "b"

	old := randomBytes(40<<10, 5)
	if _, err := c.PutObject(ctx, "b", "fw", bytes.NewReader(old), -1); err != nil {
		t.Fatal(err)
	}
	obs, err := js.ObjectStore(ctx, store)
	if err != nil {
		t.Fatal(err)
	}
	prev, err := obs.GetInfo(ctx, "fw")
	if err != nil {
		t.Fatal(err)
	}
	failed := randomBytes(50<<10, 6)
	corrupt := func(name string) {
		t.Helper()
		sum := sha256.Sum256(failed)
		info := jetstream.ObjectInfo{
			ObjectMeta: jetstream.ObjectMeta{Name: name}, Bucket: store, NUID: "purged",
			Size: uint64(len(failed)), Chunks: 4, Digest: "SHA-256=" + base64.URLEncoding.EncodeToString(sum[:]),
		}
		subj, err := subjects.ObjectStoreMeta(store, name)
		if err != nil {
			t.Fatal(err)
		}
		m := nats.NewMsg(subj)
		m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		m.Data, _ = json.Marshal(info)
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}

	corrupt("fw")
	if err := hel.RestoreMeta(svc, ctx, "b", "fw", prev, sha(failed)); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := c.GetObject(ctx, "b", "fw", &buf); err != nil || sha(buf.Bytes()) != sha(old) {
		t.Fatalf("after repair: got sha %s %v, want the previous object %s", sha(buf.Bytes()), err, sha(old))
	}

	corrupt("new")
	if err := hel.RestoreMeta(svc, ctx, "b", "new", nil, sha(failed)); err != nil {
		t.Fatal(err)
	}
	_, err = c.ObjectInfo(ctx, "b", "new")
	wantCode(t, err, fault.NotFound)

	// A name another upload legitimately changed is left alone.
	if err := hel.RestoreMeta(svc, ctx, "b", "fw", nil, sha(failed)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ObjectInfo(ctx, "b", "fw"); err != nil {
		t.Fatalf("repair with another digest: got %v, want the object kept", err)
	}
}
