package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/loki-iot/loki/internal/fault"
	lua "github.com/yuin/gopher-lua"
)

// Limits bounds what one execution may do. A zero (or negative) field means
// its default; see DefaultLimits.
type Limits struct {
	MaxResultBytes int // JSON result size cap (default 1 MiB) → RESOURCE_EXHAUSTED
	MaxEmitBytes   int // per emit() chunk (default 256 KiB) → RESOURCE_EXHAUSTED
	MaxEmits       int // emit() calls per execution (default 10000) → RESOURCE_EXHAUSTED
	MaxStringBytes int // largest string `..` or a capped built-in may build (default 16 MiB) → RESOURCE_EXHAUSTED
	MaxTableSort   int // largest table table.sort accepts (default 1<<20) → RESOURCE_EXHAUSTED
	MaxLogBytes    int // per log line (default 8 KiB, truncated not refused)
	CallStackSize  int // Lua call stack depth (default 200); overflow → RESOURCE_EXHAUSTED
}

// DefaultLimits returns the limits used for zero fields of Config.Limits.
func DefaultLimits() Limits {
	return Limits{
		MaxResultBytes: 1 << 20,
		MaxEmitBytes:   256 << 10,
		MaxEmits:       10000,
		MaxStringBytes: 16 << 20,
		MaxTableSort:   1 << 20,
		MaxLogBytes:    8 << 10,
		CallStackSize:  200,
	}
}

func (l Limits) withDefaults() Limits {
	d := DefaultLimits()
	for _, f := range []struct{ v, d *int }{
		{&l.MaxResultBytes, &d.MaxResultBytes}, {&l.MaxEmitBytes, &d.MaxEmitBytes},
		{&l.MaxEmits, &d.MaxEmits}, {&l.MaxStringBytes, &d.MaxStringBytes},
		{&l.MaxTableSort, &d.MaxTableSort}, {&l.MaxLogBytes, &d.MaxLogBytes},
		{&l.CallStackSize, &d.CallStackSize},
	} {
		if *f.v <= 0 {
			*f.v = *f.d
		}
	}
	return l
}

// Config configures an Engine.
type Config struct {
	Limits Limits
	// Modules are bound, lazily, to globals named Module.Name() in every
	// execution. Names must be distinct and must not collide with the
	// sandbox's globals; New panics otherwise (a wiring bug). A parameter
	// with the same name as a module shadows the module.
	Modules []Module
}

// Log keys of script log lines and engine diagnostics.
const (
	LogKeyTool   = "tool"
	LogKeyExecID = "exec_id"
)

// Engine runs Programs in pooled, sandboxed Lua states. It is safe for
// concurrent use; each Run borrows its own state.
type Engine struct {
	lim    Limits
	mods   []Module
	modIdx map[string]int
	log    *slog.Logger
	pool   chan *state
}

// New returns an Engine; log receives script log.* calls (and print) with the
// keys tool and exec_id, and engine diagnostics. A nil log discards them.
func New(cfg Config, log *slog.Logger) *Engine {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	en := &Engine{
		lim:    cfg.Limits.withDefaults(),
		modIdx: make(map[string]int, len(cfg.Modules)),
		log:    log,
		pool:   make(chan *state, runtime.GOMAXPROCS(0)*8),
	}
	for _, m := range cfg.Modules {
		name := m.Name()
		if _, dup := en.modIdx[name]; dup {
			panic(fmt.Sprintf("engine: module %q registered twice", name))
		}
		if sandboxGlobals[name] || reservedNames[name] || !paramName.MatchString(name) {
			panic(fmt.Sprintf("engine: module name %q is reserved or not a valid Lua identifier", name))
		}
		en.modIdx[name] = len(en.mods)
		en.mods = append(en.mods, m)
	}
	return en
}

// Exec is one execution request.
type Exec struct {
	Tool    string
	ExecID  string
	Program *Program
	Params  []Param
	Returns Type // "" means Any
	// Args holds the arguments as decoded by DecodeArgs (JSON-shaped values).
	// Only names listed in Params are bound.
	Args   map[string]any
	Grants Grants
	// Timeout, when set, is the timeout the caller put on ctx; messages of
	// DEADLINE_EXCEEDED name it. Without it they name the time from the
	// start of Run to ctx's deadline, which a busy machine makes a little
	// shorter than what was configured.
	Timeout time.Duration
	// Emit receives the JSON of each emit(value), in order, on the goroutine
	// calling Run; the slice is not reused. A non-nil error aborts the
	// script. nil means emit() values are discarded (but still size-checked).
	Emit func(chunk []byte) error
}

