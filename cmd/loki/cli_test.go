package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestCLIHabits: every command answers --help and `loki help CMD` on stdout
// with exit 0, and refuses an unknown flag and a stray argument with exit 2,
// one error and nothing on stdout.
func TestCLIHabits(t *testing.T) {
	t.Setenv("LOKI_DATA_DIR", t.TempDir()) // nothing may touch a real data dir
	type command struct {
		path  []string // the command as typed after "loki"
		valid []string // positionals that make the line otherwise valid
		flags bool     // has flags of its own
	}
	cmds := []command{
		{path: []string{"up"}, flags: true},
		{path: []string{"serve"}},
		{path: []string{"tools"}, flags: true},
		{path: []string{"tools", "get"}, valid: []string{"add"}, flags: true},
		{path: []string{"tools", "register"}, valid: []string{"tools.toml"}, flags: true},
		{path: []string{"tools", "unregister"}, valid: nil, flags: true},
		{path: []string{"call"}, valid: []string{"add"}, flags: true},
		{path: []string{"events"}, flags: true},
		{path: []string{"auth"}},
		{path: []string{"bench"}, flags: true},
		{path: []string{"completion"}, valid: []string{"bash"}},
		{path: []string{"version"}},
	}
	for _, c := range []string{"loki", "hel", "fenrir", "jormungandr", "gateway", "auth"} {
		cmds = append(cmds, command{path: []string{"serve", c}, flags: true})
	}
	for _, s := range []string{"add", "add-device", "revoke"} {
		cmds = append(cmds, command{path: []string{"auth", s}, valid: []string{"x"}, flags: true})
	}
	for _, s := range []string{"list", "export", "context"} {
		cmds = append(cmds, command{path: []string{"auth", s}, flags: true})
	}
	oneDash := regexp.MustCompile(`(?m)^  -[a-z][a-z]`)
	for _, c := range cmds {
		name := strings.Join(c.path, " ")
		t.Run(name+"/--help", func(t *testing.T) {
			out, errOut, err := cliAll(append(append([]string{}, c.path...), "--help")...)
			if exitCode(err) != 0 || err != nil {
				t.Fatalf("got %v (exit %d), want exit 0", err, exitCode(err))
			}
			if !strings.HasPrefix(out, "Usage: loki "+name) || errOut != "" {
				t.Fatalf("got stdout %q, stderr %q; want the usage on stdout only", out, errOut)
			}
			if c.flags && (!strings.Contains(out, "\nFlags:\n  --") || oneDash.MatchString(out)) {
				t.Fatalf("flags not listed as --name:\n%s", out)
			}
			help, _, err := cliAll(append([]string{"help"}, c.path...)...)
			if err != nil || help != out {
				t.Fatalf("help %s: got %v and\n%s\nwant what --help prints", name, err, help)
			}
		})
		t.Run(name+"/unknown flag", func(t *testing.T) {
			out, errOut, err := cliAll(append(append(append([]string{}, c.path...), c.valid...), "--frob")...)
			if exitCode(err) != 2 || out != "" || errOut != "" {
				t.Fatalf("got %v (exit %d), stdout %q, stderr %q; want exit 2 and one error", err, exitCode(err), out, errOut)
			}
			if c.flags && !strings.Contains(err.Error(), "unknown flag --frob") {
				t.Fatalf("got %v, want it to name --frob", err)
			}
		})
		if name == "tools unregister" {
			continue // takes any number of names
		}
		t.Run(name+"/extra argument", func(t *testing.T) {
			out, errOut, err := cliAll(append(append(append([]string{}, c.path...), c.valid...), "stray")...)
			if exitCode(err) != 2 || out != "" || errOut != "" {
				t.Fatalf("got %v (exit %d), stdout %q, stderr %q; want exit 2 and one error", err, exitCode(err), out, errOut)
			}
		})
	}
}

