package hel

import (
	"encoding/json"
	"math"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/nats-io/nats.go"
	lua "github.com/yuin/gopher-lua"
)

// Grant areas of the hel module: hel.kv:<bucket>, hel.files:<namespace>,
// hel.cache[:<key prefix>]. A grant without a scope, or with scope *, covers
// every bucket, namespace or key.
const (
	grantModule = "hel"
	areaKV      = "kv"
	areaFiles   = "files"
	areaCache   = "cache"
)

// maxScriptValueBytes caps the JSON of one value passed in from a script;
// the service's own, lower, limits apply after it.
const maxScriptValueBytes = 8 << 20

// module is the Lua module "hel": a client of the Hel service over NATS.
type module struct {
	c *Client
}

var _ engine.Module = (*module)(nil)

// NewModule returns the Lua module "hel" for the Loki engine. Every call is
// one NATS request to the Hel service on nc carrying the script's remaining
// deadline; the tool's grants are checked before anything is sent. Values
// stored from Lua are strings (kept as bytes) or JSON-shaped tables, numbers
// and booleans (kept as JSON), and come back as the same Lua type. Failures
// raise Lua errors starting with the code, e.g. "PERMISSION_DENIED: ...".
// nc is owned by the caller.
func NewModule(nc *nats.Conn) engine.Module { return &module{c: NewClient(nc)} }

// Name is the global the module is bound to in scripts.
func (m *module) Name() string { return "hel" }

// Open builds the module table for one execution.
func (m *module) Open(L *lua.LState, c *engine.Call) lua.LValue {
	hel := L.CreateTable(0, 3)
	hel.RawSetString("kv", engine.FuncTable(L, c, map[string]engine.ModuleFunc{
		"get": m.kvGet, "put": m.kvPut, "create": m.kvCreate, "update": m.kvUpdate,
		"delete": m.kvDelete, "keys": m.kvKeys, "history": m.kvHistory,
	}))
	hel.RawSetString("files", engine.FuncTable(L, c, map[string]engine.ModuleFunc{
		"read": m.filesRead, "write": m.filesWrite, "append": m.filesAppend, "list": m.filesList,
		"delete": m.filesDelete, "mkdir": m.filesMkdir, "stat": m.filesStat,
	}))
	hel.RawSetString("cache", engine.FuncTable(L, c, map[string]engine.ModuleFunc{
		"get": m.cacheGet, "set": m.cacheSet, "delete": m.cacheDelete, "clear": m.cacheClear,
	}))
	return hel
}

// fail raises err in L; it does not return.
var fail = engine.RaiseError

func badArg(L *lua.LState, fn string, n int, format string, args ...any) int {
	return engine.ArgError(L, "hel", fn, n, format, args...)
}

// str returns argument n, which must be a string.
func str(L *lua.LState, fn string, n int, name string) string {
	v := L.Get(n)
	s, ok := v.(lua.LString)
	if !ok {
		badArg(L, fn, n, "%s must be a string, got %s", name, v.Type())
	}
	return string(s)
}

// optNumber returns argument n as a number, or def when it is nil.
func optNumber(L *lua.LState, fn string, n int, name string, def float64) float64 {
	switch v := L.Get(n).(type) {
	case *lua.LNilType:
		return def
	case lua.LNumber:
		f := float64(v)
		if math.IsNaN(f) || math.IsInf(f, 0) || f < 0 {
			badArg(L, fn, n, "%s must be a non-negative number, got %v", name, f)
		}
		return f
	default:
		badArg(L, fn, n, "%s must be a number, got %s", name, v.Type())
	}
	return 0
}

// seconds converts a TTL in seconds, refusing what does not fit a duration.
func seconds(L *lua.LState, fn string, n int, f float64) time.Duration {
	if f > float64(math.MaxInt64/int64(time.Second)) {
		badArg(L, fn, n, "ttl of %v seconds is too long", f)
	}
	return time.Duration(f * float64(time.Second))
}

// check raises PERMISSION_DENIED unless the tool holds the grant.
func check(L *lua.LState, c *engine.Call, area, scope string) {
	if err := c.Grants.Check(grantModule, area, scope); err != nil {
		fail(L, err)
	}
}