// Run executes e under ctx (ctx carries the deadline; the caller sets it)
// and returns the result as JSON bytes. Every error is a *fault.Error:
// INVALID_ARGUMENT for a bad request, DEADLINE_EXCEEDED when ctx ends first,
// RESOURCE_EXHAUSTED when a limit is hit, SCRIPT_ERROR for a Lua error or a
// result that does not fit e.Returns, a module's own code for errors raised
// by modules, and INTERNAL for bugs (details logged with the exec id).
func (en *Engine) Run(ctx context.Context, e Exec) ([]byte, error) {
	if e.Program == nil {
		return nil, fault.New(fault.InvalidArgument, "tool %q has no program", e.Tool)
	}
	if e.Returns == "" {
		e.Returns = Any
	} else if !e.Returns.Valid() {
		return nil, fault.New(fault.InvalidArgument, "tool %q declares unknown return type %q", e.Tool, e.Returns)
	}
	start := time.Now()
	if ctx.Err() != nil {
		return nil, deadlineFault(ctx, e.Tool, start, e.Timeout)
	}

	s := en.get()
	s.begin(ctx, &e, start)
	L := s.L
	env := L.CreateTable(0, 0)
	env.Metatable = s.lazyMT
	s.env = env
	if err := s.convertParams(); err != nil {
		s.end()
		en.put(s)
		return nil, err
	}
	fn := L.NewFunctionFromProto(e.Program.proto)
	fn.Env = env
	if len(fn.Upvalues) == 1 { // the capped `..` (concat.go)
		fn.Upvalues[0] = s.concatUV
	}

	L.SetContext(ctx)
	L.Push(fn)
	err := L.PCall(0, 1, nil)
	L.RemoveContext()
	if err == nil && ctx.Err() != nil {
		L.Pop(1)
		err = ctx.Err()
	}
	if err != nil {
		ferr, clean := s.mapError(err)
		s.end()
		if clean {
			en.put(s)
		} else {
			L.Close()
		}
		return nil, ferr
	}
	ret := L.Get(-1)
	L.Pop(1)
	out, ferr := s.encodeResult(ret)
	s.end()
	en.put(s)
	if ferr != nil {
		return nil, ferr
	}
	return out, nil
}

func (en *Engine) get() *state {
	select {
	case s := <-en.pool:
		return s
	default:
		return en.newState()
	}
}

func (en *Engine) put(s *state) {
	select {
	case en.pool <- s:
	default:
		s.L.Close()
	}
}

// ErrMemoryLimit ends an execution's context when the replica's memory
// guard stops running scripts; Run reports it as RESOURCE_EXHAUSTED. It
// matches context.Canceled too, for code that only knows the standard
// reasons a context ends.
var ErrMemoryLimit error = memoryLimitError{}

type memoryLimitError struct{}

func (memoryLimitError) Error() string        { return "stopped: the replica passed its memory limit" }
func (memoryLimitError) Is(target error) bool { return target == context.Canceled }

// deadlineFault phrases the end of ctx for the caller.
func deadlineFault(ctx context.Context, tool string, start time.Time, timeout time.Duration) *fault.Error {
	if errors.Is(ctx.Err(), ErrMemoryLimit) {
		return fault.New(fault.ResourceExhausted, "tool %q was stopped after %s: the replica's memory passed its limit while it ran (memory_limit_mib)",
			tool, roundTimeout(time.Since(start)))
	}
	if dl, ok := ctx.Deadline(); ok && errors.Is(ctx.Err(), context.DeadlineExceeded) {
		if timeout <= 0 {
			timeout = dl.Sub(start)
		}
		return fault.New(fault.DeadlineExceeded, "tool %q exceeded its %s timeout", tool, roundTimeout(timeout))
	}
	return fault.New(fault.DeadlineExceeded, "tool %q was canceled after %s", tool, roundTimeout(time.Since(start)))
}

// roundTimeout rounds d to what a person configured: 1.9999s reads "2s".
func roundTimeout(d time.Duration) time.Duration {
	switch {
	case d <= 0:
		return 0
	case d >= 10*time.Second:
		return d.Round(time.Second)
	case d >= time.Second:
		return d.Round(100 * time.Millisecond)
	case d >= time.Millisecond:
		return d.Round(time.Millisecond)
	default:
		return d.Round(time.Microsecond)
	}
}

