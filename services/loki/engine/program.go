package engine

import (
	"errors"
	"fmt"
	"strings"

	"github.com/loki-iot/loki/internal/fault"
	lua "github.com/yuin/gopher-lua"
	"github.com/yuin/gopher-lua/parse"
)

const (
	// MaxSourceBytes is the largest source Compile accepts.
	MaxSourceBytes = 1 << 20
	// maxSyntaxDepth bounds the nesting of blocks and brackets, as C Lua's
	// LUAI_MAXCCALLS does: gopher-lua's parser and compiler recurse on it,
	// and compiling nested blocks is quadratic (20000 nested do-blocks take
	// over a second).
	maxSyntaxDepth = 200
)

// Program is compiled Lua code for one tool revision. It is immutable and
// safe for concurrent use by any number of executions.
type Program struct {
	chunk string
	proto *lua.FunctionProto
}

// Chunk returns the name the program was compiled under.
func (p *Program) Chunk() string { return p.chunk }

// SyntaxError is a Lua source that does not compile.
type SyntaxError struct {
	Chunk string
	Line  int
	Msg   string
}

// Error renders "<chunk>:<line>: <msg>".
func (e *SyntaxError) Error() string {
	return fmt.Sprintf("%s:%d: %s", e.Chunk, e.Line, e.Msg)
}

// Compile parses and compiles source. chunk names the source in errors
// (e.g. "add" or "scripts/add.lua"). Source that does not compile returns a
// *SyntaxError; a source over MaxSourceBytes is INVALID_ARGUMENT.
func Compile(chunk, source string) (p *Program, err error) {
	if len(source) > MaxSourceBytes {
		return nil, fault.New(fault.InvalidArgument, "%s: source is %d bytes; the limit is %d", chunk, len(source), MaxSourceBytes)
	}
	if line := tooDeep(source); line > 0 {
		return nil, &SyntaxError{Chunk: chunk, Line: line, Msg: fmt.Sprintf("blocks or brackets nested deeper than %d levels", maxSyntaxDepth)}
	}
	defer func() {
		if r := recover(); r != nil {
			p, err = nil, fault.New(fault.Internal, "%s: compiler failure: %v", chunk, r)
		}
	}()
	stmts, err := parse.Parse(strings.NewReader(source), chunk)
	if err != nil {
		var pe *parse.Error
		if !errors.As(err, &pe) {
			return nil, &SyntaxError{Chunk: chunk, Line: 1, Msg: strings.TrimSpace(err.Error())}
		}
		se := &SyntaxError{Chunk: chunk, Line: pe.Pos.Line, Msg: pe.Message}
		if pe.Pos.Line == parse.EOF {
			se.Line = strings.Count(source, "\n") + 1
			se.Msg += " at end of source"
		} else if pe.Token != "" {
			se.Msg += fmt.Sprintf(" near '%s'", pe.Token)
		}
		return nil, se
	}
	wrapper, err := lua.Compile(wrapConcat(stmts, strings.Count(source, "\n")+1), chunk)
	if err != nil {
		var ce *lua.CompileError
		if errors.As(err, &ce) {
			return nil, &SyntaxError{Chunk: chunk, Line: ce.Line, Msg: ce.Message}
		}
		return nil, &SyntaxError{Chunk: chunk, Line: 1, Msg: err.Error()}
	}
	// The tool's code is the function the wrapper returns (see concat.go).
	proto := wrapper.FunctionPrototypes[0]
	dropArgTables(proto)
	return &Program{chunk: chunk, proto: proto}, nil
}

// dropArgTables turns off Lua 5.0's implicit `arg` table in vararg functions
// that do not use `...` (Lua 5.2 did the same). Every chunk is such a
// function, and building `arg` allocated two maps on every execution.
func dropArgTables(p *lua.FunctionProto) {
	p.IsVarArg &^= lua.VarArgNeedsArg
	for _, c := range p.FunctionPrototypes {
		dropArgTables(c)
	}
}

// tooDeep returns the line at which blocks (function, if, do, repeat) and
// brackets nest deeper than maxSyntaxDepth, or 0. It skips strings and
// comments; it need not be exact for invalid source, which the parser
// rejects anyway.
func tooDeep(src string) int {
	depth, line := 0, 1
	for i := 0; i < len(src); {
		c := src[i]
		switch {
		case c == '\n':
			line++
			i++
		case c == '-' && strings.HasPrefix(src[i:], "--"):
			i += 2
			if n := longBracket(src[i:]); n > 0 {
				j := skipLong(src[i:], n)
				line += strings.Count(src[i:i+j], "\n")
				i += j
			} else if k := strings.IndexByte(src[i:], '\n'); k >= 0 {
				i += k
			} else {
				i = len(src)
			}
		case c == '[' && longBracket(src[i:]) > 0:
			j := skipLong(src[i:], longBracket(src[i:]))
			line += strings.Count(src[i:i+j], "\n")
			i += j
		case c == '"' || c == '\'':
			j := i + 1
			for j < len(src) && src[j] != c && src[j] != '\n' {
				if src[j] == '\\' {
					j++
					if j < len(src) && src[j] == '\n' {
						line++
					}
				}
				j++
			}
			i = j + 1
		case c == '(' || c == '[' || c == '{':
			depth++
			i++
		case c == ')' || c == ']' || c == '}':
			depth = max(depth-1, 0)
			i++
		case c == '_' || isAlpha(c):
			j := i
			for j < len(src) && (src[j] == '_' || isAlpha(src[j]) || isDigit(src[j])) {
				j++
			}
			switch src[i:j] {
			case "function", "if", "do", "repeat":
				depth++
			case "end", "until":
				depth = max(depth-1, 0)
			}
			i = j
		default:
			i++
		}
		if depth > maxSyntaxDepth {
			return line
		}
	}
	return 0
}

// longBracket returns the length of a long bracket opener "[[", "[=[", ...
// at the start of s, or 0.
func longBracket(s string) int {
	if len(s) == 0 || s[0] != '[' {
		return 0
	}
	j := 1
	for j < len(s) && s[j] == '=' {
		j++
	}
	if j < len(s) && s[j] == '[' {
		return j + 1
	}
	return 0
}

// skipLong returns the length of the long string or comment at the start of
// s whose opener is n bytes long.
func skipLong(s string, n int) int {
	closer := "]" + strings.Repeat("=", n-2) + "]"
	if k := strings.Index(s[n:], closer); k >= 0 {
		return n + k + len(closer)
	}
	return len(s)
}
