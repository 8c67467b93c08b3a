package engine

import (
	"strings"

	lua "github.com/yuin/gopher-lua"
)

// This file replaces string.find, string.match, string.gmatch and string.gsub.
//
// gopher-lua implements them on top of github.com/yuin/gopher-lua/pm, which
// cannot be used under a deadline: its backtracking VM recurses once per
// input byte for every repetition (".*" over 1 MB is a million Go frames),
// never looks at a context (a pattern such as "(.-)(.-)(.-)(.-)x" over a few
// KB runs for hours inside one Go call), and its gsub splices every
// replacement into a fresh copy of the whole string (quadratic). The brief
// asked for a gsub built on pm; pm's matching itself is the unbounded part,
// so the matcher below is a port of Lua 5.1's lstrlib.c instead:
//
//   - recursion depth is bounded by the pattern (at most maxMatchDepth, the
//     limit Lua 5.2+ uses), never by the subject;
//   - every unit of work (a match call, a byte scanned by a repetition, %b or
//     a back-reference) is counted and the execution's context is checked
//     every matchTick units, so a runaway pattern stops at the deadline;
//   - gsub appends into one buffer whose size is capped at
//     Limits.MaxStringBytes.
//
// Semantics are Lua 5.1's (frontier %f included), with two 5.2 behaviours:
// "pattern too complex" past maxMatchDepth, and a '%' ending a gsub
// replacement string is an error instead of inserting a NUL byte.

const (
	maxCaptures   = 32 // LUA_MAXCAPTURES
	capUnfinished = -1
	capPosition   = -2
	maxMatchDepth = 200  // MAXCCALLS in Lua 5.2+ lstrlib.c
	matchTick     = 4096 // work units between context checks
	patSpecials   = "^$*+?.([%-"
)

type capture struct{ init, len int }

// matcher holds the state of one match attempt series over src with pat.
type matcher struct {
	s     *state
	L     *lua.LState
	src   string
	pat   string
	level int
	depth int
	work  int
	cap   [maxCaptures]capture
}

func (m *matcher) reset(s *state, L *lua.LState, src, pat string) {
	m.s, m.L, m.src, m.pat = s, L, src, pat
	m.level, m.depth, m.work = 0, maxMatchDepth, 0
}

func (m *matcher) fail(msg string) {
	m.L.RaiseError("%s", msg)
}

// tick accounts n units of work and checks the deadline every matchTick units.
func (m *matcher) tick(n int) {
	m.work += n
	if m.work >= matchTick {
		m.work = 0
		m.s.checkInterrupt(m.L)
	}
}

func (m *matcher) patAt(p int) byte {
	if p < len(m.pat) {
		return m.pat[p]
	}
	return 0
}

func (m *matcher) srcAt(s int) byte {
	if s < len(m.src) {
		return m.src[s]
	}
	return 0
}

func (m *matcher) checkCapture(l int) int {
	l -= '1'
	if l < 0 || l >= m.level || m.cap[l].len == capUnfinished {
		m.fail("invalid capture index")
	}
	return l
}

func (m *matcher) captureToClose() int {
	for level := m.level - 1; level >= 0; level-- {
		if m.cap[level].len == capUnfinished {
			return level
		}
	}
	m.fail("invalid pattern capture")
	return 0
}

// classEnd returns the index just past the single-char class starting at p.
func (m *matcher) classEnd(p int) int {
	c := m.pat[p]
	p++
	switch c {
	case '%':
		if p >= len(m.pat) {
			m.fail("malformed pattern (ends with '%')")
		}
		return p + 1
	case '[':
		if m.patAt(p) == '^' {
			p++
		}
		for { // look for a ']'
			if p >= len(m.pat) {
				m.fail("malformed pattern (missing ']')")
			}
			c := m.pat[p]
			p++
			if c == '%' && p < len(m.pat) {
				p++ // skip escapes (e.g. '%]')
			}
			if m.patAt(p) == ']' && p < len(m.pat) {
				break
			}
		}
		return p + 1
	default:
		return p
	}
}

