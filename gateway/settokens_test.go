package gateway_test

import (
	"context"
	"testing"
	"testing/fstest"
	"time"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/loki"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestSetTokens: new tokens apply to the next call of a serving gateway,
// without a restart, and invalid ones are refused and change nothing.
func TestSetTokens(t *testing.T) {
	srv := natstest.Start(t)
	nc := natstest.Connect(t, srv)
	tools, err := loki.ParseTools("test.toml", []byte(testTools), fstest.MapFS{})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := loki.OpenRegistry(context.Background(), nc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(context.Background(), tools...); err != nil {
		t.Fatal(err)
	}
	startLoki(t, srv)
	gw, err := gateway.New(gateway.Config{Tokens: []string{"old"}}, natstest.Connect(t, srv), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	select {
	case <-gw.Ready():
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gateway not ready")
	}
	e := &env{addr: lis.Addr().String()}
	call := func(token string) codes.Code {
		t.Helper()
		_, _, err := e.dial(t, client.WithToken(token)).Execute(ctxT(t), "add", map[string]any{"a": 1})
		return status.Code(err)
	}
	steps := []struct {
		name           string
		tokens, admins []string
		wantErr        bool
		calls          map[string]codes.Code
	}{
		{name: "start", calls: map[string]codes.Code{"old": codes.OK, "new": codes.Unauthenticated}, tokens: []string{"old"}},
		{name: "replace", tokens: []string{"new"}, admins: []string{"adm"},
			calls: map[string]codes.Code{"old": codes.Unauthenticated, "new": codes.OK, "adm": codes.OK}},
		{name: "empty token refused", tokens: []string{"new", ""}, wantErr: true,
			calls: map[string]codes.Code{"old": codes.Unauthenticated, "new": codes.OK}},
		{name: "one token in both lists refused", tokens: []string{"x"}, admins: []string{"x"}, wantErr: true,
			calls: map[string]codes.Code{"x": codes.Unauthenticated, "new": codes.OK}},
		{name: "none: calls need no token", calls: map[string]codes.Code{"anything": codes.OK}},
	}
	for i, tc := range steps {
		t.Run(tc.name, func(t *testing.T) {
			if i > 0 {
				err := gw.SetTokens(tc.tokens, tc.admins)
				if (err != nil) != tc.wantErr {
					t.Fatalf("SetTokens: got %v, want error %v", err, tc.wantErr)
				}
			}
			for tok, want := range tc.calls {
				if got := call(tok); got != want {
					t.Errorf("token %q: got %v, want %v", tok, got, want)
				}
			}
		})
	}
}
