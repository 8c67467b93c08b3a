package gateway_test

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/fault"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki/engine"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// allTypes has one param of every type.
var allTypes = &lokiv1.Tool{Name: "all", Returns: "any", Source: "return 1", Params: []*lokiv1.Param{
	{Name: "s", Type: "string"}, {Name: "n", Type: "number"}, {Name: "i", Type: "integer"},
	{Name: "b", Type: "boolean"}, {Name: "o", Type: "object"}, {Name: "arr", Type: "array"},
	{Name: "x", Type: "any"}, {Name: "_u", Type: "string"}, {Name: "u", Type: "integer"},
}}

func requestDesc(t testing.TB) protoreflect.MessageDescriptor {
	t.Helper()
	md, err := gateway.RequestDescriptor(allTypes)
	if err != nil {
		t.Fatal(err)
	}
	return md
}

func TestArgsJSON(t *testing.T) {
	md := requestDesc(t)
	tests := []struct {
		name    string
		req     string // protojson of the request
		want    string
		wantErr bool
	}{
		{name: "empty is no arguments", req: `{}`, want: ``},
		{name: "zero values are present", req: `{"s":"","n":0,"i":0,"b":false}`, want: `{"s":"","n":0,"i":0,"b":false}`},
		{name: "int64 is a number", req: `{"i":"-9223372036854775808"}`, want: `{"i":-9223372036854775808}`},
		{name: "proto names, not camel case", req: `{"_u":"x","u":1}`, want: `{"_u":"x","u":1}`},
		{name: "nested", req: `{"o":{"b":[1,"x",null,{"c":true}],"a":{}},"arr":[],"x":{"k":1.5}}`,
			want: `{"o":{"a":{},"b":[1,"x",null,{"c":true}]},"arr":[],"x":{"k":1.5}}`},
		{name: "escapes", req: `{"s":"a\"b\\c\u0001\n\u2028é"}`, want: `{"s":"a\"b\\c\u0001\n\u2028é"}`},
		{name: "null any", req: `{"x":null}`, want: `{"x":null}`},
		{name: "small and large floats", req: `{"n":1e-7,"x":[1e21,-0.5]}`, want: `{"n":1e-07,"x":[1e+21,-0.5]}`},
		{name: "NaN", req: `{"n":"NaN"}`, wantErr: true},
		{name: "list in a struct", req: `{"o":{"a":[1,"x"]}}`, want: `{"o":{"a":[1,"x"]}}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := dynamicpb.NewMessage(md)
			if err := protojson.Unmarshal([]byte(tc.req), m); err != nil {
				t.Fatal(err)
			}
			got, err := gateway.ArgsJSON(m)
			if tc.wantErr {
				if !errors.Is(err, &fault.Error{Code: fault.InvalidArgument}) {
					t.Fatalf("got %v, want INVALID_ARGUMENT", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestStructJSONRejects(t *testing.T) {
	deep := structpb.NewNullValue()
	for range engine.MaxDepth + 1 {
		deep = structpb.NewListValue(&structpb.ListValue{Values: []*structpb.Value{deep}})
	}
	tests := []struct {
		name    string
		s       *structpb.Struct
		wantMsg string
	}{
		{name: "infinity", s: &structpb.Struct{Fields: map[string]*structpb.Value{"a": structpb.NewListValue(&structpb.ListValue{
			Values: []*structpb.Value{structpb.NewNumberValue(math.Inf(1))}})}}, wantMsg: "arguments.a[0]"},
		{name: "too deep", s: &structpb.Struct{Fields: map[string]*structpb.Value{"d": deep}}, wantMsg: "deeper"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := gateway.StructJSON(tc.s.ProtoReflect())
			if !errors.Is(err, &fault.Error{Code: fault.InvalidArgument}) || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("got %v, want INVALID_ARGUMENT mentioning %q", err, tc.wantMsg)
			}
		})
	}
}

func TestResultValue(t *testing.T) {
	tests := []struct {
		name, typ, json string
		want            any
		wantErr         bool
	}{
		{name: "string", typ: "string", json: `"a\u00e9"`, want: "aé"},
		{name: "number", typ: "number", json: `1.5e3`, want: 1500.0},
		{name: "integer", typ: "integer", json: `9007199254740992`, want: int64(9007199254740992)},
		{name: "integer in exponent form", typ: "integer", json: `1e15`, want: int64(1e15)},
		{name: "fractional integer", typ: "integer", json: `1.5`, wantErr: true},
		{name: "boolean", typ: "boolean", json: `true`, want: true},
		{name: "object", typ: "object", json: `{"a":[1]}`, want: map[string]any{"a": []any{1.0}}},
		{name: "array", typ: "array", json: `[1,"x"]`, want: []any{1.0, "x"}},
		{name: "any null", typ: "any", json: `null`, want: nil},
		{name: "string for number", typ: "number", json: `"1"`, wantErr: true},
		{name: "garbage", typ: "object", json: `{`, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v, err := gateway.ResultValue(tc.typ, []byte(tc.json))
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %v, want an error", v)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := v.Interface()
			switch m := got.(type) {
			case protoreflect.Message:
				switch x := m.Interface().(type) {
				case *structpb.Struct:
					got = x.AsMap()
				case *structpb.ListValue:
					got = x.AsSlice()
				case *structpb.Value:
					got = x.AsInterface()
				}
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %#v, want %#v", got, tc.want)
			}
		})
	}
}

// FuzzArgsJSON decodes arbitrary wire bytes as a request of a tool with
// every param type and checks the JSON arguments against protojson's view
// of the same message: valid JSON, the same keys, the same values, int64
// as exact numbers.
func FuzzArgsJSON(f *testing.F) {
	md := requestDesc(f)
	for _, seed := range []string{
		`{}`, `{"s":"x","n":1.5,"i":"-42","b":true}`, `{"o":{"a":[1,{"b":null}]},"arr":[[]],"x":"s"}`,
		`{"i":"9223372036854775807","u":"1","_u":""}`, `{"x":{"a":{"b":{"c":[true,false]}}}}`,
	} {
		m := dynamicpb.NewMessage(md)
		if err := protojson.Unmarshal([]byte(seed), m); err != nil {
			f.Fatal(err)
		}
		b, err := proto.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, wire []byte) {
		m := dynamicpb.NewMessage(md)
		if err := proto.Unmarshal(wire, m); err != nil {
			return
		}
		got, err := gateway.ArgsJSON(m)
		if err != nil {
			if !errors.Is(err, &fault.Error{Code: fault.InvalidArgument}) {
				t.Fatalf("got %v, want INVALID_ARGUMENT", err)
			}
			return
		}
		oracle, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
		if err != nil {
			return // NaN and friends are refused by ArgsJSON too, checked above
		}
		var want map[string]any
		if err := json.Unmarshal(oracle, &want); err != nil {
			t.Fatal(err)
		}
		if len(got) == 0 {
			if len(want) != 0 {
				t.Fatalf("no arguments for %s", oracle)
			}
			return
		}
		if !json.Valid(got) {
			t.Fatalf("invalid JSON %q", got)
		}
		dec := json.NewDecoder(strings.NewReader(string(got)))
		dec.UseNumber()
		var have map[string]any
		if err := dec.Decode(&have); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"i", "u"} { // int64: protojson writes strings, we write numbers
			if w, ok := want[k]; ok {
				if have[k].(json.Number).String() != w.(string) {
					t.Fatalf("%s: got %v, want %v", k, have[k], w)
				}
				delete(want, k)
				delete(have, k)
			}
		}
		var plain map[string]any
		if err := json.Unmarshal(got, &plain); err != nil {
			t.Fatal(err)
		}
		for k := range plain {
			if _, ok := have[k]; !ok {
				delete(plain, k)
			}
		}
		if !reflect.DeepEqual(plain, want) {
			t.Fatalf("got %s, want (protojson) %s", got, oracle)
		}
	})
}

// FuzzStructJSON round-trips JSON objects through google.protobuf.Struct.
func FuzzStructJSON(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1,"b":[true,null,"x"]}`, `{"n":-0.000001,"big":1e300,"s":"\u0000\ud800"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		var want map[string]any
		if json.Unmarshal([]byte(in), &want) != nil {
			return
		}
		s, err := structpb.NewStruct(want)
		if err != nil {
			return // invalid UTF-8 keys and the like
		}
		got, err := gateway.StructJSON(s.ProtoReflect())
		if err != nil {
			if strings.Contains(err.Error(), "deeper") {
				return
			}
			t.Fatal(err)
		}
		var have map[string]any
		if err := json.Unmarshal(got, &have); err != nil {
			t.Fatalf("invalid JSON %q: %v", got, err)
		}
		if !reflect.DeepEqual(have, s.AsMap()) {
			t.Fatalf("got %s, want %v", got, s.AsMap())
		}
	})
}

// FuzzResultValue feeds arbitrary bytes as results of every type: errors
// are fine, panics are not, and a decoded integer is exact.
func FuzzResultValue(f *testing.F) {
	for _, s := range []string{`1`, `"x"`, `{"a":[1]}`, `[1e400]`, `-9007199254740992`, `true`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		for _, typ := range []string{"string", "number", "integer", "boolean", "object", "array", "any"} {
			v, err := gateway.ResultValue(typ, []byte(in))
			if err != nil || typ != "integer" {
				continue
			}
			if n, perr := strconv.ParseInt(in, 10, 64); perr == nil && v.Int() != n {
				t.Fatalf("integer %s decoded as %d", in, v.Int())
			}
		}
	})
}

// FuzzValueFromJSON checks the scalar fast paths against protojson: both
// accept the same inputs and decode them to the same Value.
func FuzzValueFromJSON(f *testing.F) {
	for _, s := range []string{`1`, `-0.5e-3`, `01`, `1.`, `"x"`, `"\u00e9"`, `"a\"b"`, `true`, `null`, `{"a":1}`, `[1]`, `1e400`, ` 1`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		if in == "" {
			return // empty means null to valueFromJSON, an error to protojson
		}
		got, err := gateway.ValueFromJSON([]byte(in))
		want := &structpb.Value{}
		werr := protojson.Unmarshal([]byte(in), want)
		if (err == nil) != (werr == nil) {
			t.Fatalf("%q: got error %v, protojson %v", in, err, werr)
		}
		if err == nil && !proto.Equal(got, want) {
			t.Fatalf("%q: got %v, want %v", in, got, want)
		}
	})
}