func TestCLIUsageMistakes(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"duplicate key", []string{"call", "add", "a=1", "a=2"}, "argument a given twice"},
		{"pair without =", []string{"call", "add", "a"}, `argument "a": want key=value`},
		{"stray argument named", []string{"up", "--nats-port", "-1", "now"}, `unexpected argument "now"`},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"unknown top-level flag", []string{"--bogus"}, "unknown flag --bogus"},
		{"unknown top-level flag with a value", []string{"--bogus=1", "up"}, "unknown flag --bogus"},
		{"unknown top-level one-letter flag", []string{"-x"}, "unknown flag -x"},
		{"unknown tools command", []string{"tools", "list"}, `unknown command "list"`},
		{"unknown shell", []string{"completion", "tcsh"}, `unknown shell "tcsh"`},
		{"bad flag value", []string{"call", "add", "--timeout", "soon"}, "--timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := cliAll(tc.args...)
			if exitCode(err) != 2 || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v (exit %d), want exit 2 naming %q", err, exitCode(err), tc.want)
			}
			var ee *exitError
			if !errors.As(err, &ee) || ee.hint == "" {
				t.Fatalf("got %#v, want a hint to the help", err)
			}
		})
	}
}

// TestAuthOutputFlag: `loki auth add` and `loki auth export` write to
// --output FILE, and -o is its short form.
func TestAuthOutputFlag(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("LOKI_DATA_DIR", dir)
	out := t.TempDir()
	offline := []string{"--data-dir", dir, "--nats-url", "nats://127.0.0.1:1"}
	for flag, name := range map[string]string{"--output": "eve", "-o": "frank"} {
		seed := filepath.Join(out, name+".nk")
		if _, _, err := cliAll(append([]string{"auth", "add", name, flag, seed}, offline...)...); err != nil {
			t.Fatalf("auth add %s: %v", flag, err)
		}
		if b, err := os.ReadFile(seed); err != nil || !strings.Contains(string(b), "BEGIN USER NKEY SEED") {
			t.Fatalf("auth add %s FILE: got %q, %v, want the seed in FILE", flag, b, err)
		}
		conf := filepath.Join(out, name+".conf")
		stdout, _, err := cliAll("auth", "export", flag, conf, "--data-dir", dir)
		if err != nil || stdout != "" {
			t.Fatalf("auth export %s: got stdout %q, %v, want the export in FILE only", flag, stdout, err)
		}
		if b, err := os.ReadFile(conf); err != nil || !strings.Contains(string(b), "authorization {") {
			t.Fatalf("auth export %s FILE: got %q, %v, want the configuration in FILE", flag, b, err)
		}
	}
	help, _, err := cliAll("auth", "export", "--help")
	if err != nil || !strings.Contains(help, "\n  -o, --output FILE\n") {
		t.Fatalf("auth export --help: got %v and\n%s\nwant -o, --output FILE on one line", err, help)
	}
}

func TestVersion(t *testing.T) {
	want := regexp.MustCompile(`^loki \S+ \(go\S+, \w+/\w+\)\n$`)
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, _, err := cliAll(args...)
		if err != nil || !want.MatchString(out) {
			t.Fatalf("%v: got %q, %v, want loki VERSION (go VERSION, GOOS/GOARCH)", args, out, err)
		}
	}
	defer func(v string) { version = v }(version)
	version = "v1.2.3"
	if out, _, _ := cliAll("version"); !strings.HasPrefix(out, "loki v1.2.3 (") {
		t.Fatalf("with -X main.version=v1.2.3: got %q", out)
	}
}

func TestCompletion(t *testing.T) {
	scripts := map[string]string{}
	for _, sh := range []string{"bash", "zsh", "fish"} {
		out, _, err := cliAll("completion", sh)
		if err != nil {
			t.Fatalf("completion %s: %v", sh, err)
		}
		scripts[sh] = out
	}
	for _, want := range []string{"up serve tools", `"serve ")`, "jormungandr", "add-device", "get register unregister", "--nats-url", "--data-dir", "--metrics-listen"} {
		if !strings.Contains(scripts["bash"], want) {
			t.Errorf("bash completion lacks %q", want)
		}
	}
	if !strings.Contains(scripts["zsh"], "bashcompinit") || !strings.Contains(scripts["fish"], "-l nats-url") {
		t.Errorf("zsh or fish completion incomplete:\n%s\n%s", scripts["zsh"], scripts["fish"])
	}
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash to check the script with")
	}
	f := filepath.Join(t.TempDir(), "loki.bash")
	if err := os.WriteFile(f, []byte(scripts["bash"]), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(bash, "-n", f).CombinedOutput(); err != nil {
		t.Fatalf("bash -n: %v\n%s", err, out)
	}
	// The function completes: subcommands after "serve".
	probe := scripts["bash"] + `COMP_WORDS=(loki serve ""); COMP_CWORD=2; _loki; echo "${COMPREPLY[*]}"` + "\n"
	if err := os.WriteFile(f, []byte(probe), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bash, f).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "fenrir") {
		t.Fatalf("completing 'loki serve ': got %q, %v", out, err)
	}
}

