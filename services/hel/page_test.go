package hel_test

import (
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/hel"
)

// setupSmallPayload starts a server whose max payload is 64 KiB, so that
// listings pass it with few items, and one Hel replica fitted to it.
func setupSmallPayload(t *testing.T, opts ...func(*hel.Config)) *env {
	t.Helper()
	srv := natstest.Start(t, func(c *natsrv.Config) { c.MaxPayload = 64 << 10 })
	cfg := testConfig(filepath.Join(t.TempDir(), "data"))
	cfg.KV.MaxValueBytes = 32 << 10
	cfg.Cache.MaxValueBytes = 32 << 10
	for _, o := range opts {
		o(&cfg)
	}
	startHel(t, srv, cfg)
	nc := natstest.Connect(t, srv)
	return &env{srv: srv, nc: nc, c: hel.NewClient(nc), cfg: cfg}
}

// pages reads a listing page by page and returns the items and how many
// pages it took.
func pages[T any](t *testing.T, limit int, get func(p hel.Page) ([]T, string, error)) ([]T, int) {
	t.Helper()
	var all []T
	p := hel.Page{Limit: limit}
	for n := 1; ; n++ {
		items, next, err := get(p)
		if err != nil {
			t.Fatalf("page %d (after %q): %v", n, p.After, err)
		}
		if limit > 0 && len(items) > limit {
			t.Fatalf("page %d has %d items, want at most %d", n, len(items), limit)
		}
		all = append(all, items...)
		if next == "" {
			return all, n
		}
		if n > 10000 {
			t.Fatal("more than 10000 pages")
		}
		p.After = next
	}
}

