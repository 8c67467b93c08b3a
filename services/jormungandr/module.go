package jormungandr

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"mime"
	"strings"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/nats-io/nats.go"
	lua "github.com/yuin/gopher-lua"
)

// Grant areas of the net module: net.http:<host>, net.ws:<host>,
// net.mqtt:<host>[:<port>][/<topic filter>] (see CheckGrant). A grant
// without a scope, or with scope *, covers every host the egress policy
// allows.
const (
	grantModule = "net"
	areaHTTP    = "http"
	areaWS      = "ws"
	areaMQTT    = "mqtt"
)

// maxScriptBodyBytes caps the JSON a script passes as a body; the
// service's own, lower, limits apply after it.
const maxScriptBodyBytes = 8 << 20

// module is the Lua module "net": a client of Jormungandr over NATS.
type module struct {
	c *Client
}

var _ engine.Module = (*module)(nil)

// NewModule returns the Lua module "net" for the Loki engine:
// net.http.get(url [, opts]), net.http.request{...}, net.ws.connect(url
// [, opts]) and net.mqtt.connect{...}; see docs/JORMUNGANDR.md. Every call is
// one NATS request to Jormungandr on nc carrying the script's remaining
// deadline; the tool's grants are checked before anything is sent, and an
// MQTT connection carries the topic filters its grants name.
// Connections a script opens are closed when its execution ends. Failures
// raise Lua errors starting with the code, e.g. "PERMISSION_DENIED: ...".
// nc is owned by the caller.
func NewModule(nc *nats.Conn) engine.Module { return &module{c: NewClient(nc)} }

// Name is the global the module is bound to in scripts.
func (m *module) Name() string { return "net" }

// CheckGrant is the package's CheckGrant, for the tool loader: it refuses
// a net grant scripts could not use.
func (m *module) CheckGrant(g engine.Grant) error { return CheckGrant(g) }

// execution is what the module keeps for one script execution: the
// handles it opened, closed when the execution's context ends.
type execution struct {
	m    *module
	call *engine.Call
	mu   sync.Mutex
	open map[string]Handle
}

// Open builds the module table for one execution.
func (m *module) Open(L *lua.LState, c *engine.Call) lua.LValue {
	x := &execution{m: m, call: c, open: map[string]Handle{}}
	context.AfterFunc(c.Ctx, x.closeAll)
	fn := func(f func(*lua.LState) int) *lua.LFunction { return L.NewFunction(f) }
	httpT := L.CreateTable(0, 2)
	httpT.RawSetString("get", fn(x.httpGet))
	httpT.RawSetString("request", fn(x.httpRequest))
	wsT := L.CreateTable(0, 1)
	wsT.RawSetString("connect", fn(x.wsConnect))
	mqttT := L.CreateTable(0, 1)
	mqttT.RawSetString("connect", fn(x.mqttConnect))
	t := L.CreateTable(0, 3)
	t.RawSetString("http", httpT)
	t.RawSetString("ws", wsT)
	t.RawSetString("mqtt", mqttT)
	return t
}

// closeAll closes every handle the execution left open. It runs once the
// execution's context ends, when nothing can use them any more.
func (x *execution) closeAll() {
	x.mu.Lock()
	open := x.open
	x.open = map[string]Handle{}
	x.mu.Unlock()
	for _, h := range open {
		x.m.c.closeAsync(h)
	}
}

// fail raises err in L; it does not return.
var fail = engine.RaiseError

func badArg(L *lua.LState, fn string, n int, format string, args ...any) int {
	return engine.ArgError(L, "net", fn, n, format, args...)
}

func badField(L *lua.LState, fn, field, format string, args ...any) int {
	return fail(L, fault.New(fault.InvalidArgument, "net.%s: field %s: %s", fn, field, fmt.Sprintf(format, args...)))
}

// optTable returns argument n as a table, or nil when it is nil.
func optTable(L *lua.LState, fn string, n int) *lua.LTable {
	switch v := L.Get(n).(type) {
	case *lua.LNilType:
		return nil
	case *lua.LTable:
		return v
	default:
		badArg(L, fn, n, "want a table, got %s", v.Type())
	}
	return nil
}

func argString(L *lua.LState, fn string, n int, name string) string {
	v := L.Get(n)
	s, ok := v.(lua.LString)
	if !ok {
		badArg(L, fn, n, "%s must be a string, got %s", name, v.Type())
	}
	return string(s)
}