// TestToolsRegisterGetUnregister runs the tools commands against a real
// loki up: register checks the whole file first, only admins may change
// the registry.
func TestToolsRegisterGetUnregister(t *testing.T) {
	dir := t.TempDir()
	url, stop, _ := startUpOut(t, dir)
	defer stop()

	out, _, err := cliAll("tools", "get", "add", "--nats-url", url)
	if err != nil || !strings.Contains(out, `name = "add"`) || !strings.Contains(out, "[[tools.params]]") {
		t.Fatalf("tools get add: got %v and\n%s", err, out)
	}
	out, _, err = cliAll("tools", "get", "add", "--json", "--nats-url", url)
	if err != nil || !regexp.MustCompile(`"name":\s*"add"`).MatchString(out) {
		t.Fatalf("tools get add --json: got %v and\n%s", err, out)
	}
	if _, _, err := cliAll("tools", "get", "nope", "--nats-url", url); exitCode(err) != 1 || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Fatalf("tools get of no tool: got %v, want NOT_FOUND, exit 1", err)
	}

	good := filepath.Join(t.TempDir(), "double.toml")
	writeTestFile(t, good, `[[tools]]
name = "double"
returns = "integer"
script = "return n * 2"
  [[tools.params]]
  name = "n"
  type = "integer"
  required = true
`)
	// The second tool is wrong: neither is registered.
	bad := filepath.Join(t.TempDir(), "half.toml")
	writeTestFile(t, bad, `[[tools]]
name = "first"
returns = "integer"
script = "return 1"

[[tools]]
name = "second"
returns = "integer"
scirpt = "return 2"
`)
	_, _, err = cliAll("tools", "register", bad, "--nats-url", url)
	if exitCode(err) != 1 || !strings.Contains(err.Error(), bad+":") || !strings.Contains(err.Error(), "scirpt") {
		t.Fatalf("register of a bad file: got %v, want exit 1 naming %s:LINE and the key", err, bad)
	}
	if _, _, err := cliAll("tools", "get", "first", "--nats-url", url); exitCode(err) != 1 {
		t.Fatalf("a bad file was half applied: get first: %v", err)
	}

	// A client credential may not register.
	seed := filepath.Join(t.TempDir(), "alice.nk")
	if _, _, err := cliAll("auth", "add", "alice", "-o", seed, "--nats-url", url); err != nil {
		t.Fatalf("auth add: %v", err)
	}
	if _, _, err := cliAll("tools", "register", good, "--creds", seed, "--nats-url", url); exitCode(err) != 1 || !strings.Contains(err.Error(), "PERMISSION_DENIED") {
		t.Fatalf("register as a client: got %v, want PERMISSION_DENIED, exit 1", err)
	}

	out, _, err = cliAll("tools", "register", good, "--nats-url", url)
	if err != nil || !strings.Contains(out, "registered double") {
		t.Fatalf("tools register: got %v, %q", err, out)
	}
	if got, err := cli(t, "call", "double", "n=21", "--nats-url", url); err != nil || got != "42" {
		t.Fatalf("call double: got %q, %v, want 42", got, err)
	}
	if _, _, err := cliAll("tools", "unregister", "double", "--creds", seed, "--nats-url", url); exitCode(err) != 1 {
		t.Fatalf("unregister as a client: got %v, want exit 1", err)
	}
	if out, _, err := cliAll("tools", "unregister", "double", "--nats-url", url); err != nil || !strings.Contains(out, "unregistered double") {
		t.Fatalf("tools unregister: got %v, %q", err, out)
	}
	// Replicas learn of the removal from the registry's watch, a moment later.
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, _, err := cliAll("tools", "get", "double", "--nats-url", url)
		if exitCode(err) == 1 && strings.Contains(err.Error(), "NOT_FOUND") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("get after unregister: got %v, want NOT_FOUND", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, _, err := cliAll("tools", "unregister", "double", "--nats-url", url); exitCode(err) != 1 || !strings.Contains(err.Error(), "NOT_FOUND") {
		t.Fatalf("unregister twice: got %v, want NOT_FOUND", err)
	}
}

func writeTestFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
