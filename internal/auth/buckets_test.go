package auth_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/helbucket"
	"github.com/loki-iot/loki/services/hel"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nats.go/micro"
)

// startBroker runs the identity service, and with it the bucket broker,
// as `loki up` does: with the auth identity.
func startBroker(t *testing.T, b *bus) {
	t.Helper()
	svc := auth.NewService(b.a, b.connect(t, "auth").Conn, slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-svc.Ready():
	case err := <-done:
		t.Fatalf("identity service: %v", err)
	case <-time.After(bound):
		t.Fatal("identity service not ready")
	}
}

// askBroker sends body to the bucket broker as c and returns the error
// code and message of the answer ("" on success).
func askBroker(t *testing.T, c *client, body string) (code, msg string) {
	t.Helper()
	m, err := c.Request("loki.auth.hel.bucket", []byte(body), bound)
	if err != nil {
		t.Fatalf("bucket broker: %v", err)
	}
	return m.Header.Get(micro.ErrorCodeHeader), m.Header.Get(micro.ErrorHeader)
}

// brokerCases checks, as Hel, what the bucket broker makes and what it
// refuses, on a bus whose broker runs (startBroker).
func brokerCases(t *testing.T, b *bus) {
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	hel := b.connect(t, "hel")
	js := mustJS(t, hel)
	admin := mustJS(t, b.adminConn(t))

	t.Run("allowed/create a KV bucket through the broker", func(t *testing.T) {
		if code, msg := askBroker(t, hel, `{"kv":{"bucket":"hel_kv_y","history":3,"storage":"memory","max_bytes":1048576}}`); code != "" {
			t.Fatalf("got %s %s, want success", code, msg)
		}
		kv, err := js.KeyValue(ctx, "hel_kv_y")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(ctx, "k", []byte("v")); err != nil {
			t.Fatal(err)
		}
		st, err := admin.Stream(ctx, "KV_hel_kv_y")
		if err != nil {
			t.Fatal(err)
		}
		c := st.CachedInfo().Config
		if !helbucket.IsHel(c.Metadata) || len(c.Subjects) != 1 || c.Subjects[0] != "$KV.hel_kv_y.>" ||
			c.MaxMsgsPerSubject != 3 || c.MaxBytes != 1<<20 {
			t.Fatalf("got metadata %v, subjects %v, history %d, max bytes %d; want Hel's, [$KV.hel_kv_y.>], 3, 1MiB",
				c.Metadata, c.Subjects, c.MaxMsgsPerSubject, c.MaxBytes)
		}
		// Again, with other limits: updated, not refused.
		if code, msg := askBroker(t, hel, `{"kv":{"bucket":"hel_kv_y","history":5,"storage":"memory"}}`); code != "" {
			t.Fatalf("update: got %s %s, want success", code, msg)
		}
		hel.noPermissionErr(t)
	})

	t.Run("allowed/create the cache and an object store through the broker", func(t *testing.T) {
		if code, msg := askBroker(t, hel, `{"kv":{"bucket":"hel_cache","ttl":3600000000000,"storage":"memory"},"discard_old":true}`); code != "" {
			t.Fatalf("cache: got %s %s, want success", code, msg)
		}
		st, err := admin.Stream(ctx, "KV_hel_cache")
		if err != nil || st.CachedInfo().Config.Discard != jetstream.DiscardOld {
			t.Fatalf("cache stream: got %v, want discard old", err)
		}
		if code, msg := askBroker(t, hel, `{"object":{"bucket":"hel_obj_fw","storage":"memory"}}`); code != "" {
			t.Fatalf("object store: got %s %s, want success", code, msg)
		}
		obs, err := js.ObjectStore(ctx, "hel_obj_fw")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := obs.PutBytes(ctx, "a", []byte("firmware")); err != nil {
			t.Fatal(err)
		}
		if err := obs.Delete(ctx, "a"); err != nil {
			t.Fatal(err)
		}
		hel.noPermissionErr(t)
	})

	// A stream an admin made under a Hel name, capturing calls.
	if _, err := admin.CreateStream(ctx, jetstream.StreamConfig{Name: "KV_hel_kv_trap",
		Subjects: []string{"$KV.hel_kv_trap.>", "loki.exec.>"}, Storage: jetstream.MemoryStorage}); err != nil {
		t.Fatal(err)
	}
	refused := []struct {
		name, body, code, msg string
	}{
		{"another component's bucket", `{"kv":{"bucket":"loki_tools"}}`, "INVALID_ARGUMENT", `bucket "loki_tools" is not one of Hel's`},
		{"the device registry", `{"kv":{"bucket":"jotunheim_devices"}}`, "INVALID_ARGUMENT", "not one of Hel's"},
		{"a name outside Hel's rules", `{"kv":{"bucket":"hel_kv_a.b"}}`, "INVALID_ARGUMENT", "not one of Hel's"},
		{"an object store under a KV name", `{"object":{"bucket":"hel_kv_x"}}`, "INVALID_ARGUMENT", "not one of Hel's"},
		{"foreign subjects by republish", `{"kv":{"bucket":"hel_kv_z","republish":{"src":">","dest":"loki.events.x.completed"}}}`, "INVALID_ARGUMENT", "republish is not allowed"},
		{"another stream's data by sources", `{"kv":{"bucket":"hel_kv_z","sources":[{"name":"KV_loki_tools"}]}}`, "INVALID_ARGUMENT", "mirror and sources are not allowed"},
		{"another stream's data by mirror", `{"kv":{"bucket":"hel_kv_z","mirror":{"name":"KV_loki_tools"}}}`, "INVALID_ARGUMENT", "mirror and sources are not allowed"},
		{"subjects of its own", `{"kv":{"bucket":"hel_kv_z"},"subjects":["loki.exec.>"]}`, "INVALID_ARGUMENT", `unknown field "subjects"`},
		{"both kinds", `{"kv":{"bucket":"hel_kv_z"},"object":{"bucket":"hel_obj_z"}}`, "INVALID_ARGUMENT", "exactly one"},
		{"a stream of Hel's name that is not Hel's", `{"kv":{"bucket":"hel_kv_trap"}}`, "FAILED_PRECONDITION", "is not Hel's"},
	}
	for _, tc := range refused {
		t.Run("refused/broker: "+tc.name, func(t *testing.T) {
			code, msg := askBroker(t, hel, tc.body)
			if code != tc.code || !strings.Contains(msg, tc.msg) {
				t.Fatalf("got %s %q, want %s with %q", code, msg, tc.code, tc.msg)
			}
		})
	}
	t.Run("refused/broker left the trap alone", func(t *testing.T) {
		st, err := admin.Stream(ctx, "KV_hel_kv_trap")
		if err != nil {
			t.Fatal(err)
		}
		if c := st.CachedInfo().Config; helbucket.IsHel(c.Metadata) || len(c.Subjects) != 2 {
			t.Fatalf("got metadata %v, subjects %v, want the admin's stream unchanged", c.Metadata, c.Subjects)
		}
		for _, name := range []string{"KV_hel_kv_z", "OBJ_hel_obj_z"} {
			if _, err := admin.Stream(ctx, name); err == nil {
				t.Fatalf("stream %s exists, want none made by a refused request", name)
			}
		}
		if err := admin.DeleteStream(ctx, "KV_hel_kv_trap"); err != nil {
			t.Fatal(err)
		}
	})
}

