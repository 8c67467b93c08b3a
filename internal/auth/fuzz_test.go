package auth_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// FuzzMQTTFilterSubjects checks that no topic filter, however written,
// gives a grant outside the topic space scripts may use: every subject
// returned is a valid NATS subject without an empty token, and its first
// token is a plain name, never '$' (the server's own), a wildcard, or one
// of Loki's roots.
//
//	go test -fuzz FuzzMQTTFilterSubjects ./internal/auth/
func FuzzMQTTFilterSubjects(f *testing.F) {
	for _, s := range []string{
		"readings/#", "readings", "a/+/b", "a.b/c", "a/+/#", "homeassistant/+/config",
		"", "#", "+", "+/#", "$SYS/x", "a/#/b", "a/b+", "loki/exec/add", "_INBOX/x",
		"jotunheim/x", "a//b", "/a", "a/", "a b", "a/*", "a/>", "café/+", "a\x00b", "a\x7f",
		"\xff/x", "a/\u00a0", "..", "./#", "a.>/b", "$", "a/$KV",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, filter string) {
		subs, err := subjects.MQTTFilterSubjects(filter)
		if err != nil {
			if !errors.Is(err, subjects.ErrInvalidToken) {
				t.Fatalf("MQTTFilterSubjects(%q): got %v, want an error wrapping %v", filter, err, subjects.ErrInvalidToken)
			}
			return
		}
		if len(subs) == 0 || len(subs) > 2 {
			t.Fatalf("MQTTFilterSubjects(%q): got %q, want one or two subjects", filter, subs)
		}
		for _, s := range subs {
			if !server.IsValidSubject(s) {
				t.Fatalf("MQTTFilterSubjects(%q): %q is not a valid NATS subject", filter, s)
			}
			toks := strings.Split(s, ".")
			if slices.Contains(toks, "") {
				t.Fatalf("MQTTFilterSubjects(%q): %q has an empty token", filter, s)
			}
			first := toks[0]
			if strings.HasPrefix(first, "$") || first == "*" || first == ">" || slices.Contains(subjects.InternalRoots, first) {
				t.Fatalf("MQTTFilterSubjects(%q): %q reaches a subject no grant may", filter, s)
			}
			if strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
				t.Fatalf("MQTTFilterSubjects(%q): %q holds a space or control character", filter, s)
			}
		}
	})
}

// FuzzOpenIdentities checks that a damaged identities.json never panics
// Open: it is refused with an error, or it loads, and then the server users
// build, every built-in is there with its role, and its seed matches.
//
//	go test -fuzz FuzzOpenIdentities ./internal/auth/
func FuzzOpenIdentities(f *testing.F) {
	// A real store, as Open and Add write it, and a few hand-made ones.
	dir := f.TempDir()
	a, err := auth.Open(dir)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := a.Add("alice", subjects.RoleClient); err != nil {
		f.Fatal(err)
	}
	if _, err := a.AddDevice("kitchen"); err != nil {
		f.Fatal(err)
	}
	_ = a.Close()
	real, err := os.ReadFile(filepath.Join(dir, "identities.json"))
	if err != nil {
		f.Fatal(err)
	}
	// The real store's seeds go next to every input, so that an input that
	// keeps the built-ins intact costs no new key pairs.
	seeds := map[string][]byte{}
	for _, r := range auth.BuiltIns {
		if seeds[string(r)], err = os.ReadFile(auth.SeedFile(dir, string(r))); err != nil {
			f.Fatal(err)
		}
	}
	f.Add(real)
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"identities":null}`))
	f.Add([]byte(`{"identities":[{"name":"bob","role":"device"}]}`))
	f.Add([]byte(`{"identities":[{"name":"loki","role":"admin","public_key":"x","built_in":true}]}`))
	f.Add([]byte(`{"identities":[{"name":"bob","role":"client","public_key":"UA","created":"not a time"}]}`))
	f.Add([]byte(`[1,2,3]`))
	f.Add([]byte("\x00\xff"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "identities.json"), data, 0o600); err != nil {
			t.Fatal(err)
		}
		for name, seed := range seeds {
			if err := os.WriteFile(auth.SeedFile(dir, name), seed, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		a, err := auth.Open(dir)
		if err != nil {
			return
		}
		defer a.Close()
		if _, _, err := a.ServerUsers(); err != nil {
			t.Fatalf("Open accepted a store whose server users do not build: %v", err)
		}
		for _, r := range auth.BuiltIns {
			id, err := a.Get(string(r))
			if err != nil || id.Role != r || !id.BuiltIn {
				t.Fatalf("built-in %s: got %+v, %v", r, id, err)
			}
			seed, err := os.ReadFile(auth.SeedFile(dir, string(r)))
			if err != nil {
				t.Fatal(err)
			}
			kp, err := nkeys.ParseDecoratedNKey(seed)
			if err != nil {
				t.Fatalf("seed of %s: %v", r, err)
			}
			if pub, _ := kp.PublicKey(); pub != id.PublicKey {
				t.Fatalf("seed of %s: public key %s, want %s", r, pub, id.PublicKey)
			}
		}
	})
}

// FuzzConnectOptions checks the credential file reader behind --creds: any
// content gives options or an error naming the file, never a panic, and a
// seed it accepts yields an inbox prefix of that identity's own.
//
//	go test -fuzz FuzzConnectOptions ./internal/auth/
func FuzzConnectOptions(f *testing.F) {
	kp, _ := nkeys.CreateUser()
	seed, _ := kp.Seed()
	f.Add(seed)
	f.Add([]byte("# comment\n-----BEGIN USER NKEY SEED-----\n" + string(seed) + "\n------END USER NKEY SEED------\n"))
	f.Add([]byte("-----BEGIN NATS USER JWT-----\neyJ0\n------END NATS USER JWT------\n"))
	f.Add([]byte("SAxxxx"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		path := filepath.Join(t.TempDir(), "cred")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		opts, err := auth.ConnectOptions(path)
		if err != nil {
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name the file", err)
			}
			return
		}
		if len(opts) == 0 {
			t.Fatal("accepted a credential but gave no option")
		}
	})
}
