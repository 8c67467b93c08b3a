package subjects_test

import (
	"errors"
	"testing"

	"github.com/loki-iot/loki/subjects"
)

func TestDeviceTopicSubject(t *testing.T) {
	tests := []struct {
		name, topic        string
		wantSubj, wantKind string
		wantEntity         string
		wantErr            error
	}{
		{name: "status", topic: "status", wantSubj: "jotunheim.kitchen.status", wantKind: subjects.DeviceStatus},
		{name: "state", topic: "state/led", wantSubj: "jotunheim.kitchen.state.led", wantKind: subjects.DeviceState, wantEntity: "led"},
		{name: "two-level kind", topic: "ota/progress", wantSubj: "jotunheim.kitchen.ota.progress", wantKind: subjects.DeviceOTAProgress},
		{name: "downlink kind parses", topic: "call/result", wantSubj: "jotunheim.kitchen.call.result", wantKind: subjects.DeviceCallResult},
		{name: "empty", topic: "", wantErr: subjects.ErrInvalidToken},
		{name: "unknown kind", topic: "telemetry", wantErr: subjects.ErrInvalidToken},
		{name: "state without entity", topic: "state", wantErr: subjects.ErrInvalidToken},
		{name: "empty entity", topic: "state/", wantErr: subjects.ErrInvalidToken},
		{name: "entity on a plain kind", topic: "status/x", wantErr: subjects.ErrInvalidToken},
		{name: "dot", topic: "state/a.b", wantErr: subjects.ErrInvalidToken},
		{name: "wildcard", topic: "state/*", wantErr: subjects.ErrInvalidToken},
		{name: "tail wildcard", topic: ">", wantErr: subjects.ErrInvalidToken},
		{name: "absolute", topic: "jotunheim/kitchen/status", wantErr: subjects.ErrInvalidToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			subj, kind, entity, err := subjects.DeviceTopicSubject("kitchen", tc.topic)
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if subj != tc.wantSubj || kind != tc.wantKind || entity != tc.wantEntity {
				t.Fatalf("got %q %q %q, want %q %q %q", subj, kind, entity, tc.wantSubj, tc.wantKind, tc.wantEntity)
			}
		})
	}
	if _, _, _, err := subjects.DeviceTopicSubject("bad id", "status"); !errors.Is(err, subjects.ErrInvalidToken) {
		t.Fatalf("bad id: got %v, want ErrInvalidToken", err)
	}
}

func TestDeviceSubscription(t *testing.T) {
	for kind, want := range map[string]string{
		subjects.DeviceCmd:        "jotunheim.kitchen.cmd",
		subjects.DeviceCallResult: "jotunheim.kitchen.call.result",
		subjects.DeviceSet:        "jotunheim.kitchen.set.*",
		subjects.DeviceState:      "jotunheim.kitchen.state.*",
	} {
		if got, err := subjects.DeviceSubscription("kitchen", kind); got != want || err != nil {
			t.Errorf("%s: got %q, %v, want %q", kind, got, err, want)
		}
	}
	if _, err := subjects.DeviceSubscription("kitchen", "nope"); !errors.Is(err, subjects.ErrInvalidToken) {
		t.Errorf("unknown kind: got %v, want ErrInvalidToken", err)
	}
}
