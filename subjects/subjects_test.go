package subjects_test

import (
	"errors"
	"testing"

	"github.com/loki-iot/loki/subjects"
)

func TestToolExec(t *testing.T) {
	tests := []struct {
		name, tool, want string
		wantErr          error
	}{
		{name: "simple", tool: "add", want: "loki.exec.add"},
		{name: "digits and underscore", tool: "a1_b2", want: "loki.exec.a1_b2"},
		{name: "empty", tool: "", wantErr: subjects.ErrInvalidToken},
		{name: "dot", tool: "a.b", wantErr: subjects.ErrInvalidToken},
		{name: "star", tool: "*", wantErr: subjects.ErrInvalidToken},
		{name: "gt", tool: ">", wantErr: subjects.ErrInvalidToken},
		{name: "space", tool: "a b", wantErr: subjects.ErrInvalidToken},
		{name: "upper", tool: "Add", wantErr: subjects.ErrInvalidToken},
		{name: "leading digit", tool: "1add", wantErr: subjects.ErrInvalidToken},
		{name: "too long", tool: "a" + string(make([]byte, 64)), wantErr: subjects.ErrInvalidToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := subjects.ToolExec(tc.tool)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err: got %v, want %v", err, tc.wantErr)
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
			if err == nil {
				back, err := subjects.ToolFromExec(got)
				if err != nil || back != tc.tool {
					t.Fatalf("round trip: got %q, %v, want %q", back, err, tc.tool)
				}
			}
		})
	}
}

func TestToolFromExecRejects(t *testing.T) {
	for _, subj := range []string{"loki.exec.", "loki.exec.a.b", "loki.tools.list", "loki.exec.A", "hel.exec.add"} {
		if _, err := subjects.ToolFromExec(subj); !errors.Is(err, subjects.ErrInvalidToken) {
			t.Errorf("%q: got %v, want ErrInvalidToken", subj, err)
		}
	}
}

func TestValidToken(t *testing.T) {
	for _, tok := range []string{"", "a.b", "a*", "a>", "a b", "a\tb", "a\nb", "a\x00b"} {
		if err := subjects.ValidToken(tok); !errors.Is(err, subjects.ErrInvalidToken) {
			t.Errorf("%q: got %v, want ErrInvalidToken", tok, err)
		}
	}
	for _, tok := range []string{"a", "sensor-1", "A_b"} {
		if err := subjects.ValidToken(tok); err != nil {
			t.Errorf("%q: got %v, want nil", tok, err)
		}
	}
}

func TestScriptEvents(t *testing.T) {
	tests := []struct {
		name, tool string
		kind       subjects.EventKind
		want       string
		wantErr    error
	}{
		{name: "all", want: "loki.events.*.*"},
		{name: "tool", tool: "add", want: "loki.events.add.*"},
		{name: "kind", kind: subjects.EventFailed, want: "loki.events.*.failed"},
		{name: "both", tool: "add", kind: subjects.EventStarted, want: "loki.events.add.started"},
		{name: "bad kind", kind: "exploded", wantErr: subjects.ErrInvalidToken},
		{name: "bad tool", tool: "a>", wantErr: subjects.ErrInvalidToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := subjects.ScriptEvents(tc.tool, tc.kind)
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Fatalf("got %q, %v, want %q, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
	if _, err := subjects.ScriptEvent("add", ""); !errors.Is(err, subjects.ErrInvalidToken) {
		t.Fatalf("empty kind: got %v, want ErrInvalidToken", err)
	}
}
