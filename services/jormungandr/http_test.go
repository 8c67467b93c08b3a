package jormungandr_test

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/jormungandr"
)

// echoHTTP answers every request with its method, X-Test header and body,
// and serves /big (n bytes, ?n=), /redirect (?to=), /loop and /slow.
func echoHTTP(t testing.TB) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/big":
			n, _ := strconv.Atoi(r.URL.Query().Get("n"))
			_, _ = w.Write(bytes.Repeat([]byte("x"), n))
			return
		case "/redirect":
			http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusFound)
			return
		case "/loop":
			http.Redirect(w, r, "/loop", http.StatusFound)
			return
		case "/slow":
			select {
			case <-r.Context().Done():
			case <-time.After(20 * time.Second):
			}
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("X-Method", r.Method)
		w.Header().Add("X-Multi", "a")
		w.Header().Add("X-Multi", "b")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(r.Method + " " + r.Header.Get("X-Test") + " " + string(body)))
	}))
	t.Cleanup(ts.Close)
	return ts
}

func TestHTTPVerbs(t *testing.T) {
	ts := echoHTTP(t)
	cfg := testConfig()
	allowURL(t, &cfg, ts.URL)
	e := setup(t, cfg)
	for _, method := range []string{"GET", "POST", "PUT", "PATCH", "DELETE"} {
		t.Run(method, func(t *testing.T) {
			resp, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{
				Method: method, URL: ts.URL + "/echo", Headers: map[string]string{"X-Test": "hdr"}, Body: []byte("payload"),
			}, 0)
			if err != nil {
				t.Fatal(err)
			}
			if want := method + " hdr payload"; resp.Status != 201 || string(resp.Body) != want {
				t.Fatalf("got %d %q, want 201 %q", resp.Status, resp.Body, want)
			}
			if resp.Headers["x-method"] != method || resp.Headers["x-multi"] != "a, b" {
				t.Fatalf("got headers %v, want x-method %s and x-multi \"a, b\"", resp.Headers, method)
			}
		})
	}
	t.Run("HEAD", func(t *testing.T) {
		resp, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{Method: "HEAD", URL: ts.URL}, 0)
		if err != nil || resp.Status != 201 || len(resp.Body) != 0 {
			t.Fatalf("got %+v, %v, want 201 with no body", resp, err)
		}
	})
	t.Run("unknown method", func(t *testing.T) {
		_, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{Method: "TRACE", URL: ts.URL}, 0)
		wantCode(t, err, fault.InvalidArgument)
	})
	t.Run("Host header refused", func(t *testing.T) {
		_, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{URL: ts.URL, Headers: map[string]string{"Host": "example.com"}}, 0)
		wantCode(t, err, fault.InvalidArgument)
	})
}

func TestHTTPLimits(t *testing.T) {
	ts := echoHTTP(t)
	cfg := testConfig()
	allowURL(t, &cfg, ts.URL)
	e := setup(t, cfg)
	max := cfg.HTTP.MaxResponseBytes
	tests := []struct {
		name string
		req  jormungandr.HTTPRequest
		want fault.Code
	}{
		{"response at the cap", jormungandr.HTTPRequest{URL: ts.URL + "/big?n=" + strconv.Itoa(max)}, ""},
		{"response over the cap", jormungandr.HTTPRequest{URL: ts.URL + "/big?n=" + strconv.Itoa(max+1)}, fault.ResourceExhausted},
		{"request body over the cap", jormungandr.HTTPRequest{Method: "POST", URL: ts.URL, Body: make([]byte, cfg.HTTP.MaxRequestBytes+1)}, fault.ResourceExhausted},
		{"redirect loop", jormungandr.HTTPRequest{URL: ts.URL + "/loop"}, fault.FailedPrecondition},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := e.c.HTTP(ctxT(t), tc.req, 0)
			wantCode(t, err, tc.want)
			if tc.want == "" && len(resp.Body) != max {
				t.Fatalf("got %d bytes, want %d", len(resp.Body), max)
			}
		})
	}
	t.Run("timeout", func(t *testing.T) {
		_, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{URL: ts.URL + "/slow"}, 100*time.Millisecond)
		wantCode(t, err, fault.DeadlineExceeded)
	})
}

