package subjects_test

import (
	"slices"
	"testing"

	"github.com/loki-iot/loki/subjects"
)

// TestStreamPermissions: who may open device streams and hear their
// chunks (publish stream/ctl, subscribe stream/data), and that a device
// may do neither for another device.
func TestStreamPermissions(t *testing.T) {
	readers := []subjects.Role{subjects.RoleAdmin, subjects.RoleClient, subjects.RoleLoki, subjects.RoleGateway}
	for _, r := range []subjects.Role{subjects.RoleAdmin, subjects.RoleClient, subjects.RoleLoki, subjects.RoleGateway,
		subjects.RoleHel, subjects.RoleFenrir, subjects.RoleAuth} {
		p, err := subjects.RolePermissions(r, "UINBOX")
		if err != nil {
			t.Fatal(err)
		}
		want := slices.Contains(readers, r)
		if got := p.AllowsPublish("jotunheim.kitchen.stream.ctl"); got != want {
			t.Errorf("%s publishes stream/ctl: got %v, want %v", r, got, want)
		}
		if got := p.AllowsSubscribe("jotunheim.kitchen.stream.data"); got != want {
			t.Errorf("%s hears stream/data: got %v, want %v", r, got, want)
		}
	}
	dev, err := subjects.RolePermissions(subjects.RoleDevice, "", "kitchen")
	if err != nil {
		t.Fatal(err)
	}
	if !dev.AllowsPublish("jotunheim.kitchen.stream.data") || !dev.AllowsSubscribe("jotunheim.kitchen.stream.ctl") {
		t.Error("a device cannot serve its own streams")
	}
	if dev.AllowsPublish("jotunheim.garage.stream.data") || dev.AllowsSubscribe("jotunheim.garage.stream.data") {
		t.Error("a device reaches another device's streams")
	}
}
