package loki_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/loki-iot/loki/services/loki"
)

const validTool = `
[[tools]]
name = "add"
description = "Adds two numbers"
returns = "number"
timeout = "2s"
script = "return a + b"
grants = ["hel.kv:sensors"]
  [[tools.params]]
  name = "a"
  type = "number"
  required = true
  description = "first addend"
  [[tools.params]]
  name = "b"
  type = "number"
  default = 0
`

func TestParseToolsValid(t *testing.T) {
	tools, err := loki.ParseTools("tools.toml", []byte(validTool), fstest.MapFS{})
	if err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	if len(tools) != 1 {
		t.Fatalf("got %d tools, want 1", len(tools))
	}
	add := tools[0]
	if got := add.Timeout.String(); got != "2s" {
		t.Errorf("timeout: got %s, want 2s", got)
	}
	if len(add.Params) != 2 || add.Params[1].Default != float64(0) || !add.Params[0].Required {
		t.Errorf("params: got %+v", add.Params)
	}
	if len(add.Grants) != 1 || add.Grants[0].String() != "hel.kv:sensors" {
		t.Errorf("grants: got %v, want [hel.kv:sensors]", add.Grants)
	}
}

func TestParseToolsScriptFile(t *testing.T) {
	dir := fstest.MapFS{"scripts/double.lua": {Data: []byte("return x * 2\n")}}
	src := `
[[tools]]
name = "double"
returns = "number"
script_file = "scripts/double.lua"
  [[tools.params]]
  name = "x"
  type = "number"
`
	tools, err := loki.ParseTools("tools.toml", []byte(src), dir)
	if err != nil {
		t.Fatalf("got %v, want nil", err)
	}
	if got := tools[0].Def.GetSource(); got != "return x * 2\n" {
		t.Fatalf("source: got %q", got)
	}
	if got := tools[0].Def.GetSourceName(); got != "scripts/double.lua" {
		t.Fatalf("source name: got %q, want scripts/double.lua", got)
	}
}

