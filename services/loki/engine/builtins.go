package engine

import (
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sort"
	"strings"

	"github.com/loki-iot/loki/internal/fault"
	lua "github.com/yuin/gopher-lua"
)

// Built-ins that run in Go.
//
// gopher-lua checks the execution's context between VM instructions only, so
// a single built-in call that does unbounded work cannot be interrupted.
// These are replaced or capped:
//
//   - string.rep: refused (RESOURCE_EXHAUSTED) before allocating when the
//     result would exceed Limits.MaxStringBytes; n <= 0 gives "".
//   - string.gsub/find/match/gmatch: see pattern.go (linear gsub, output
//     capped, context checked while matching, match depth bounded).
//   - string.format: Lua 5.1's rules — at most 2-digit width and precision
//     ("invalid format (width or precision too long)"), at most 5 flags —
//     and the output is capped at MaxStringBytes.
//   - string.upper/lower: byte-wise ASCII (C locale, as in Lua); gopher-lua's
//     use Unicode case mapping, which changes byte lengths and turns each
//     invalid UTF-8 byte into three.
//   - table.concat: output capped at MaxStringBytes, context checked.
//   - table.sort: refused over Limits.MaxTableSort elements; the context is
//     checked every 1024 comparisons.
//   - the `..` operator: compiled into a call of a capped concatenation
//     (concat.go) that refuses results over MaxStringBytes before building
//     them.
//   - math.random: Lua 5.1 argument rules ("interval is empty") instead of a
//     Go panic; math.randomseed is a no-op (it would reseed the process-wide
//     generator).
//   - os.date: format strings longer than 256 bytes are refused.
//   - setmetatable: first argument must be a table (Lua 5.1); gopher-lua's
//     would set the shared metatable of all numbers, functions, ... of the
//     state, leaking into later executions.
//
// What remains unbounded (no per-execution memory limit exists in
// gopher-lua; see FIELD-NOTES):
//
//   - Table constructors allocate before the next instruction check, but
//     only as many slots as the source spells out or the value stack holds.
//   - Assigning t[n] for an integer n below lua.MaxArrayIndex grows the
//     array part to n in one step; table.insert(t, n, v) likewise. The
//     engine lowers gopher-lua's 2^26 (1 GiB of nils in one instruction) to
//     maxArrayIndex (2^20: at most 16 MiB); larger keys go to the hash part,
//     one entry each, which Lua's semantics cannot tell apart.
//   - string.byte, unpack and string.char are bounded only by the value
//     stack (RegistryMaxSize, 65536 values), and string.len/sub/reverse,
//     tostring and comparisons are linear in their inputs, which are bounded
//     by what the script could allocate.
//   - Module functions run Go code and must honour Call.Ctx themselves.

const maxDateFormat = 256

// maxArrayIndex bounds the array part of every Lua table. gopher-lua's
// bound is a package variable, so this is set once for the process; the
// engine is the only user of gopher-lua in it.
const maxArrayIndex = 1 << 20

func init() { lua.MaxArrayIndex = maxArrayIndex }

// raise raises a Lua error "<where>: CODE: message" that Run maps back to
// code; scripts can catch it with pcall.
func raise(L *lua.LState, code fault.Code, format string, args ...any) {
	L.RaiseError("%s: %s", code, fmt.Sprintf(format, args...))
}

// checkIntBound is the clamp of checkInt: 2^53, past which a float64 (a Lua
// number) no longer holds every integer, or the int range where int has 32
// bits (ARMv6, 386).
const checkIntBound = min(1<<53, math.MaxInt)

// checkInt returns argument n as an int (truncated, clamped to
// ±checkIntBound), or def when the argument is absent or nil.
func checkInt(L *lua.LState, n, def int) int {
	if L.Get(n) == lua.LNil {
		return def
	}
	f := float64(L.CheckNumber(n))
	switch {
	case f != f:
		return 0
	case f > checkIntBound:
		return checkIntBound
	case f < -checkIntBound:
		return -checkIntBound
	}
	return int(f)
}

// capBuilder builds a string of at most max bytes; writing past it raises
// RESOURCE_EXHAUSTED naming what.
type capBuilder struct {
	strings.Builder
	max  int
	what string
}

func (b *capBuilder) room(L *lua.LState, n int) {
	if b.Len()+n > b.max {
		raise(L, fault.ResourceExhausted, "%s: result exceeds the %d-byte string limit", b.what, b.max)
	}
}