// fieldString returns t[name] as a string; "" when absent.
func fieldString(L *lua.LState, fn string, t *lua.LTable, name string) string {
	if t == nil {
		return ""
	}
	switch v := t.RawGetString(name).(type) {
	case *lua.LNilType:
		return ""
	case lua.LString:
		return string(v)
	default:
		badField(L, fn, name, "must be a string, got %s", v.Type())
	}
	return ""
}

func fieldBool(L *lua.LState, fn string, t *lua.LTable, name string) bool {
	if t == nil {
		return false
	}
	switch v := t.RawGetString(name).(type) {
	case *lua.LNilType:
		return false
	case lua.LBool:
		return bool(v)
	default:
		badField(L, fn, name, "must be a boolean, got %s", v.Type())
	}
	return false
}

// seconds converts a non-negative number of seconds to a duration.
func seconds(v lua.LValue) (time.Duration, bool) {
	n, ok := v.(lua.LNumber)
	f := float64(n)
	if !ok || math.IsNaN(f) || f < 0 || f > float64(math.MaxInt64/int64(time.Second)) {
		return 0, false
	}
	return time.Duration(f * float64(time.Second)), true
}

// fieldSeconds returns t[name] in seconds as a duration; 0 when absent.
func fieldSeconds(L *lua.LState, fn string, t *lua.LTable, name string) time.Duration {
	if t == nil || t.RawGetString(name) == lua.LNil {
		return 0
	}
	d, ok := seconds(t.RawGetString(name))
	if !ok {
		badField(L, fn, name, "must be a non-negative number of seconds, got %s", t.RawGetString(name).String())
	}
	return d
}

// fieldHeaders returns t.headers as a map of strings.
func fieldHeaders(L *lua.LState, fn string, t *lua.LTable) map[string]string {
	if t == nil {
		return nil
	}
	switch v := t.RawGetString("headers").(type) {
	case *lua.LNilType:
		return nil
	case *lua.LTable:
		h := map[string]string{}
		v.ForEach(func(k, val lua.LValue) {
			ks, ok1 := k.(lua.LString)
			vs, ok2 := val.(lua.LString)
			if !ok1 || !ok2 {
				badField(L, fn, "headers", "names and values must be strings, got %s = %s", k.Type(), val.Type())
			}
			h[string(ks)] = string(vs)
		})
		return h
	default:
		badField(L, fn, "headers", "must be a table, got %s", v.Type())
	}
	return nil
}

// allow checks the tool's grant for the host of rawURL and returns the
// hosts it may reach (nil: any the policy allows).
func (x *execution) allow(L *lua.LState, area, rawURL string, schemes map[string]int) []string {
	t, err := parseTarget(rawURL, schemes)
	if err != nil {
		fail(L, err)
	}
	if err := x.call.Grants.Check(grantModule, area, t.host); err != nil {
		fail(L, err)
	}
	var hosts []string
	for _, g := range x.call.Grants {
		if g.Module != grantModule || (g.Area != "" && g.Area != area) {
			continue
		}
		if g.Scope == "" || g.Scope == "*" {
			return nil
		}
		hosts = append(hosts, g.Scope)
	}
	return hosts
}

func (x *execution) httpGet(L *lua.LState) int {
	url := argString(L, "http.get", 1, "url")
	opts := optTable(L, "http.get", 2)
	return x.doHTTP(L, "http.get", "GET", url, opts)
}

func (x *execution) httpRequest(L *lua.LState) int {
	t := optTable(L, "http.request", 1)
	if t == nil {
		return badArg(L, "http.request", 1, "want a table {method=, url=, headers=, body=, timeout=}")
	}
	method := fieldString(L, "http.request", t, "method")
	if method == "" {
		method = "GET"
	}
	url := fieldString(L, "http.request", t, "url")
	if url == "" {
		return badField(L, "http.request", "url", "is required")
	}
	return x.doHTTP(L, "http.request", method, url, t)
}

