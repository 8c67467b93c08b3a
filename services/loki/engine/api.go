// Package engine runs Loki tools: sandboxed gopher-lua programs with typed
// parameters and a typed, JSON-shaped result.
//
// A Program is compiled once per tool revision and shared read-only by every
// execution. Executions borrow a pooled *lua.LState, get a fresh global
// environment (so nothing leaks between calls), and are bounded by a context
// deadline, capped built-ins and a result size cap.
package engine

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"strings"

	"github.com/loki-iot/loki/internal/fault"
	lua "github.com/yuin/gopher-lua"
)

// Type is the declared type of a parameter or of a tool's result.
type Type string

// The types a tool may declare. Values cross the wire as JSON; Integer is a
// number with no fractional part, Object a JSON object, Array a JSON array.
const (
	String  Type = "string"
	Number  Type = "number"
	Integer Type = "integer"
	Boolean Type = "boolean"
	Object  Type = "object"
	Array   Type = "array"
	Any     Type = "any"
)

// Valid reports whether t is one of the declared types.
func (t Type) Valid() bool {
	switch t {
	case String, Number, Integer, Boolean, Object, Array, Any:
		return true
	}
	return false
}

// Param describes one named argument of a tool. Default, if non-nil, is a
// JSON-shaped value (nil, bool, float64, string, []any, map[string]any) used
// when the caller omits the argument.
type Param struct {
	Name        string
	Type        Type
	Required    bool
	Default     any
	Description string
}

// paramName is the shape of parameter names: usable as Lua identifiers.
var paramName = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,63}$`)

// reservedNames cannot be parameter names: Lua keywords and the globals the
// sandbox provides, which a parameter of the same name would shadow.
var reservedNames = map[string]bool{
	"and": true, "break": true, "do": true, "else": true, "elseif": true, "end": true,
	"false": true, "for": true, "function": true, "if": true, "in": true, "local": true,
	"nil": true, "not": true, "or": true, "repeat": true, "return": true, "then": true,
	"true": true, "until": true, "while": true, "goto": true,
	"params": true, "emit": true, "log": true, "string": true, "table": true, "math": true,
	"os": true, "_G": true, "_VERSION": true, "assert": true, "error": true, "ipairs": true,
	"pairs": true, "next": true, "pcall": true, "xpcall": true, "print": true, "rawequal": true,
	"rawget": true, "rawset": true, "select": true, "tonumber": true, "tostring": true,
	"type": true, "unpack": true, "getmetatable": true, "setmetatable": true,
}

// CheckParamName returns an error if name cannot be used as a parameter name.
func CheckParamName(name string) error {
	if !paramName.MatchString(name) {
		return fmt.Errorf("param name %q must match %s", name, paramName)
	}
	if reservedNames[name] {
		return fmt.Errorf("param name %q is reserved in scripts (a Lua keyword or sandbox global)", name)
	}
	return nil
}

// Grant is one capability a tool may use: <module>[.<area>][:<scope>].
// An empty Area allows every area of the module; an empty Scope or "*" allows
// every scope; a Scope also covers sub-scopes below it ("board" covers
// "board/led"). Scopes may contain dots, so that a host name is one scope
// ("net.http:api.example.com"); a dot does not separate sub-scopes.
type Grant struct {
	Module, Area, Scope string
}

var grantToken = regexp.MustCompile(`^[a-z][a-z0-9_]*$`)

// grantScope: a first segment that may carry a port or an IPv6 literal
// (net.mqtt:127.0.0.1:1883, [::1]), then segments that may be MQTT topic
// wildcards (readings/+/temp, readings/#); the module checks the rest.
var grantScope = regexp.MustCompile(`^(\*|[A-Za-z0-9_.\-:\[\]*]+(/[A-Za-z0-9_.\-+#]+)*)$`)

// ParseGrant parses "<module>[.<area>][:<scope>]", e.g. "hel.kv:sensors".
func ParseGrant(s string) (Grant, error) {
	head, scope, hasScope := strings.Cut(s, ":")
	mod, area, hasArea := strings.Cut(head, ".")
	var g Grant
	if !grantToken.MatchString(mod) {
		return g, fmt.Errorf("grant %q: module %q must match %s", s, mod, grantToken)
	}
	if hasArea && !grantToken.MatchString(area) {
		return g, fmt.Errorf("grant %q: area %q must match %s", s, area, grantToken)
	}
	if hasScope && !grantScope.MatchString(scope) {
		return g, fmt.Errorf("grant %q: scope %q must be * or match %s", s, scope, grantScope)
	}
	return Grant{Module: mod, Area: area, Scope: scope}, nil
}

// String renders the grant in its config form.
func (g Grant) String() string {
	s := g.Module
	if g.Area != "" {
		s += "." + g.Area
	}
	if g.Scope != "" {
		s += ":" + g.Scope
	}
	return s
}

// Grants is the set of capabilities of one tool.
type Grants []Grant

// ParseGrants parses every grant string, failing on the first bad one.
func ParseGrants(ss []string) (Grants, error) {
	gs := make(Grants, 0, len(ss))
	for _, s := range ss {
		g, err := ParseGrant(s)
		if err != nil {
			return nil, err
		}
		gs = append(gs, g)
	}
	return gs, nil
}

// Allows reports whether some grant covers module.area on scope.
func (gs Grants) Allows(module, area, scope string) bool {
	for _, g := range gs {
		if g.Module != module || (g.Area != "" && g.Area != area) {
			continue
		}
		if g.Scope == "" || g.Scope == "*" || g.Scope == scope || strings.HasPrefix(scope, g.Scope+"/") {
			return true
		}
	}
	return false
}

// Check returns a PERMISSION_DENIED error naming the missing grant unless
// Allows(module, area, scope).
func (gs Grants) Check(module, area, scope string) error {
	if gs.Allows(module, area, scope) {
		return nil
	}
	want := Grant{Module: module, Area: area, Scope: scope}
	return fault.New(fault.PermissionDenied, "tool has no grant for %s", want)
}

// Call is what a Module sees of the execution it serves.
type Call struct {
	// Ctx carries the execution's deadline; module calls that block must honour it.
	Ctx    context.Context
	Tool   string
	ExecID string
	Grants Grants
	Log    *slog.Logger
}

// Module is a Lua module provided by a child service (hel, net, fenrir).
// Open is called once per execution that may use the module and returns the
// value bound to the global Name() in that execution's environment. Module
// functions must call c.Grants.Check before acting and report failures with
// RaiseError so scripts see "CODE: message".
type Module interface {
	Name() string
	Open(L *lua.LState, c *Call) lua.LValue
}

// RaiseError raises err in L as a Lua error whose message is "CODE: message"
// (see fault.Error), catchable with pcall. It does not return; the int lets
// a module function end with `return engine.RaiseError(L, err)`.
func RaiseError(L *lua.LState, err error) int {
	// Level 0: no "chunk:line:" prefix, so the message starts with the code.
	L.Error(lua.LString(string(fault.CodeOf(err))+": "+fault.MessageOf(err)), 0)
	return 0
}

// ArgError raises INVALID_ARGUMENT "<module>.<fn>: argument #n: <message>"
// in L, the way every module names a bad argument. It does not return.
// pcall sees that code; uncaught, the execution fails with SCRIPT_ERROR,
// since the bad argument is the script's, not its caller's.
func ArgError(L *lua.LState, module, fn string, n int, format string, args ...any) int {
	return RaiseError(L, fault.New(fault.InvalidArgument, "%s.%s: argument #%d: %s", module, fn, n, fmt.Sprintf(format, args...)))
}
