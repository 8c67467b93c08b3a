package auth_test

import (
	"encoding/json"
	"log/slog"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go/micro"
)

// The gateway checks a device login with the identity service: a device's
// login answers its device id, anything else UNAUTHENTICATED, and a
// revoked or re-issued login stops verifying at once.
func TestVerifyDevice(t *testing.T) {
	b := startBus(t)
	natstest.RunService(t, auth.NewService(b.a, b.connect(t, "auth").Conn, slog.New(slog.DiscardHandler)))
	kitchen, err := b.a.AddDevice("kitchen")
	if err != nil {
		t.Fatal(err)
	}
	garage, err := b.a.AddDevice("garage")
	if err != nil {
		t.Fatal(err)
	}
	ha, err := b.a.AddHomeAssistant("hass")
	if err != nil {
		t.Fatal(err)
	}
	gw := b.connect(t, "gateway")
	verify := func(user, pass string) (string, fault.Code) {
		t.Helper()
		body, _ := json.Marshal(auth.DeviceLogin{Username: user, Password: pass})
		m, err := gw.Request(subjects.AuthVerifyDevice, body, 10*time.Second)
		if err != nil {
			t.Fatalf("verify %s: %v", user, err)
		}
		if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
			return "", fault.Code(code)
		}
		var out auth.VerifyDeviceResponse
		if err := json.Unmarshal(m.Data, &out); err != nil {
			t.Fatal(err)
		}
		return out.DeviceID, ""
	}
	tests := []struct {
		name       string
		user, pass string
		wantID     string
		wantCode   fault.Code
	}{
		{name: "device login", user: kitchen.Username, pass: kitchen.Password, wantID: "kitchen"},
		{name: "again (remembered)", user: kitchen.Username, pass: kitchen.Password, wantID: "kitchen"},
		{name: "other device", user: garage.Username, pass: garage.Password, wantID: "garage"},
		{name: "wrong password", user: kitchen.Username, pass: kitchen.Password + "x", wantCode: fault.Unauthenticated},
		{name: "another device's password", user: kitchen.Username, pass: garage.Password, wantCode: fault.Unauthenticated},
		{name: "unknown user", user: "cellar", pass: kitchen.Password, wantCode: fault.Unauthenticated},
		{name: "Home Assistant login", user: ha.Username, pass: ha.Password, wantCode: fault.Unauthenticated},
		{name: "component name", user: "gateway", pass: "x", wantCode: fault.Unauthenticated},
		{name: "empty password", user: kitchen.Username, wantCode: fault.InvalidArgument},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, code := verify(tc.user, tc.pass)
			if id != tc.wantID || code != tc.wantCode {
				t.Fatalf("got %q, %q, want %q, %q", id, code, tc.wantID, tc.wantCode)
			}
		})
	}

	t.Run("revoked", func(t *testing.T) {
		if err := b.a.Revoke("kitchen"); err != nil {
			t.Fatal(err)
		}
		if id, code := verify(kitchen.Username, kitchen.Password); code != fault.Unauthenticated {
			t.Fatalf("got %q, %q, want UNAUTHENTICATED", id, code)
		}
	})
	t.Run("re-issued", func(t *testing.T) {
		again, err := b.a.AddDevice("kitchen")
		if err != nil {
			t.Fatal(err)
		}
		if id, code := verify(kitchen.Username, kitchen.Password); code != fault.Unauthenticated {
			t.Fatalf("old password: got %q, %q, want UNAUTHENTICATED", id, code)
		}
		if id, code := verify(again.Username, again.Password); id != "kitchen" {
			t.Fatalf("new password: got %q, %q, want kitchen", id, code)
		}
	})
	t.Run("client may not verify", func(t *testing.T) {
		c, _ := b.add(t, "someone", subjects.RoleClient)
		if _, err := c.Request(subjects.AuthVerifyDevice, []byte(`{}`), time.Second); err == nil {
			t.Fatal("a client verified a device login, want refused")
		}
	})
}
