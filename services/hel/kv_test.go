package hel_test

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/hel"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go/jetstream"
)

func TestKVValues(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	tests := []struct {
		name string
		v    hel.Value
	}{
		{name: "string", v: hel.Bytes([]byte("21.5"))},
		{name: "empty string", v: hel.Bytes(nil)},
		{name: "binary starting with NUL", v: hel.Bytes([]byte{0, 'j', '{', '}'})},
		{name: "string that looks like JSON", v: hel.Bytes([]byte(`{"a":1}`))},
		{name: "json object", v: hel.JSON([]byte(`{"a":1,"b":[true,null]}`))},
		{name: "json number", v: hel.JSON([]byte(`42`))},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			key := "k" + string(rune('a'+i))
			rev, err := e.c.KVPut(ctx, "values", key, tc.v)
			if err != nil {
				t.Fatal(err)
			}
			got, err := e.c.KVGet(ctx, "values", key)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got.Data, tc.v.Data) || got.Type != tc.v.Type || got.Revision != rev {
				t.Fatalf("got %q %s rev %d, want %q %s rev %d", got.Data, got.Type, got.Revision, tc.v.Data, tc.v.Type, rev)
			}
		})
	}
}

func TestKVOperations(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	c := e.c
	const b = "ops"

	if _, err := c.KVGet(ctx, b, "missing"); fault.CodeOf(err) != fault.NotFound {
		t.Fatalf("get from a bucket never written: got %v, want NOT_FOUND", err)
	}
	rev1, err := c.KVCreate(ctx, b, "a", hel.Bytes([]byte("1")), 0)
	if err != nil {
		t.Fatal(err)
	}
	cur, err := c.KVCreate(ctx, b, "a", hel.Bytes([]byte("2")), 0)
	wantCode(t, err, fault.AlreadyExists)
	if cur != rev1 {
		t.Fatalf("create conflict revision: got %d, want %d", cur, rev1)
	}
	rev2, err := c.KVUpdate(ctx, b, "a", hel.Bytes([]byte("2")), rev1)
	if err != nil {
		t.Fatal(err)
	}
	cur, err = c.KVUpdate(ctx, b, "a", hel.Bytes([]byte("3")), rev1)
	wantCode(t, err, fault.FailedPrecondition)
	if cur != rev2 || !strings.Contains(err.Error(), "current revision is") {
		t.Fatalf("update conflict: got %v (revision %d), want one naming revision %d", err, cur, rev2)
	}
	if _, err := c.KVPut(ctx, b, "room.kitchen.temp", hel.Bytes([]byte("20"))); err != nil {
		t.Fatal(err)
	}
	if _, err := c.KVPut(ctx, b, "room.hall.temp", hel.Bytes([]byte("19"))); err != nil {
		t.Fatal(err)
	}
	keys, err := c.KVKeys(ctx, b, "")
	if err != nil || strings.Join(keys, ",") != "a,room.hall.temp,room.kitchen.temp" {
		t.Fatalf("keys: got %v %v, want a,room.hall.temp,room.kitchen.temp", keys, err)
	}
	keys, err = c.KVKeys(ctx, b, "room.*.temp")
	if err != nil || strings.Join(keys, ",") != "room.hall.temp,room.kitchen.temp" {
		t.Fatalf("filtered keys: got %v %v", keys, err)
	}
	if err := c.KVDelete(ctx, b, "a", rev1); fault.CodeOf(err) != fault.FailedPrecondition {
		t.Fatalf("delete at a stale revision: got %v, want FAILED_PRECONDITION", err)
	}
	if err := c.KVDelete(ctx, b, "a", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := c.KVGet(ctx, b, "a"); fault.CodeOf(err) != fault.NotFound {
		t.Fatalf("get after delete: got %v, want NOT_FOUND", err)
	}
	hist, err := c.KVHistory(ctx, b, "a")
	if err != nil {
		t.Fatal(err)
	}
	var ops []string
	for _, h := range hist {
		ops = append(ops, h.Op+":"+string(h.Data))
	}
	if got, want := strings.Join(ops, ","), "put:1,put:2,delete:"; got != want {
		t.Fatalf("history: got %s, want %s", got, want)
	}
	// After a delete, create works again.
	if _, err := c.KVCreate(ctx, b, "a", hel.Bytes([]byte("again")), 0); err != nil {
		t.Fatalf("create after delete: %v", err)
	}
	if err := c.KVDelete(ctx, "never_written", "x", 0); err != nil {
		t.Fatalf("delete in a missing bucket: got %v, want nil", err)
	}
	if keys, err := c.KVKeys(ctx, "never_written", ""); err != nil || len(keys) != 0 {
		t.Fatalf("keys of a missing bucket: got %v %v, want none", keys, err)
	}
}

func TestKVInvalidArguments(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	tests := []struct {
		name        string
		bucket, key string
	}{
		{name: "empty bucket", bucket: "", key: "k"},
		{name: "bucket with dot", bucket: "a.b", key: "k"},
		{name: "bucket with slash", bucket: "../x", key: "k"},
		{name: "bucket too long", bucket: strings.Repeat("b", 65), key: "k"},
		{name: "empty key", bucket: "b", key: ""},
		{name: "key with space", bucket: "b", key: "a b"},
		{name: "key with wildcard", bucket: "b", key: "a.*"},
		{name: "key with leading dot", bucket: "b", key: ".a"},
		{name: "key with CRLF", bucket: "b", key: "a\r\nHel-Bucket: other"},
		{name: "key too long", bucket: "b", key: strings.Repeat("k", hel.MaxKeyBytes+1)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.c.KVPut(ctx, tc.bucket, tc.key, hel.Bytes([]byte("v")))
			wantCode(t, err, fault.InvalidArgument)
		})
	}
	t.Run("invalid JSON marked as JSON", func(t *testing.T) {
		_, err := e.c.KVPut(ctx, "b", "k", hel.JSON([]byte("{not json")))
		wantCode(t, err, fault.InvalidArgument)
	})
	t.Run("fractional TTL", func(t *testing.T) {
		_, err := e.c.KVCreate(ctx, "b", "k", hel.Bytes([]byte("v")), 1500*time.Millisecond)
		wantCode(t, err, fault.InvalidArgument)
	})
}

