package jotunheim_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
)

const goodConfig = `[device]
id = "greenhouse-1"
name = "Greenhouse"
model = "pi-zero-w"

[transport]
kind = "mqtt"
broker = "ssl://loki.local:8883"
ca_file = "ca.pem"
login_file = "greenhouse-1.json"

[board]
sim = true

[resilience]
backoff_base = "2s"
backoff_cap = "30s"
negotiate_timeout = "5s"

[limits]
max_queued_commands = 8
max_message_bytes = 16384

[telemetry]
period = "10s"
heartbeat = "5s"
state_file = "state.json"
`

func TestParseConfig(t *testing.T) {
	cfg, err := jotunheim.ParseConfig("/etc/jotunheim/device.toml", []byte(goodConfig))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Device.ID != "greenhouse-1" || cfg.Resilience.BackoffCap != 30*time.Second || cfg.Limits.MaxQueuedCommands != 8 ||
		cfg.Telemetry.StateFile != "/etc/jotunheim/state.json" || cfg.Transport.LoginFile != "/etc/jotunheim/greenhouse-1.json" {
		t.Fatalf("got %+v", cfg)
	}
}

func TestConfigErrorsNameFileLine(t *testing.T) {
	for _, tc := range []struct {
		name, toml, want string
	}{
		{"unknown key", "[device]\nid = \"a\"\ncolour = \"red\"\n[board]\nsim = true\n", `dev.toml:3: unknown key "device.colour"`},
		{"unknown table", "[device]\nid = \"a\"\n[board]\nsim = true\n[extra]\nx = 1\n", `dev.toml:5: unknown key "extra"`},
		{"bad id", "[device]\nid = \"a b\"\n[board]\nsim = true\n", "dev.toml:2: device.id"},
		{"missing id", "[board]\nsim = true\n", "dev.toml: device.id: is required"},
		{"bad broker", "[device]\nid = \"a\"\n[transport]\nbroker = \"http://x\"\n[board]\nsim = true\n", "dev.toml:4: transport.broker"},
		{"no board", "[device]\nid = \"a\"\n", "board.file: is required"},
		{"two boards", "[device]\nid = \"a\"\n[board]\nsim = true\nfile = \"b.toml\"\n", "dev.toml:4: board.sim"},
		{"two passwords", "[device]\nid = \"a\"\n[transport]\npassword = \"x\"\npassword_file = \"y\"\n[board]\nsim = true\n", "dev.toml:4: transport.password"},
		{"bad period", "[device]\nid = \"a\"\n[board]\nsim = true\n[telemetry]\nperiod = \"1500ms\"\n", "dev.toml:6: telemetry.period"},
		{"negative sample age", "[device]\nid = \"a\"\n[board]\nsim = true\n[telemetry]\nsample_max_age = \"-1s\"\n", "dev.toml:6: telemetry.sample_max_age"},
		{"cap below base", "[device]\nid = \"a\"\n[board]\nsim = true\n[resilience]\nbackoff_base = \"10s\"\nbackoff_cap = \"1s\"\n", "dev.toml:7: resilience.backoff_cap"},
		{"queue", "[device]\nid = \"a\"\n[board]\nsim = true\n[limits]\nmax_queued_commands = 0\n", "dev.toml:6: limits.max_queued_commands"},
		{"ota without key", "[device]\nid = \"a\"\n[board]\nsim = true\n[ota]\ndir = \"ota\"\n", "dev.toml: ota.public_key_file: is required"},
		{"ota key without dir", "[device]\nid = \"a\"\n[board]\nsim = true\n[ota]\npublic_key_file = \"k\"\n", "dev.toml:6: ota.public_key_file: needs ota.dir"},
		{"ota boot limit", "[device]\nid = \"a\"\n[board]\nsim = true\n[ota]\ndir = \"o\"\npublic_key_file = \"k\"\nboot_limit = 0\n", "dev.toml:8: ota.boot_limit"},
		{"ota window", "[device]\nid = \"a\"\n[board]\nsim = true\n[ota]\ndir = \"o\"\npublic_key_file = \"k\"\nhealth_window = \"2h\"\n", "dev.toml:8: ota.health_window"},
		{"bad kind", "[device]\nid = \"a\"\n[transport]\nkind = \"coap\"\n[board]\nsim = true\n", `dev.toml:4: transport.kind: "coap": must be "mqtt" or "grpc"`},
		{"bad gateway", "[device]\nid = \"a\"\n[transport]\nkind = \"grpc\"\ngateway = \"loki.local\"\n[board]\nsim = true\n", "dev.toml:5: transport.gateway"},
		{"cert without key", "[device]\nid = \"a\"\n[transport]\nkind = \"grpc\"\ncert_file = \"c.pem\"\n[board]\nsim = true\n", "dev.toml:5: transport.cert_file"},
		{"wrong type", "[device]\nid = 5\n", "dev.toml:2:"},
		{"syntax", "[device\nid = \"a\"\n", "dev.toml:2:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := jotunheim.ParseConfig("dev.toml", []byte(tc.toml))
			if !errors.Is(err, jotunheim.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(goodConfig))
	f.Add([]byte("[device]\nid = \"a\"\n[board]\nsim = true\n"))
	f.Add([]byte("[telemetry]\nperiod = \"-1s\"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := jotunheim.ParseConfig("f.toml", data)
		if err != nil {
			if !errors.Is(err, jotunheim.ErrConfig) {
				t.Fatalf("error not wrapping ErrConfig: %v", err)
			}
			return
		}
		if err := cfg.Validate(); err != nil {
			t.Fatalf("a parsed config does not validate: %v", err)
		}
	})
}
