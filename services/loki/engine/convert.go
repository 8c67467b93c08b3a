package engine

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/loki-iot/loki/internal/jsonenc"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/loki-iot/loki/internal/fault"
	lua "github.com/yuin/gopher-lua"
)

const (
	// MaxArgsBytes is the largest argument body DecodeArgs accepts.
	MaxArgsBytes = 1 << 20
	// MaxDepth is how deeply arguments, results and emitted values may nest.
	MaxDepth = 64
	// maxSafeInteger bounds integers: from 2^53 on a float64 (a Lua number)
	// no longer tells neighbouring integers apart (2^53+1 parses as 2^53).
	maxSafeInteger = 1 << 53
)

// DecodeArgs decodes a JSON object of arguments against params. Unknown
// keys, missing required params and mistyped values are INVALID_ARGUMENT
// naming the param ("param \"a\": want number, got string"). An omitted (or
// null) param gets its Default, which is shared and must not be modified,
// or stays absent (nil in Lua). An empty body or "null" means no arguments.
// Bodies over MaxArgsBytes, nested deeper than MaxDepth, or not a JSON object
// are INVALID_ARGUMENT.
func DecodeArgs(params []Param, body []byte) (map[string]any, error) {
	return DecodeArgsInto(nil, params, body)
}

// DecodeArgsInto is DecodeArgs with the arguments decoded into dst, which
// must be empty, when dst is not nil: a caller that is done with one call's
// arguments may clear the map and use it for the next call's. On error, dst
// may hold part of the body.
func DecodeArgsInto(dst map[string]any, params []Param, body []byte) (map[string]any, error) {
	if len(body) > MaxArgsBytes {
		return nil, fault.New(fault.InvalidArgument, "arguments are %d bytes; the limit is %d", len(body), MaxArgsBytes)
	}
	body = bytes.TrimSpace(body)
	var raw map[string]any
	if len(body) > 0 && string(body) != "null" {
		v, err := decodeJSONInto(body, MaxDepth, dst)
		switch {
		case errors.Is(err, errDeep):
			return nil, fault.New(fault.InvalidArgument, "arguments nest deeper than %d levels", MaxDepth)
		case err != nil:
			return nil, fault.New(fault.InvalidArgument, "arguments are not valid JSON: %v", err)
		}
		m, ok := v.(map[string]any)
		if !ok {
			return nil, fault.New(fault.InvalidArgument, "arguments must be a JSON object, got %s", jsonTypeName(v))
		}
		raw = m
	}
	var unknown []string
	for k := range raw {
		if !slices.ContainsFunc(params, func(p Param) bool { return p.Name == k }) {
			unknown = append(unknown, k)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		names := make([]string, len(params))
		for i, p := range params {
			names[i] = p.Name
		}
		return nil, fault.New(fault.InvalidArgument, "unknown param %q (the tool takes: %s)",
			unknown[0], strings.Join(names, ", "))
	}
	// raw was decoded for this call alone, so it becomes the result.
	if raw == nil {
		raw = dst
	}
	if raw == nil {
		raw = make(map[string]any, len(params))
	}
	for _, p := range params {
		v, ok := raw[p.Name]
		if !ok || v == nil {
			switch {
			case p.Default != nil:
				raw[p.Name] = p.Default
			case p.Required:
				return nil, fault.New(fault.InvalidArgument, "missing required param %q (%s)", p.Name, p.Type)
			default:
				delete(raw, p.Name)
			}
			continue
		}
		if msg := checkValue(p.Type, v, 0); msg != "" {
			return nil, fault.New(fault.InvalidArgument, "param %q: %s", p.Name, msg)
		}
	}
	return raw, nil
}

// CheckValue reports whether a JSON-shaped value v (nil, bool, float64,
// string, []any, map[string]any; Go integer types and json.Number are
// accepted as numbers) fits type t. It is used for param defaults at config
// load. Integers must be whole numbers within ±2^53. The error is
// INVALID_ARGUMENT, e.g. "want number, got string".
func CheckValue(t Type, v any) error {
	if msg := checkValue(t, v, 0); msg != "" {
		return fault.New(fault.InvalidArgument, "%s", msg)
	}
	return nil
}

// checkValue returns "" if v fits t, else what is wrong.
func wantType(t Type, v any) string { return fmt.Sprintf("want %s, got %s", t, jsonTypeName(v)) }

func checkValue(t Type, v any, depth int) string {
	switch t {
	case Any:
		return checkJSON(v, depth)
	case String:
		if _, ok := v.(string); !ok {
			return wantType(t, v)
		}
	case Boolean:
		if _, ok := v.(bool); !ok {
			return wantType(t, v)
		}
	case Number, Integer:
		f, ok := toNumber(v)
		if !ok {
			return wantType(t, v)
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Sprintf("want %s, got %v (not a JSON number)", t, f)
		}
		if t == Integer && (f != math.Trunc(f) || math.Abs(f) >= maxSafeInteger) {
			return fmt.Sprintf("want integer, got %s", strconv.FormatFloat(f, 'g', -1, 64))
		}
	case Object:
		if _, ok := v.(map[string]any); !ok {
			return wantType(t, v)
		}
		return checkJSON(v, depth)
	case Array:
		if _, ok := v.([]any); !ok {
			return wantType(t, v)
		}
		return checkJSON(v, depth)
	default:
		return fmt.Sprintf("unknown type %q", t)
	}
	return ""
}

// checkJSON returns "" if v is JSON-shaped and nests at most MaxDepth deep.
func checkJSON(v any, depth int) string {
	switch x := v.(type) {
	case nil, bool, string:
	case []any:
		if depth >= MaxDepth {
			return fmt.Sprintf("value nests deeper than %d levels", MaxDepth)
		}
		for _, e := range x {
			if msg := checkJSON(e, depth+1); msg != "" {
				return msg
			}
		}
	case map[string]any:
		if depth >= MaxDepth {
			return fmt.Sprintf("value nests deeper than %d levels", MaxDepth)
		}
		for _, e := range x {
			if msg := checkJSON(e, depth+1); msg != "" {
				return msg
			}
		}
	default:
		f, ok := toNumber(v)
		if !ok {
			return fmt.Sprintf("unsupported Go type %T", v)
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return fmt.Sprintf("%v is not a JSON number", f)
		}
	}
	return ""
}

// toNumber converts the Go number types a JSON-shaped value may hold.
func toNumber(v any) (float64, bool) {
	switch x := v.(type) {
	case float64:
		return x, true
	case float32:
		return float64(x), true
	case int:
		return float64(x), true
	case int8:
		return float64(x), true
	case int16:
		return float64(x), true
	case int32:
		return float64(x), true
	case int64:
		return float64(x), true
	case uint:
		return float64(x), true
	case uint8:
		return float64(x), true
	case uint16:
		return float64(x), true
	case uint32:
		return float64(x), true
	case uint64:
		return float64(x), true
	case json.Number:
		f, err := x.Float64()
		return f, err == nil
	}
	return 0, false
}

func jsonTypeName(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case bool:
		return "boolean"
	case string:
		return "string"
	case []any:
		return "array"
	case map[string]any:
		return "object"
	}
	if _, ok := toNumber(v); ok {
		return "number"
	}
	return fmt.Sprintf("%T", v)
}

