package jormungandr_test

import (
	"io"
	"net/http"
	"testing"

	"github.com/loki-iot/loki/services/jormungandr"
)

// BenchmarkHTTPGet measures one GET through the service against a local server.
func BenchmarkHTTPGet(b *testing.B) {
	ts := echoHTTP(b)
	cfg := testConfig()
	allowURL(b, &cfg, ts.URL)
	e := setup(b, cfg)
	ctx := ctxT(b)
	req := jormungandr.HTTPRequest{URL: ts.URL + "/x"}
	for b.Loop() {
		if _, err := e.c.HTTP(ctx, req, 0); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDirectHTTPGet is the baseline for BenchmarkHTTPGet: the same GET
// with net/http straight from the benchmark, no NATS and no policy.
func BenchmarkDirectHTTPGet(b *testing.B) {
	ts := echoHTTP(b)
	c := &http.Client{Transport: &http.Transport{}}
	for b.Loop() {
		resp, err := c.Get(ts.URL + "/x")
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
	}
}

// BenchmarkWSRoundTrip measures a send and its echo on a held WebSocket.
func BenchmarkWSRoundTrip(b *testing.B) {
	ts := echoWS(b)
	cfg := testConfig()
	allowURL(b, &cfg, ts.URL)
	e := setup(b, cfg)
	ctx := ctxT(b)
	h, err := e.c.ConnectWS(ctx, jormungandr.WSConnectRequest{URL: wsURL(ts.URL)})
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if err := e.c.Send(ctx, h, []byte("x"), false); err != nil {
			b.Fatal(err)
		}
		if m, err := e.c.Receive(ctx, h, -1); err != nil || m == nil {
			b.Fatal(m, err)
		}
	}
}