// TestParseToolsRejects checks that every bad config is refused with an error
// naming the file, the line where TOML gives one, the tool and the problem,
// and that nothing is returned.
func TestParseToolsRejects(t *testing.T) {
	tool := func(body string) string {
		return "[[tools]]\nname = \"t\"\nreturns = \"number\"\n" + body
	}
	tests := []struct {
		name string
		toml string
		want []string // substrings of the error
	}{
		{name: "malformed toml", toml: "[[tools]]\nname = \"t\nscript = \"x\"", want: []string{"tools.toml:2"}},
		{name: "unknown tool key", toml: tool("script = \"return 1\"\nscirpt_file = \"x\"\n"), want: []string{"tools.toml:5", "unknown key", "scirpt_file"}},
		{name: "unknown param key", toml: tool("script = \"return 1\"\n[[tools.params]]\nname = \"a\"\ntype = \"number\"\nrequird = true\n"), want: []string{"tools.toml:8", "requird"}},
		{name: "no tools", toml: "# empty\n", want: []string{"no [[tools]]"}},
		{name: "duplicate tool", toml: tool("script = \"return 1\"\n") + tool("script = \"return 2\"\n"), want: []string{"tools.toml:5", `tool "t"`, "duplicate name"}},
		{name: "duplicate param", toml: tool("script = \"return a\"\n[[tools.params]]\nname = \"a\"\ntype = \"number\"\n[[tools.params]]\nname = \"a\"\ntype = \"string\"\n"), want: []string{`tool "t"`, `duplicate param name "a"`}},
		{name: "bad param type", toml: tool("script = \"return a\"\n[[tools.params]]\nname = \"a\"\ntype = \"float\"\n"), want: []string{`param "a"`, `type "float"`}},
		{name: "bad returns", toml: "[[tools]]\nname = \"t\"\nreturns = \"double\"\nscript = \"return 1\"\n", want: []string{`tool "t"`, `returns "double"`}},
		{name: "bad timeout", toml: tool("timeout = \"2 seconds\"\nscript = \"return 1\"\n"), want: []string{"tools.toml", "2 seconds"}},
		{name: "negative timeout", toml: tool("timeout = \"-1s\"\nscript = \"return 1\"\n"), want: []string{`tool "t"`, "timeout"}},
		{name: "bad name", toml: "[[tools]]\nname = \"Add\"\nscript = \"return 1\"\n", want: []string{`tool "Add"`, "name must match"}},
		{name: "missing script file", toml: tool("script_file = \"nope.lua\"\n"), want: []string{"tools.toml:1", `tool "t"`, "nope.lua", "not found"}},
		{name: "script file outside", toml: tool("script_file = \"../secret.lua\"\n"), want: []string{`tool "t"`, "inside the config's directory"}},
		{name: "both script kinds", toml: tool("script = \"return 1\"\nscript_file = \"x.lua\"\n"), want: []string{`tool "t"`, "not both"}},
		{name: "no script", toml: tool(""), want: []string{`tool "t"`, "script or script_file is required"}},
		{name: "lua syntax error", toml: tool("script = \"\"\"\nlocal x = 1\nreturn x +\n\"\"\"\n"), want: []string{`tool "t"`, "t:"}},
		{name: "bad grant", toml: tool("script = \"return 1\"\ngrants = [\"hel..kv\"]\n"), want: []string{`tool "t"`, `grant "hel..kv"`}},
		{name: "default of wrong type", toml: tool("script = \"return a\"\n[[tools.params]]\nname = \"a\"\ntype = \"number\"\ndefault = \"x\"\n"), want: []string{`param "a"`, "default"}},
		{name: "required with default", toml: tool("script = \"return a\"\n[[tools.params]]\nname = \"a\"\ntype = \"number\"\nrequired = true\ndefault = 1\n"), want: []string{`param "a"`, "required"}},
		{name: "reserved param name", toml: tool("script = \"return 1\"\n[[tools.params]]\nname = \"end\"\ntype = \"number\"\n"), want: []string{`"end"`, "reserved"}},
		{name: "wrong toml type", toml: "[[tools]]\nname = 5\nscript = \"return 1\"\n", want: []string{"tools.toml"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tools, err := loki.ParseTools("tools.toml", []byte(tc.toml), fstest.MapFS{})
			if !errors.Is(err, loki.ErrConfig) {
				t.Fatalf("got %v, want ErrConfig", err)
			}
			if tools != nil {
				t.Fatalf("got %d tools on error, want none", len(tools))
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestLoadToolsFromDisk(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "scripts"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "scripts", "hi.lua"), []byte(`return "hi " .. who`), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "tools.toml")
	src := "[[tools]]\nname = \"hi\"\nreturns = \"string\"\nscript_file = \"scripts/hi.lua\"\n[[tools.params]]\nname = \"who\"\ntype = \"string\"\n"
	if err := os.WriteFile(cfg, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	tools, err := loki.LoadTools(cfg)
	if err != nil || len(tools) != 1 {
		t.Fatalf("got %v, %v, want one tool", tools, err)
	}
	if _, err := loki.LoadTools(filepath.Join(dir, "missing.toml")); !errors.Is(err, loki.ErrConfig) {
		t.Fatalf("missing file: got %v, want ErrConfig", err)
	}
}

func FuzzParseTools(f *testing.F) {
	f.Add([]byte(validTool))
	f.Add([]byte("[[tools]]\nname = \"t\"\nscript = \"return 1\"\n"))
	f.Add([]byte("[[tools]]\nname = \"t\"\nscript_file = \"a.lua\"\n"))
	f.Add([]byte("[[tools]]\nname = \"x\"\n[[tools.params]]\nname = \"a\"\ndefault = [1, {b = 2}]\n"))
	dir := fstest.MapFS{"a.lua": {Data: []byte("return 1")}}
	f.Fuzz(func(t *testing.T, data []byte) {
		tools, err := loki.ParseTools("fuzz.toml", data, dir)
		if err != nil {
			if !errors.Is(err, loki.ErrConfig) {
				t.Fatalf("error does not wrap ErrConfig: %v", err)
			}
			return
		}
		for _, c := range tools {
			if c.Program == nil || c.Def.GetName() == "" || !c.Returns.Valid() {
				t.Fatalf("accepted an incomplete tool: %+v", c.Def)
			}
		}
	})
}