func (b *capBuilder) writeString(L *lua.LState, s string) {
	b.room(L, len(s))
	b.WriteString(s)
}

func (b *capBuilder) writeByte(L *lua.LState, c byte) {
	b.room(L, 1)
	b.WriteByte(c)
}

func (s *state) strRep(L *lua.LState) int {
	str := L.CheckString(1)
	L.CheckNumber(2)
	n := checkInt(L, 2, 0)
	sep := L.OptString(3, "")
	if n <= 0 || len(str)+len(sep) == 0 {
		L.Push(lua.LString(""))
		return 1
	}
	total := float64(len(str))*float64(n) + float64(len(sep))*float64(n-1)
	if total > float64(s.lim.MaxStringBytes) {
		raise(L, fault.ResourceExhausted, "string.rep: result of %.0f bytes exceeds the %d-byte string limit", total, s.lim.MaxStringBytes)
	}
	if sep == "" {
		L.Push(lua.LString(strings.Repeat(str, n)))
		return 1
	}
	var b strings.Builder
	b.Grow(int(total))
	for i := 0; i < n; i++ {
		if i > 0 {
			b.WriteString(sep)
		}
		b.WriteString(str)
	}
	L.Push(lua.LString(b.String()))
	return 1
}

func mapASCII(str string, from, to byte) string {
	i := 0
	for i < len(str) && (str[i] < from || str[i] > to) {
		i++
	}
	if i == len(str) {
		return str
	}
	b := []byte(str)
	for ; i < len(b); i++ {
		if from <= b[i] && b[i] <= to {
			b[i] ^= 0x20
		}
	}
	return string(b)
}

func strUpper(L *lua.LState) int {
	L.Push(lua.LString(mapASCII(L.CheckString(1), 'a', 'z')))
	return 1
}

func strLower(L *lua.LState) int {
	L.Push(lua.LString(mapASCII(L.CheckString(1), 'A', 'Z')))
	return 1
}

// strFormat is Lua 5.1's string.format. Conversions: c d i o u x X e E f g
// G q s; %s applies tostring (as Lua 5.2+ does) so nil and booleans format.
func (s *state) strFormat(L *lua.LState) int {
	fs := L.CheckString(1)
	top := L.GetTop()
	arg := 1
	out := capBuilder{max: s.lim.MaxStringBytes, what: "string.format"}
	var spec []byte
	for i := 0; i < len(fs); {
		if fs[i] != '%' {
			j := strings.IndexByte(fs[i:], '%')
			if j < 0 {
				j = len(fs) - i
			}
			out.writeString(L, fs[i:i+j])
			i += j
			continue
		}
		i++
		if i < len(fs) && fs[i] == '%' {
			out.writeByte(L, '%')
			i++
			continue
		}
		// scanformat
		start := i
		for i < len(fs) && strings.IndexByte("-+ #0", fs[i]) >= 0 {
			i++
		}
		if i-start > 5 {
			L.RaiseError("invalid format (repeated flags)")
		}
		flags := fs[start:i]
		width, prec := -1, -1
		digits := func() int {
			v := -1
			for k := 0; k < 2 && i < len(fs) && isDigit(fs[i]); k++ {
				v = max(v, 0)*10 + int(fs[i]-'0')
				i++
			}
			return v
		}
		width = digits()
		if i < len(fs) && fs[i] == '.' {
			i++
			prec = max(digits(), 0)
		}
		if i < len(fs) && isDigit(fs[i]) {
			L.RaiseError("invalid format (width or precision too long)")
		}
		if i >= len(fs) {
			L.RaiseError("%s", "invalid option '%' to 'format'")
		}
		conv := fs[i]
		i++
		arg++
		if arg > top {
			L.ArgError(arg, "no value")
		}
		spec = append(spec[:0], '%')
		spec = append(spec, fs[start:i-1]...)
		minus := strings.IndexByte(flags, '-') >= 0
		switch conv {
		case 'c':
			b := byte(int64(L.CheckNumber(arg)))
			out.writeString(L, pad(string([]byte{b}), width, minus))
		case 'd', 'i':
			spec = append(spec, 'd')
			out.writeString(L, fmt.Sprintf(string(spec), checkFormatInt(L, arg)))
		case 'o', 'u', 'x', 'X':
			v := conv
			if v == 'u' {
				v = 'd'
			}
			spec = append(spec, v)
			out.writeString(L, fmt.Sprintf(string(spec), uint64(checkFormatInt(L, arg))))
		case 'e', 'E', 'f', 'g', 'G':
			f := float64(L.CheckNumber(arg))
			if math.IsInf(f, 0) || math.IsNaN(f) {
				out.writeString(L, pad(formatNonFinite(f, flags, conv), width, minus))
				break
			}
			if (conv == 'g' || conv == 'G') && prec < 0 {
				spec = append(spec, ".6"...) // C's default; Go's %g is shortest
			}
			spec = append(spec, conv)
			out.writeString(L, fmt.Sprintf(string(spec), f))
		case 'q':
			str := L.CheckString(arg)
			out.room(L, len(str)+2)
			out.WriteByte('"')
			for k := 0; k < len(str); k++ {
				switch c := str[k]; c {
				case '"', '\\', '\n':
					out.writeByte(L, '\\')
					out.writeByte(L, c)
				case '\r':
					out.writeString(L, `\r`)
				case 0:
					out.writeString(L, `\000`)
				default:
					out.writeByte(L, c)
				}
			}
			out.writeByte(L, '"')
		case 's':
			str := L.ToStringMeta(L.Get(arg)).String()
			if prec < 0 && len(str) >= 100 { // Lua 5.1 keeps long strings whole
				out.writeString(L, str)
				break
			}
			if prec >= 0 && len(str) > prec {
				str = str[:prec]
			}
			out.writeString(L, pad(str, width, minus))
		default:
			L.RaiseError("invalid option '%%%c' to 'format'", conv)
		}
	}
	L.Push(lua.LString(out.String()))
	return 1
}

