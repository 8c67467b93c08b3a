package jormungandr_test

import (
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/jormungandr"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/subjects"
)

// numericLabel is a last label inet_aton would read as a number.
var numericLabel = regexp.MustCompile(`^([0-9]+|0x[0-9a-f]*)$`)

// publicPolicy allows every public host on ports 80 and 443.
var publicPolicy = jormungandr.Policy{AllowHosts: []string{"*"}, AllowPorts: []int{80, 443}}

// FuzzCheckHTTPURL checks that whatever URL passes a policy allowing every
// public host names a canonical host and port, and never a non-public IP
// address; that refusals carry the documented codes; and that the result
// is stable.
func FuzzCheckHTTPURL(f *testing.F) {
	for _, s := range []string{
		"http://example.com/", "https://EXAMPLE.com.:443/x", "http://2130706433/", "http://0x7f000001/",
		"http://0177.0.0.1/", "http://127.1/", "http://localhost./", "http://[::ffff:127.0.0.1]/",
		"http://[::1]/", "http://[fe80::1%25eth0]/", "http://169.254.169.254/latest", "http://8.8.8.8/",
		"http://[2001:4860:4860::8888]/", "http://user:pw@example.com@evil.com/", "http://example.com:0/",
		"http://example.com:99999/", "ftp://example.com/", "http:///x", "http://ex ample.com/", "http://%31%32%37.0.0.1/",
		"http://[64:ff9b::7f00:1]/", "http://100.100.100.200/", "http://xn--nxasmq6b.com/", "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		host, port, err := jormungandr.CheckHTTPURL(publicPolicy, raw)
		if err != nil {
			if c := fault.CodeOf(err); c != fault.InvalidArgument && c != fault.PermissionDenied {
				t.Fatalf("%q: got code %s, want INVALID_ARGUMENT or PERMISSION_DENIED", raw, c)
			}
			return
		}
		if port != 80 && port != 443 {
			t.Fatalf("%q: allowed port %d, not in the policy", raw, port)
		}
		if a, perr := netip.ParseAddr(host); perr == nil {
			if kind := jormungandr.AddrKind(a); kind != "" || a.Is4In6() {
				t.Fatalf("%q: allowed %s address %s", raw, kind, a)
			}
		} else {
			if host != strings.ToLower(host) || strings.HasSuffix(host, ".") || host == "" {
				t.Fatalf("%q: host %q is not canonical", raw, host)
			}
			labels := strings.Split(host, ".")
			if numericLabel.MatchString(labels[len(labels)-1]) {
				t.Fatalf("%q: host %q ends in a number, which resolvers may read as an address", raw, host)
			}
		}
		again := "http://" + net.JoinHostPort(host, strconv.Itoa(port)) + "/"
		h2, p2, err := jormungandr.CheckHTTPURL(publicPolicy, again)
		if err != nil || h2 != host || p2 != port {
			t.Fatalf("%q: allowed as %s:%d, but %q gives %s:%d, %v", raw, host, port, again, h2, p2, err)
		}
	})
}

// FuzzPolicyEntries feeds arbitrary entries to the policy: Validate names
// the bad ones, and a policy that validates can check any address.
func FuzzPolicyEntries(f *testing.F) {
	for _, s := range []string{"example.com", "*.example.com", "*", "127.0.0.1:1883", "[::1]:80", "10.0.0.0/8",
		"::ffff:1.2.3.4", "a..b", "*.", "host:0", "host:x", "[::1", "2130706433", "fe80::1%eth0"} {
		f.Add(s, 80)
	}
	f.Fuzz(func(t *testing.T, entry string, port int) {
		cfg := jormungandr.DefaultConfig()
		cfg.Policy = jormungandr.Policy{AllowHosts: []string{entry}, AllowCIDRs: []string{entry}, AllowPorts: []int{port}}
		err := cfg.Validate()
		if err != nil {
			if !errors.Is(err, jormungandr.ErrConfig) || !strings.Contains(err.Error(), "policy.allow_") {
				t.Fatalf("entry %q port %d: got %v, want an ErrConfig naming the key", entry, port, err)
			}
			return
		}
		for _, a := range []string{"127.0.0.1", "169.254.169.254", "8.8.8.8", "::1"} {
			_ = jormungandr.CheckDialedAddr(cfg.Policy, netip.MustParseAddr(a), port)
		}
	})
}

