package hel_test

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/services/hel"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
)

// startLoki runs a Loki replica with the hel module until the test ends.
func startLoki(t testing.TB, srv *natsrv.Server) *loki.Client {
	t.Helper()
	return lokitest.Start(t, srv, hel.NewModule)
}

// lokiEnv is a server with Hel, Loki with the hel module, and tools.
type lokiEnv struct {
	*env
	loki *loki.Client
}

func setupLoki(t testing.TB, tools string) *lokiEnv {
	t.Helper()
	e := setup(t)
	// Register before Loki starts so its first registry load has them.
	lokitest.Register(t, e.srv, lokitest.Parse(t, tools))
	return &lokiEnv{env: e, loki: startLoki(t, e.srv)}
}

func (e *lokiEnv) call(t testing.TB, tool, args string) (any, error) {
	t.Helper()
	return lokitest.Call(t, e.loki, tool, args)
}

const moduleTools = `
[[tools]]
name = "kv_roundtrip"
returns = "object"
grants = ["hel.kv:rt"]
script = '''
local rev = hel.kv.put("rt", key, value)
local got, rev2 = hel.kv.get("rt", key)
local missing = hel.kv.get("rt", "never-set")
return {value = got, type = type(got), same_rev = (rev == rev2), missing = (missing == nil)}
'''
  [[tools.params]]
  name = "key"
  type = "string"
  required = true
  [[tools.params]]
  name = "value"
  type = "any"
  required = true

[[tools]]
name = "cache_roundtrip"
returns = "object"
grants = ["hel.cache"]
script = '''
hel.cache.set(key, value, 60)
local got = hel.cache.get(key)
hel.cache.delete(key)
return {value = got, type = type(got), after_delete = (hel.cache.get(key) == nil)}
'''
  [[tools.params]]
  name = "key"
  type = "string"
  required = true
  [[tools.params]]
  name = "value"
  type = "any"
  required = true

[[tools]]
name = "files_roundtrip"
returns = "object"
grants = ["hel.files:notes"]
script = '''
hel.files.write("notes", "a/b.txt", "hello")
hel.files.append("notes", "a/b.txt", " world")
hel.files.write("notes", "t.json", {x = 1})
hel.files.mkdir("notes", "empty")
local names = {}
for i, e in ipairs(hel.files.list("notes")) do names[i] = e.name .. ":" .. e.kind end
local st = hel.files.stat("notes", "a/b.txt")
hel.files.delete("notes", "empty")
return {
  text = hel.files.read("notes", "a/b.txt"),
  part = hel.files.read("notes", "a/b.txt", 6, 5),
  json = hel.files.read("notes", "t.json"),
  names = names,
  size = st.size,
  missing = (hel.files.read("notes", "nope") == nil and hel.files.stat("notes", "nope") == nil),
}
'''

[[tools]]
name = "kv_ops"
returns = "object"
grants = ["hel.kv:ops"]
script = '''
local rev = hel.kv.create("ops", "k", {n = 1})
local ok, err = pcall(hel.kv.create, "ops", "k", {n = 2})
local rev2 = hel.kv.update("ops", "k", {n = 2}, rev)
local ok2, err2 = pcall(hel.kv.update, "ops", "k", {n = 3}, rev)
hel.kv.put("ops", "other", "x")
local keys = hel.kv.keys("ops")
local hist = hel.kv.history("ops", "k")
hel.kv.delete("ops", "other")
return {
  create_conflict = err, update_conflict = err2, keys = keys,
  history = {hist[1].value.n, hist[2].value.n}, gone = (hel.kv.get("ops", "other") == nil),
  ttl_rev = hel.kv.create("ops", "temp", "t", 5),
}
'''

[[tools]]
name = "no_grant"
returns = "any"
script = "return hel.kv.get('secret', 'k')"

[[tools]]
name = "wrong_bucket"
returns = "any"
grants = ["hel.kv:public"]
script = "return hel.kv.put('secret', 'k', 'v')"

[[tools]]
name = "wrong_namespace"
returns = "any"
grants = ["hel.files:public", "hel.kv"]
script = "return hel.files.read('secret', 'passwd')"

[[tools]]
name = "scoped_cache"
returns = "any"
grants = ["hel.cache:weather"]
script = '''
hel.cache.set("weather/oslo", "rain", 10)
local ok, err = pcall(hel.cache.set, "prices/oslo", "high", 10)
local ok2, err2 = pcall(hel.cache.clear)
return {allowed = hel.cache.get("weather/oslo"), other = err, clear = err2}
'''

[[tools]]
name = "caught"
returns = "string"
grants = ["hel.kv:x"]
script = '''
local ok, err = pcall(hel.kv.get, "secret", "k")
return err
'''

[[tools]]
name = "nil_key"
returns = "any"
grants = ["hel.kv"]
script = 'return hel.kv.get("b", nil)'

[[tools]]
name = "bad_args"
returns = "any"
grants = ["hel.kv", "hel.files"]
script = '''
local results = {}
for i, f in ipairs({
  function() return hel.kv.get(1, "k") end,
  function() return hel.kv.put("b", "k", nil) end,
  function() return hel.kv.put("b", "k", function() end) end,
  function() return hel.kv.put("b", "bad key", "v") end,
  function() return hel.kv.update("b", "k", "v", -1) end,
  function() return hel.files.write("ns", "../x", "v") end,
  function() return hel.files.write("ns", "/etc/x", "v") end,
}) do
  local ok, err = pcall(f)
  results[i] = ok and "ok" or err
end
return results
'''

[[tools]]
name = "slow_get"
returns = "any"
timeout = "1500ms"
grants = ["hel.kv:x"]
script = "return hel.kv.get('x', 'k')"
`

