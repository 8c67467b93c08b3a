package hel_test

import (
	"context"
	"testing"

	"github.com/loki-iot/loki/services/hel"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go/jetstream"
)

// The benchmarks compare a KV put/get made from a Lua script (Loki client →
// Loki service → hel module → Hel service → JetStream) with the same
// operation made directly on the JetStream KV bucket behind it, and with the
// Go Client (Hel service → JetStream, no script), all in one run against one
// in-process server. Run with: go test -run '^$' -bench KV ./services/hel/

const benchTools = `
[[tools]]
name = "bench_put"
returns = "number"
grants = ["hel.kv:bench"]
script = "return hel.kv.put('bench', 'k', value)"
  [[tools.params]]
  name = "value"
  type = "string"
  required = true

[[tools]]
name = "bench_get"
returns = "string"
grants = ["hel.kv:bench"]
script = "return hel.kv.get('bench', 'k')"
`

var benchValue = []byte("21.5")

func benchEnv(b *testing.B) (*lokiEnv, jetstream.KeyValue) {
	b.Helper()
	e := setupLoki(b, benchTools)
	ctx := ctxT(b)
	if _, err := e.c.KVPut(ctx, "bench", "k", hel.Bytes(benchValue)); err != nil {
		b.Fatal(err)
	}
	js, err := jetstream.New(e.nc)
	if err != nil {
		b.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, subjects.HelKVBucketPrefix+"bench")
	if err != nil {
		b.Fatal(err)
	}
	return e, kv
}

func BenchmarkScriptKVPut(b *testing.B) {
	e, _ := benchEnv(b)
	ctx := context.Background()
	args := []byte(`{"value":"21.5"}`)
	for b.Loop() {
		if _, err := e.loki.Call(ctx, "bench_put", args); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkScriptKVGet(b *testing.B) {
	e, _ := benchEnv(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := e.loki.Call(ctx, "bench_get", nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkClientKVPut(b *testing.B) {
	e, _ := benchEnv(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := e.c.KVPut(ctx, "bench", "k", hel.Bytes(benchValue)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkClientKVGet(b *testing.B) {
	e, _ := benchEnv(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := e.c.KVGet(ctx, "bench", "k"); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDirectKVPut(b *testing.B) {
	_, kv := benchEnv(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := kv.Put(ctx, "k", benchValue); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDirectKVGet(b *testing.B) {
	_, kv := benchEnv(b)
	ctx := context.Background()
	for b.Loop() {
		if _, err := kv.Get(ctx, "k"); err != nil {
			b.Fatal(err)
		}
	}
}