func TestListingsPage(t *testing.T) {
	e := setupSmallPayload(t, func(c *hel.Config) {
		c.KV.MaxListKeys = 50
		c.Objects.MaxList = 5
		c.Files.MaxListEntries = 20
		c.KV.History = 20
	})
	ctx := ctxT(t)
	var want []string
	for i := range 120 {
		// 600-byte keys: 120 of them pass the 56 KiB reply budget.
		k := fmt.Sprintf("g%d.k%03d.%s", i/10, i, strings.Repeat("x", 590))
		want = append(want, k)
		if _, err := e.c.KVPut(ctx, "big", k, hel.Bytes([]byte("v"))); err != nil {
			t.Fatal(err)
		}
	}
	slices.Sort(want)

	t.Run("kv.keys whole over the count cap", func(t *testing.T) {
		_, err := e.c.KVKeys(ctx, "big", "")
		wantErr(t, err, fault.ResourceExhausted, `bucket "big": more than 50 keys, the limit of one reply: narrow it with a filter, or page it with Hel-Limit/Hel-After`)
	})
	t.Run("kv.keys whole over the byte budget", func(t *testing.T) {
		// 120 keys fit a count cap of 200 but not the 56 KiB budget.
		e2 := setupSmallPayload(t, func(c *hel.Config) { c.KV.MaxListKeys = 200 })
		for _, k := range want {
			if _, err := e2.c.KVPut(ctx, "b", k, hel.Bytes([]byte("v"))); err != nil {
				t.Fatal(err)
			}
		}
		_, err := e2.c.KVKeys(ctx, "b", "")
		wantErr(t, err, fault.ResourceExhausted, `bucket "b": the listing of 120 keys is over the 57344-byte reply limit`)
		keys, next, err := e2.c.KVKeysPage(ctx, "b", "", hel.Page{Limit: 150})
		if err != nil {
			t.Fatal(err)
		}
		if len(keys) == 0 || len(keys) >= 120 || next != keys[len(keys)-1] {
			t.Fatalf("got %d keys, next %q, want fewer than 120 (the byte budget) and next = the last", len(keys), trunc(next))
		}
		got, n := pages(t, 0, func(p hel.Page) ([]string, string, error) { return e2.c.KVKeysPage(ctx, "b", "", p) })
		if !slices.Equal(got, want) || n < 2 {
			t.Fatalf("got %d keys in %d pages, want the 120 keys in order in 2 or more", len(got), n)
		}
	})
	t.Run("kv.keys in pages", func(t *testing.T) {
		got, n := pages(t, 7, func(p hel.Page) ([]string, string, error) { return e.c.KVKeysPage(ctx, "big", "", p) })
		if !slices.Equal(got, want) {
			t.Fatalf("got %d keys, want the %d keys in order", len(got), len(want))
		}
		if n != 18 {
			t.Fatalf("got %d pages, want 18 of at most 7", n)
		}
	})
	t.Run("kv.keys page with a filter", func(t *testing.T) {
		got, _ := pages(t, 3, func(p hel.Page) ([]string, string, error) { return e.c.KVKeysPage(ctx, "big", "g1.>", p) })
		if len(got) != 10 || !strings.HasPrefix(got[0], "g1.k010.") || !strings.HasPrefix(got[9], "g1.k019.") {
			t.Fatalf("got %d keys, want the 10 of g1.>", len(got))
		}
	})

	t.Run("kv.history whole over the byte budget", func(t *testing.T) {
		big := bytes.Repeat([]byte("h"), 20<<10)
		for range 6 {
			if _, err := e.c.KVPut(ctx, "hist", "k", hel.Bytes(big)); err != nil {
				t.Fatal(err)
			}
		}
		if err := e.c.KVDelete(ctx, "hist", "k", 0); err != nil {
			t.Fatal(err)
		}
		_, err := e.c.KVHistory(ctx, "hist", "k")
		wantErr(t, err, fault.ResourceExhausted, `bucket "hist" key "k": the listing of 7 revisions is over the 57344-byte reply limit`)
		got, n := pages(t, 0, func(p hel.Page) ([]hel.HistoryEntry, string, error) { return e.c.KVHistoryPage(ctx, "hist", "k", p) })
		if len(got) != 7 || n < 3 || got[6].Op != "delete" || !bytes.Equal(got[0].Data, big) {
			t.Fatalf("got %d entries in %d pages, want 7 (the last a delete) in 3 or more", len(got), n)
		}
		for i := 1; i < len(got); i++ {
			if got[i].Revision <= got[i-1].Revision {
				t.Fatalf("revisions out of order: %d after %d", got[i].Revision, got[i-1].Revision)
			}
		}
		_, _, err = e.c.KVHistoryPage(ctx, "hist", "k", hel.Page{After: "x"})
		wantErr(t, err, fault.InvalidArgument, "revision number")
	})

	t.Run("files.list", func(t *testing.T) {
		var names []string
		for i := range 45 {
			n := fmt.Sprintf("f%02d", i)
			names = append(names, n)
			if err := e.c.WriteFile(ctx, "docs", n, []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		_, err := e.c.ListFiles(ctx, "docs", "")
		wantErr(t, err, fault.ResourceExhausted, `namespace "docs" path ".": more than 20 entries, the limit of one reply: list a subdirectory, or page it`)
		got, n := pages(t, 20, func(p hel.Page) ([]hel.FileInfo, string, error) { return e.c.ListFilesPage(ctx, "docs", "", p) })
		var gotNames []string
		for _, fi := range got {
			gotNames = append(gotNames, fi.Name)
		}
		if !slices.Equal(gotNames, names) || n != 3 {
			t.Fatalf("got %v in %d pages, want %v in 3", gotNames, n, names)
		}
	})

	t.Run("obj.list", func(t *testing.T) {
		var names []string
		for i := range 8 {
			n := fmt.Sprintf("o%d", i)
			names = append(names, n)
			if _, err := e.c.PutObject(ctx, "objs", n, strings.NewReader("data"), 4); err != nil {
				t.Fatal(err)
			}
		}
		_, err := e.c.ListObjects(ctx, "objs")
		wantErr(t, err, fault.ResourceExhausted, `object bucket "objs": more than 5 objects`)
		got, n := pages(t, 3, func(p hel.Page) ([]hel.ObjectInfo, string, error) { return e.c.ListObjectsPage(ctx, "objs", p) })
		var gotNames []string
		for _, oi := range got {
			gotNames = append(gotNames, oi.Name)
		}
		if !slices.Equal(gotNames, names) || n != 3 {
			t.Fatalf("got %v in %d pages, want %v in 3", gotNames, n, names)
		}
	})

	t.Run("bad paging headers", func(t *testing.T) {
		_, _, err := e.c.KVKeysPage(ctx, "big", "", hel.Page{Limit: 1, After: "a\nb"})
		wantErr(t, err, fault.InvalidArgument, "")
	})
}

// wantErr fails unless err carries code and its message contains msg.
func wantErr(t testing.TB, err error, code fault.Code, msg string) {
	t.Helper()
	wantCode(t, err, code)
	if !strings.Contains(fault.MessageOf(err), msg) {
		t.Fatalf("got error %q, want it to contain %q", fault.MessageOf(err), msg)
	}
}

func trunc(s string) string {
	if len(s) > 20 {
		return s[:20] + "..."
	}
	return s
}

const pageTools = `
[[tools]]
name = "kv_pages"
returns = "object"
grants = ["hel.kv:pg", "hel.files:pgf"]
script = '''
for i = 1, 5 do hel.kv.put("pg", "k" .. i, i) end
hel.files.write("pgf", "a", "x")
hel.files.write("pgf", "b", "y")
local all, after, pages = {}, nil, 0
repeat
  local keys, next = hel.kv.keys("pg", nil, {limit = 2, after = after})
  for _, k in ipairs(keys) do all[#all + 1] = k end
  pages = pages + 1
  after = next
until after == nil
local h, hnext = hel.kv.history("pg", "k1", {limit = 1})
local f, fnext = hel.files.list("pgf", nil, {limit = 1})
local ok, err = pcall(hel.kv.keys, "pg", nil, {bogus = 1})
return {keys = all, pages = pages, history = #h, history_last = (hnext == nil),
  files = f[1].name, files_next = fnext, whole = #hel.kv.keys("pg"), bad = err}
'''
`

func TestModulePages(t *testing.T) {
	e := setupLoki(t, pageTools)
	got, err := e.call(t, "kv_pages", `{}`)
	if err != nil {
		t.Fatal(err)
	}
	m := got.(map[string]any)
	keys := fmt.Sprint(m["keys"])
	if keys != "[k1 k2 k3 k4 k5]" || m["pages"] != 3.0 || m["history"] != 1.0 || m["history_last"] != true ||
		m["files"] != "a" || m["files_next"] != "a" || m["whole"] != 5.0 {
		t.Fatalf("got %v, want keys k1..k5 in 3 pages, 1 history entry and no next, files page a with next a, 5 keys whole", m)
	}
	if bad, _ := m["bad"].(string); !strings.Contains(bad, `unknown option "bogus"`) {
		t.Fatalf("got error %q, want it to name the unknown option", bad)
	}
}
