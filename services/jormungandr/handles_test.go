package jormungandr_test

import (
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/jormungandr"
)

// TestHandleRouting opens connections through two replicas: each call on a
// handle reaches the replica holding it, and once that replica stops the
// next call fails at once with UNAVAILABLE while the other serves on.
func TestHandleRouting(t *testing.T) {
	ts := echoWS(t)
	cfg := testConfig()
	allowURL(t, &cfg, ts.URL)
	srv := startNATS(t)
	stopA := runService(t, srv, cfg)
	runService(t, srv, cfg)
	c := jormungandr.NewClient(natstest.Connect(t, srv))
	ctx := ctxT(t)

	byInstance := map[string]jormungandr.Handle{}
	for i := 0; len(byInstance) < 2; i++ {
		if i == 200 {
			t.Fatalf("200 connects all went to %d replica(s), want both", len(byInstance))
		}
		h, err := c.ConnectWS(ctx, jormungandr.WSConnectRequest{URL: wsURL(ts.URL)})
		if err != nil {
			t.Fatal(err)
		}
		if _, seen := byInstance[h.Instance]; seen {
			_ = c.Close(ctx, h)
			continue
		}
		byInstance[h.Instance] = h
	}
	for _, h := range byInstance {
		if err := c.Send(ctx, h, []byte(h.ID), false); err != nil {
			t.Fatal(err)
		}
		if m, err := c.Receive(ctx, h, 20*time.Second); err != nil || m == nil || string(m.Data) != h.ID {
			t.Fatalf("handle %s: got %+v, %v, want its own message back", h, m, err)
		}
	}
	// Find which handle belongs to replica A: stop A and see which fails.
	stopA()
	var gone, alive int
	for _, h := range byInstance {
		err := c.Send(ctx, h, []byte("after"), false)
		switch fault.CodeOf(err) {
		case fault.Unavailable:
			if !strings.Contains(err.Error(), "is gone") {
				t.Fatalf("got %v, want it to say the handle is gone", err)
			}
			gone++
		case "":
			alive++
		default:
			t.Fatalf("handle %s: got %v, want UNAVAILABLE or success", h, err)
		}
	}
	if gone != 1 || alive != 1 {
		t.Fatalf("got %d gone and %d alive handles, want 1 and 1", gone, alive)
	}
}

func TestIdleHandleClosed(t *testing.T) {
	ts := echoWS(t)
	cfg := testConfig()
	allowURL(t, &cfg, ts.URL)
	cfg.Handles.IdleTimeout = 20 * time.Millisecond
	e := setup(t, cfg)
	ctx := ctxT(t)
	h, err := e.c.ConnectWS(ctx, jormungandr.WSConnectRequest{URL: wsURL(ts.URL)})
	if err != nil {
		t.Fatal(err)
	}
	// Every call renews the handle, so wait longer after each one.
	for pause := 50 * time.Millisecond; ; pause *= 2 {
		if pause > 30*time.Second {
			t.Fatal("handle still open after long idle pauses")
		}
		time.Sleep(pause)
		err := e.c.Send(ctx, h, []byte("x"), false)
		if fault.CodeOf(err) == fault.NotFound {
			break
		}
		if err != nil {
			t.Fatalf("got %v, want success or NOT_FOUND", err)
		}
	}
}

func TestMaxHandles(t *testing.T) {
	ts := echoWS(t)
	cfg := testConfig()
	allowURL(t, &cfg, ts.URL)
	cfg.Handles.Max = 2
	e := setup(t, cfg)
	ctx := ctxT(t)
	var hs []jormungandr.Handle
	for range 2 {
		h, err := e.c.ConnectWS(ctx, jormungandr.WSConnectRequest{URL: wsURL(ts.URL)})
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	_, err := e.c.ConnectWS(ctx, jormungandr.WSConnectRequest{URL: wsURL(ts.URL)})
	wantCode(t, err, fault.ResourceExhausted)
	if err := e.c.Close(ctx, hs[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.ConnectWS(ctx, jormungandr.WSConnectRequest{URL: wsURL(ts.URL)}); err != nil {
		t.Fatalf("after a close: got %v, want a connection", err)
	}
}
