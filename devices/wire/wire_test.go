package wire_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/loki-iot/loki/devices/wire"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

func TestNegotiate(t *testing.T) {
	tests := []struct {
		name       string
		dev        *jv1.ProtocolVersion
		wantOK     bool
		wantReason string // substring; "" means no reason
	}{
		{"same version", &jv1.ProtocolVersion{Major: 1, Minor: 0}, true, ""},
		{"newer minor: warned", &jv1.ProtocolVersion{Major: 1, Minor: 3}, true, "minor version"},
		{"other major: refused", &jv1.ProtocolVersion{Major: 2}, false, "protocol 2.0 is not supported: this platform speaks 1.0"},
		{"no version: refused", nil, false, "no protocol version"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ok, reason := wire.Negotiate(tc.dev)
			if ok != tc.wantOK || (tc.wantReason == "") != (reason == "") || !strings.Contains(reason, tc.wantReason) {
				t.Fatalf("got %v %q, want %v %q", ok, reason, tc.wantOK, tc.wantReason)
			}
		})
	}
}

func TestDecodeManifest(t *testing.T) {
	tests := []struct {
		name    string
		payload string
		wantErr string // substring; "" means accepted
	}{
		{"valid", `{"deviceId":"demo","protocol":{"major":1},"sensors":[{"name":"temperature","kind":"temperature","unit":"°C","valueType":"number"}],"actuators":[{"name":"led","kind":"led"}]}`, ""},
		{"unknown field from a newer minor version", `{"deviceId":"demo","protocol":{"major":1,"minor":1},"futureFeature":{"x":1}}`, ""},
		{"another device's id", `{"deviceId":"garage"}`, `device_id "garage" does not match`},
		{"wrong type", `{"deviceId":"demo","sensors":"many"}`, "Manifest"},
		{"not JSON", `\x00\x01garbage`, "Manifest"},
		{"entity name with a space", `{"deviceId":"demo","sensors":[{"name":"living room"}]}`, "entity name"},
		{"duplicate entity", `{"deviceId":"demo","sensors":[{"name":"temp"}],"actuators":[{"name":"TEMP"}]}`, `has the name of sensor temp`},
		{"bad value type", `{"deviceId":"demo","sensors":[{"name":"t","valueType":"blob"}]}`, "value_type"},
		{"huge name", `{"deviceId":"demo","name":"` + strings.Repeat("x", 300) + `"}`, "name is 300 bytes"},
		{"too many entities", `{"deviceId":"demo","sensors":[` + strings.TrimSuffix(strings.Repeat(`{"name":"s"},`, 300), ",") + `]}`, "at most 256"},
		{"oversized", `{"deviceId":"demo","name":"` + strings.Repeat("x", wire.MaxManifestBytes) + `"}`, "over the"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := wire.DecodeManifest("demo", []byte(tc.payload))
			if tc.wantErr == "" {
				if err != nil || m.GetDeviceId() != "demo" {
					t.Fatalf("got %v, want accepted", err)
				}
				return
			}
			if !errors.Is(err, wire.ErrDecode) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("got %v, want an ErrDecode containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestPresence(t *testing.T) {
	for payload, want := range map[string]bool{"online": true, "offline": false} {
		if got, err := wire.Presence([]byte(payload)); err != nil || got != want {
			t.Errorf("Presence(%q): got %v %v, want %v", payload, got, err, want)
		}
	}
	if _, err := wire.Presence([]byte("ONLINE ")); !errors.Is(err, wire.ErrDecode) {
		t.Errorf("Presence of a wrong payload: got %v, want ErrDecode", err)
	}
}

func TestDecodeStateForAnotherEntity(t *testing.T) {
	if _, err := wire.DecodeState("temperature", []byte(`{"entity":"humidity","value":3}`)); !errors.Is(err, wire.ErrDecode) {
		t.Fatalf("got %v, want ErrDecode", err)
	}
	s, err := wire.DecodeState("temperature", []byte(`{"value":21.5}`))
	if err != nil || s.GetEntity() != "temperature" || s.GetValue().GetNumberValue() != 21.5 {
		t.Fatalf("got %v %v, want entity temperature value 21.5", s, err)
	}
}
