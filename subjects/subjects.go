// Package subjects is the only place Loki's NATS subjects are spelled.
//
// Prefixes are constants; subjects with variable tokens are built by functions
// that validate each token and return an error rather than a subject that
// would match more, or less, than intended.
package subjects

import (
	"errors"
	"fmt"
	"strings"
	"unicode"
)

// ErrInvalidToken is returned when a subject token is empty or contains '.',
// '*', '>' or whitespace, or a name does not fit its pattern.
var ErrInvalidToken = errors.New("invalid subject token")

// Loki service subjects.
const (
	// LokiService is the NATS micro service name of the script runner.
	LokiService = "loki"
	// LokiExecPrefix prefixes loki.exec.<tool>; request body is a JSON object of arguments.
	LokiExecPrefix = "loki.exec"
	// LokiExecAll matches every tool's exec subject; the Loki service listens here.
	LokiExecAll = LokiExecPrefix + ".*"
	// LokiToolsList answers with a ToolList of every registered tool.
	LokiToolsList = "loki.tools.list"
	// LokiToolsGet answers with the Tool named in the request body.
	LokiToolsGet = "loki.tools.get"
	// LokiToolsRegister validates and stores the protojson Tool in the request
	// body and answers with it, revision set.
	LokiToolsRegister = "loki.tools.register"
	// LokiToolsUnregister removes the tool named in the request body.
	LokiToolsUnregister = "loki.tools.unregister"
	// LokiCancel is published (not requested) with a streaming call's reply
	// subject as the body; every replica hears it and the one running that
	// call cancels it.
	LokiCancel = "loki.cancel"
	// LokiCapabilities answers with the service's Capabilities.
	LokiCapabilities = "loki.capabilities"
	// LokiEventsPrefix prefixes loki.events.<tool>.<kind>.
	LokiEventsPrefix = "loki.events"
	// LokiEventsAll matches every script event.
	LokiEventsAll = LokiEventsPrefix + ".>"
)

// BenchEcho is the raw request/reply echo `loki bench` measures as its baseline.
const BenchEcho = "_loki_bench.echo"

// KV buckets.
const (
	// ToolsBucket is the JetStream KV bucket holding the tool registry, keyed by tool name.
	ToolsBucket = "loki_tools"
)

// ValidToolName returns an error unless name matches [a-z][a-z0-9_]{0,63}.
// It runs on every call, so it is a loop rather than a regexp.
func ValidToolName(name string) error {
	ok := len(name) > 0 && len(name) <= 64 && name[0] >= 'a' && name[0] <= 'z'
	for i := 1; ok && i < len(name); i++ {
		c := name[i]
		ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'
	}
	if !ok {
		return fmt.Errorf("%w: tool name %q must match [a-z][a-z0-9_]{0,63}", ErrInvalidToken, name)
	}
	return nil
}

// ValidToken returns an error if tok cannot be used as one subject token.
func ValidToken(tok string) error {
	if tok == "" {
		return fmt.Errorf("%w: empty", ErrInvalidToken)
	}
	if i := strings.IndexFunc(tok, func(r rune) bool {
		return r == '.' || r == '*' || r == '>' || unicode.IsSpace(r) || r == 0
	}); i >= 0 {
		return fmt.Errorf("%w: %q contains %q", ErrInvalidToken, tok, tok[i:i+1])
	}
	return nil
}

// ToolExec returns loki.exec.<tool>.
func ToolExec(tool string) (string, error) {
	if err := ValidToolName(tool); err != nil {
		return "", err
	}
	return LokiExecPrefix + "." + tool, nil
}

// ToolFromExec returns the tool named by an exec subject, or an error if subj
// is not loki.exec.<valid tool name>.
func ToolFromExec(subj string) (string, error) {
	rest, ok := strings.CutPrefix(subj, LokiExecPrefix+".")
	if !ok {
		return "", fmt.Errorf("%w: %q is not an exec subject", ErrInvalidToken, subj)
	}
	if err := ValidToolName(rest); err != nil {
		return "", err
	}
	return rest, nil
}

// EventKind is the last token of a script event subject.
type EventKind string

// The kinds of script events.
const (
	EventStarted   EventKind = "started"
	EventCompleted EventKind = "completed"
	EventFailed    EventKind = "failed"
)

// Valid reports whether k is a known event kind.
func (k EventKind) Valid() bool {
	return k == EventStarted || k == EventCompleted || k == EventFailed
}

// ScriptEvent returns loki.events.<tool>.<kind>.
func ScriptEvent(tool string, kind EventKind) (string, error) {
	if err := ValidToolName(tool); err != nil {
		return "", err
	}
	if !kind.Valid() {
		return "", fmt.Errorf("%w: event kind %q", ErrInvalidToken, kind)
	}
	return LokiEventsPrefix + "." + tool + "." + string(kind), nil
}

// ScriptEvents returns the subscription subject for events filtered by tool
// and kind; an empty tool or kind matches all.
func ScriptEvents(tool string, kind EventKind) (string, error) {
	t, k := "*", "*"
	if tool != "" {
		if err := ValidToolName(tool); err != nil {
			return "", err
		}
		t = tool
	}
	if kind != "" {
		if !kind.Valid() {
			return "", fmt.Errorf("%w: event kind %q", ErrInvalidToken, kind)
		}
		k = string(kind)
	}
	return LokiEventsPrefix + "." + t + "." + k, nil
}