func TestHTTPRedirects(t *testing.T) {
	ts := echoHTTP(t)
	other := echoHTTP(t) // same address, another port: not in the policy
	cfg := testConfig()
	allowURL(t, &cfg, ts.URL)
	e := setup(t, cfg)
	t.Run("allowed target followed", func(t *testing.T) {
		resp, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{URL: ts.URL + "/redirect?to=/echo"}, 0)
		if err != nil || resp.Status != 201 || !strings.HasSuffix(resp.URL, "/echo") {
			t.Fatalf("got %+v, %v, want 201 from /echo", resp, err)
		}
	})
	for _, to := range []string{other.URL + "/echo", "http://localhost:" + strconv.Itoa(portOf(t, ts.URL)) + "/echo", "http://169.254.169.254/latest/meta-data/"} {
		t.Run("to "+to, func(t *testing.T) {
			_, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{URL: ts.URL + "/redirect?to=" + to}, 0)
			wantCode(t, err, fault.PermissionDenied)
			if !strings.Contains(err.Error(), "redirect") {
				t.Fatalf("got %v, want it to name the redirect", err)
			}
		})
	}
	t.Run("outside the caller's hosts", func(t *testing.T) {
		_, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{URL: ts.URL + "/redirect?to=/echo", Hosts: []string{"example.com"}}, 0)
		wantCode(t, err, fault.PermissionDenied)
	})
}

// TestHTTPPolicy tries the usual ways to reach loopback past a policy that
// lists only the test server's address and port, and past one that allows
// every public host.
func TestHTTPPolicy(t *testing.T) {
	ts := echoHTTP(t)
	port := strconv.Itoa(portOf(t, ts.URL))
	tricks := []string{
		"http://2130706433:" + port + "/",
		"http://0x7f000001:" + port + "/",
		"http://0177.0.0.1:" + port + "/",
		"http://127.1:" + port + "/",
		"http://localhost:" + port + "/",
		"http://localhost.:" + port + "/",
		"http://LOCALHOST:" + port + "/",
		"http://[::ffff:127.0.0.1]:" + port + "/",
		"http://[::1]:" + port + "/",
		"http://0.0.0.0:" + port + "/",
		"http://127.0.0.2:" + port + "/",
		"http://127.0.0.1:1/",
		"http://169.254.169.254/",
		"http://10.0.0.1:" + port + "/",
	}
	listed := testConfig()
	allowURL(t, &listed, ts.URL)
	public := testConfig()
	public.Policy.AllowHosts = []string{"*"}
	public.Policy.AllowPorts = []int{portOf(t, ts.URL), 80}
	for _, pc := range []struct {
		name string
		cfg  jormungandr.Config
	}{{"listed address", listed}, {"any public host", public}} {
		t.Run(pc.name, func(t *testing.T) {
			e := setup(t, pc.cfg)
			for _, u := range tricks {
				_, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{URL: u}, 0)
				if fault.CodeOf(err) != fault.PermissionDenied || !strings.Contains(fault.MessageOf(err), "host ") {
					t.Errorf("%s: got %v, want PERMISSION_DENIED naming the host", u, err)
				}
			}
		})
	}
	t.Run("deny by default", func(t *testing.T) {
		e := setup(t, testConfig())
		_, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{URL: ts.URL}, 0)
		wantCode(t, err, fault.PermissionDenied)
	})
	t.Run("name resolving to loopback refused at dial", func(t *testing.T) {
		cfg := testConfig()
		cfg.Policy.AllowHosts = []string{"localhost:" + port}
		e := setup(t, cfg)
		_, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{URL: "http://localhost:" + port + "/"}, 0)
		wantCode(t, err, fault.PermissionDenied)
		if !strings.Contains(err.Error(), "loopback") {
			t.Fatalf("got %v, want it to say the address is loopback", err)
		}
	})
	t.Run("CIDR listed", func(t *testing.T) {
		cfg := testConfig()
		cfg.Policy.AllowCIDRs = []string{"127.0.0.0/8"}
		cfg.Policy.AllowPorts = []int{portOf(t, ts.URL)}
		e := setup(t, cfg)
		resp, err := e.c.HTTP(ctxT(t), jormungandr.HTTPRequest{URL: ts.URL}, 0)
		if err != nil || resp.Status != 201 {
			t.Fatalf("got %+v, %v, want 201", resp, err)
		}
	})
}