// toLua converts a JSON-shaped value: objects become tables with string
// keys, arrays tables indexed 1..n, null nil.
func toLua(L *lua.LState, v any, depth int) (lua.LValue, error) {
	c := luaConverter{L: L}
	return c.value(v, depth)
}

// luaConverter converts JSON-shaped values to Lua. When stop is set it is
// asked every stopEvery values whether the execution has ended: a 1 MiB
// argument body can hold 350k values, which take tens of milliseconds.
type luaConverter struct {
	L     *lua.LState
	stop  stopper
	count int
}

func (c *luaConverter) value(v any, depth int) (lua.LValue, error) {
	if c.count++; c.stop != nil && c.count%stopEvery == 0 {
		if err := c.stop.stopped(); err != nil {
			return nil, err
		}
	}
	L := c.L
	switch x := v.(type) {
	case nil:
		return lua.LNil, nil
	case bool:
		if x {
			return lua.LTrue, nil
		}
		return lua.LFalse, nil
	case string:
		return lua.LString(x), nil
	case float64:
		return lua.LNumber(x), nil
	case []any:
		if depth >= MaxDepth {
			return nil, fmt.Errorf("value nests deeper than %d levels", MaxDepth)
		}
		t := L.CreateTable(len(x), 0)
		for i, e := range x {
			lv, err := c.value(e, depth+1)
			if err != nil {
				return nil, err
			}
			t.RawSetInt(i+1, lv)
		}
		return t, nil
	case map[string]any:
		if depth >= MaxDepth {
			return nil, fmt.Errorf("value nests deeper than %d levels", MaxDepth)
		}
		t := L.CreateTable(0, len(x))
		for k, e := range x {
			if e == nil {
				continue
			}
			lv, err := c.value(e, depth+1)
			if err != nil {
				return nil, err
			}
			t.RawSetString(k, lv)
		}
		return t, nil
	}
	if f, ok := toNumber(v); ok {
		return lua.LNumber(f), nil
	}
	return nil, fmt.Errorf("unsupported Go type %T", v)
}

