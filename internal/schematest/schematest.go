// Package schematest checks that the JSON a service's Go types produce
// matches the schema of those bodies in proto/: the services speak JSON,
// and proto/ is where every message's schema lives.
package schematest

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Check fails t unless the JSON encoding/json makes of v decodes strictly
// (no unknown fields) as msg, and has exactly msg's fields, recursively. v
// should have every field set, so that omitempty drops none: then every
// field v sends is in the schema with a compatible type, and every field of
// the schema is one v has.
func Check(t testing.TB, v any, msg proto.Message) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if err := protojson.Unmarshal(b, msg); err != nil {
		t.Fatalf("%T as JSON %s does not decode as %s: %v", v, b, msg.ProtoReflect().Descriptor().FullName(), err)
	}
	var generic any
	if err := json.Unmarshal(b, &generic); err != nil {
		t.Fatal(err)
	}
	sameFields(t, string(msg.ProtoReflect().Descriptor().Name()), generic, msg.ProtoReflect().Descriptor())
}

func sameFields(t testing.TB, path string, v any, md protoreflect.MessageDescriptor) {
	t.Helper()
	obj, ok := v.(map[string]any)
	if !ok {
		t.Fatalf("%s: got JSON %T, want an object", path, v)
	}
	var want, got []string
	fields := md.Fields()
	for i := range fields.Len() {
		want = append(want, fields.Get(i).TextName())
	}
	for k := range obj {
		got = append(got, k)
	}
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("%s: JSON fields %v, schema fields %v (set every field of the sample)", path, got, want)
	}
	for i := range fields.Len() {
		f := fields.Get(i)
		if f.Kind() != protoreflect.MessageKind || f.IsMap() || strings.HasPrefix(string(f.Message().FullName()), "google.protobuf.") {
			continue
		}
		sub := path + "." + f.TextName()
		if f.IsList() {
			list, ok := obj[f.TextName()].([]any)
			if !ok || len(list) == 0 {
				t.Fatalf("%s: want a non-empty array in the sample", sub)
			}
			for _, e := range list {
				sameFields(t, sub+"[]", e, f.Message())
			}
			continue
		}
		sameFields(t, sub, obj[f.TextName()], f.Message())
	}
}