// toValue converts argument n to a Value: a string as bytes, anything
// JSON-shaped as JSON.
func toValue(L *lua.LState, fn string, n int) Value {
	v := L.Get(n)
	switch x := v.(type) {
	case lua.LString:
		return Bytes([]byte(x))
	case *lua.LNilType:
		badArg(L, fn, n, "value is nil (to remove a value, use delete)")
	}
	b, err := engine.MarshalLua(v, maxScriptValueBytes)
	if fault.CodeOf(err) == fault.ResourceExhausted {
		fail(L, err)
	}
	if err != nil {
		badArg(L, fn, n, "value cannot be stored: %s", fault.MessageOf(err))
	}
	return JSON(b)
}

// pushValue pushes a stored value as the Lua value it was stored from.
func pushValue(L *lua.LState, v Value) {
	if v.Type != ContentJSON {
		L.Push(lua.LString(v.Data))
		return
	}
	var g any
	if err := json.Unmarshal(v.Data, &g); err != nil {
		fail(L, fault.New(fault.FailedPrecondition, "stored value is marked JSON but is not: %v", err))
	}
	lv, err := engine.ToLua(L, g)
	if err != nil {
		fail(L, fault.New(fault.FailedPrecondition, "stored value cannot be read in Lua: %s", fault.MessageOf(err)))
	}
	L.Push(lv)
}

func isNotFound(err error) bool { return fault.CodeOf(err) == fault.NotFound }

func (m *module) kvGet(L *lua.LState, c *engine.Call) int {
	bucket, key := str(L, "kv.get", 1, "bucket"), str(L, "kv.get", 2, "key")
	check(L, c, areaKV, bucket)
	e, err := m.c.KVGet(c.Ctx, bucket, key)
	if isNotFound(err) {
		L.Push(lua.LNil)
		return 1
	}
	if err != nil {
		return fail(L, err)
	}
	pushValue(L, e.Value)
	L.Push(lua.LNumber(e.Revision))
	return 2
}

func (m *module) kvPut(L *lua.LState, c *engine.Call) int {
	bucket, key := str(L, "kv.put", 1, "bucket"), str(L, "kv.put", 2, "key")
	v := toValue(L, "kv.put", 3)
	check(L, c, areaKV, bucket)
	rev, err := m.c.KVPut(c.Ctx, bucket, key, v)
	if err != nil {
		return fail(L, err)
	}
	L.Push(lua.LNumber(rev))
	return 1
}

func (m *module) kvCreate(L *lua.LState, c *engine.Call) int {
	bucket, key := str(L, "kv.create", 1, "bucket"), str(L, "kv.create", 2, "key")
	v := toValue(L, "kv.create", 3)
	ttl := seconds(L, "kv.create", 4, optNumber(L, "kv.create", 4, "ttl_seconds", 0))
	check(L, c, areaKV, bucket)
	rev, err := m.c.KVCreate(c.Ctx, bucket, key, v, ttl)
	if err != nil {
		return fail(L, err)
	}
	L.Push(lua.LNumber(rev))
	return 1
}

func (m *module) kvUpdate(L *lua.LState, c *engine.Call) int {
	bucket, key := str(L, "kv.update", 1, "bucket"), str(L, "kv.update", 2, "key")
	v := toValue(L, "kv.update", 3)
	rev, ok := L.Get(4).(lua.LNumber)
	if !ok || float64(rev) < 1 || float64(rev) != math.Trunc(float64(rev)) || float64(rev) > 1<<53 {
		return badArg(L, "kv.update", 4, "revision must be a whole number from 1, got %s", L.Get(4).String())
	}
	check(L, c, areaKV, bucket)
	n, err := m.c.KVUpdate(c.Ctx, bucket, key, v, uint64(rev))
	if err != nil {
		return fail(L, err)
	}
	L.Push(lua.LNumber(n))
	return 1
}

func (m *module) kvDelete(L *lua.LState, c *engine.Call) int {
	bucket, key := str(L, "kv.delete", 1, "bucket"), str(L, "kv.delete", 2, "key")
	check(L, c, areaKV, bucket)
	if err := m.c.KVDelete(c.Ctx, bucket, key, 0); err != nil {
		return fail(L, err)
	}
	return 0
}

