package jormungandr_test

import (
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