// mapError turns the error of a failed PCall into a fault, and reports
// whether the state may go back to the pool.
//
// A state that raised an ordinary Lua error is clean: PCall has unwound the
// call and value stacks to where they were before the call, everything the
// script could reach was per-execution (env, library proxies, values), and
// the shared tables are unreachable or protected by __metatable. States
// interrupted by the context, or in which Go code panicked, are discarded.
func (s *state) mapError(err error) (*fault.Error, bool) {
	if s.ctx.Err() != nil {
		return deadlineFault(s.ctx, s.tool, s.start, s.timeout), false
	}
	var ae *lua.ApiError
	if !errors.As(err, &ae) {
		s.en.log.Error("engine: unexpected error", LogKeyTool, s.tool, LogKeyExecID, s.execID, "err", err)
		return fault.New(fault.Internal, "internal error"), false
	}
	if ae.Type == lua.ApiErrorPanic {
		s.en.log.Error("engine: panic in script execution", LogKeyTool, s.tool, LogKeyExecID, s.execID,
			"err", ae.Object.String(), "trace", ae.StackTrace)
		return fault.New(fault.Internal, "internal error"), false
	}
	code := fault.ScriptError
	line := 0
	var msg string
	switch v := ae.Object.(type) {
	case lua.LString:
		line, msg = s.splitPosition(string(v))
		if fe, ok := fault.Parse(msg); ok {
			code, msg = fe.Code, fe.Msg
			if code == fault.InvalidArgument {
				// INVALID_ARGUMENT tells the caller its arguments were bad;
				// those are checked against the params before the script
				// runs. Raised inside the script (a module's ArgError, a
				// service refusing what the script sent), it is the script's
				// fault.
				code = fault.ScriptError
			}
		} else if msg == "stack overflow" {
			code = fault.ResourceExhausted
			msg = fmt.Sprintf("stack overflow (more than %d nested calls)", s.en.lim.CallStackSize)
		} else if msg == "registry overflow" {
			code = fault.ResourceExhausted
			msg = "value stack overflow (too many values on the Lua stack)"
		}
	case *lua.LTable:
		enc := encoder{max: 512}
		if b, err := enc.encode(v, Any, "error"); err == nil {
			msg = "error " + string(b)
		} else {
			msg = "error object is a table"
		}
	case *lua.LNilType:
		msg = "error object is nil"
	default:
		msg = "error " + v.String()
	}
	if line == 0 {
		line = s.lineFromTrace(ae.StackTrace)
	}
	msg = truncateError(msg)
	if line > 0 {
		return fault.New(code, "tool %q: line %d: %s", s.tool, line, msg), s.L.GetTop() == 0
	}
	return fault.New(code, "tool %q: %s", s.tool, msg), s.L.GetTop() == 0
}

// maxErrorBytes bounds the message of a script's error: it travels in a
// reply header, and `error(string.rep("x", 2^23))` must not make the reply
// too big to send.
const maxErrorBytes = 4 << 10

// truncateError cuts msg to maxErrorBytes, on a UTF-8 boundary, marking the cut.
func truncateError(msg string) string {
	if len(msg) <= maxErrorBytes {
		return msg
	}
	cut := maxErrorBytes
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return fmt.Sprintf("%s …(%d bytes truncated)", msg[:cut], len(msg)-cut)
}

// splitPosition splits "<chunk>:<line>: msg" into line and msg.
func (s *state) splitPosition(m string) (int, string) {
	rest, ok := strings.CutPrefix(m, s.chunk+":")
	if !ok {
		return 0, m
	}
	num, msg, ok := strings.Cut(rest, ": ")
	if !ok {
		return 0, m
	}
	line, err := strconv.Atoi(num)
	if err != nil {
		return 0, m
	}
	return line, msg
}

// lineFromTrace finds the innermost line of the tool's own code in a
// gopher-lua traceback, for errors raised without a position (modules).
func (s *state) lineFromTrace(trace string) int {
	prefix := "\t" + s.chunk + ":"
	for l := range strings.Lines(trace) {
		if rest, ok := strings.CutPrefix(l, prefix); ok {
			num, _, _ := strings.Cut(rest, ":")
			if n, err := strconv.Atoi(num); err == nil {
				return n
			}
		}
	}
	return 0
}

// stopped returns the fault for the end of the execution's context, or nil
// while it runs. Go loops outside the VM (result encoding) poll it.
func (s *state) stopped() *fault.Error {
	if s.ctx != nil && s.ctx.Err() != nil {
		return deadlineFault(s.ctx, s.tool, s.start, s.timeout)
	}
	return nil
}

// checkInterrupt raises the context's error in L if the execution's
// context has ended. Built-ins that loop in Go call it periodically.
func (s *state) checkInterrupt(L *lua.LState) {
	if s.ctx != nil && s.ctx.Err() != nil {
		L.RaiseError("%s", s.ctx.Err().Error())
	}
}
