package gateway

import (
	"encoding/json"
	"github.com/loki-iot/loki/internal/jsonenc"
	"math"
	"slices"
	"strconv"
	"unicode/utf8"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/loki/engine"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/structpb"
)

// Conversions between protobuf messages and the JSON Loki speaks on NATS.
//
// The encoders walk messages through protoreflect, so they serve both the
// generated google.protobuf.Struct of ExecuteScript and the dynamicpb
// messages of the per-tool RPCs alike. They differ from protojson on
// purpose: object keys are proto field names (which are the param names),
// int64 is a JSON number rather than a string, and NaN or infinities, which
// JSON cannot carry, are INVALID_ARGUMENT instead of the strings "NaN".

// Field numbers of google.protobuf.Value, Struct and ListValue.
const (
	valueNull   protoreflect.FieldNumber = 1
	valueNumber protoreflect.FieldNumber = 2
	valueString protoreflect.FieldNumber = 3
	valueBool   protoreflect.FieldNumber = 4
	valueStruct protoreflect.FieldNumber = 5
	valueList   protoreflect.FieldNumber = 6

	structFields protoreflect.FieldNumber = 1
	listValues   protoreflect.FieldNumber = 1
)

// Full names of the well-known types a param may map to.
const (
	nameValue     protoreflect.FullName = "google.protobuf.Value"
	nameStruct    protoreflect.FullName = "google.protobuf.Struct"
	nameListValue protoreflect.FullName = "google.protobuf.ListValue"
)

// argsJSON encodes the populated fields of a request message as a JSON
// object keyed by proto field name. Unset fields are left out, so Loki
// applies the params' defaults. nil or an empty message encode as nil (no
// arguments).
func argsJSON(m protoreflect.Message) ([]byte, error) {
	if m == nil || !m.IsValid() {
		return nil, nil
	}
	e := encoder{buf: make([]byte, 0, 64)}
	e.buf = append(e.buf, '{')
	first := true
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		if !m.Has(fd) {
			continue
		}
		if !first {
			e.buf = append(e.buf, ',')
		}
		first = false
		e.buf = jsonenc.AppendString(e.buf, string(fd.Name()))
		e.buf = append(e.buf, ':')
		if err := e.field(fd, m.Get(fd), 1); err != nil {
			return nil, err
		}
	}
	if first {
		return nil, nil
	}
	return append(e.buf, '}'), nil
}

// structJSON encodes a google.protobuf.Struct (generated or dynamic) as a
// JSON object; nil encodes as nil (no arguments).
func structJSON(m protoreflect.Message) ([]byte, error) {
	if m == nil || !m.IsValid() {
		return nil, nil
	}
	e := encoder{buf: make([]byte, 0, 64)}
	var err error
	if s, ok := m.Interface().(*structpb.Struct); ok {
		err = e.typedStruct(s, 0)
	} else {
		err = e.structValue(m, 0)
	}
	if err != nil {
		return nil, err
	}
	return e.buf, nil
}

// typedStruct is structValue for the generated type, without reflection:
// ExecuteScript's arguments take this path on every call.
func (e *encoder) typedStruct(s *structpb.Struct, depth int) error {
	if depth >= engine.MaxDepth {
		return e.fail("value nests deeper than %d levels", engine.MaxDepth)
	}
	var buf [16]string
	keys := buf[:0]
	for k := range s.GetFields() {
		keys = append(keys, k)
	}
	slices.Sort(keys) // deterministic output
	e.buf = append(e.buf, '{')
	for i, k := range keys {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		e.buf = jsonenc.AppendString(e.buf, k)
		e.buf = append(e.buf, ':')
		e.push(k, 0)
		if err := e.typedValue(s.GetFields()[k], depth+1); err != nil {
			return err
		}
		e.pop()
	}
	e.buf = append(e.buf, '}')
	return nil
}

func (e *encoder) typedValue(v *structpb.Value, depth int) error {
	switch k := v.GetKind().(type) {
	case nil, *structpb.Value_NullValue:
		e.buf = append(e.buf, "null"...)
	case *structpb.Value_NumberValue:
		return e.number(k.NumberValue)
	case *structpb.Value_StringValue:
		e.buf = jsonenc.AppendString(e.buf, k.StringValue)
	case *structpb.Value_BoolValue:
		e.buf = strconv.AppendBool(e.buf, k.BoolValue)
	case *structpb.Value_StructValue:
		return e.typedStruct(k.StructValue, depth)
	case *structpb.Value_ListValue:
		if depth >= engine.MaxDepth {
			return e.fail("value nests deeper than %d levels", engine.MaxDepth)
		}
		e.buf = append(e.buf, '[')
		for i, x := range k.ListValue.GetValues() {
			if i > 0 {
				e.buf = append(e.buf, ',')
			}
			e.push("", i)
			if err := e.typedValue(x, depth+1); err != nil {
				return err
			}
			e.pop()
		}
		e.buf = append(e.buf, ']')
	}
	return nil
}

