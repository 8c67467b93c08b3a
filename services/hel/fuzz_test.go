package hel_test

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/hel"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	lua "github.com/yuin/gopher-lua"
)

// FuzzCleanPath checks that an accepted path is clean, relative, inside the
// namespace, within the limits and stable; and that refusals carry the
// documented codes.
func FuzzCleanPath(f *testing.F) {
	for _, s := range []string{
		"a/b.txt", "", ".", "..", "../x", "a/../../x", "/etc/passwd", "a\x00b", `a\..\b`,
		"%2e%2e/x", "./a//b/.", ".hel-tmp", "a/.hel-x/b", strings.Repeat("a", 256), "ü/文件", " a", "a\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		clean, err := hel.CleanPath(p)
		if err != nil {
			if c := fault.CodeOf(err); c != fault.InvalidArgument && c != fault.PermissionDenied {
				t.Fatalf("CleanPath(%q): got code %s, want INVALID_ARGUMENT or PERMISSION_DENIED", p, c)
			}
			return
		}
		if clean != "." && !filepath.IsLocal(filepath.FromSlash(clean)) {
			t.Fatalf("CleanPath(%q) = %q: not local", p, clean)
		}
		if !utf8.ValidString(clean) || strings.ContainsAny(clean, "\x00\\\r\n") || len(clean) > hel.MaxPathBytes {
			t.Fatalf("CleanPath(%q) = %q: bad bytes or too long", p, clean)
		}
		for _, c := range strings.Split(clean, "/") {
			if c == ".." || c == "" || (c == "." && clean != ".") || len(c) > hel.MaxPathComponent || strings.HasPrefix(c, ".hel-") {
				t.Fatalf("CleanPath(%q) = %q: bad component %q", p, clean, c)
			}
		}
		root := filepath.FromSlash("/srv/hel/ns")
		if j := filepath.Join(root, filepath.FromSlash(clean)); j != root && !strings.HasPrefix(j, root+string(filepath.Separator)) {
			t.Fatalf("CleanPath(%q) = %q joins to %q, outside %q", p, clean, j, root)
		}
		if again, err := hel.CleanPath(clean); err != nil || again != clean {
			t.Fatalf("CleanPath(CleanPath(%q)) = %q, %v; want %q", p, again, err, clean)
		}
	})
}

// FuzzDecodeRequest feeds arbitrary header values to the request decoder.
func FuzzDecodeRequest(f *testing.F) {
	f.Add("b", "k", "1", "10s", "a.*", "obj", "ns", "a/b", "5", "0", "0", "application/json", "1.5s", false)
	f.Add("", "", "0", "-1s", ">.a", "", "", "../x", "-1", "x", "", "text/plain", "", true)
	f.Add("a.b", "k..x", "18446744073709551616", "1h", "a.>", "o\r\nX: y", "x", "/abs", "", "", "", "", "1ns", false)
	f.Fuzz(func(t *testing.T, bucket, key, rev, ttl, filter, object, ns, path, size, offset, length, ctype, timeout string, cacheKey bool) {
		h := nats.Header{}
		for k, v := range map[string]string{
			hel.HeaderBucket: bucket, hel.HeaderKey: key, hel.HeaderRevision: rev, hel.HeaderTTL: ttl,
			hel.HeaderFilter: filter, hel.HeaderObject: object, hel.HeaderNamespace: ns, hel.HeaderPath: path,
			hel.HeaderSize: size, hel.HeaderOffset: offset, hel.HeaderLength: length, hel.HeaderContentType: ctype,
		} {
			if v != "" {
				h.Set(k, v)
			}
		}
		if d, err := hel.ParseTimeout(timeout); err == nil && d <= 0 {
			t.Fatalf("ParseTimeout(%q) = %s, want a positive duration or an error", timeout, d)
		}
		got, err := hel.DecodeRequestAll(h, cacheKey)
		if err != nil {
			if c := fault.CodeOf(err); c != fault.InvalidArgument && c != fault.PermissionDenied {
				t.Fatalf("got code %s, want INVALID_ARGUMENT or PERMISSION_DENIED", c)
			}
			return
		}
		if b := got["bucket"].(string); b != "" && subjects.ValidHelName(b) != nil {
			t.Fatalf("accepted bucket %q", b)
		}
		if n := got["namespace"].(string); n != "" && subjects.ValidHelName(n) != nil {
			t.Fatalf("accepted namespace %q", n)
		}
		if k := got["key"].(string); k != "" {
			valid := hel.ValidKey
			if cacheKey {
				valid = hel.ValidCacheKey
			}
			if valid(k) != nil {
				t.Fatalf("accepted key %q", k)
			}
		}
		if fl := got["filter"].(string); fl != "" && hel.ValidFilter(fl) != nil {
			t.Fatalf("accepted filter %q", fl)
		}
		if o := got["object"].(string); o != "" && hel.ValidObjectName(o) != nil {
			t.Fatalf("accepted object %q", o)
		}
		if p := got["path"].(string); p != "." {
			if again, err := hel.CleanPath(p); err != nil || again != p {
				t.Fatalf("accepted path %q is not clean", p)
			}
		}
		if got["ttl"].(time.Duration) < 0 || got["offset"].(int64) < 0 || got["length"].(int64) < 0 || got["size"].(int64) < -1 {
			t.Fatalf("accepted a negative number: %v", got)
		}
		if c := got["ctype"].(hel.ContentType); c != hel.ContentBytes && c != hel.ContentJSON {
			t.Fatalf("accepted content type %q", c)
		}
	})
}

