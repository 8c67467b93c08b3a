package hel_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/hel"
)

func TestFilesOperations(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	c := e.c
	if err := c.WriteFile(ctx, "reports", "daily/2024-01-01.txt", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	got, err := c.ReadFile(ctx, "reports", "daily/2024-01-01.txt")
	if err != nil || string(got) != "hello" {
		t.Fatalf("read: got %q %v, want hello", got, err)
	}
	if err := c.WriteFile(ctx, "reports", "daily/2024-01-01.txt", []byte("replaced")); err != nil {
		t.Fatal(err)
	}
	if err := c.AppendFile(ctx, "reports", "daily/2024-01-01.txt", []byte("+more")); err != nil {
		t.Fatal(err)
	}
	if err := c.AppendFile(ctx, "reports", "log.txt", []byte("line1\n")); err != nil {
		t.Fatal(err)
	}
	got, err = c.ReadFile(ctx, "reports", "daily/2024-01-01.txt")
	if err != nil || string(got) != "replaced+more" {
		t.Fatalf("read after write and append: got %q %v, want replaced+more", got, err)
	}
	part, size, err := c.ReadFileAt(ctx, "reports", "daily/2024-01-01.txt", 3, 5)
	if err != nil || string(part) != "laced" || size != 13 {
		t.Fatalf("range read: got %q size %d %v, want laced size 13", part, size, err)
	}
	if err := c.Mkdir(ctx, "reports", "empty/dir"); err != nil {
		t.Fatal(err)
	}
	ents, err := c.ListFiles(ctx, "reports", "")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name+":"+e.Kind)
	}
	if got, want := strings.Join(names, ","), "daily:dir,empty:dir,log.txt:file"; got != want {
		t.Fatalf("list: got %s, want %s", got, want)
	}
	st, err := c.Stat(ctx, "reports", "log.txt")
	if err != nil || st.Size != 6 || st.Kind != "file" {
		t.Fatalf("stat: got %+v %v, want a 6-byte file", st, err)
	}
	wantCode(t, c.DeleteFile(ctx, "reports", "empty"), fault.FailedPrecondition) // not empty
	if err := c.DeleteFile(ctx, "reports", "empty/dir"); err != nil {
		t.Fatal(err)
	}
	if err := c.DeleteFile(ctx, "reports", "log.txt"); err != nil {
		t.Fatal(err)
	}
	_, err = c.ReadFile(ctx, "reports", "log.txt")
	wantCode(t, err, fault.NotFound)
	wantCode(t, c.DeleteFile(ctx, "reports", "log.txt"), fault.NotFound)
	_, err = c.ReadFile(ctx, "reports", "daily")
	wantCode(t, err, fault.FailedPrecondition) // a directory
	wantCode(t, c.WriteFile(ctx, "reports", "daily", []byte("x")), fault.FailedPrecondition)
	wantCode(t, c.WriteFile(ctx, "reports", "", []byte("x")), fault.InvalidArgument)
	if ents, err := c.ListFiles(ctx, "nothing_here", ""); err != nil || len(ents) != 0 {
		t.Fatalf("list of an unused namespace: got %v %v, want none", ents, err)
	}

	// No temporary file is left behind by writes.
	var temps []string
	_ = filepath.WalkDir(e.cfg.Files.Root, func(p string, d os.DirEntry, err error) error {
		if err == nil && strings.HasPrefix(d.Name(), ".hel-") {
			temps = append(temps, p)
		}
		return nil
	})
	if len(temps) > 0 {
		t.Fatalf("got temporary files %v, want none", temps)
	}
}

func TestFilesReadLimit(t *testing.T) {
	e := setup(t, func(c *hel.Config) { c.Files.MaxReadBytes = 10 })
	ctx := ctxT(t)
	if err := e.c.WriteFile(ctx, "ns", "big", []byte("0123456789abcdef")); err != nil {
		t.Fatal(err)
	}
	_, err := e.c.ReadFile(ctx, "ns", "big")
	wantCode(t, err, fault.ResourceExhausted)
	part, size, err := e.c.ReadFileAt(ctx, "ns", "big", 10, 0)
	if err != nil || string(part) != "abcdef" || size != 16 {
		t.Fatalf("got %q %d %v, want abcdef 16", part, size, err)
	}
}