func isAlpha(c byte) bool  { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }
func isDigit(c byte) bool  { return '0' <= c && c <= '9' }
func isLower(c byte) bool  { return 'a' <= c && c <= 'z' }
func isUpper(c byte) bool  { return 'A' <= c && c <= 'Z' }
func isSpace(c byte) bool  { return c == ' ' || '\t' <= c && c <= '\r' }
func isCntrl(c byte) bool  { return c < 0x20 || c == 0x7f }
func isPunct(c byte) bool  { return c > 0x20 && c < 0x7f && !isAlpha(c) && !isDigit(c) }
func isXDigit(c byte) bool { return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// matchClass reports whether c belongs to class cl (the letter after '%'),
// in the C locale.
func matchClass(c, cl byte) bool {
	var res bool
	switch cl | 0x20 {
	case 'a':
		res = isAlpha(c)
	case 'c':
		res = isCntrl(c)
	case 'd':
		res = isDigit(c)
	case 'l':
		res = isLower(c)
	case 'p':
		res = isPunct(c)
	case 's':
		res = isSpace(c)
	case 'u':
		res = isUpper(c)
	case 'w':
		res = isAlpha(c) || isDigit(c)
	case 'x':
		res = isXDigit(c)
	case 'z':
		res = c == 0
	default:
		return cl == c
	}
	if isUpper(cl) {
		return !res
	}
	return res
}

// matchBracketClass matches c against the set [..] spanning pat[p:ec+1],
// where pat[p] == '[' and pat[ec] == ']'.
func (m *matcher) matchBracketClass(c byte, p, ec int) bool {
	sig := true
	if m.pat[p+1] == '^' {
		sig = false
		p++
	}
	for p++; p < ec; p++ {
		if m.pat[p] == '%' {
			p++
			if matchClass(c, m.pat[p]) {
				return sig
			}
		} else if m.pat[p+1] == '-' && p+2 < ec {
			p += 2
			if m.pat[p-2] <= c && c <= m.pat[p] {
				return sig
			}
		} else if m.pat[p] == c {
			return sig
		}
	}
	return !sig
}

func (m *matcher) singleMatch(s, p, ep int) bool {
	if s >= len(m.src) {
		return false
	}
	c := m.src[s]
	switch m.pat[p] {
	case '.':
		return true
	case '%':
		return matchClass(c, m.pat[p+1])
	case '[':
		return m.matchBracketClass(c, p, ep-1)
	default:
		return m.pat[p] == c
	}
}

func (m *matcher) matchBalance(s, p int) int {
	if p+1 >= len(m.pat) {
		m.fail("unbalanced pattern")
	}
	if s >= len(m.src) || m.src[s] != m.pat[p] {
		return -1
	}
	b, e := m.pat[p], m.pat[p+1]
	cont := 1
	start := s
	for s++; s < len(m.src); s++ {
		if m.src[s] == e {
			cont--
			if cont == 0 {
				m.tick(s - start)
				return s + 1
			}
		} else if m.src[s] == b {
			cont++
		}
	}
	m.tick(s - start)
	return -1
}

func (m *matcher) maxExpand(s, p, ep int) int {
	i := 0
	for m.singleMatch(s+i, p, ep) {
		i++
	}
	m.tick(i)
	for ; i >= 0; i-- { // try with the maximum repetitions first
		if res := m.match(s+i, ep+1); res != -1 {
			return res
		}
	}
	return -1
}

func (m *matcher) minExpand(s, p, ep int) int {
	for {
		if res := m.match(s, ep+1); res != -1 {
			return res
		}
		if !m.singleMatch(s, p, ep) {
			return -1
		}
		s++ // try with one more repetition
	}
}

func (m *matcher) startCapture(s, p, what int) int {
	if m.level >= maxCaptures {
		m.fail("too many captures")
	}
	m.cap[m.level] = capture{init: s, len: what}
	m.level++
	res := m.match(s, p)
	if res == -1 {
		m.level-- // undo capture
	}
	return res
}

func (m *matcher) endCapture(s, p int) int {
	l := m.captureToClose()
	m.cap[l].len = s - m.cap[l].init
	res := m.match(s, p)
	if res == -1 {
		m.cap[l].len = capUnfinished
	}
	return res
}

func (m *matcher) matchCapture(s int, l byte) int {
	i := m.checkCapture(int(l))
	c := m.cap[i]
	if c.len < 0 { // a position capture never matches text
		return -1
	}
	m.tick(c.len)
	if len(m.src)-s >= c.len && m.src[c.init:c.init+c.len] == m.src[s:s+c.len] {
		return s + c.len
	}
	return -1
}

// match returns the end of the match of pat[p:] at src[s:], or -1.
func (m *matcher) match(s, p int) int {
	m.depth--
	if m.depth == 0 {
		m.fail("pattern too complex")
	}
	m.tick(1)
	res := m.doMatch(s, p)
	m.depth++
	return res
}

func (m *matcher) doMatch(s, p int) int {
	for {
		if p >= len(m.pat) { // end of pattern
			return s
		}
		switch m.pat[p] {
		case '(':
			if m.patAt(p+1) == ')' {
				return m.startCapture(s, p+2, capPosition)
			}
			return m.startCapture(s, p+1, capUnfinished)
		case ')':
			return m.endCapture(s, p+1)
		case '$':
			if p+1 == len(m.pat) {
				if s == len(m.src) {
					return s
				}
				return -1
			}
		case '%':
			switch m.patAt(p + 1) {
			case 'b':
				s = m.matchBalance(s, p+2)
				if s == -1 {
					return -1
				}
				p += 4
				continue
			case 'f':
				p += 2
				if m.patAt(p) != '[' {
					m.fail("missing '[' after '%f' in pattern")
				}
				ep := m.classEnd(p)
				var prev byte
				if s > 0 {
					prev = m.src[s-1]
				}
				if m.matchBracketClass(prev, p, ep-1) || !m.matchBracketClass(m.srcAt(s), p, ep-1) {
					return -1
				}
				p = ep
				continue
			default:
				if d := m.patAt(p + 1); isDigit(d) {
					s = m.matchCapture(s, d)
					if s == -1 {
						return -1
					}
					p += 2
					continue
				}
			}
		}
		// default: a single-char class, maybe followed by a repetition
		ep := m.classEnd(p)
		matched := m.singleMatch(s, p, ep)
		switch m.patAt(ep) {
		case '?':
			if ep < len(m.pat) {
				if matched {
					if res := m.match(s+1, ep+1); res != -1 {
						return res
					}
				}
				p = ep + 1
				continue
			}
		case '*':
			if ep < len(m.pat) {
				return m.maxExpand(s, p, ep)
			}
		case '+':
			if ep < len(m.pat) {
				if !matched {
					return -1
				}
				return m.maxExpand(s+1, p, ep)
			}
		case '-':
			if ep < len(m.pat) {
				return m.minExpand(s, p, ep)
			}
		}
		if !matched {
			return -1
		}
		s++
		p = ep
	}
}

// captureValue returns capture i of a match spanning src[s:e]; when the
// pattern has no captures, capture 0 is the whole match.
func (m *matcher) captureValue(i, s, e int) lua.LValue {
	if i >= m.level {
		if i == 0 {
			return lua.LString(m.src[s:e])
		}
		m.fail("invalid capture index")
	}
	c := m.cap[i]
	switch c.len {
	case capUnfinished:
		m.fail("unfinished capture")
	case capPosition:
		return lua.LNumber(c.init + 1)
	}
	return lua.LString(m.src[c.init : c.init+c.len])
}

// pushCaptures pushes the captures of a match spanning src[s:e] (the whole
// match if there are none and wholeIfNone) and returns how many it pushed.
func (m *matcher) pushCaptures(s, e int, wholeIfNone bool) int {
	n := m.level
	if n == 0 && wholeIfNone {
		n = 1
	}
	for i := 0; i < n; i++ {
		m.L.Push(m.captureValue(i, s, e))
	}
	return n
}

// posRelat converts a Lua string position (negative counts from the end)
// to a non-negative 1-based position.
func posRelat(pos, n int) int {
	if pos < 0 {
		pos += n + 1
	}
	if pos < 0 {
		return 0
	}
	return pos
}

func (s *state) strFind(L *lua.LState) int  { return s.findAux(L, true) }
func (s *state) strMatch(L *lua.LState) int { return s.findAux(L, false) }

func (s *state) findAux(L *lua.LState, find bool) int {
	src := L.CheckString(1)
	pat := L.CheckString(2)
	init := posRelat(checkInt(L, 3, 1), len(src)) - 1
	if init < 0 {
		init = 0
	} else if init > len(src) {
		init = len(src)
	}
	if find && (lua.LVAsBool(L.Get(4)) || !strings.ContainsAny(pat, patSpecials)) {
		if i := strings.Index(src[init:], pat); i >= 0 {
			L.Push(lua.LNumber(init + i + 1))
			L.Push(lua.LNumber(init + i + len(pat)))
			return 2
		}
		L.Push(lua.LNil)
		return 1
	}
	anchor := strings.HasPrefix(pat, "^")
	if anchor {
		pat = pat[1:]
	}
	m := s.matcher(L, src, pat)
	for s1 := init; ; s1++ {
		m.level = 0
		if e := m.match(s1, 0); e != -1 {
			if find {
				L.Push(lua.LNumber(s1 + 1))
				L.Push(lua.LNumber(e))
				return m.pushCaptures(0, 0, false) + 2
			}
			return m.pushCaptures(s1, e, true)
		}
		if s1 >= len(src) || anchor {
			break
		}
	}
	L.Push(lua.LNil)
	return 1
}

func (s *state) strGmatch(L *lua.LState) int {
	src := L.CheckString(1)
	pat := L.CheckString(2)
	pos := 0
	L.Push(L.NewFunction(func(L *lua.LState) int {
		m := s.matcher(L, src, pat)
		for s1 := pos; s1 <= len(src); s1++ {
			m.level = 0
			if e := m.match(s1, 0); e != -1 {
				pos = e
				if e == s1 { // empty match: go at least one position
					pos++
				}
				return m.pushCaptures(s1, e, true)
			}
		}
		pos = len(src) + 1
		return 0
	}))
	return 1
}

func (s *state) strGsub(L *lua.LState) int {
	src := L.CheckString(1)
	pat := L.CheckString(2)
	repl := L.Get(3)
	switch repl.(type) {
	case lua.LNumber, lua.LString, *lua.LTable, *lua.LFunction:
	default:
		L.ArgError(3, "string/function/table expected")
	}
	maxN := checkInt(L, 4, len(src)+1)
	anchor := strings.HasPrefix(pat, "^")
	if anchor {
		pat = pat[1:]
	}
	m := s.matcher(L, src, pat)
	out := capBuilder{max: s.lim.MaxStringBytes, what: "string.gsub"}
	pos, n := 0, 0
	for n < maxN {
		m.level = 0
		e := m.match(pos, 0)
		if e != -1 {
			n++
			s.gsubValue(L, m, &out, repl, pos, e)
		}
		switch {
		case e != -1 && e > pos: // non-empty match: skip it
			pos = e
		case pos < len(src):
			out.writeByte(L, src[pos])
			pos++
		default:
			anchor = true // end of subject
		}
		if anchor {
			break
		}
	}
	out.writeString(L, src[pos:])
	L.Push(lua.LString(out.String()))
	L.Push(lua.LNumber(n))
	return 2
}

// gsubValue appends the replacement for the match src[s:e] to out.
func (s *state) gsubValue(L *lua.LState, m *matcher, out *capBuilder, repl lua.LValue, st, e int) {
	var v lua.LValue
	switch r := repl.(type) {
	case lua.LString:
		s.gsubString(L, m, out, string(r), st, e)
		return
	case lua.LNumber:
		s.gsubString(L, m, out, r.String(), st, e)
		return
	case *lua.LFunction:
		L.Push(r)
		L.Call(m.pushCaptures(st, e, true), 1)
		v = L.Get(-1)
		L.Pop(1)
	case *lua.LTable:
		v = L.GetTable(r, m.captureValue(0, st, e))
	}
	switch x := v.(type) {
	case lua.LString:
		out.writeString(L, string(x))
	case lua.LNumber:
		out.writeString(L, x.String())
	default:
		if lua.LVIsFalse(v) { // nil or false: keep the original text
			out.writeString(L, m.src[st:e])
			return
		}
		L.RaiseError("invalid replacement value (a %s)", v.Type().String())
	}
}

// gsubString expands a replacement string: %0 is the whole match, %1-%9 the
// captures, %x any other character x.
func (s *state) gsubString(L *lua.LState, m *matcher, out *capBuilder, r string, st, e int) {
	for i := 0; i < len(r); i++ {
		j := strings.IndexByte(r[i:], '%')
		if j < 0 {
			out.writeString(L, r[i:])
			return
		}
		out.writeString(L, r[i:i+j])
		i += j + 1
		if i >= len(r) {
			L.RaiseError("%s", "invalid use of '%' in replacement string")
		}
		switch c := r[i]; {
		case !isDigit(c):
			out.writeByte(L, c)
		case c == '0':
			out.writeString(L, m.src[st:e])
		default:
			out.writeString(L, lua.LVAsString(m.captureValue(int(c-'1'), st, e)))
		}
	}
}

func (s *state) matcher(L *lua.LState, src, pat string) *matcher {
	m := new(matcher)
	m.reset(s, L, src, pat)
	return m
}
