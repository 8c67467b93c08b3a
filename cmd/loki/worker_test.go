package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the test binary serve as `loki worker`: a replica started
// by a test re-executes os.Executable(), which is this binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == workerCommand {
		os.Exit(processExitCode(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr)))
	}
	os.Exit(m.Run())
}

const isolatedTools = `
[[tools]]
name = "iso_add"
returns = "number"
memory = "64MiB"
cpu = "1s"
script = "return a + b"
  [[tools.params]]
  name = "a"
  type = "number"
  [[tools.params]]
  name = "b"
  type = "number"

[[tools]]
name = "iso_bomb"
memory = "64MiB"
timeout = "30s"
script = '''
local t = {}
for i = 1, 1e9 do t[i] = {i} end
'''

[[tools]]
name = "iso_kv"
memory = "64MiB"
grants = ["hel.kv:demo"]
returns = "string"
script = '''
hel.kv.put("demo", "k", "v")
return hel.kv.get("demo", "k")
'''
`

// TestUpIsolatedTools: under `loki up`, tools with limits run in `loki
// worker` processes that reach the bus as the loki identity (a Hel call
// from a worker works), a tool passing its memory limit is refused with
// RESOURCE_EXHAUSTED and the others go on, and `loki up` stops cleanly with
// its workers.
func TestUpIsolatedTools(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "tools.toml")
	writeTestFile(t, cfg, isolatedTools)
	url, stop := startUp(t, t.TempDir(), "--config", cfg)
	defer stop()
	if got, err := cli(t, "call", "iso_add", "a=1", "b=2", "--nats-url", url); err != nil || got != "3" {
		t.Fatalf("iso_add: got %q, %v, want 3", got, err)
	}
	if got, err := cli(t, "call", "iso_kv", "--nats-url", url); err != nil || got != `"v"` {
		t.Fatalf("iso_kv: got %q, %v, want \"v\"", got, err)
	}
	_, err := cli(t, "call", "iso_bomb", "--nats-url", url)
	if err == nil || !strings.Contains(err.Error(), `RESOURCE_EXHAUSTED: tool "iso_bomb" passed its memory limit of 64 MiB`) {
		t.Fatalf("iso_bomb: got %v, want RESOURCE_EXHAUSTED naming its limit", err)
	}
	if got, err := cli(t, "call", "iso_add", "a=2", "b=2", "--nats-url", url); err != nil || got != "4" {
		t.Fatalf("iso_add after the bomb: got %q, %v, want 4", got, err)
	}
}

func TestServiceConfigIsolation(t *testing.T) {
	for _, tc := range []struct{ name, body, want string }{
		{"mode", "[loki]\nisolation = \"sometimes\"\n", `isolation = "sometimes": want auto, always or never`},
		{"memory", "[loki]\nmemory = \"lots\"\n", `memory = "lots"`},
		{"cpu", "[loki]\ncpu = \"-2s\"\n", `cpu = "-2s"`},
		{"workers", "[loki]\nworkers = -1\n", "workers = -1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "svc.toml")
			writeTestFile(t, path, tc.body)
			_, err := loadServiceConfig(path, t.TempDir())
			if err == nil || !strings.Contains(err.Error(), "[loki]") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error naming [loki] and %q", err, tc.want)
			}
		})
	}
	path := filepath.Join(t.TempDir(), "svc.toml")
	writeTestFile(t, path, "[loki]\nisolation = \"always\"\nworkers = 3\nmemory = \"128MiB\"\ncpu = \"2s\"\n")
	cfg, err := loadServiceConfig(path, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	iso, err := cfg.isolation(workerInit{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if iso.Mode != "always" || iso.Workers != 3 || iso.Memory != 128<<20 || iso.CPU.String() != "2s" || iso.Command == nil {
		t.Fatalf("got %+v", iso)
	}
}