func (x *execution) doHTTP(L *lua.LState, fn, method, url string, opts *lua.LTable) int {
	req := HTTPRequest{Method: strings.ToUpper(method), URL: url, Headers: fieldHeaders(L, fn, opts)}
	timeout := fieldSeconds(L, fn, opts, "timeout")
	if opts != nil {
		body, js := opts.RawGetString("body"), opts.RawGetString("json")
		switch {
		case body != lua.LNil && js != lua.LNil:
			return badField(L, fn, "json", "give body or json, not both")
		case body != lua.LNil:
			s, ok := body.(lua.LString)
			if !ok {
				return badField(L, fn, "body", "must be a string, got %s", body.Type())
			}
			req.Body = []byte(s)
		case js != lua.LNil:
			b, err := engine.MarshalLua(js, maxScriptBodyBytes)
			if err != nil {
				return badField(L, fn, "json", "cannot be sent as JSON: %s", fault.MessageOf(err))
			}
			req.Body = b
			if req.Headers == nil {
				req.Headers = map[string]string{}
			}
			if !hasHeader(req.Headers, "Content-Type") {
				req.Headers["Content-Type"] = "application/json"
			}
		}
	}
	req.Hosts = x.allow(L, areaHTTP, url, httpSchemes)
	resp, err := x.m.c.HTTP(x.call.Ctx, req, timeout)
	if err != nil {
		return fail(L, err)
	}
	out := L.CreateTable(0, 5)
	out.RawSetString("status", lua.LNumber(resp.Status))
	out.RawSetString("body", lua.LString(resp.Body))
	out.RawSetString("url", lua.LString(resp.URL))
	ht := L.CreateTable(0, len(resp.Headers))
	for k, v := range resp.Headers {
		ht.RawSetString(k, lua.LString(v))
	}
	out.RawSetString("headers", ht)
	if isJSON(resp.Headers["content-type"]) {
		var v any
		if json.Unmarshal(resp.Body, &v) == nil {
			if lv, err := engine.ToLua(L, v); err == nil {
				out.RawSetString("json", lv)
			}
		}
	}
	L.Push(out)
	return 1
}

func hasHeader(h map[string]string, name string) bool {
	for k := range h {
		if strings.EqualFold(k, name) {
			return true
		}
	}
	return false
}

// isJSON reports a JSON media type: application/json or any +json.
func isJSON(contentType string) bool {
	mt, _, err := mime.ParseMediaType(contentType)
	return err == nil && (mt == "application/json" || strings.HasSuffix(mt, "+json"))
}

func (x *execution) wsConnect(L *lua.LState) int {
	url := argString(L, "ws.connect", 1, "url")
	opts := optTable(L, "ws.connect", 2)
	req := WSConnectRequest{URL: url, Headers: fieldHeaders(L, "ws.connect", opts), Reconnect: fieldBool(L, "ws.connect", opts, "reconnect")}
	req.Hosts = x.allow(L, areaWS, url, wsSchemes)
	h, err := x.m.c.ConnectWS(x.call.Ctx, req)
	if err != nil {
		return fail(L, err)
	}
	L.Push(x.handleTable(L, h, map[string]lua.LGFunction{
		"send": func(L *lua.LState) int {
			data := argString(L, "ws:send", 2, "message")
			return x.onHandle(L, func(ctx context.Context) error { return x.m.c.Send(ctx, h, []byte(data), false) })
		},
		"receive": func(L *lua.LState) int {
			wait := receiveWait(L, "ws:receive")
			var msg *Message
			x.onHandle(L, func(ctx context.Context) (err error) { msg, err = x.m.c.Receive(ctx, h, wait); return err })
			if msg == nil {
				L.Push(lua.LNil)
				return 1
			}
			L.Push(lua.LString(msg.Data))
			L.Push(lua.LBool(msg.Binary))
			return 2
		},
	}))
	return 1
}

