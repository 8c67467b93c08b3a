// Package fault defines the error codes that cross Loki's edges: NATS error
// headers, Lua error messages raised into scripts, and (through one mapping
// function) gRPC status codes.
package fault

import (
	"errors"
	"fmt"
	"strings"
)

// Code is a stable, machine-readable error class. Its string form is what
// travels in the Nats-Service-Error-Code header and prefixes Lua errors.
type Code string

// The codes every component uses. They follow the gRPC names so the gateway's
// mapping is obvious, plus ScriptError for failures raised by user code.
const (
	InvalidArgument    Code = "INVALID_ARGUMENT"
	NotFound           Code = "NOT_FOUND"
	AlreadyExists      Code = "ALREADY_EXISTS"
	DeadlineExceeded   Code = "DEADLINE_EXCEEDED"
	ResourceExhausted  Code = "RESOURCE_EXHAUSTED"
	PermissionDenied   Code = "PERMISSION_DENIED"
	FailedPrecondition Code = "FAILED_PRECONDITION"
	Unavailable        Code = "UNAVAILABLE"
	// Unauthenticated is a call without valid credentials (gateway tokens).
	Unauthenticated Code = "UNAUTHENTICATED"
	// ScriptError is a runtime error raised by a tool's own Lua code, or a
	// result that does not match the tool's declared return type. The message
	// is meant for the script's author and is passed through unchanged.
	ScriptError Code = "SCRIPT_ERROR"
	// Internal is a bug or an infrastructure failure. Its details are logged;
	// callers get a generic message.
	Internal Code = "INTERNAL"
)

var known = map[Code]bool{
	InvalidArgument: true, NotFound: true, AlreadyExists: true, DeadlineExceeded: true,
	ResourceExhausted: true, PermissionDenied: true, FailedPrecondition: true,
	Unavailable: true, Unauthenticated: true, ScriptError: true, Internal: true,
}

// Valid reports whether c is one of the codes defined here.
func (c Code) Valid() bool { return known[c] }

// Error is an error with a Code. Msg is safe to show to the caller; Err, if
// set, is the underlying cause and is reachable through errors.Unwrap.
type Error struct {
	Code Code
	Msg  string
	Err  error
}

// New returns an *Error with a formatted message.
func New(code Code, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// Wrap returns an *Error with code and message that keeps err as its cause.
func Wrap(code Code, err error, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...), Err: err}
}

// Error renders "CODE: message", the form Lua scripts see and match on.
func (e *Error) Error() string {
	if e.Msg == "" {
		return string(e.Code)
	}
	return string(e.Code) + ": " + e.Msg
}

// Unwrap returns the cause, if any.
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, &Error{Code: c}) match any *Error with code c.
func (e *Error) Is(target error) bool {
	var t *Error
	if errors.As(target, &t) && t.Msg == "" && t.Err == nil {
		return t.Code == e.Code
	}
	return false
}

// CodeOf returns the code of the first *Error in err's chain, Internal for any
// other non-nil error, and "" for nil.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Code
	}
	return Internal
}

// MessageOf returns the caller-facing message of err: the *Error's message, or
// a generic text for errors that carry no code (their details stay in logs).
func MessageOf(err error) string {
	var fe *Error
	if errors.As(err, &fe) {
		return fe.Msg
	}
	return "internal error"
}

// Parse splits a "CODE: message" string produced by Error back into an
// *Error. A string that does not start with a known code yields ok=false.
func Parse(s string) (e *Error, ok bool) {
	code, msg, _ := strings.Cut(s, ": ")
	if !Code(code).Valid() {
		return nil, false
	}
	return &Error{Code: Code(code), Msg: msg}, true
}
