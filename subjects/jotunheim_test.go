package subjects_test

import (
	"errors"
	"testing"

	"github.com/loki-iot/loki/subjects"
)

func TestDeviceTopicsAndSubjects(t *testing.T) {
	tests := []struct {
		name, id, kind, entity string
		topic, subject         string
	}{
		{"status", "demo", subjects.DeviceStatus, "", "jotunheim/demo/status", "jotunheim.demo.status"},
		{"caps request", "pi-zero_1", subjects.DeviceCapsGet, "", "jotunheim/pi-zero_1/caps/get", "jotunheim.pi-zero_1.caps.get"},
		{"state", "demo", subjects.DeviceState, "temperature", "jotunheim/demo/state/temperature", "jotunheim.demo.state.temperature"},
		{"tool result", "demo", subjects.DeviceCallResult, "", "jotunheim/demo/call/result", "jotunheim.demo.call.result"},
		{"set from Home Assistant", "demo", subjects.DeviceSet, "led", "jotunheim/demo/set/led", "jotunheim.demo.set.led"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var e []string
			if tc.entity != "" {
				e = []string{tc.entity}
			}
			topic, err := subjects.DeviceTopic(tc.id, tc.kind, e...)
			if err != nil || topic != tc.topic {
				t.Fatalf("topic: got %q %v, want %q", topic, err, tc.topic)
			}
			subj, err := subjects.DeviceSubject(tc.id, tc.kind, e...)
			if err != nil || subj != tc.subject {
				t.Fatalf("subject: got %q %v, want %q", subj, err, tc.subject)
			}
			id, kind, entity, err := subjects.ParseDeviceSubject(subj)
			if err != nil || id != tc.id || kind != tc.kind || entity != tc.entity {
				t.Fatalf("parse: got %q %q %q %v, want %q %q %q", id, kind, entity, err, tc.id, tc.kind, tc.entity)
			}
		})
	}
	for _, bad := range []struct{ id, kind string }{
		{"a.b", subjects.DeviceStatus}, {"*", subjects.DeviceStatus}, {"", subjects.DeviceStatus},
		{"demo", "status/x"}, {"demo", subjects.DeviceState}, {"x123456789x123456789x123456789x123456789x123456789x123456789x12345", subjects.DeviceCmd},
	} {
		if _, err := subjects.DeviceSubject(bad.id, bad.kind); !errors.Is(err, subjects.ErrInvalidToken) {
			t.Errorf("DeviceSubject(%q, %q): got %v, want ErrInvalidToken", bad.id, bad.kind, err)
		}
	}
	for _, bad := range []string{"jotunheim.demo", "jotunheim.demo.bogus", "jotunheim.demo.state", "jotunheim.demo.state.a.b", "devices.demo.status", "jotunheim.a*b.status"} {
		if _, _, _, err := subjects.ParseDeviceSubject(bad); err == nil {
			t.Errorf("ParseDeviceSubject(%q): got no error", bad)
		}
	}
}

func TestDeviceToolName(t *testing.T) {
	tests := []struct {
		id, entity, want string
		wantErr          bool
	}{
		{"demo", "temperature", "demo_temperature", false},
		{"Kitchen-Pi", "led-1", "kitchen_pi_led_1", false},
		{"1floor", "led", "", true}, // a tool name starts with a letter
	}
	for _, tc := range tests {
		got, err := subjects.DeviceToolName(tc.id, tc.entity)
		if got != tc.want || (err != nil) != tc.wantErr {
			t.Errorf("DeviceToolName(%q, %q): got %q %v, want %q (error %v)", tc.id, tc.entity, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestHATopics(t *testing.T) {
	if got, err := subjects.HADeviceConfigTopic("homeassistant", "demo"); err != nil || got != "homeassistant/device/demo/config" {
		t.Fatalf("config topic: got %q %v", got, err)
	}
	if got, err := subjects.HAStatusTopic("ha"); err != nil || got != "ha/status" {
		t.Fatalf("status topic: got %q %v", got, err)
	}
	for _, bad := range []string{"", "home/assistant", "#", "a+b"} {
		if _, err := subjects.HAStatusTopic(bad); !errors.Is(err, subjects.ErrInvalidToken) {
			t.Errorf("prefix %q: got %v, want ErrInvalidToken", bad, err)
		}
	}
}
