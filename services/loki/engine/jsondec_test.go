package engine

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

var jsonSeeds = []string{
	`{"a":1,"b":2}`, `{}`, `[]`, `null`, `true`, `false`, `0`, `-0`, `1.5e3`, `-12.25E-2`, `"x"`,
	`{"s":"\u00e9\ud83d\ude00\n\t\"\\\/","n":null,"l":[1,[2,{}]]}`,
	`"\ud800"`, `"\ud800\u0041"`, `"\udc00\ud800"`, "\"\xff\xfe\"", `01`, `1.`, `.5`, `1e`, `+1`, `[1,]`, `{"a":1,}`,
	`{"a" 1}`, `[1 2]`, `"\x"`, "\"\x01\"", `1e400`, `tru`, `{"a":1}x`, ` {"a" : [ 1 , 2 ] } `, `{"a":1,"a":2}`,
}

func TestDecodeJSONMatchesEncodingJSON(t *testing.T) {
	for _, s := range jsonSeeds {
		checkAgainstStd(t, []byte(s))
	}
}

func FuzzDecodeJSON(f *testing.F) {
	for _, s := range jsonSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) { checkAgainstStd(t, b) })
}

// checkAgainstStd: decodeJSON accepts what encoding/json accepts and yields
// the same value.
func checkAgainstStd(t *testing.T, b []byte) {
	t.Helper()
	got, err := decodeJSON(b, 10000)
	if errors.Is(err, errDeep) {
		return
	}
	var want any
	stdErr := json.Unmarshal(b, &want)
	if (err == nil) != (stdErr == nil) {
		t.Fatalf("%q: got err %v, encoding/json err %v", b, err, stdErr)
	}
	if err == nil && !reflect.DeepEqual(got, want) {
		t.Fatalf("%q: got %#v, encoding/json %#v", b, got, want)
	}
}

func TestDecodeJSONDepth(t *testing.T) {
	deep := []byte("[[[[[1]]]]]")
	if _, err := decodeJSON(deep, 5); err != nil {
		t.Fatalf("depth 5: got %v, want nil", err)
	}
	if _, err := decodeJSON(deep, 4); !errors.Is(err, errDeep) {
		t.Fatalf("depth 4: got %v, want errDeep", err)
	}
}

func BenchmarkDecodeJSON(b *testing.B) {
	body := []byte(`{"a":1,"b":2}`)
	for b.Loop() {
		_, _ = decodeJSON(body, MaxDepth)
	}
}
