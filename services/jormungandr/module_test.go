package jormungandr_test

import (
	"context"
	"encoding/json"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/loki-iot/loki/examples"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/jormungandr"
)

const moduleTools = `
[[tools]]
name = "get"
returns = "object"
grants = ["net.http:127.0.0.1"]
script = '''
local r = net.http.get(url, {headers = {["X-Test"] = "t"}})
return {status = r.status, body = r.body, method = r.headers["x-method"]}
'''
  [[tools.params]]
  name = "url"
  type = "string"
  required = true

[[tools]]
name = "post_json"
returns = "any"
grants = ["net.http:127.0.0.1"]
script = '''
local r = net.http.request{method = "post", url = url, json = {a = 1}, timeout = 5}
return r.json
'''
  [[tools.params]]
  name = "url"
  type = "string"
  required = true

[[tools]]
name = "no_grant"
returns = "any"
grants = ["net.http:example.com"]
script = 'return net.http.get(url).status'
  [[tools.params]]
  name = "url"
  type = "string"
  required = true

[[tools]]
name = "ws_echo"
returns = "object"
grants = ["net.ws"]
script = '''
local h = net.ws.connect(url)
h:send("ping")
local got = h:receive(20)
local none = h:receive(0.01)
h:close()
local ok, err = pcall(h.send, h, "after close")
return {got = got, none = (none == nil), closed_code = err:match("^([%u_]+): ")}
'''
  [[tools.params]]
  name = "url"
  type = "string"
  required = true

[[tools]]
name = "ws_leave_open"
returns = "boolean"
grants = ["net.ws"]
script = 'net.ws.connect(url) return true'
  [[tools.params]]
  name = "url"
  type = "string"
  required = true

[[tools]]
name = "mqtt_roundtrip"
returns = "object"
grants = ["net.mqtt"]
script = '''
local h = net.mqtt.connect{broker = broker, client_id = "rt"}
h:subscribe("rt/+")
h:publish("rt/x", "hello", 1, false)
local m = h:receive(20)
h:close()
return m
'''
  [[tools.params]]
  name = "broker"
  type = "string"
  required = true

[[tools]]
name = "bad_args"
returns = "string"
grants = ["net"]
script = '''
local ok, err = pcall(net.http.request, {url = 5})
return err
'''
`

// closedWS serves WebSocket connections and reports each one's end.
func closedWS(t testing.TB) (*httptest.Server, <-chan struct{}) {
	t.Helper()
	ended := make(chan struct{}, 16)
	ts := wsServer(t, func(_ context.Context, c *websocket.Conn) {
		for {
			if _, _, err := c.Read(context.Background()); err != nil {
				ended <- struct{}{}
				return
			}
		}
	})
	return ts, ended
}

