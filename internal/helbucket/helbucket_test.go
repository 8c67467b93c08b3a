package helbucket_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/loki-iot/loki/internal/helbucket"
	"github.com/nats-io/nats.go/jetstream"
)

func TestCheck(t *testing.T) {
	kv := func(c jetstream.KeyValueConfig) helbucket.Request { return helbucket.Request{KV: &c} }
	obj := func(b string) helbucket.Request {
		return helbucket.Request{Object: &jetstream.ObjectStoreConfig{Bucket: b}}
	}
	tests := []struct {
		name       string
		req        helbucket.Request
		wantStream string
		wantSubs   []string
		wantErr    error
	}{
		{"KV bucket", kv(jetstream.KeyValueConfig{Bucket: "hel_kv_notes", History: 5, MaxBytes: 1 << 20}), "KV_hel_kv_notes", []string{"$KV.hel_kv_notes.>"}, nil},
		{"the cache", kv(jetstream.KeyValueConfig{Bucket: "hel_cache"}), "KV_hel_cache", []string{"$KV.hel_cache.>"}, nil},
		{"object store", obj("hel_obj_fw"), "OBJ_hel_obj_fw", []string{"$O.hel_obj_fw.C.>", "$O.hel_obj_fw.M.>"}, nil},
		{"the tool registry", kv(jetstream.KeyValueConfig{Bucket: "loki_tools"}), "", nil, helbucket.ErrInvalid},
		{"no name", kv(jetstream.KeyValueConfig{Bucket: "hel_kv_"}), "", nil, helbucket.ErrInvalid},
		{"a dot", kv(jetstream.KeyValueConfig{Bucket: "hel_kv_a.b"}), "", nil, helbucket.ErrInvalid},
		{"a wildcard", kv(jetstream.KeyValueConfig{Bucket: "hel_kv_>"}), "", nil, helbucket.ErrInvalid},
		{"an object name for a KV", kv(jetstream.KeyValueConfig{Bucket: "hel_obj_fw"}), "", nil, helbucket.ErrInvalid},
		{"the cache as an object store", obj("hel_cache"), "", nil, helbucket.ErrInvalid},
		{"republish", kv(jetstream.KeyValueConfig{Bucket: "hel_kv_x", RePublish: &jetstream.RePublish{Source: ">", Destination: "loki.events.x"}}), "", nil, helbucket.ErrInvalid},
		{"sources", kv(jetstream.KeyValueConfig{Bucket: "hel_kv_x", Sources: []*jetstream.StreamSource{{Name: "KV_loki_tools"}}}), "", nil, helbucket.ErrInvalid},
		{"mirror", kv(jetstream.KeyValueConfig{Bucket: "hel_kv_x", Mirror: &jetstream.StreamSource{Name: "KV_loki_tools"}}), "", nil, helbucket.ErrInvalid},
		{"neither kind", helbucket.Request{}, "", nil, helbucket.ErrInvalid},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stream, subs, err := tc.req.Check()
			if !errors.Is(err, tc.wantErr) || stream != tc.wantStream || !slices.Equal(subs, tc.wantSubs) {
				t.Fatalf("got %q, %v, %v, want %q, %v, %v", stream, subs, err, tc.wantStream, tc.wantSubs, tc.wantErr)
			}
		})
	}
}

func TestMark(t *testing.T) {
	md := map[string]string{"k": "v", helbucket.OwnerKey: "someone"}
	got := helbucket.Mark(md)
	if !helbucket.IsHel(got) || got["k"] != "v" || md[helbucket.OwnerKey] != "someone" {
		t.Fatalf("got %v (input now %v), want Hel's mark added to a copy", got, md)
	}
	if !helbucket.IsHel(helbucket.Mark(nil)) || helbucket.IsHel(nil) {
		t.Fatal("Mark(nil) must be Hel's, nil metadata must not")
	}
}