// checkFormatInt returns argument n for an integer conversion: truncated
// towards zero, as Lua 5.1's cast does, but refusing values no integer holds.
func checkFormatInt(L *lua.LState, n int) int64 {
	f := math.Trunc(float64(L.CheckNumber(n)))
	if f != f || f < math.MinInt64 || f >= math.MaxInt64 {
		L.ArgError(n, "number has no integer representation")
	}
	return int64(f)
}

// pad pads str with spaces to width bytes (C counts bytes, Go's fmt runes).
func pad(str string, width int, left bool) string {
	if len(str) >= width {
		return str
	}
	sp := strings.Repeat(" ", width-len(str))
	if left {
		return str + sp
	}
	return sp + str
}

// formatNonFinite renders inf and nan the way C's printf does.
func formatNonFinite(f float64, flags string, conv byte) string {
	s := "inf"
	if math.IsNaN(f) {
		s = "nan"
	}
	switch {
	case math.IsInf(f, -1):
		s = "-" + s
	case strings.IndexByte(flags, '+') >= 0:
		s = "+" + s
	case strings.IndexByte(flags, ' ') >= 0:
		s = " " + s
	}
	if conv == 'E' || conv == 'G' {
		s = strings.ToUpper(s)
	}
	return s
}

// tabConcat is Lua 5.1's table.concat with the output capped.
func (s *state) tabConcat(L *lua.LState) int {
	t := L.CheckTable(1)
	sep := L.OptString(2, "")
	i := checkInt(L, 3, 1)
	last := checkInt(L, 4, -1)
	if L.Get(4) == lua.LNil {
		last = t.Len()
	}
	out := capBuilder{max: s.lim.MaxStringBytes, what: "table.concat"}
	for ; i <= last; i++ {
		v := t.RawGetInt(i)
		switch x := v.(type) {
		case lua.LString:
			out.writeString(L, string(x))
		case lua.LNumber:
			out.writeString(L, x.String())
		default:
			L.RaiseError("invalid value (at index %d) in table for 'concat'", i)
		}
		if i != last {
			out.writeString(L, sep)
		}
		if i&1023 == 0 {
			s.checkInterrupt(L)
		}
	}
	L.Push(lua.LString(out.String()))
	return 1
}

// luaSorter sorts Lua values with Lua's < or a comparator.
type luaSorter struct {
	s     *state
	L     *lua.LState
	fn    lua.LValue
	vals  []lua.LValue
	calls int
}

func (ls *luaSorter) Len() int      { return len(ls.vals) }
func (ls *luaSorter) Swap(i, j int) { ls.vals[i], ls.vals[j] = ls.vals[j], ls.vals[i] }
func (ls *luaSorter) Less(i, j int) bool {
	ls.calls++
	if ls.calls&1023 == 0 {
		ls.s.checkInterrupt(ls.L)
	}
	if ls.fn == nil {
		return ls.L.LessThan(ls.vals[i], ls.vals[j])
	}
	L := ls.L
	L.Push(ls.fn)
	L.Push(ls.vals[i])
	L.Push(ls.vals[j])
	L.Call(2, 1)
	r := L.Get(-1)
	L.Pop(1)
	return lua.LVAsBool(r)
}