func (x *execution) mqttConnect(L *lua.LState) int {
	t := optTable(L, "mqtt.connect", 1)
	if t == nil {
		return badArg(L, "mqtt.connect", 1, "want a table {broker=, client_id=, username=, password=}")
	}
	req := MQTTConnectRequest{
		Broker:   fieldString(L, "mqtt.connect", t, "broker"),
		ClientID: fieldString(L, "mqtt.connect", t, "client_id"),
		Username: fieldString(L, "mqtt.connect", t, "username"),
		Password: fieldString(L, "mqtt.connect", t, "password"),
	}
	if req.Broker == "" {
		return badField(L, "mqtt.connect", "broker", "is required (%q is Loki's own MQTT listener)", LocalBroker)
	}
	var access mqttAccess
	var err error
	if req.Broker == LocalBroker {
		access, err = localMQTTGrants(x.call.Grants)
	} else {
		var broker target
		if broker, err = parseTarget(req.Broker, mqttSchemes); err == nil {
			access, err = mqttGrants(x.call.Grants, broker)
		}
	}
	if err != nil {
		return fail(L, err)
	}
	req.Hosts, req.Topics = access.hosts, access.topics
	h, err := x.m.c.ConnectMQTT(x.call.Ctx, req)
	if err != nil {
		return fail(L, err)
	}
	L.Push(x.handleTable(L, h, map[string]lua.LGFunction{
		"publish": func(L *lua.LState) int {
			topic := argString(L, "mqtt:publish", 2, "topic")
			var payload []byte
			switch v := L.Get(3).(type) {
			case lua.LString:
				payload = []byte(v)
			case *lua.LNilType:
			default:
				b, err := engine.MarshalLua(v, maxScriptBodyBytes)
				if err != nil {
					return badArg(L, "mqtt:publish", 3, "payload cannot be sent as JSON: %s", fault.MessageOf(err))
				}
				payload = b
			}
			qos := optQoS(L, "mqtt:publish", 4)
			retain := false
			if v := L.Get(5); v != lua.LNil {
				b, ok := v.(lua.LBool)
				if !ok {
					return badArg(L, "mqtt:publish", 5, "retain must be a boolean, got %s", v.Type())
				}
				retain = bool(b)
			}
			return x.onHandle(L, func(ctx context.Context) error { return x.m.c.Publish(ctx, h, topic, payload, qos, retain) })
		},
		"subscribe": func(L *lua.LState) int {
			topic := argString(L, "mqtt:subscribe", 2, "topic")
			qos := optQoS(L, "mqtt:subscribe", 3)
			return x.onHandle(L, func(ctx context.Context) error { return x.m.c.Subscribe(ctx, h, topic, qos) })
		},
		"receive": func(L *lua.LState) int {
			wait := receiveWait(L, "mqtt:receive")
			var msg *Message
			x.onHandle(L, func(ctx context.Context) (err error) { msg, err = x.m.c.Receive(ctx, h, wait); return err })
			if msg == nil {
				L.Push(lua.LNil)
				return 1
			}
			mt := L.CreateTable(0, 2)
			mt.RawSetString("topic", lua.LString(msg.Topic))
			mt.RawSetString("payload", lua.LString(msg.Data))
			L.Push(mt)
			return 1
		},
	}))
	return 1
}

// handleTable builds the Lua object of h: its methods plus close, each
// called as h:method(...).
func (x *execution) handleTable(L *lua.LState, h Handle, methods map[string]lua.LGFunction) *lua.LTable {
	x.mu.Lock()
	x.open[h.ID] = h
	x.mu.Unlock()
	methods["close"] = func(L *lua.LState) int {
		x.mu.Lock()
		delete(x.open, h.ID)
		x.mu.Unlock()
		return x.onHandle(L, func(ctx context.Context) error { return x.m.c.Close(ctx, h) })
	}
	t := L.CreateTable(0, len(methods)+2)
	for name, f := range methods {
		t.RawSetString(name, L.NewFunction(func(L *lua.LState) int {
			if L.Get(1) != t {
				return fail(L, fault.New(fault.InvalidArgument, "call %s as a method: h:%s(...)", name, name))
			}
			return f(L)
		}))
	}
	t.RawSetString("kind", lua.LString(h.Kind))
	t.RawSetString("id", lua.LString(h.String()))
	return t
}

// onHandle runs a call on a handle, raising its error.
func (x *execution) onHandle(L *lua.LState, call func(ctx context.Context) error) int {
	if err := call(x.call.Ctx); err != nil {
		return fail(L, err)
	}
	return 0
}

// receiveWait reads the timeout argument of a receive: seconds, or nil to
// wait until the script's deadline (-1).
func receiveWait(L *lua.LState, fn string) time.Duration {
	v := L.Get(2)
	if v == lua.LNil {
		return -1
	}
	d, ok := seconds(v)
	if !ok {
		badArg(L, fn, 1, "timeout must be a non-negative number of seconds, got %s", v.String())
	}
	return d
}

func optQoS(L *lua.LState, fn string, n int) int {
	switch v := L.Get(n).(type) {
	case *lua.LNilType:
		return 0
	case lua.LNumber:
		if v == 0 || v == 1 {
			return int(v)
		}
	}
	badArg(L, fn, n-1, "qos must be 0 or 1, got %s", L.Get(n).String())
	return 0
}
