package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/auth"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/encoding/protojson"
)

// saveLikeAnEditor replaces path the way editors do: write a temporary file
// next to it, then rename it over the old one.
func saveLikeAnEditor(t *testing.T, path, data string) {
	t.Helper()
	tmp := path + ".swp"
	if err := os.WriteFile(tmp, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// toolsTOML is a tool config of tools returning constant strings, in order.
func toolsTOML(tools ...[2]string) string {
	var b strings.Builder
	for _, tl := range tools {
		b.WriteString("[[tools]]\nname = \"" + tl[0] + "\"\nreturns = \"string\"\nscript = \"return '" + tl[1] + "'\"\n\n")
	}
	return b.String()
}

// subscribeReloads subscribes to reload events as the local client identity.
func subscribeReloads(t *testing.T, url, dataDir string) *nats.Subscription {
	t.Helper()
	opts, err := auth.ConnectOptions(auth.SeedFile(filepath.Join(dataDir, "auth"), string(subjects.RoleClient)))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	sub, err := nc.SubscribeSync(subjects.ConfigReloadAll)
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return sub
}

// nextReload returns the next reload event that changed something or
// failed (a no-op reload, say from an extra editor event, is skipped).
func nextReload(t *testing.T, sub *nats.Subscription) (*lokiv1.ConfigReload, string) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); {
		m, err := sub.NextMsg(time.Until(deadline))
		if err != nil {
			break
		}
		var ev lokiv1.ConfigReload
		if err := protojson.Unmarshal(m.Data, &ev); err != nil {
			t.Fatalf("reload event %s: %v", m.Data, err)
		}
		if ev.GetOk() && len(ev.GetAdded())+len(ev.GetChanged())+len(ev.GetRemoved()) == 0 {
			continue
		}
		return &ev, m.Subject
	}
	t.Fatal("no reload event")
	return nil, ""
}

// eventually polls check until it returns "" or the deadline passes, and
// fails with its last complaint.
func eventually(t *testing.T, what string, check func() string) {
	t.Helper()
	var last string
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if last = check(); last == "" {
			return
		}
	}
	t.Fatalf("%s: %s", what, last)
}

// callsAgree reports "" when n calls of tool in a row (spread over every
// replica by the queue group) all answer want, or all fail with wantErr.
func callsAgree(t *testing.T, n int, tool, want, wantErr string, via ...string) func() string {
	return func() string {
		for range n {
			got, err := cli(t, append([]string{"call", tool}, via...)...)
			switch {
			case wantErr != "" && (err == nil || !strings.Contains(err.Error(), wantErr)):
				return "call " + tool + ": got " + got + ", " + errString(err) + ", want " + wantErr
			case wantErr == "" && (err != nil || got != want):
				return "call " + tool + ": got " + got + ", " + errString(err) + ", want " + want
			}
		}
		return ""
	}
}

func errString(err error) string {
	if err == nil {
		return "no error"
	}
	return err.Error()
}