// TestFilesConfinement tries every way out of a namespace we know of.
func TestFilesConfinement(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	root := e.cfg.Files.Root
	outside := filepath.Join(filepath.Dir(root), "outside")
	if err := os.MkdirAll(outside, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.c.WriteFile(ctx, "ns", "inside.txt", []byte("ok")); err != nil {
		t.Fatal(err)
	}
	nsDir := filepath.Join(root, "ns")
	// links (re)creates the symlinks before each attempt, since a refused
	// operation must not have changed them, but a test of it must not
	// depend on another's outcome.
	links := func(t *testing.T) {
		t.Helper()
		for name, target := range map[string]string{
			"link_out":      outside,                          // directory outside
			"link_secret":   filepath.Join(outside, "secret"), // file outside, absolute
			"link_relative": "../../outside/secret",           // file outside, relative
			"link_other_ns": "../other",                       // another namespace
			"link_inside":   "inside.txt",                     // allowed: stays inside
		} {
			p := filepath.Join(nsDir, name)
			if st, err := os.Lstat(p); err == nil && st.Mode()&os.ModeSymlink == 0 {
				t.Fatalf("%s: got a %s, want the symlink still there", name, st.Mode())
			}
			_ = os.Remove(p)
			if err := os.Symlink(target, p); err != nil {
				t.Fatal(err)
			}
		}
	}
	links(t)
	if err := os.MkdirAll(filepath.Join(root, "other"), 0o750); err != nil {
		t.Fatal(err)
	}
	// A namespace directory that is itself a symlink out of the root.
	if err := os.Symlink(outside, filepath.Join(root, "evil")); err != nil {
		t.Fatal(err)
	}

	type op struct {
		name string
		do   func(ns, path string) error
	}
	ops := []op{
		{"read", func(ns, p string) error { _, err := e.c.ReadFile(ctx, ns, p); return err }},
		{"write", func(ns, p string) error { return e.c.WriteFile(ctx, ns, p, []byte("pwned")) }},
		{"append", func(ns, p string) error { return e.c.AppendFile(ctx, ns, p, []byte("pwned")) }},
		{"stat", func(ns, p string) error { _, err := e.c.Stat(ctx, ns, p); return err }},
		{"list", func(ns, p string) error { _, err := e.c.ListFiles(ctx, ns, p); return err }},
		{"mkdir", func(ns, p string) error { return e.c.Mkdir(ctx, ns, p) }},
	}
	tests := []struct {
		name, ns, path string
		want           fault.Code
	}{
		{name: "dot dot", ns: "ns", path: "../outside/secret", want: fault.PermissionDenied},
		{name: "dot dot in the middle", ns: "ns", path: "a/../../outside/secret", want: fault.PermissionDenied},
		{name: "dot dot that stays inside", ns: "ns", path: "a/../inside.txt", want: fault.PermissionDenied},
		{name: "bare dot dot", ns: "ns", path: "..", want: fault.PermissionDenied},
		{name: "absolute", ns: "ns", path: "/etc/passwd", want: fault.PermissionDenied},
		{name: "absolute to outside", ns: "ns", path: filepath.Join(outside, "secret"), want: fault.PermissionDenied},
		{name: "symlink to a directory outside", ns: "ns", path: "link_out/secret", want: fault.PermissionDenied},
		{name: "symlink to a file outside", ns: "ns", path: "link_secret", want: fault.PermissionDenied},
		{name: "relative symlink out", ns: "ns", path: "link_relative", want: fault.PermissionDenied},
		{name: "symlink to another namespace", ns: "ns", path: "link_other_ns/x", want: fault.PermissionDenied},
		{name: "namespace that is a symlink out", ns: "evil", path: "secret", want: fault.PermissionDenied},
		{name: "NUL byte", ns: "ns", path: "a\x00b", want: fault.InvalidArgument},
		{name: "newline", ns: "ns", path: "a\nb", want: fault.InvalidArgument},
		{name: "backslash", ns: "ns", path: `..\outside\secret`, want: fault.InvalidArgument},
		{name: "invalid UTF-8", ns: "ns", path: "a\xffb", want: fault.InvalidArgument},
		{name: "component too long", ns: "ns", path: strings.Repeat("a", 256), want: fault.InvalidArgument},
		{name: "path too long", ns: "ns", path: strings.Repeat("a/", hel.MaxPathBytes/2+1), want: fault.InvalidArgument},
		{name: "reserved temp name", ns: "ns", path: ".hel-tmp", want: fault.InvalidArgument},
		{name: "namespace with dot dot", ns: "..", path: "x", want: fault.InvalidArgument},
		{name: "namespace with slash", ns: "a/b", path: "x", want: fault.InvalidArgument},
		{name: "empty namespace", ns: "", path: "x", want: fault.InvalidArgument},
	}
	for _, tc := range tests {
		for _, o := range ops {
			t.Run(tc.name+"/"+o.name, func(t *testing.T) {
				links(t)
				wantCode(t, o.do(tc.ns, tc.path), tc.want)
				links(t)
			})
		}
	}
	secret, err := os.ReadFile(filepath.Join(outside, "secret"))
	if err != nil || string(secret) != "secret" {
		t.Fatalf("file outside the root: got %q %v, want it untouched", secret, err)
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 1 {
		t.Fatalf("outside dir: got %d entries, want only the secret", len(ents))
	}

	// Not escapes: encoded dots and odd names are literal names inside.
	for _, p := range []string{"%2e%2e/%2e%2e/x", "..%2f..%2fx", "...", "a..b", "./dot/./ok", "dir//double", "ünïcødé 文件.txt"} {
		t.Run("literal "+p, func(t *testing.T) {
			if err := e.c.WriteFile(ctx, "ns", p, []byte("in")); err != nil {
				t.Fatal(err)
			}
			clean, _ := hel.CleanPath(p)
			if _, err := os.Stat(filepath.Join(nsDir, filepath.FromSlash(clean))); err != nil {
				t.Fatalf("got %v, want %q inside the namespace", err, clean)
			}
		})
	}
	// A symlink inside the namespace that stays inside may be read.
	got, err := e.c.ReadFile(ctx, "ns", "link_inside")
	if err != nil || string(got) != "ok" {
		t.Fatalf("symlink inside: got %q %v, want ok", got, err)
	}
	// but is not replaced by a write.
	wantCode(t, e.c.WriteFile(ctx, "ns", "link_inside", []byte("x")), fault.FailedPrecondition)
}

func TestFilesQuota(t *testing.T) {
	e := setup(t, func(c *hel.Config) {
		c.Files.Namespaces = map[string]hel.Quota{"tiny": {MaxBytes: 100}}
	})
	ctx := ctxT(t)
	if err := e.c.WriteFile(ctx, "tiny", "a", bytes.Repeat([]byte("a"), 60)); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		do   func() error
		want fault.Code
	}{
		{"new file past quota", func() error { return e.c.WriteFile(ctx, "tiny", "b", bytes.Repeat([]byte("b"), 50)) }, fault.ResourceExhausted},
		{"append past quota", func() error { return e.c.AppendFile(ctx, "tiny", "a", bytes.Repeat([]byte("c"), 41)) }, fault.ResourceExhausted},
		{"replace within quota", func() error { return e.c.WriteFile(ctx, "tiny", "a", bytes.Repeat([]byte("d"), 90)) }, ""},
		{"append within quota", func() error { return e.c.AppendFile(ctx, "tiny", "a", bytes.Repeat([]byte("e"), 10)) }, ""},
		{"one byte more", func() error { return e.c.WriteFile(ctx, "tiny", "z", []byte("z")) }, fault.ResourceExhausted},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.do(), tc.want) })
	}
	got, err := e.c.ReadFile(ctx, "tiny", "a")
	if want := strings.Repeat("d", 90) + strings.Repeat("e", 10); err != nil || string(got) != want {
		t.Fatalf("got %q %v, want %q", got, err, want)
	}
	if _, err := e.c.ReadFile(ctx, "tiny", "b"); fault.CodeOf(err) != fault.NotFound {
		t.Fatalf("refused new file: got %v, want NOT_FOUND", err)
	}
	if err := e.c.DeleteFile(ctx, "tiny", "a"); err != nil {
		t.Fatal(err)
	}
	if err := e.c.WriteFile(ctx, "tiny", "b", bytes.Repeat([]byte("b"), 100)); err != nil {
		t.Fatalf("write after freeing space: %v", err)
	}
}
