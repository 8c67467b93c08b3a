package engine_test

import (
	"encoding/json"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/loki/engine"
)

var decodeParams = []engine.Param{
	{Name: "a", Type: engine.Number, Required: true},
	{Name: "n", Type: engine.Integer},
	{Name: "s", Type: engine.String, Default: "dflt"},
	{Name: "b", Type: engine.Boolean},
	{Name: "o", Type: engine.Object},
	{Name: "l", Type: engine.Array},
	{Name: "x", Type: engine.Any},
}

func TestDecodeArgs(t *testing.T) {
	tests := []struct {
		name string
		body string
		want map[string]any
		msg  string // error substring; "" = success
	}{
		{name: "all types", body: `{"a":1.5,"n":2,"s":"v","b":true,"o":{"k":[1]},"l":[1,"x"],"x":null}`,
			want: map[string]any{"a": 1.5, "n": 2.0, "s": "v", "b": true, "o": map[string]any{"k": []any{1.0}}, "l": []any{1.0, "x"}}},
		{name: "default applied", body: `{"a":1}`, want: map[string]any{"a": 1.0, "s": "dflt"}},
		{name: "null takes default", body: `{"a":1,"s":null}`, want: map[string]any{"a": 1.0, "s": "dflt"}},
		{name: "integer as whole float", body: `{"a":1,"n":3.0}`, want: map[string]any{"a": 1.0, "n": 3.0, "s": "dflt"}},
		{name: "whitespace", body: " \n{\"a\":1}\n", want: map[string]any{"a": 1.0, "s": "dflt"}},
		{name: "missing required", body: `{"n":1}`, msg: `missing required param "a" (number)`},
		{name: "empty body", body: ``, msg: `missing required param "a"`},
		{name: "null body", body: `null`, msg: `missing required param "a"`},
		{name: "mistyped number", body: `{"a":"1"}`, msg: `param "a": want number, got string`},
		{name: "mistyped string", body: `{"a":1,"s":1}`, msg: `param "s": want string, got number`},
		{name: "mistyped boolean", body: `{"a":1,"b":"true"}`, msg: `param "b": want boolean, got string`},
		{name: "fractional integer", body: `{"a":1,"n":1.5}`, msg: `param "n": want integer, got 1.5`},
		{name: "integer beyond 2^53", body: `{"a":1,"n":1e17}`, msg: `param "n": want integer, got 1e+17`},
		{name: "array for object", body: `{"a":1,"o":[]}`, msg: `param "o": want object, got array`},
		{name: "object for array", body: `{"a":1,"l":{}}`, msg: `param "l": want array, got object`},
		{name: "unknown param", body: `{"a":1,"zz":1,"c":2}`, msg: `unknown param "c" (the tool takes: a, n, s, b, o, l, x)`},
		{name: "array body", body: `[1]`, msg: "must be a JSON object, got array"},
		{name: "string body", body: `"x"`, msg: "must be a JSON object, got string"},
		{name: "number body", body: `1`, msg: "must be a JSON object, got number"},
		{name: "invalid JSON", body: `{"a":}`, msg: "not valid JSON"},
		{name: "trailing data", body: `{"a":1} {}`, msg: "not valid JSON"},
		{name: "number out of range", body: `{"a":1e999}`, msg: "not valid JSON"},
		{name: "oversized", body: `{"x":"` + strings.Repeat("x", engine.MaxArgsBytes) + `"}`, msg: "the limit is 1048576"},
		{name: "too deep", body: `{"x":` + strings.Repeat("[", 64) + strings.Repeat("]", 64) + `}`, msg: "deeper than 64"},
		{name: "deep but allowed", body: `{"a":1,"x":` + strings.Repeat("[", 63) + strings.Repeat("]", 63) + `}`},
		{name: "brackets in strings do not count", body: `{"a":1,"s":"` + strings.Repeat("[", 100) + `\"["}`},
	}
	// DecodeArgsInto gets one map, cleared between cases, as a caller
	// reusing maps would.
	reused := map[string]any{}
	decoders := []struct {
		name   string
		decode func(body []byte) (map[string]any, error)
	}{
		{"DecodeArgs", func(body []byte) (map[string]any, error) { return engine.DecodeArgs(decodeParams, body) }},
		{"DecodeArgsInto", func(body []byte) (map[string]any, error) {
			clear(reused)
			return engine.DecodeArgsInto(reused, decodeParams, body)
		}},
	}
	for _, dec := range decoders {
		for _, tc := range tests {
			t.Run(dec.name+"/"+tc.name, func(t *testing.T) {
				got, err := dec.decode([]byte(tc.body))
				if tc.msg != "" {
					wantCode(t, err, fault.InvalidArgument, tc.msg)
					return
				}
				if err != nil {
					t.Fatalf("got error %v, want none", err)
				}
				if tc.want != nil && !reflect.DeepEqual(got, tc.want) {
					t.Fatalf("got %v, want %v", got, tc.want)
				}
			})
		}
	}
	t.Run("no params, no args", func(t *testing.T) {
		got, err := engine.DecodeArgs(nil, []byte(`{}`))
		if err != nil || len(got) != 0 {
			t.Fatalf("got %v, %v, want empty, nil", got, err)
		}
	})
}

func TestCheckValue(t *testing.T) {
	tests := []struct {
		name string
		t    engine.Type
		v    any
		msg  string // "" = fits
	}{
		{"string", engine.String, "x", ""},
		{"number", engine.Number, 1.5, ""},
		{"number from int", engine.Number, 3, ""},
		{"number from int64", engine.Number, int64(3), ""},
		{"number from json.Number", engine.Number, json.Number("2.5"), ""},
		{"integer", engine.Integer, 4.0, ""},
		{"integer from int", engine.Integer, 4, ""},
		{"boolean", engine.Boolean, false, ""},
		{"object", engine.Object, map[string]any{"a": []any{1.0}}, ""},
		{"array", engine.Array, []any{"x", nil}, ""},
		{"any nil", engine.Any, nil, ""},
		{"any nested", engine.Any, map[string]any{"a": map[string]any{}}, ""},
		{"string mistyped", engine.String, 1.0, "want string, got number"},
		{"number mistyped", engine.Number, "1", "want number, got string"},
		{"number NaN", engine.Number, math.NaN(), "not a JSON number"},
		{"integer fraction", engine.Integer, 1.25, "want integer, got 1.25"},
		{"integer too big", engine.Integer, math.Pow(2, 60), "want integer"},
		{"boolean mistyped", engine.Boolean, "true", "want boolean, got string"},
		{"object mistyped", engine.Object, []any{}, "want object, got array"},
		{"array mistyped", engine.Array, map[string]any{}, "want array, got object"},
		{"nil for string", engine.String, nil, "want string, got null"},
		{"unsupported Go type", engine.Any, struct{}{}, "unsupported Go type struct {}"},
		{"unsupported nested", engine.Object, map[string]any{"c": make(chan int)}, "unsupported Go type chan int"},
		{"nested NaN", engine.Array, []any{math.Inf(1)}, "not a JSON number"},
		{"unknown type", engine.Type("float"), 1.0, `unknown type "float"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := engine.CheckValue(tc.t, tc.v)
			if tc.msg == "" {
				if err != nil {
					t.Fatalf("got %v, want nil", err)
				}
				return
			}
			wantCode(t, err, fault.InvalidArgument, tc.msg)
		})
	}
	t.Run("too deep", func(t *testing.T) {
		var v any = []any{}
		for range 70 {
			v = []any{v}
		}
		wantCode(t, engine.CheckValue(engine.Array, v), fault.InvalidArgument, "deeper than 64")
	})
}