func TestModule(t *testing.T) {
	hs := echoHTTP(t)
	jsonSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=utf-8")
		var in map[string]any
		_ = json.NewDecoder(r.Body).Decode(&in)
		_ = json.NewEncoder(w).Encode(map[string]any{"method": r.Method, "ctype": r.Header.Get("Content-Type"), "in": in})
	}))
	t.Cleanup(jsonSrv.Close)
	ws := echoWS(t)
	leave, ended := closedWS(t)

	srv := startNATS(t)
	cfg := testConfig()
	for _, u := range []string{hs.URL, jsonSrv.URL, ws.URL, leave.URL} {
		allowURL(t, &cfg, u)
	}
	if err := cfg.Policy.AllowAddr(srv.MQTTAddr()); err != nil {
		t.Fatal(err)
	}
	e := setupLokiOn(t, srv, cfg, moduleTools)

	args := func(kv ...string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		b, _ := json.Marshal(m)
		return string(b)
	}
	tests := []struct {
		name, tool, args string
		want             any
		code             fault.Code
		msg              string
	}{
		{name: "get", tool: "get", args: args("url", hs.URL+"/x"),
			want: map[string]any{"status": 201.0, "body": "GET t ", "method": "GET"}},
		{name: "post json", tool: "post_json", args: args("url", jsonSrv.URL),
			want: map[string]any{"method": "POST", "ctype": "application/json", "in": map[string]any{"a": 1.0}}},
		{name: "grant for another host", tool: "no_grant", args: args("url", hs.URL),
			code: fault.PermissionDenied, msg: "net.http:127.0.0.1"},
		{name: "grant covers only its host", tool: "get", args: args("url", strings.Replace(hs.URL, "127.0.0.1", "localhost", 1)),
			code: fault.PermissionDenied, msg: "net.http:localhost"},
		{name: "ws echo", tool: "ws_echo", args: args("url", wsURL(ws.URL)),
			want: map[string]any{"got": "ping", "none": true, "closed_code": "NOT_FOUND"}},
		{name: "mqtt", tool: "mqtt_roundtrip", args: args("broker", "tcp://"+srv.MQTTAddr()),
			want: map[string]any{"topic": "rt/x", "payload": "hello"}},
		{name: "bad args", tool: "bad_args", args: `{}`,
			want: "INVALID_ARGUMENT: net.http.request: field url: must be a string, got number"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := e.call(t, tc.tool, tc.args)
			if tc.code != "" {
				wantCode(t, err, tc.code)
				if !strings.Contains(err.Error(), tc.msg) {
					t.Fatalf("got %v, want it to contain %q", err, tc.msg)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %#v, want %#v", got, tc.want)
			}
		})
	}
	t.Run("handles closed when the execution ends", func(t *testing.T) {
		if _, err := e.call(t, "ws_leave_open", args("url", wsURL(leave.URL))); err != nil {
			t.Fatal(err)
		}
		select {
		case <-ended:
		case <-time.After(30 * time.Second):
			t.Fatal("the connection the script left open is still open after 30s")
		}
	})
}

// TestExampleNetTools runs the tools of examples/net.toml against local
// servers, with a policy that allows them.
func TestExampleNetTools(t *testing.T) {
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"version":"1.2.3","uptime":42,"secret":"no"}`))
	}))
	t.Cleanup(api.Close)
	srv := startNATS(t)
	cfg := testConfig()
	allowURL(t, &cfg, api.URL)
	if err := cfg.Policy.AllowAddr(srv.MQTTAddr()); err != nil {
		t.Fatal(err)
	}
	data, err := fs.ReadFile(examples.FS, "net.toml")
	if err != nil {
		t.Fatal(err)
	}
	e := setupLokiOn(t, srv, cfg, string(data))

	got, err := e.call(t, "fetch_fields", `{"url":"`+api.URL+`/status","fields":["version","uptime"]}`)
	want := map[string]any{"status": 200.0, "fields": map[string]any{"version": "1.2.3", "uptime": 42.0}}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("fetch_fields: got %v, %v, want %v", got, err, want)
	}

	// Read what publish_reading sends with a handle of our own.
	c := jormungandr.NewClient(natstest.Connect(t, srv))
	ctx := ctxT(t)
	sub, err := c.ConnectMQTT(ctx, jormungandr.MQTTConnectRequest{Broker: "tcp://" + srv.MQTTAddr()})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Subscribe(ctx, sub, "readings/+/reading", 1); err != nil {
		t.Fatal(err)
	}
	got, err = e.call(t, "publish_reading", `{"sensor":"kitchen","value":21.5,"unit":"C","broker":"tcp://`+srv.MQTTAddr()+`"}`)
	if want := map[string]any{"topic": "readings/kitchen/reading", "value": 21.5}; err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("publish_reading: got %v, %v, want %v", got, err, want)
	}
	m, err := c.Receive(ctx, sub, 20*time.Second)
	if err != nil || m == nil {
		t.Fatalf("got %v, %v, want the reading", m, err)
	}
	var reading map[string]any
	if err := json.Unmarshal(m.Data, &reading); err != nil || m.Topic != "readings/kitchen/reading" ||
		!reflect.DeepEqual(reading, map[string]any{"sensor": "kitchen", "value": 21.5, "unit": "C"}) {
		t.Fatalf("got %s on %s (%v), want the kitchen reading as JSON", m.Data, m.Topic, err)
	}
}
