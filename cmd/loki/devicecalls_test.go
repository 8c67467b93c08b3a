package main

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// [jotunheim] device_calls governs the tools devices may call on both
// transports: the device service (MQTT) and the gateway (gRPC), which
// has no key of its own for it.
func TestServiceConfigDeviceCallsReachTheGateway(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "loki.toml")
	writeFile(t, path, "[jotunheim]\ndevice_calls = [\"kitchen_*\", \"add\"]\n")
	cfg, err := loadServiceConfig(path, dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kitchen_*", "add"}
	if !slices.Equal(cfg.Gateway.DeviceCalls, want) || !slices.Equal(cfg.Jotunheim.DeviceCalls, want) {
		t.Fatalf("got gateway %q, jotunheim %q, want %q for both", cfg.Gateway.DeviceCalls, cfg.Jotunheim.DeviceCalls, want)
	}

	writeFile(t, path, "[gateway]\ndevice_calls = [\"add\"]\n")
	if _, err := loadServiceConfig(path, dir); err == nil || !strings.Contains(err.Error(), "device_calls") {
		t.Fatalf("[gateway] device_calls: got %v, want an unknown key error", err)
	}
}
