package jormungandr_test

import (
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/jormungandr"
)

func TestWebSocket(t *testing.T) {
	ts := echoWS(t)
	cfg := testConfig()
	allowURL(t, &cfg, ts.URL)
	e := setup(t, cfg)
	ctx := ctxT(t)
	h, err := e.c.ConnectWS(ctx, jormungandr.WSConnectRequest{URL: wsURL(ts.URL)})
	if err != nil {
		t.Fatal(err)
	}
	if h.Kind != "ws" || h.Instance == "" || h.ID == "" {
		t.Fatalf("got handle %+v, want kind ws with instance and id", h)
	}
	for _, m := range []struct {
		data   string
		binary bool
	}{{"hello", false}, {"\x00\xffbin", true}} {
		if err := e.c.Send(ctx, h, []byte(m.data), m.binary); err != nil {
			t.Fatal(err)
		}
		got, err := e.c.Receive(ctx, h, 20*time.Second)
		if err != nil || got == nil || string(got.Data) != m.data || got.Binary != m.binary {
			t.Fatalf("got %+v, %v, want %q binary %v", got, err, m.data, m.binary)
		}
	}
	t.Run("receive times out with nothing", func(t *testing.T) {
		got, err := e.c.Receive(ctx, h, 10*time.Millisecond)
		if err != nil || got != nil {
			t.Fatalf("got %+v, %v, want no message and no error", got, err)
		}
	})
	t.Run("wrong operation", func(t *testing.T) {
		wantCode(t, e.c.Publish(ctx, h, "a/b", nil, 0, false), fault.InvalidArgument)
	})
	t.Run("message over the cap", func(t *testing.T) {
		wantCode(t, e.c.Send(ctx, h, make([]byte, cfg.Handles.MaxMessageBytes+1), true), fault.ResourceExhausted)
	})
	if err := e.c.Close(ctx, h); err != nil {
		t.Fatal(err)
	}
	t.Run("closed handle", func(t *testing.T) {
		wantCode(t, e.c.Send(ctx, h, []byte("x"), false), fault.NotFound)
		if err := e.c.Close(ctx, h); err != nil {
			t.Fatalf("second close: got %v, want nil", err)
		}
	})
	t.Run("denied host", func(t *testing.T) {
		other := echoWS(t)
		_, err := e.c.ConnectWS(ctx, jormungandr.WSConnectRequest{URL: wsURL(other.URL)})
		wantCode(t, err, fault.PermissionDenied)
	})
	t.Run("name resolving to loopback", func(t *testing.T) {
		_, err := e.c.ConnectWS(ctx, jormungandr.WSConnectRequest{URL: "ws://localhost:" + ts.URL[strings.LastIndex(ts.URL, ":")+1:]})
		wantCode(t, err, fault.PermissionDenied)
	})
	t.Run("bad scheme", func(t *testing.T) {
		_, err := e.c.ConnectWS(ctx, jormungandr.WSConnectRequest{URL: ts.URL})
		wantCode(t, err, fault.InvalidArgument)
	})
}

// TestWebSocketReconnect uses a server that drops every connection after
// one message: a handle opened with reconnect redials and goes on reading.
func TestWebSocketReconnect(t *testing.T) {
	var conns atomic.Int32
	ts := wsServer(t, func(ctx context.Context, c *websocket.Conn) {
		n := conns.Add(1)
		_ = c.Write(ctx, websocket.MessageText, []byte("hello "+strconv.Itoa(int(n))))
	})
	cfg := testConfig()
	allowURL(t, &cfg, ts.URL)
	e := setup(t, cfg)
	ctx := ctxT(t)
	for _, tc := range []struct {
		name      string
		reconnect bool
		messages  int
		then      fault.Code
	}{
		{"without reconnect", false, 1, fault.Unavailable},
		{"with reconnect", true, 3, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := e.c.ConnectWS(ctx, jormungandr.WSConnectRequest{URL: wsURL(ts.URL), Reconnect: tc.reconnect})
			if err != nil {
				t.Fatal(err)
			}
			defer e.c.Close(ctx, h)
			last := 0
			for range tc.messages {
				m, err := e.c.Receive(ctx, h, 20*time.Second)
				if err != nil || m == nil {
					t.Fatalf("got %+v, %v, want a message", m, err)
				}
				n, err := strconv.Atoi(strings.TrimPrefix(string(m.Data), "hello "))
				if err != nil || n <= last {
					t.Fatalf("got %q after hello %d, want a later connection's hello", m.Data, last)
				}
				last = n
			}
			if tc.then != "" {
				_, err := e.c.Receive(ctx, h, 20*time.Second)
				wantCode(t, err, tc.then)
			}
		})
	}
}