// pageOpts reads argument n, the paging options of a listing:
// {limit = n, after = cursor}, or nil for the whole listing.
func pageOpts(L *lua.LState, fn string, n int) (Page, bool) {
	v := L.Get(n)
	if v == lua.LNil {
		return Page{}, false
	}
	t, ok := v.(*lua.LTable)
	if !ok {
		badArg(L, fn, n, "options must be a table {limit = n, after = cursor}, got %s", v.Type())
	}
	var p Page
	t.ForEach(func(k, v lua.LValue) {
		switch k.String() {
		case "limit":
			f, ok := v.(lua.LNumber)
			if !ok || f < 1 || float64(f) != math.Trunc(float64(f)) || f > math.MaxInt32 {
				badArg(L, fn, n, "limit must be a whole number from 1, got %s", v.String())
			}
			p.Limit = int(f)
		case "after":
			switch a := v.(type) {
			case lua.LString:
				p.After = string(a)
			case lua.LNumber:
				p.After = a.String()
			default:
				badArg(L, fn, n, "after must be the cursor a previous page returned, got %s", v.Type())
			}
		default:
			badArg(L, fn, n, "unknown option %q (the options are limit and after)", k.String())
		}
	})
	return p, true
}

// pushNext pushes the cursor of the next page, nil after the last.
func pushNext(L *lua.LState, next string) {
	if next == "" {
		L.Push(lua.LNil)
		return
	}
	L.Push(lua.LString(next))
}

func (m *module) kvKeys(L *lua.LState, c *engine.Call) int {
	bucket := str(L, "kv.keys", 1, "bucket")
	filter := ""
	if L.Get(2) != lua.LNil {
		filter = str(L, "kv.keys", 2, "filter")
	}
	p, paged := pageOpts(L, "kv.keys", 3)
	check(L, c, areaKV, bucket)
	var keys []string
	var next string
	var err error
	if paged {
		keys, next, err = m.c.KVKeysPage(c.Ctx, bucket, filter, p)
	} else {
		keys, err = m.c.KVKeys(c.Ctx, bucket, filter)
	}
	if err != nil {
		return fail(L, err)
	}
	t := L.CreateTable(len(keys), 0)
	for i, k := range keys {
		t.RawSetInt(i+1, lua.LString(k))
	}
	L.Push(t)
	if paged {
		pushNext(L, next)
		return 2
	}
	return 1
}

func (m *module) kvHistory(L *lua.LState, c *engine.Call) int {
	bucket, key := str(L, "kv.history", 1, "bucket"), str(L, "kv.history", 2, "key")
	p, paged := pageOpts(L, "kv.history", 3)
	check(L, c, areaKV, bucket)
	var es []HistoryEntry
	var next string
	var err error
	if paged {
		es, next, err = m.c.KVHistoryPage(c.Ctx, bucket, key, p)
	} else {
		es, err = m.c.KVHistory(c.Ctx, bucket, key)
	}
	if isNotFound(err) {
		L.Push(L.CreateTable(0, 0))
		if paged {
			L.Push(lua.LNil)
			return 2
		}
		return 1
	}
	if err != nil {
		return fail(L, err)
	}
	t := L.CreateTable(len(es), 0)
	for i, e := range es {
		et := L.CreateTable(0, 4)
		et.RawSetString("revision", lua.LNumber(e.Revision))
		et.RawSetString("op", lua.LString(e.Op))
		et.RawSetString("created", lua.LString(e.Created.Format(time.RFC3339Nano)))
		if e.Op == "put" {
			pushValue(L, Value{Data: e.Data, Type: e.ContentType})
			et.RawSetString("value", L.Get(-1))
			L.Pop(1)
		}
		t.RawSetInt(i+1, et)
	}
	L.Push(t)
	if paged {
		pushNext(L, next)
		return 2
	}
	return 1
}

// fileData converts argument n to file content: a string as is, a table as JSON.
func fileData(L *lua.LState, fn string, n int) []byte {
	return toValue(L, fn, n).Data
}

func (m *module) filesRead(L *lua.LState, c *engine.Call) int {
	ns, p := str(L, "files.read", 1, "namespace"), str(L, "files.read", 2, "path")
	off := optNumber(L, "files.read", 3, "offset", 0)
	n := optNumber(L, "files.read", 4, "length", 0)
	check(L, c, areaFiles, ns)
	data, _, err := m.c.ReadFileAt(c.Ctx, ns, p, int64(off), int64(n))
	if isNotFound(err) {
		L.Push(lua.LNil)
		return 1
	}
	if err != nil {
		return fail(L, err)
	}
	L.Push(lua.LString(data))
	return 1
}

func (m *module) filesWrite(L *lua.LState, c *engine.Call) int {
	ns, p := str(L, "files.write", 1, "namespace"), str(L, "files.write", 2, "path")
	data := fileData(L, "files.write", 3)
	check(L, c, areaFiles, ns)
	if err := m.c.WriteFile(c.Ctx, ns, p, data); err != nil {
		return fail(L, err)
	}
	return 0
}