// TestHotReload: edits to --config take effect on both Loki replicas and in
// the gateway; a bad edit changes nothing and is published as a failed
// reload naming the file, line and tool.
func TestHotReload(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(t.TempDir(), "tools.toml")
	saveLikeAnEditor(t, cfg, toolsTOML([2]string{"hello", "hi"}, [2]string{"bye", "ciao"}))
	url, stop, out := startUpOut(t, dir, "--config", cfg)
	defer stop()
	m := grpcLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no gRPC address in output:\n%s", out)
	}
	grpcAddr := m[1]
	sub := subscribeReloads(t, url, dir)

	// A second replica, with no --config of its own: it follows the registry.
	ctx, cancel := context.WithCancel(context.Background())
	var errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "loki", "--nats-url", url, "--log-level", "info"}, &syncBuffer{}, &errOut)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("second replica: got %v, want clean exit", err)
		}
	}()
	eventually(t, "second replica ready", func() string {
		if strings.Contains(errOut.String(), "msg=ready") {
			return ""
		}
		return "not ready; stderr: " + errOut.String()
	})

	viaNATS := []string{"--nats-url", url}
	viaGRPC := []string{"--grpc", grpcAddr}
	const calls = 20 // all on one of two replicas: 1 in 2^19
	steps := []struct {
		name   string
		config string
		// The event: ok with these names, or failed with these substrings.
		added, changed, removed []string
		failed                  []string
		// Then every call of tool answers want (or wantErr), on both
		// replicas and through the gateway.
		tool, want, wantErr string
	}{
		{name: "add", config: toolsTOML([2]string{"hello", "hi"}, [2]string{"bye", "ciao"}, [2]string{"added", "new"}),
			added: []string{"added"}, tool: "added", want: `"new"`},
		{name: "change", config: toolsTOML([2]string{"hello", "hi v2"}, [2]string{"bye", "ciao"}, [2]string{"added", "new"}),
			changed: []string{"hello"}, tool: "hello", want: `"hi v2"`},
		{name: "remove", config: toolsTOML([2]string{"hello", "hi v2"}, [2]string{"added", "new"}),
			removed: []string{"bye"}, tool: "bye", wantErr: "NOT_FOUND"},
		{name: "malformed TOML keeps the old set", config: toolsTOML([2]string{"hello", "broken"}) + "[[tools]]\nname = \"x\" junk\n",
			failed: []string{cfg + ":7:"}, tool: "hello", want: `"hi v2"`},
		{name: "Lua syntax error keeps the old set",
			config: toolsTOML([2]string{"hello", "hi v3"}) + "[[tools]]\nname = \"broken\"\nscript = \"return +\"\n",
			failed: []string{cfg + ":6", `tool "broken"`}, tool: "hello", want: `"hi v2"`},
		{name: "bad grant keeps the old set",
			config: toolsTOML([2]string{"hello", "hi v3"}) + "[[tools]]\nname = \"granted\"\nscript = \"return 1\"\ngrants = [\"nosuchmodule\"]\n",
			failed: []string{cfg, "nosuchmodule"}, tool: "added", want: `"new"`},
		{name: "a good edit after bad ones", config: toolsTOML([2]string{"hello", "hi v4"}, [2]string{"added", "new"}),
			changed: []string{"hello"}, tool: "hello", want: `"hi v4"`},
	}
	for _, tc := range steps {
		t.Run(tc.name, func(t *testing.T) {
			saveLikeAnEditor(t, cfg, tc.config)
			ev, subj := nextReload(t, sub)
			if ev.GetFile() != cfg {
				t.Errorf("event file: got %q, want %q", ev.GetFile(), cfg)
			}
			if tc.failed != nil {
				if ev.GetOk() || subj != subjects.ConfigReloadFailed {
					t.Fatalf("got ok=%v on %s, want a failed reload", ev.GetOk(), subj)
				}
				for _, want := range tc.failed {
					if !strings.Contains(ev.GetError(), want) {
						t.Errorf("error %q does not mention %q", ev.GetError(), want)
					}
				}
			} else {
				if !ev.GetOk() || subj != subjects.ConfigReloadOK {
					t.Fatalf("got ok=%v on %s (%s), want an applied reload", ev.GetOk(), subj, ev.GetError())
				}
				for _, f := range []struct {
					what      string
					got, want []string
				}{{"added", ev.GetAdded(), tc.added}, {"changed", ev.GetChanged(), tc.changed}, {"removed", ev.GetRemoved(), tc.removed}} {
					if !slices.Equal(f.got, f.want) {
						t.Errorf("%s: got %v, want %v", f.what, f.got, f.want)
					}
				}
			}
			eventually(t, "both replicas", callsAgree(t, calls, tc.tool, tc.want, tc.wantErr, viaNATS...))
			eventually(t, "gateway", callsAgree(t, 1, tc.tool, tc.want, tc.wantErr, viaGRPC...))
		})
	}
}

// TestReloadOnSIGHUP: SIGHUP reloads the tool config of `loki serve loki`,
// and a removed tool registered by someone else stays.
func TestReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	url, stop := startUp(t, dir) // the built-in examples, not from the file
	defer stop()
	sub := subscribeReloads(t, url, dir)
	cfg := filepath.Join(t.TempDir(), "tools.toml")
	saveLikeAnEditor(t, cfg, toolsTOML([2]string{"hup", "one"}))

	hup := make(chan os.Signal, 1)
	ctx, cancel := context.WithCancel(withReloadSignal(context.Background(), hup))
	var errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "loki", "--nats-url", url, "--config", cfg, "--log-level", "info"}, &syncBuffer{}, &errOut)
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve loki: got %v, want clean exit", err)
		}
	}()
	eventually(t, "serve loki ready", func() string {
		if strings.Contains(errOut.String(), "msg=ready") {
			return ""
		}
		return "not ready; stderr: " + errOut.String()
	})
	eventually(t, "hup registered", callsAgree(t, 1, "hup", `"one"`, "", "--nats-url", url))

	hup <- syscall.SIGHUP
	m, err := sub.NextMsg(15 * time.Second)
	if err != nil {
		t.Fatalf("no reload event after SIGHUP: %v\n%s", err, errOut.String())
	}
	var ev lokiv1.ConfigReload
	if err := protojson.Unmarshal(m.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if m.Subject != subjects.ConfigReloadOK || ev.GetFile() != cfg || len(ev.GetAdded())+len(ev.GetChanged())+len(ev.GetRemoved()) != 0 {
		t.Fatalf("after SIGHUP with no edit: got %s %v, want an ok reload of %s changing nothing", m.Subject, &ev, cfg)
	}
	if !strings.Contains(errOut.String(), "SIGHUP") {
		t.Errorf("log does not mention SIGHUP:\n%s", errOut.String())
	}

	// Removing the file's only tool leaves the examples others registered.
	saveLikeAnEditor(t, cfg, toolsTOML([2]string{"other", "two"}))
	got, _ := nextReload(t, sub)
	if !slices.Equal(got.GetRemoved(), []string{"hup"}) || !slices.Equal(got.GetAdded(), []string{"other"}) {
		t.Fatalf("got added %v removed %v, want added [other] removed [hup]", got.GetAdded(), got.GetRemoved())
	}
	eventually(t, "hup removed", callsAgree(t, 1, "hup", "", "NOT_FOUND", "--nats-url", url))
	if got, err := cli(t, "call", "add", "a=1", "b=2", "--nats-url", url); err != nil || got != "3" {
		t.Fatalf("example add after reload: got %q, %v, want 3", got, err)
	}
	if !strings.Contains(errOut.String(), "tool config reloaded") || !strings.Contains(errOut.String(), "removed=[hup]") {
		t.Errorf("no INFO line naming the removed tool:\n%s", errOut.String())
	}
}