// encodeResult checks a script's result against the declared type and
// encodes it as JSON.
func (s *state) encodeResult(v lua.LValue) ([]byte, error) {
	if got, ok := fits(v, s.returns); !ok {
		return nil, fault.New(fault.ScriptError, "tool %q returned %s, declared %s", s.tool, got, s.returns)
	}
	enc := encoder{max: s.lim.MaxResultBytes, stop: s}
	b, err := enc.encode(v, s.returns, "result")
	if err != nil {
		if s.ctx.Err() != nil {
			return nil, err // deadlineFault names the tool already
		}
		return nil, fault.New(fault.CodeOf(err), "tool %q: %s", s.tool, fault.MessageOf(err))
	}
	return b, nil
}

// fits reports whether a Lua value fits the declared type t, and names the
// value's type for the message when it does not. Tables are classified by
// their first key; the encoder reports mixed or sparse tables.
func fits(v lua.LValue, t Type) (string, bool) {
	var got Type
	switch x := v.(type) {
	case *lua.LNilType:
		return "nil", t == Any
	case lua.LString:
		got = String
	case lua.LBool:
		got = Boolean
	case lua.LNumber:
		f := float64(x)
		if t == Integer && (f != math.Trunc(f) || math.Abs(f) >= maxSafeInteger) {
			return "number " + x.String(), false
		}
		got = Number
		if t == Integer {
			got = Integer
		}
	case *lua.LTable:
		k, _ := x.Next(lua.LNil)
		switch k.(type) {
		case *lua.LNilType: // empty: an array or an object
			if t == Array || t == Object {
				return "", true
			}
			got = Object
		case lua.LNumber:
			got = Array
		case lua.LString:
			got = Object
		default:
			return "table", t == Any
		}
	default:
		return v.Type().String(), t == Any
	}
	return string(got), t == Any || t == got
}

// encoder converts Lua values to JSON: tables with keys 1..n become arrays,
// tables with string keys objects, an empty table {} (or [] where an array
// is expected). NaN and infinities, functions, userdata, mixed or sparse
// tables, cycles and nesting beyond MaxDepth are SCRIPT_ERROR; output beyond
// max bytes is RESOURCE_EXHAUSTED.
type encoder struct {
	buf  []byte
	max  int
	keys []string      // scratch: object keys, used as a stack
	path []lua.LValue  // keys from the root to the current value
	seen []*lua.LTable // tables on the current path
	root string
	// stop, when set, is asked every stopEvery values whether the
	// execution has ended; a non-nil answer aborts the encoding with it.
	stop  stopper
	count int
}

// stopper tells whether an execution has ended (*state does). An
// interface rather than a func value: a method value of the state would be
// allocated on every execution.
type stopper interface{ stopped() *fault.Error }

// stopEvery is how many values the encoder converts between two calls of
// encoder.stop: a 1 MiB result holds up to ~500k values.
const stopEvery = 1024

type encodeError struct{ err *fault.Error }

// encode returns the JSON of v; root names v in error messages.
func (e *encoder) encode(v lua.LValue, t Type, root string) (b []byte, err error) {
	e.root = root
	e.buf = make([]byte, 0, 64)
	defer func() {
		if r := recover(); r != nil {
			ee, ok := r.(encodeError)
			if !ok {
				panic(r)
			}
			b, err = nil, ee.err
		}
	}()
	e.value(v, t == Array)
	return e.buf, nil
}

func (e *encoder) fail(format string, args ...any) {
	panic(encodeError{fault.New(fault.ScriptError, "%s: %s", e.where(), fmt.Sprintf(format, args...))})
}

func (e *encoder) grow() {
	if len(e.buf) > e.max {
		e.tooBig()
	}
}

func (e *encoder) tooBig() {
	panic(encodeError{fault.New(fault.ResourceExhausted, "%s exceeds the %d-byte limit", e.root, e.max)})
}

// where renders the path to the current value: result.items[2].name.
func (e *encoder) where() string {
	var b strings.Builder
	b.WriteString(e.root)
	for _, k := range e.path {
		switch k := k.(type) {
		case lua.LNumber:
			fmt.Fprintf(&b, "[%s]", k)
		case lua.LString:
			if paramName.MatchString(string(k)) {
				b.WriteString("." + string(k))
			} else {
				fmt.Fprintf(&b, "[%q]", string(k))
			}
		}
	}
	return b.String()
}

