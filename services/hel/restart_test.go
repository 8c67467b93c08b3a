package hel_test

import (
	"bytes"
	"path/filepath"
	"testing"

	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/hel"
)

// TestRestartKeepsData stops Hel and the embedded server, starts both again
// on the same data directory, and reads back KV, objects and files.
func TestRestartKeepsData(t *testing.T) {
	dataDir := t.TempDir()
	onDataDir := func(c *natsrv.Config) { c.DataDir = dataDir }
	cfg := testConfig(dataDir)
	blob := randomBytes(5*cfg.Objects.ChunkSize+99, 11)

	srv := natstest.Start(t, onDataDir)
	stop := runHel(t, srv, cfg)
	c := hel.NewClient(natstest.Connect(t, srv))
	ctx := ctxT(t)
	rev, err := c.KVPut(ctx, "state", "mode", hel.JSON([]byte(`{"mode":"eco"}`)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.PutObject(ctx, "firmware", "v1.bin", bytes.NewReader(blob), int64(len(blob))); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteFile(ctx, "reports", "r.txt", []byte("report")); err != nil {
		t.Fatal(err)
	}
	stop()
	srv.Shutdown()

	srv = natstest.Start(t, onDataDir)
	startHel(t, srv, cfg)
	c = hel.NewClient(natstest.Connect(t, srv))

	e, err := c.KVGet(ctx, "state", "mode")
	if err != nil || string(e.Data) != `{"mode":"eco"}` || e.Type != hel.ContentJSON || e.Revision != rev {
		t.Fatalf("kv after restart: got %q %s rev %d %v, want the JSON at rev %d", e.Data, e.Type, e.Revision, err, rev)
	}
	var buf bytes.Buffer
	if _, err := c.GetObject(ctx, "firmware", "v1.bin", &buf); err != nil || sha(buf.Bytes()) != sha(blob) {
		t.Fatalf("object after restart: got sha %s %v, want %s", sha(buf.Bytes()), err, sha(blob))
	}
	got, err := c.ReadFile(ctx, "reports", "r.txt")
	if err != nil || string(got) != "report" {
		t.Fatalf("file after restart: got %q %v, want report", got, err)
	}
	if cfg.Files.Root != filepath.Join(dataDir, "hel", "files") {
		t.Fatalf("files root: got %s, want it under the data dir", cfg.Files.Root)
	}
}