func (s *state) tabSort(L *lua.LState) int {
	t := L.CheckTable(1)
	n := t.Len()
	if n > s.lim.MaxTableSort {
		raise(L, fault.ResourceExhausted, "table.sort: %d elements exceed the limit of %d", n, s.lim.MaxTableSort)
	}
	ls := &luaSorter{s: s, L: L, vals: make([]lua.LValue, n)}
	if L.Get(2) != lua.LNil {
		ls.fn = L.CheckFunction(2)
	}
	for i := range ls.vals {
		ls.vals[i] = t.RawGetInt(i + 1)
	}
	sort.Sort(ls)
	for i, v := range ls.vals {
		t.RawSetInt(i+1, v)
	}
	return 0
}

func mathRandom(L *lua.LState) int {
	r := rand.Float64()
	switch L.GetTop() {
	case 0:
		L.Push(lua.LNumber(r))
		return 1
	case 1, 2:
		lo, hi := 1.0, math.Floor(float64(L.CheckNumber(1)))
		if L.GetTop() == 2 {
			lo, hi = hi, math.Floor(float64(L.CheckNumber(2)))
		}
		if !(lo <= hi) {
			L.ArgError(L.GetTop(), "interval is empty")
		}
		L.Push(lua.LNumber(math.Floor(r*(hi-lo+1)) + lo))
		return 1
	default:
		L.RaiseError("wrong number of arguments")
		return 0
	}
}

func mathRandomseed(L *lua.LState) int {
	L.CheckNumber(1)
	return 0
}

// setMetatable is Lua 5.1's setmetatable: tables only, protected
// metatables cannot be replaced.
func setMetatable(L *lua.LState) int {
	t := L.CheckTable(1)
	mt := L.Get(2)
	if mt != lua.LNil {
		if _, ok := mt.(*lua.LTable); !ok {
			L.ArgError(2, "nil or table expected")
		}
	}
	if cur, ok := t.Metatable.(*lua.LTable); ok && cur.RawGetString("__metatable") != lua.LNil {
		L.RaiseError("cannot change a protected metatable")
	}
	t.Metatable = mt
	L.SetTop(1)
	return 1
}

// logFunc returns log.<level>: its arguments, converted with tostring and
// joined by spaces, become one slog record with the tool and exec id. Lines
// over MaxLogBytes are truncated.
func (s *state) logFunc(level slog.Level) lua.LGFunction {
	return func(L *lua.LState) int {
		if s.ctx == nil || !s.en.log.Enabled(s.ctx, level) {
			return 0
		}
		var b strings.Builder
		limit := s.lim.MaxLogBytes
		truncated := false
		for i, n := 1, L.GetTop(); i <= n; i++ {
			if i > 1 {
				b.WriteByte(' ')
			}
			str := L.ToStringMeta(L.Get(i)).String()
			if b.Len()+len(str) > limit {
				b.WriteString(str[:max(0, limit-b.Len())])
				truncated = true
				break
			}
			b.WriteString(str)
		}
		msg := b.String()
		if truncated {
			msg += " …(truncated)"
		}
		s.en.log.Log(s.ctx, level, msg, LogKeyTool, s.tool, LogKeyExecID, s.execID)
		return 0
	}
}

// emit converts its argument to JSON and hands it to Exec.Emit.
func (s *state) emit(L *lua.LState) int {
	if s.ctx == nil {
		return 0
	}
	s.emits++
	if s.emits > s.lim.MaxEmits {
		raise(L, fault.ResourceExhausted, "emit called more than %d times", s.lim.MaxEmits)
	}
	enc := encoder{max: s.lim.MaxEmitBytes, stop: s}
	chunk, err := enc.encode(L.Get(1), Any, "emit value")
	if err != nil {
		L.RaiseError("%s", err.Error())
	}
	if s.emitFn == nil {
		return 0
	}
	if err := s.emitFn(chunk); err != nil {
		if fault.CodeOf(err) == fault.Internal {
			s.en.log.Error("engine: emit failed", LogKeyTool, s.tool, LogKeyExecID, s.execID, "err", err)
		}
		RaiseError(L, err)
	}
	return 0
}
