package gateway_test

import (
	"testing"

	"github.com/loki-iot/loki/gateway"
	"google.golang.org/protobuf/types/known/structpb"
)

// BenchmarkStructJSON is the per-call cost of ExecuteScript's argument encoding.
func BenchmarkStructJSON(b *testing.B) {
	s, _ := structpb.NewStruct(map[string]any{"a": 1, "b": 2})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := gateway.StructJSON(s.ProtoReflect()); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValueFromJSON is the per-call cost of decoding a scalar result.
func BenchmarkValueFromJSON(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := gateway.ValueFromJSON([]byte("3")); err != nil {
			b.Fatal(err)
		}
	}
}