// FuzzDecodeRequests feeds arbitrary bodies to every request decoder: an
// accepted request is valid and survives a round trip through JSON.
func FuzzDecodeRequests(f *testing.F) {
	for _, s := range []string{
		`{"method":"get","url":"http://x/","headers":{"A":"b"},"body":"aGk="}`,
		`{"url":"ws://x/","reconnect":true}`, `{"broker":"tcp://x:1883","client_id":"c"}`,
		`{"id":"h1","data":"aGk=","topic":"a/+/#","qos":1,"wait":"1s"}`, `{"id":"h1","wait":"-1s"}`,
		`{"method":"TRACE","url":"http://x"}`, `{"url":"http://x","headers":{"a b":"c"}}`, `{}`, `[]`, `{"url":"x"} {}`,
		`{"url":"http://x","extra":1}`, `{"id":"","qos":2}`, `{"id":"h","topic":"a b"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(name string, v any, err error, decode func([]byte) (any, error)) {
			if err != nil {
				if fault.CodeOf(err) != fault.InvalidArgument {
					t.Fatalf("%s(%q): got %v, want INVALID_ARGUMENT", name, data, err)
				}
				return
			}
			b, err := json.Marshal(v)
			if err != nil {
				t.Fatalf("%s(%q): accepted %+v, which does not encode: %v", name, data, v, err)
			}
			again, err := decode(b)
			if err != nil || !reflect.DeepEqual(again, v) {
				t.Fatalf("%s(%q): accepted %+v, but its JSON %s decodes to %+v, %v", name, data, v, b, again, err)
			}
		}
		hr, err := jormungandr.DecodeHTTPRequest(data)
		check("DecodeHTTPRequest", hr, err, func(b []byte) (any, error) { return jormungandr.DecodeHTTPRequest(b) })
		if err == nil {
			for k, v := range hr.Headers {
				if k == "" || strings.ContainsAny(k+v, "\r\n\x00") {
					t.Fatalf("DecodeHTTPRequest(%q): accepted header %q: %q", data, k, v)
				}
			}
		}
		wr, err := jormungandr.DecodeWSConnectRequest(data)
		check("DecodeWSConnectRequest", wr, err, func(b []byte) (any, error) { return jormungandr.DecodeWSConnectRequest(b) })
		mr, err := jormungandr.DecodeMQTTConnectRequest(data)
		check("DecodeMQTTConnectRequest", mr, err, func(b []byte) (any, error) { return jormungandr.DecodeMQTTConnectRequest(b) })
		for _, op := range []string{"send", "receive", "publish", "subscribe", "close"} {
			r, _, err := jormungandr.DecodeHandleRequest(data, op)
			check("DecodeHandleRequest/"+op, r, err, func(b []byte) (any, error) {
				r, _, err := jormungandr.DecodeHandleRequest(b, op)
				return r, err
			})
			if err == nil && (r.QoS < 0 || r.QoS > 1 || r.ID == "") {
				t.Fatalf("DecodeHandleRequest(%q, %s): accepted %+v", data, op, r)
			}
		}
	})
}

// FuzzCheckGrant checks the net grant parser (what the tool loader runs on
// every net grant): it never panics, its verdict is stable, its refusals
// wrap ErrGrant, and a net.mqtt grant it accepts for a topic under Loki's
// own roots does not exist.
//
//	go test -fuzz FuzzCheckGrant ./services/jormungandr/
func FuzzCheckGrant(f *testing.F) {
	for _, s := range []string{
		"net.mqtt:127.0.0.1:1883/readings/#", "net.mqtt:127.0.0.1/readings/+/temp", "net.mqtt:[::1]:1883/a",
		"net.mqtt:broker.example.com", "net.http:api.example.com", "net.ws:*", "net.mqtt:127.0.0.1/loki/exec/#",
		"net.mqtt:127.0.0.1/+/#", "net.mqtt:127.0.0.1/$SYS/x", "net.mqtt:h:99999/a", "net:a/b", "net.ftp:x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		g, err := engine.ParseGrant(s)
		if err != nil {
			return
		}
		err1, err2 := jormungandr.CheckGrant(g), jormungandr.CheckGrant(g)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("%q: unstable verdict: %v, then %v", s, err1, err2)
		}
		if err1 != nil {
			if !errors.Is(err1, jormungandr.ErrGrant) {
				t.Fatalf("%q: got %v, want an error wrapping ErrGrant", s, err1)
			}
			return
		}
		if g.Module != "net" || g.Area != "mqtt" {
			return
		}
		_, topic, ok := strings.Cut(g.Scope, "/")
		if !ok {
			return
		}
		first, _, _ := strings.Cut(topic, "/")
		for _, root := range subjects.InternalRoots {
			if first == root {
				t.Fatalf("%q: accepted a topic under Loki's root %q", s, root)
			}
		}
	})
}
