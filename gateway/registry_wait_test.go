package gateway_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// TestGatewayWaitsForTheRegistry: a gateway connected with its own role,
// which may read the tool registry but not create it, started before any
// Loki replica (as a compose stack may start it), waits instead of exiting,
// and serves tools once a Loki replica has created the registry.
func TestGatewayWaitsForTheRegistry(t *testing.T) {
	a, err := auth.Open(filepath.Join(t.TempDir(), "auth"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	nkeys, users, err := a.ServerUsers()
	if err != nil {
		t.Fatal(err)
	}
	srv := natstest.Start(t, func(c *natsrv.Config) { c.Nkeys, c.Users = nkeys, users })
	connect := func(role subjects.Role) *nats.Conn {
		t.Helper()
		opts, err := auth.ConnectOptions(auth.SeedFile(a.Dir(), string(role)))
		if err != nil {
			t.Fatal(err)
		}
		nc, err := nats.Connect(srv.ClientURL(), opts...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	gw, err := gateway.New(gateway.DefaultConfig(), connect(subjects.RoleGateway), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	lis := listen(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gw.Serve(ctx, lis) }()
	t.Cleanup(func() { cancel(); <-done })

	// No registry yet: the gateway neither serves nor gives up.
	select {
	case err := <-done:
		t.Fatalf("gateway exited before any Loki replica started: %v", err)
	case <-gw.Ready():
		t.Fatal("gateway ready without a tool registry")
	case <-time.After(time.Second):
	}

	lnc := connect(subjects.RoleLoki)
	reg, err := loki.OpenRegistry(ctx, lnc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	tool, err := loki.Compile(&lokiv1.Tool{Name: "twice", Returns: "number", Source: "return x * 2",
		Params: []*lokiv1.Param{{Name: "x", Type: "number", Required: true}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Put(ctx, tool); err != nil {
		t.Fatal(err)
	}
	svc, err := loki.New(loki.Config{}, lnc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)
	select {
	case <-gw.Ready():
	case err := <-done:
		t.Fatalf("gateway exited: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("gateway not ready after the registry appeared")
	}
	c, err := client.Dial(lis.Addr().String(), client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, _, err := c.Execute(ctxT(t), "twice", map[string]any{"x": 21})
	if err != nil || res != 42.0 {
		t.Fatalf("twice through the gateway: got %v, %v, want 42", res, err)
	}
}