// TestExportedServerHelThroughBroker: against a nats-server configured by
// the export alone, Hel (as `loki serve hel`) gets its buckets from the
// standalone bucket broker (as `loki serve auth`), and the server refuses
// Hel nothing.
func TestExportedServerHelThroughBroker(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "auth")
	a, err := auth.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	s, _ := startFromExport(t, a)
	refused := make(chan error, 64)
	dial := func(name string) *nats.Conn {
		opts, err := auth.ConnectOptions(auth.SeedFile(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case refused <- err:
			default:
			}
		}))
		nc, err := nats.Connect(s.ClientURL(), opts...)
		if err != nil {
			t.Fatalf("connect as %s: %v", name, err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	broker := auth.NewBucketBroker(dial("auth"), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- broker.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	<-broker.Ready()

	cfg := hel.DefaultConfig(filepath.Join(t.TempDir(), "files"))
	svc, err := hel.New(cfg, dial("hel"), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	hctx, hcancel := context.WithCancel(context.Background())
	hdone := make(chan error, 1)
	go func() { hdone <- svc.Run(hctx) }()
	t.Cleanup(func() { hcancel(); <-hdone })
	select {
	case <-svc.Ready():
	case err := <-hdone:
		t.Fatalf("hel: %v", err)
	case <-time.After(bound):
		t.Fatal("hel not ready")
	}

	c := hel.NewClient(dial("admin"))
	rctx, rcancel := context.WithTimeout(context.Background(), bound)
	defer rcancel()
	if _, err := c.KVPut(rctx, "notes", "a", hel.Bytes([]byte("1"))); err != nil {
		t.Fatalf("kv put: %v", err)
	}
	if _, err := c.PutObject(rctx, "fw", "image.bin", strings.NewReader("firmware"), 8); err != nil {
		t.Fatalf("put object: %v", err)
	}
	if err := c.DeleteObject(rctx, "fw", "image.bin"); err != nil {
		t.Fatalf("delete object: %v", err)
	}
	select {
	case err := <-refused:
		t.Fatalf("the server refused: %v", err)
	default:
	}
}