// TestKVConcurrentUpdaters has two updaters read the same revision and
// update at once: exactly one wins, the other gets a conflict.
func TestKVConcurrentUpdaters(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	for round := range 10 {
		rev, err := e.c.KVPut(ctx, "race", "counter", hel.Bytes([]byte("0")))
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make([]error, 2)
		start := make(chan struct{})
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				_, errs[i] = e.c.KVUpdate(ctx, "race", "counter", hel.Bytes([]byte{byte('1' + i)}), rev)
			}()
		}
		close(start)
		wg.Wait()
		codes := []fault.Code{fault.CodeOf(errs[0]), fault.CodeOf(errs[1])}
		won := 0
		for _, c := range codes {
			switch c {
			case "":
				won++
			case fault.FailedPrecondition:
			default:
				t.Fatalf("round %d: got %v, want success or FAILED_PRECONDITION", round, errs)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: got codes %q, want exactly one winner", round, codes)
		}
	}
}

func TestKVKeyTTL(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	if _, err := e.c.KVCreate(ctx, "ttl", "session", hel.Bytes([]byte("x")), time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.KVPut(ctx, "ttl", "forever", hel.Bytes([]byte("y"))); err != nil {
		t.Fatal(err)
	}
	eventually(t, "key with a 1s TTL expires", func() bool {
		_, err := e.c.KVGet(ctx, "ttl", "session")
		return fault.CodeOf(err) == fault.NotFound
	})
	if _, err := e.c.KVGet(ctx, "ttl", "forever"); err != nil {
		t.Fatalf("key without TTL: got %v, want it kept", err)
	}
}

func TestKVQuota(t *testing.T) {
	e := setup(t, func(c *hel.Config) {
		c.KV.Buckets = map[string]hel.Quota{"small": {MaxBytes: 4096}}
	})
	ctx := ctxT(t)
	val := bytes.Repeat([]byte("x"), 1000)
	var last error
	stored := 0
	for i := range 10 {
		if _, last = e.c.KVPut(ctx, "small", "k"+string(rune('0'+i)), hel.Bytes(val)); last != nil {
			break
		}
		stored++
	}
	wantCode(t, last, fault.ResourceExhausted)
	if stored == 0 || stored == 10 {
		t.Fatalf("got %d values stored in a 4096-byte bucket, want some but not all", stored)
	}
	for i := range stored {
		got, err := e.c.KVGet(ctx, "small", "k"+string(rune('0'+i)))
		if err != nil || !bytes.Equal(got.Data, val) {
			t.Fatalf("value %d after the refused write: got %v, want it untouched", i, err)
		}
	}
	// Other buckets keep the default quota.
	if _, err := e.c.KVPut(ctx, "big", "k", hel.Bytes(bytes.Repeat([]byte("x"), 8000))); err != nil {
		t.Fatalf("write to a bucket with the default quota: %v", err)
	}
	// A value over max_value_bytes is refused whatever the quota.
	_, err := e.c.KVPut(ctx, "big", "huge", hel.Bytes(make([]byte, e.cfg.KV.MaxValueBytes+1)))
	wantCode(t, err, fault.ResourceExhausted)
}

// TestKVBucketNames checks Hel's buckets are prefixed in JetStream.
func TestKVBucketNames(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	if _, err := e.c.KVPut(ctx, "loki_tools", "k", hel.Bytes([]byte("v"))); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(e.nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.KeyValue(ctx, subjects.HelKVBucketPrefix+"loki_tools"); err != nil {
		t.Fatalf("got %v, want bucket %s", err, subjects.HelKVBucketPrefix+"loki_tools")
	}
	if _, err := js.KeyValue(ctx, subjects.ToolsBucket); err == nil {
		t.Fatalf("Hel bucket \"loki_tools\" created the tool registry bucket %q", subjects.ToolsBucket)
	}
}
