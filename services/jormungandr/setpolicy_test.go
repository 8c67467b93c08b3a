package jormungandr_test

import (
	"errors"
	"testing"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/jormungandr"
)

// TestSetPolicy: a new policy decides the next request of a running
// replica, and an invalid one is refused and changes nothing.
func TestSetPolicy(t *testing.T) {
	ts := echoHTTP(t)
	srv := startNATS(t)
	nc := natstest.Connect(t, srv)
	svc, err := jormungandr.New(testConfig(), nc, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)
	c := jormungandr.NewClient(natstest.Connect(t, srv))
	get := func() error {
		_, err := c.HTTP(ctxT(t), jormungandr.HTTPRequest{URL: ts.URL + "/echo"}, 0)
		return err
	}
	wantCode(t, get(), fault.PermissionDenied)

	allowed := testConfig()
	allowURL(t, &allowed, ts.URL)
	if err := svc.SetPolicy(allowed.Policy); err != nil {
		t.Fatalf("SetPolicy: got %v, want nil", err)
	}
	if err := get(); err != nil {
		t.Fatalf("after allowing the server: got %v, want a response", err)
	}

	bad := jormungandr.Policy{AllowHosts: []string{"ok.example.com"}, AllowPorts: []int{0}}
	if err := svc.SetPolicy(bad); !errors.Is(err, jormungandr.ErrConfig) {
		t.Fatalf("invalid policy: got %v, want ErrConfig", err)
	}
	if err := get(); err != nil {
		t.Fatalf("after a refused policy: got %v, want the old policy to stay", err)
	}

	if err := svc.SetPolicy(jormungandr.Policy{}); err != nil {
		t.Fatal(err)
	}
	wantCode(t, get(), fault.PermissionDenied)
}