func (e *encoder) value(v lua.LValue, emptyArray bool) {
	if e.count++; e.stop != nil && e.count%stopEvery == 0 {
		if err := e.stop.stopped(); err != nil {
			panic(encodeError{err})
		}
	}
	switch x := v.(type) {
	case *lua.LNilType:
		e.buf = append(e.buf, "null"...)
	case lua.LBool:
		e.buf = strconv.AppendBool(e.buf, bool(x))
	case lua.LNumber:
		f := float64(x)
		switch {
		case math.IsNaN(f):
			e.fail("cannot convert NaN to JSON")
		case math.IsInf(f, 0):
			e.fail("cannot convert %v to JSON", f)
		}
		e.buf = appendNumber(e.buf, f)
	case lua.LString:
		e.buf = jsonenc.AppendString(e.buf, string(x))
	case *lua.LTable:
		e.table(x, emptyArray)
	default:
		e.fail("cannot convert a %s to JSON", v.Type().String())
	}
	e.grow()
}

func (e *encoder) table(t *lua.LTable, emptyArray bool) {
	if len(e.seen) >= MaxDepth {
		e.fail("nested deeper than %d levels", MaxDepth)
	}
	if slices.Contains(e.seen, t) {
		e.fail("table contains itself (a cycle)")
	}
	e.seen = append(e.seen, t)
	defer func() { e.seen = e.seen[:len(e.seen)-1] }()

	keys0 := len(e.keys)
	n, maxIndex := 0, 0
	var bad lua.LValue
	t.ForEach(func(k, _ lua.LValue) {
		switch k := k.(type) {
		case lua.LString:
			e.keys = append(e.keys, string(k))
		case lua.LNumber:
			f := float64(k)
			if f < 1 || f != math.Trunc(f) || f > math.MaxInt32 {
				if bad == nil {
					bad = k
				}
				return
			}
			n++
			maxIndex = max(maxIndex, int(f))
		default:
			if bad == nil {
				bad = k
			}
		}
	})
	keys := e.keys[keys0:]
	defer func() { e.keys = e.keys[:keys0] }()
	// Every element takes at least 2 bytes ("0,"), every entry 5 (`"":0,`):
	// refuse before sorting keys of a table that cannot fit.
	if room := e.max - len(e.buf); 2*n > room || 5*len(keys) > room {
		e.tooBig()
	}
	switch {
	case bad != nil:
		if _, ok := bad.(lua.LNumber); ok {
			e.fail("table key %s is neither a string nor an array index 1..n", bad)
		}
		e.fail("table key of type %s cannot be converted to JSON", bad.Type().String())
	case n > 0 && len(keys) > 0:
		e.fail("table mixes array indices and string keys")
	case n > 0 && maxIndex != n:
		e.fail("array has holes: %d values under indices up to %d", n, maxIndex)
	case n > 0:
		e.buf = append(e.buf, '[')
		for i := 1; i <= n; i++ {
			if i > 1 {
				e.buf = append(e.buf, ',')
			}
			e.path = append(e.path, lua.LNumber(i))
			e.value(t.RawGetInt(i), false)
			e.path = e.path[:len(e.path)-1]
		}
		e.buf = append(e.buf, ']')
	case len(keys) > 0:
		slices.Sort(keys)
		e.buf = append(e.buf, '{')
		for i, k := range keys {
			if i > 0 {
				e.buf = append(e.buf, ',')
			}
			e.buf = jsonenc.AppendString(e.buf, k)
			e.buf = append(e.buf, ':')
			e.path = append(e.path, lua.LString(k))
			e.value(t.RawGetString(k), false)
			e.path = e.path[:len(e.path)-1]
		}
		e.buf = append(e.buf, '}')
	case emptyArray:
		e.buf = append(e.buf, "[]"...)
	default:
		e.buf = append(e.buf, "{}"...)
	}
}

// appendNumber formats f as encoding/json does, integers without exponent.
func appendNumber(b []byte, f float64) []byte {
	if f == math.Trunc(f) && math.Abs(f) < 1e15 {
		return strconv.AppendInt(b, int64(f), 10)
	}
	abs := math.Abs(f)
	format := byte('f')
	if abs < 1e-6 || abs >= 1e21 {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' { // clean up e-09 to e-9
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}