// FuzzValueEncoding checks the storage encoding round-trips every value and
// decodes any stored bytes without panicking.
func FuzzValueEncoding(f *testing.F) {
	f.Add([]byte("plain"), false, int64(1000))
	f.Add([]byte{0, 'j', '{', '}'}, false, int64(0))
	f.Add([]byte(`{"a":1}`), true, int64(86400000))
	f.Add([]byte{}, false, int64(-5))
	f.Fuzz(func(t *testing.T, data []byte, isJSON bool, ttlMs int64) {
		v := hel.Bytes(data)
		if isJSON {
			v = hel.JSON(data)
		}
		got := hel.DecodeValue(hel.EncodeValue(v))
		if !bytes.Equal(got.Data, v.Data) || got.Type != v.Type {
			t.Fatalf("value %q %s: got %q %s back", v.Data, v.Type, got.Data, got.Type)
		}
		if d := hel.DecodeValue(data); d.Type != hel.ContentBytes && d.Type != hel.ContentJSON {
			t.Fatalf("DecodeValue(%q): type %q", data, d.Type)
		}
		ttl := time.Duration(ttlMs) * time.Millisecond
		if ttl > 0 && ttl < 365*24*time.Hour {
			cv, cttl, ok := hel.DecodeCacheEntry(hel.EncodeCacheEntry(v, ttl))
			if !ok || cttl != ttl.Truncate(time.Millisecond) || !bytes.Equal(cv.Data, v.Data) || cv.Type != v.Type {
				t.Fatalf("cache entry %q %s %s: got %q %s %s %v", v.Data, v.Type, ttl, cv.Data, cv.Type, cttl, ok)
			}
		}
		hel.DecodeCacheEntry(data)
	})
}

// FuzzLuaValues converts arbitrary stored JSON to Lua and back, the path a
// value takes through the module (json.Unmarshal, engine.ToLua; then
// engine.FromLua when a script stores it again).
func FuzzLuaValues(f *testing.F) {
	for _, s := range []string{`{"a":[1,2,{"b":null}]}`, `"s"`, `1e308`, `[[[[]]]]`, `{"":true}`, `[1,null,3]`} {
		f.Add([]byte(s))
	}
	L := lua.NewState(lua.Options{SkipOpenLibs: true})
	defer L.Close()
	f.Fuzz(func(t *testing.T, data []byte) {
		var v any
		if json.Unmarshal(data, &v) != nil {
			return
		}
		lv, err := engine.ToLua(L, v)
		if err != nil {
			return // too deep
		}
		back, err := engine.FromLua(lv)
		if err != nil {
			return // e.g. an array with holes from nulls
		}
		if _, err := json.Marshal(back); err != nil {
			t.Fatalf("%s: converted back to %#v, which does not marshal: %v", data, back, err)
		}
	})
}