func (m *module) filesAppend(L *lua.LState, c *engine.Call) int {
	ns, p := str(L, "files.append", 1, "namespace"), str(L, "files.append", 2, "path")
	data := fileData(L, "files.append", 3)
	check(L, c, areaFiles, ns)
	if err := m.c.AppendFile(c.Ctx, ns, p, data); err != nil {
		return fail(L, err)
	}
	return 0
}

func pushFileInfo(L *lua.LState, fi FileInfo) *lua.LTable {
	t := L.CreateTable(0, 4)
	t.RawSetString("name", lua.LString(fi.Name))
	t.RawSetString("kind", lua.LString(fi.Kind))
	t.RawSetString("size", lua.LNumber(fi.Size))
	t.RawSetString("modified", lua.LString(fi.Modified.Format(time.RFC3339Nano)))
	return t
}

func (m *module) filesList(L *lua.LState, c *engine.Call) int {
	ns := str(L, "files.list", 1, "namespace")
	dir := "."
	if L.Get(2) != lua.LNil {
		dir = str(L, "files.list", 2, "path")
	}
	p, paged := pageOpts(L, "files.list", 3)
	check(L, c, areaFiles, ns)
	var ents []FileInfo
	var next string
	var err error
	if paged {
		ents, next, err = m.c.ListFilesPage(c.Ctx, ns, dir, p)
	} else {
		ents, err = m.c.ListFiles(c.Ctx, ns, dir)
	}
	if err != nil {
		return fail(L, err)
	}
	t := L.CreateTable(len(ents), 0)
	for i, e := range ents {
		t.RawSetInt(i+1, pushFileInfo(L, e))
	}
	L.Push(t)
	if paged {
		pushNext(L, next)
		return 2
	}
	return 1
}

func (m *module) filesDelete(L *lua.LState, c *engine.Call) int {
	ns, p := str(L, "files.delete", 1, "namespace"), str(L, "files.delete", 2, "path")
	check(L, c, areaFiles, ns)
	if err := m.c.DeleteFile(c.Ctx, ns, p); err != nil {
		return fail(L, err)
	}
	return 0
}

func (m *module) filesMkdir(L *lua.LState, c *engine.Call) int {
	ns, p := str(L, "files.mkdir", 1, "namespace"), str(L, "files.mkdir", 2, "path")
	check(L, c, areaFiles, ns)
	if err := m.c.Mkdir(c.Ctx, ns, p); err != nil {
		return fail(L, err)
	}
	return 0
}

func (m *module) filesStat(L *lua.LState, c *engine.Call) int {
	ns, p := str(L, "files.stat", 1, "namespace"), str(L, "files.stat", 2, "path")
	check(L, c, areaFiles, ns)
	fi, err := m.c.Stat(c.Ctx, ns, p)
	if isNotFound(err) {
		L.Push(lua.LNil)
		return 1
	}
	if err != nil {
		return fail(L, err)
	}
	L.Push(pushFileInfo(L, fi))
	return 1
}

func (m *module) cacheGet(L *lua.LState, c *engine.Call) int {
	key := str(L, "cache.get", 1, "key")
	check(L, c, areaCache, key)
	v, err := m.c.CacheGet(c.Ctx, key)
	if isNotFound(err) {
		L.Push(lua.LNil)
		return 1
	}
	if err != nil {
		return fail(L, err)
	}
	pushValue(L, v)
	return 1
}

func (m *module) cacheSet(L *lua.LState, c *engine.Call) int {
	key := str(L, "cache.set", 1, "key")
	v := toValue(L, "cache.set", 2)
	ttl := seconds(L, "cache.set", 3, optNumber(L, "cache.set", 3, "ttl_seconds", 0))
	check(L, c, areaCache, key)
	if err := m.c.CacheSet(c.Ctx, key, v, ttl); err != nil {
		return fail(L, err)
	}
	return 0
}

func (m *module) cacheDelete(L *lua.LState, c *engine.Call) int {
	key := str(L, "cache.delete", 1, "key")
	check(L, c, areaCache, key)
	if err := m.c.CacheDelete(c.Ctx, key); err != nil {
		return fail(L, err)
	}
	return 0
}

func (m *module) cacheClear(L *lua.LState, c *engine.Call) int {
	check(L, c, areaCache, "*") // only an unscoped grant may clear every key
	if err := m.c.CacheClear(c.Ctx); err != nil {
		return fail(L, err)
	}
	return 0
}