func TestModuleRoundTrip(t *testing.T) {
	e := setupLoki(t, moduleTools)
	values := []struct {
		name, json string
		luaType    string
	}{
		{"string", `"hello"`, "string"},
		{"string that looks like JSON", `"{\"a\":1}"`, "string"},
		{"empty string", `""`, "string"},
		{"unicode string", `"blåbær ✓"`, "string"},
		{"number", `3.25`, "number"},
		{"boolean", `true`, "boolean"},
		{"object", `{"a":1,"b":"two","c":[1,2,{"d":false}]}`, "table"},
		{"array", `[1,"x",[2]]`, "table"},
	}
	for _, tool := range []string{"kv_roundtrip", "cache_roundtrip"} {
		for i, v := range values {
			t.Run(tool+"/"+v.name, func(t *testing.T) {
				got, err := e.call(t, tool, `{"key":"k`+string(rune('a'+i))+`","value":`+v.json+`}`)
				if err != nil {
					t.Fatal(err)
				}
				var want any
				_ = json.Unmarshal([]byte(v.json), &want)
				m := got.(map[string]any)
				if !reflect.DeepEqual(m["value"], want) || m["type"] != v.luaType {
					t.Fatalf("got %#v (%v), want %#v (%s)", m["value"], m["type"], want, v.luaType)
				}
				for _, flag := range []string{"same_rev", "missing", "after_delete"} {
					if f, ok := m[flag]; ok && f != true {
						t.Fatalf("%s: got %v, want true", flag, f)
					}
				}
			})
		}
	}
	t.Run("files", func(t *testing.T) {
		got, err := e.call(t, "files_roundtrip", `{}`)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]any{
			"text": "hello world", "part": "world", "json": `{"x":1}`,
			"names": []any{"a:dir", "empty:dir", "t.json:file"}, "size": 11.0, "missing": true,
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %#v, want %#v", got, want)
		}
	})
	t.Run("kv operations", func(t *testing.T) {
		got, err := e.call(t, "kv_ops", `{}`)
		if err != nil {
			t.Fatal(err)
		}
		m := got.(map[string]any)
		if s, _ := m["create_conflict"].(string); !strings.HasPrefix(s, "ALREADY_EXISTS: ") {
			t.Fatalf("create conflict: got %q, want ALREADY_EXISTS: ...", s)
		}
		if s, _ := m["update_conflict"].(string); !strings.HasPrefix(s, "FAILED_PRECONDITION: ") || !strings.Contains(s, "current revision is 2") {
			t.Fatalf("update conflict: got %q, want FAILED_PRECONDITION naming revision 2", s)
		}
		if !reflect.DeepEqual(m["keys"], []any{"k", "other"}) || !reflect.DeepEqual(m["history"], []any{1.0, 2.0}) || m["gone"] != true {
			t.Fatalf("got %#v", m)
		}
		if r, _ := m["ttl_rev"].(float64); r < 1 {
			t.Fatalf("create with ttl: got revision %v", m["ttl_rev"])
		}
	})
}

// TestModuleGrants checks that a call without the grant is refused with
// PERMISSION_DENIED and that nothing is sent to Hel.
func TestModuleGrants(t *testing.T) {
	e := setupLoki(t, moduleTools)
	spy, err := e.nc.SubscribeSync(subjects.HelAll)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"no_grant", "wrong_bucket", "wrong_namespace"} {
		t.Run(tool, func(t *testing.T) {
			_, err := e.call(t, tool, `{}`)
			wantCode(t, err, fault.PermissionDenied)
			if !strings.Contains(err.Error(), "hel.") {
				t.Fatalf("got %v, want the missing grant named", err)
			}
		})
	}
	if m, err := spy.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatalf("got a request on %s, want none sent for refused calls", m.Subject)
	}
	t.Run("caught by pcall", func(t *testing.T) {
		got, err := e.call(t, "caught", `{}`)
		if err != nil {
			t.Fatal(err)
		}
		if s, _ := got.(string); !strings.HasPrefix(s, "PERMISSION_DENIED: ") {
			t.Fatalf("got %q, want PERMISSION_DENIED: ...", s)
		}
	})
	t.Run("cache scoped by key prefix", func(t *testing.T) {
		got, err := e.call(t, "scoped_cache", `{}`)
		if err != nil {
			t.Fatal(err)
		}
		m := got.(map[string]any)
		other, _ := m["other"].(string)
		clear, _ := m["clear"].(string)
		if m["allowed"] != "rain" || !strings.HasPrefix(other, "PERMISSION_DENIED: ") || !strings.HasPrefix(clear, "PERMISSION_DENIED: ") {
			t.Fatalf("got %#v, want the weather key allowed, others and clear refused", m)
		}
	})
}

