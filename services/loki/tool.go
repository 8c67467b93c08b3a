package loki

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/services/loki/isolate"
	"github.com/loki-iot/loki/subjects"
)

// Tool limits applied when a definition is validated.
const (
	// DefaultTimeout applies when a tool sets none.
	DefaultTimeout = 5 * time.Second
	// MaxTimeout is the longest timeout a tool may declare.
	MaxTimeout = 10 * time.Minute
	// MaxSourceBytes caps a tool's Lua source.
	MaxSourceBytes = 256 << 10
	// MaxParams caps the number of params of one tool.
	MaxParams = 64
	// MaxMemory is the largest per-call memory limit a tool may declare.
	MaxMemory = 64 << 30
)

// ErrInvalidTool is wrapped by every validation error of a tool definition.
var ErrInvalidTool = errors.New("invalid tool")

// Compiled is a validated tool ready to run: the definition and everything
// derived from it. It is immutable and shared by concurrent executions.
type Compiled struct {
	Def     *lokiv1.Tool
	Program *engine.Program
	Params  []engine.Param
	Returns engine.Type
	Grants  engine.Grants
	Timeout time.Duration
	// Memory and CPU are the tool's own per-call limits (0: none); a tool
	// with a limit runs in an isolated worker (see IsolationConfig).
	Memory uint64
	CPU    time.Duration
	events eventSubjects
}

// GrantChecker is implemented by modules whose grant scopes have a shape of
// their own (net.mqtt:<host>[:<port>][/<topic filter>]), so that a bad
// scope is refused when the tool is loaded, not when its script runs.
type GrantChecker interface {
	CheckGrant(g engine.Grant) error
}

// CheckGrantModules returns an error wrapping ErrInvalidTool for the first
// grant of tools that names none of modules, or that its module refuses: a
// typo such as "hell.kv:x" would otherwise load and fail only when the
// script runs.
func CheckGrantModules(tools []*Compiled, modules []engine.Module) error {
	names := make([]string, len(modules))
	for i, m := range modules {
		names[i] = m.Name()
	}
	for _, t := range tools {
		for _, g := range t.Grants {
			i := slices.Index(names, g.Module)
			if i < 0 {
				return fmt.Errorf("%w: tool %q: grant %q: no module %q (modules: %s)",
					ErrInvalidTool, t.Def.GetName(), g.String(), g.Module, strings.Join(names, ", "))
			}
			if c, ok := modules[i].(GrantChecker); ok {
				if err := c.CheckGrant(g); err != nil {
					return fmt.Errorf("%w: tool %q: %w", ErrInvalidTool, t.Def.GetName(), err)
				}
			}
		}
	}
	return nil
}

// Compile validates t and compiles its source. Every problem is reported as
// an error wrapping ErrInvalidTool that names the tool and the field. TOML
// tools and tools registered over the API go through this same function.
func Compile(t *lokiv1.Tool) (*Compiled, error) {
	c, err := compile(t)
	if err != nil {
		return nil, fmt.Errorf("%w: tool %q: %w", ErrInvalidTool, t.GetName(), err)
	}
	return c, nil
}

func compile(t *lokiv1.Tool) (*Compiled, error) {
	if err := subjects.ValidToolName(t.GetName()); err != nil {
		return nil, errors.New("name must match [a-z][a-z0-9_]{0,63}")
	}
	events, err := newEventSubjects(t.GetName())
	if err != nil {
		return nil, err
	}
	c := &Compiled{Def: t, Returns: engine.Type(t.GetReturns()), Timeout: DefaultTimeout, events: events}
	if c.Returns == "" {
		c.Returns = engine.Any
	}
	if !c.Returns.Valid() {
		return nil, fmt.Errorf("returns %q: want one of %s", t.GetReturns(), typeList)
	}
	if t.Timeout != nil {
		if err := t.Timeout.CheckValid(); err != nil {
			return nil, fmt.Errorf("timeout: %w", err)
		}
		c.Timeout = t.Timeout.AsDuration()
		if c.Timeout <= 0 || c.Timeout > MaxTimeout {
			return nil, fmt.Errorf("timeout %s: must be above 0 and at most %s", c.Timeout, MaxTimeout)
		}
	}
	if m := t.GetMemoryBytes(); m != 0 {
		if m < isolate.MinMemory || m > MaxMemory {
			return nil, fmt.Errorf("memory %s: must be at least %s and at most %s", isolate.FormatSize(m), isolate.FormatSize(isolate.MinMemory), isolate.FormatSize(MaxMemory))
		}
		c.Memory = m
	}
	if t.Cpu != nil {
		if err := t.Cpu.CheckValid(); err != nil {
			return nil, fmt.Errorf("cpu: %w", err)
		}
		c.CPU = t.Cpu.AsDuration()
		if c.CPU <= 0 || c.CPU > MaxTimeout {
			return nil, fmt.Errorf("cpu %s: must be above 0 and at most %s", c.CPU, MaxTimeout)
		}
	}
	if len(t.GetParams()) > MaxParams {
		return nil, fmt.Errorf("%d params: at most %d", len(t.GetParams()), MaxParams)
	}
	seen := map[string]bool{}
	for i, p := range t.GetParams() {
		if err := engine.CheckParamName(p.GetName()); err != nil {
			return nil, fmt.Errorf("params[%d]: %w", i, err)
		}
		if seen[p.GetName()] {
			return nil, fmt.Errorf("params[%d]: duplicate param name %q", i, p.GetName())
		}
		seen[p.GetName()] = true
		ep := engine.Param{Name: p.GetName(), Type: engine.Type(p.GetType()), Required: p.GetRequired(), Description: p.GetDescription()}
		if !ep.Type.Valid() {
			return nil, fmt.Errorf("param %q: type %q: want one of %s", p.GetName(), p.GetType(), typeList)
		}
		if p.Default != nil {
			if p.GetRequired() {
				return nil, fmt.Errorf("param %q: a required param cannot have a default", p.GetName())
			}
			ep.Default = p.Default.AsInterface()
			if err := engine.CheckValue(ep.Type, ep.Default); err != nil {
				return nil, fmt.Errorf("param %q: default: %w", p.GetName(), err)
			}
		}
		c.Params = append(c.Params, ep)
	}
	grants, err := engine.ParseGrants(t.GetGrants())
	if err != nil {
		return nil, err
	}
	c.Grants = grants
	if t.GetSource() == "" {
		return nil, errors.New("script is empty")
	}
	if len(t.GetSource()) > MaxSourceBytes {
		return nil, fmt.Errorf("script is %d bytes: at most %d", len(t.GetSource()), MaxSourceBytes)
	}
	chunk := t.GetSourceName()
	if chunk == "" {
		chunk = t.GetName()
	}
	prog, err := engine.Compile(chunk, t.GetSource())
	if err != nil {
		return nil, err
	}
	c.Program = prog
	return c, nil
}

const typeList = "string, number, integer, boolean, object, array, any"