type encoder struct {
	buf []byte
	// path leads to the value being encoded, for error messages.
	path []pathElem
}

// pathElem is an object key or, when key is empty, an array index.
type pathElem struct {
	key   string
	index int
}

func (e *encoder) push(key string, index int) { e.path = append(e.path, pathElem{key, index}) }
func (e *encoder) pop()                       { e.path = e.path[:len(e.path)-1] }

func (e *encoder) fail(format string, args ...any) error {
	where := "arguments"
	for _, p := range e.path {
		if p.key != "" {
			where += "." + p.key
		} else {
			where += "[" + strconv.Itoa(p.index) + "]"
		}
	}
	return fault.New(fault.InvalidArgument, "%s: "+format, append([]any{where}, args...)...)
}

// field encodes one field of a request message.
func (e *encoder) field(fd protoreflect.FieldDescriptor, v protoreflect.Value, depth int) error {
	e.push(string(fd.Name()), 0)
	defer e.pop()
	if fd.IsList() || fd.IsMap() {
		return e.fail("repeated and map fields are not supported")
	}
	switch fd.Kind() {
	case protoreflect.StringKind:
		e.buf = jsonenc.AppendString(e.buf, v.String())
	case protoreflect.BoolKind:
		e.buf = strconv.AppendBool(e.buf, v.Bool())
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
		protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		e.buf = strconv.AppendInt(e.buf, v.Int(), 10)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind, protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		e.buf = strconv.AppendUint(e.buf, v.Uint(), 10)
	case protoreflect.DoubleKind, protoreflect.FloatKind:
		return e.number(v.Float())
	case protoreflect.MessageKind:
		return e.message(v.Message(), depth)
	default:
		return e.fail("field kind %s is not supported", fd.Kind())
	}
	return nil
}

// message encodes a Value, Struct or ListValue.
func (e *encoder) message(m protoreflect.Message, depth int) error {
	switch m.Descriptor().FullName() {
	case nameValue:
		return e.value(m, depth)
	case nameStruct:
		return e.structValue(m, depth)
	case nameListValue:
		return e.list(m, depth)
	}
	return e.fail("message type %s is not supported", m.Descriptor().FullName())
}

func (e *encoder) number(f float64) error {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return e.fail("%v is not a JSON number", f)
	}
	e.buf = strconv.AppendFloat(e.buf, f, 'g', -1, 64)
	return nil
}

// value encodes a google.protobuf.Value; one with no kind set is null.
func (e *encoder) value(m protoreflect.Message, depth int) error {
	fd := m.WhichOneof(m.Descriptor().Oneofs().Get(0))
	if fd == nil {
		e.buf = append(e.buf, "null"...)
		return nil
	}
	v := m.Get(fd)
	switch fd.Number() {
	case valueNull:
		e.buf = append(e.buf, "null"...)
	case valueNumber:
		return e.number(v.Float())
	case valueString:
		e.buf = jsonenc.AppendString(e.buf, v.String())
	case valueBool:
		e.buf = strconv.AppendBool(e.buf, v.Bool())
	case valueStruct:
		return e.structValue(v.Message(), depth)
	case valueList:
		return e.list(v.Message(), depth)
	default:
		return e.fail("unknown google.protobuf.Value kind %d", fd.Number())
	}
	return nil
}

func (e *encoder) structValue(m protoreflect.Message, depth int) error {
	if depth >= engine.MaxDepth {
		return e.fail("value nests deeper than %d levels", engine.MaxDepth)
	}
	fields := m.Get(m.Descriptor().Fields().ByNumber(structFields)).Map()
	var buf [16]string
	keys := buf[:0]
	fields.Range(func(k protoreflect.MapKey, _ protoreflect.Value) bool {
		keys = append(keys, k.String())
		return true
	})
	slices.Sort(keys) // deterministic output
	e.buf = append(e.buf, '{')
	for i, k := range keys {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		e.buf = jsonenc.AppendString(e.buf, k)
		e.buf = append(e.buf, ':')
		e.push(k, 0)
		if err := e.value(fields.Get(protoreflect.ValueOfString(k).MapKey()).Message(), depth+1); err != nil {
			return err
		}
		e.pop()
	}
	e.buf = append(e.buf, '}')
	return nil
}