func TestModuleErrors(t *testing.T) {
	e := setupLoki(t, moduleTools)
	got, err := e.call(t, "bad_args", `{}`)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"INVALID_ARGUMENT: hel.kv.get: argument #1: bucket must be a string",
		"INVALID_ARGUMENT: hel.kv.put: argument #3: value is nil",
		"INVALID_ARGUMENT: hel.kv.put: argument #3: value cannot be stored",
		"INVALID_ARGUMENT: key \"bad key\"",
		"INVALID_ARGUMENT: hel.kv.update: argument #4: revision must be",
		"PERMISSION_DENIED: path \"../x\"",
		"PERMISSION_DENIED: path \"/etc/x\"",
	}
	list, _ := got.([]any)
	if len(list) != len(want) {
		t.Fatalf("got %#v, want %d errors", got, len(want))
	}
	for i, w := range want {
		if s, _ := list[i].(string); !strings.HasPrefix(s, w) {
			t.Errorf("case %d: got %q, want it to start with %q", i+1, s, w)
		}
	}
}

// TestModuleArgErrorIsTheScripts checks a bad argument a script passes to
// a module reaches the caller as SCRIPT_ERROR: INVALID_ARGUMENT is kept for
// the caller's own arguments.
func TestModuleArgErrorIsTheScripts(t *testing.T) {
	e := setupLoki(t, moduleTools)
	_, err := e.call(t, "nil_key", `{}`)
	if got := fault.CodeOf(err); got != fault.ScriptError {
		t.Fatalf("got %v (%v), want %s", got, err, fault.ScriptError)
	}
	if !strings.Contains(err.Error(), "hel.kv.get: argument #2") {
		t.Fatalf("got %v, want it to name the module function and argument", err)
	}
}

// TestModuleDeadline checks each request carries the script's remaining time.
func TestModuleDeadline(t *testing.T) {
	e := setupLoki(t, moduleTools)
	spy, err := e.nc.SubscribeSync(subjects.HelKVGet)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.call(t, "slow_get", `{}`); err != nil {
		t.Fatal(err)
	}
	m, err := spy.NextMsg(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	d, err := hel.ParseTimeout(m.Header.Get(hel.HeaderTimeout))
	if err != nil || d <= 0 || d > 1500*time.Millisecond {
		t.Fatalf("got %s %q (%v), want the remaining part of the tool's 1.5s", hel.HeaderTimeout, m.Header.Get(hel.HeaderTimeout), err)
	}
}

// TestExampleTools runs examples/hel_tools.toml.
func TestExampleTools(t *testing.T) {
	tools, err := loki.LoadTools(filepath.Join("..", "..", "examples", "hel_tools.toml"))
	if err != nil {
		t.Fatal(err)
	}
	e := setup(t)
	lokitest.Register(t, e.srv, tools)
	startLoki(t, e.srv)
	// Two replicas: the counter must hold under real concurrency.
	le := &lokiEnv{env: e, loki: startLoki(t, e.srv)}

	t.Run("count", func(t *testing.T) {
		const workers, each = 4, 10
		var wg sync.WaitGroup
		errs := make(chan error, workers*each)
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range each {
					if _, err := le.call(t, "count", `{"name":"visits"}`); err != nil {
						errs <- err
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		got, err := le.call(t, "count", `{"name":"visits","by":0}`)
		if err != nil || got != float64(workers*each) {
			t.Fatalf("got %v %v, want %d", got, err, workers*each)
		}
	})
	t.Run("daily_report", func(t *testing.T) {
		got, err := le.call(t, "daily_report", `{"day":"2024-06-01","readings":[{"sensor":"t1","value":21.456}]}`)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]any{"path": "daily/2024-06-01.txt", "bytes": 31.0}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("got %#v, want %#v", got, want)
		}
		text, err := e.c.ReadFile(ctxT(t), "reports", "daily/2024-06-01.txt")
		if err != nil || string(text) != "report for 2024-06-01\nt1 21.46\n" {
			t.Fatalf("report file: got %q %v", text, err)
		}
		_, err = le.call(t, "daily_report", `{"day":"../../etc","readings":[]}`)
		wantCode(t, err, fault.PermissionDenied)
	})
	t.Run("device_info", func(t *testing.T) {
		ctx := ctxT(t)
		if _, err := e.c.KVPut(ctx, "devices", "thermo-1", hel.JSON([]byte(`{"name":"Kitchen thermostat"}`))); err != nil {
			t.Fatal(err)
		}
		for i, wantCached := range []bool{false, true, true} {
			got, err := le.call(t, "device_info", `{"device":"thermo-1"}`)
			if err != nil {
				t.Fatal(err)
			}
			m := got.(map[string]any)
			info, _ := m["info"].(map[string]any)
			if m["cached"] != wantCached || info["name"] != "Kitchen thermostat" {
				t.Fatalf("call %d: got %#v, want cached=%v", i+1, m, wantCached)
			}
		}
	})
}