func (e *encoder) list(m protoreflect.Message, depth int) error {
	if depth >= engine.MaxDepth {
		return e.fail("value nests deeper than %d levels", engine.MaxDepth)
	}
	l := m.Get(m.Descriptor().Fields().ByNumber(listValues)).List()
	e.buf = append(e.buf, '[')
	for i := range l.Len() {
		if i > 0 {
			e.buf = append(e.buf, ',')
		}
		e.push("", i)
		if err := e.value(l.Get(i).Message(), depth+1); err != nil {
			return err
		}
		e.pop()
	}
	e.buf = append(e.buf, ']')
	return nil
}

// valueFromJSON decodes a JSON result or chunk from Loki. Empty input is
// null. Scalars, the common results, skip protojson.
func valueFromJSON(data []byte) (*structpb.Value, error) {
	switch {
	case len(data) == 0 || string(data) == "null":
		return structpb.NewNullValue(), nil
	case string(data) == "true":
		return structpb.NewBoolValue(true), nil
	case string(data) == "false":
		return structpb.NewBoolValue(false), nil
	case isJSONNumber(data):
		if f, err := strconv.ParseFloat(string(data), 64); err == nil {
			return structpb.NewNumberValue(f), nil
		}
	case isPlainJSONString(data):
		return structpb.NewStringValue(string(data[1 : len(data)-1])), nil
	}
	v := &structpb.Value{}
	if err := protojson.Unmarshal(data, v); err != nil {
		return nil, err
	}
	return v, nil
}

// isJSONNumber reports whether b is a JSON number (RFC 8259 grammar).
func isJSONNumber(b []byte) bool {
	i := 0
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == start {
			return false
		}
	}
	return i == len(b)
}

// isPlainJSONString reports whether b is a quoted JSON string without
// escapes or control characters, in valid UTF-8: its content is b[1:len-1].
func isPlainJSONString(b []byte) bool {
	if len(b) < 2 || b[0] != '"' || b[len(b)-1] != '"' {
		return false
	}
	for _, c := range b[1 : len(b)-1] {
		if c == '"' || c == '\\' || c < 0x20 {
			return false
		}
	}
	return utf8.Valid(b)
}

// resultValue decodes a tool's JSON result into the protoreflect value of a
// result field of kind t (string, double, int64, bool, Struct, ListValue or
// Value), as declared by the tool's returns.
func resultValue(t engine.Type, data []byte) (protoreflect.Value, error) {
	var msg proto.Message
	switch t {
	case engine.String:
		var s string
		if err := json.Unmarshal(data, &s); err != nil {
			return protoreflect.Value{}, err
		}
		return protoreflect.ValueOfString(s), nil
	case engine.Number:
		f, err := strconv.ParseFloat(string(data), 64)
		if err != nil {
			return protoreflect.Value{}, err
		}
		return protoreflect.ValueOfFloat64(f), nil
	case engine.Integer:
		if n, err := strconv.ParseInt(string(data), 10, 64); err == nil {
			return protoreflect.ValueOfInt64(n), nil
		}
		// Loki writes whole numbers from 1e15 up in plain decimal, but accept
		// any JSON spelling of a whole number within int64.
		f, err := strconv.ParseFloat(string(data), 64)
		if err != nil || f != math.Trunc(f) || math.Abs(f) >= 1<<63 {
			return protoreflect.Value{}, &strconv.NumError{Func: "ParseInt", Num: string(data), Err: strconv.ErrSyntax}
		}
		return protoreflect.ValueOfInt64(int64(f)), nil
	case engine.Boolean:
		var b bool
		if err := json.Unmarshal(data, &b); err != nil {
			return protoreflect.Value{}, err
		}
		return protoreflect.ValueOfBool(b), nil
	case engine.Object:
		msg = &structpb.Struct{}
	case engine.Array:
		msg = &structpb.ListValue{}
	default:
		msg = &structpb.Value{}
	}
	if err := protojson.Unmarshal(data, msg); err != nil {
		return protoreflect.Value{}, err
	}
	return protoreflect.ValueOfMessage(msg.ProtoReflect()), nil
}
