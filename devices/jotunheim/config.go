package jotunheim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/subjects"
)

// ErrConfig marks a configuration the agent cannot run with. Its messages
// name the file and line, or the key, of what is wrong.
var ErrConfig = errors.New("jotunheim config")

// DefaultBroker is the MQTT listener of a local `loki up`.
const DefaultBroker = "tcp://127.0.0.1:1883"

// DefaultGateway is the gRPC gateway of a local `loki up`.
const DefaultGateway = "127.0.0.1:50051"

// Config is the agent's settings, decoded from TOML (see ParseConfig).
type Config struct {
	Device     DeviceConfig     `toml:"device"`
	Transport  TransportConfig  `toml:"transport"`
	Board      BoardSource      `toml:"board"`
	Resilience ResilienceConfig `toml:"resilience"`
	Limits     LimitsConfig     `toml:"limits"`
	Telemetry  TelemetryConfig  `toml:"telemetry"`
	// HomeAssistant is Home Assistant MQTT discovery (homeassistant.go).
	HomeAssistant HomeAssistantConfig `toml:"homeassistant"`
	// OTA is signed updates (ota.go, docs/OTA.md); off while Dir is empty.
	OTA OTAConfig `toml:"ota"`

	// file and lines locate the settings for error messages; empty for a
	// Config built in code.
	file  string
	lines map[string]int
}

// DeviceConfig names the device.
type DeviceConfig struct {
	// ID is the device id: 1 to 64 of [A-Za-z0-9_-]. Required.
	ID string `toml:"id"`
	// Name is a human-readable name; default the id.
	Name string `toml:"name"`
	// Model is the model or type, e.g. "pi-zero-w".
	Model string `toml:"model"`
}

// TransportConfig is how the agent reaches the platform.
type TransportConfig struct {
	// Kind is "mqtt" (TransportMQTT, the default) or "grpc"
	// (TransportGRPC: a program built with a gRPC transport).
	Kind string `toml:"kind"`
	// Broker is tcp://host:port or ssl://host:port. Default DefaultBroker.
	// MQTT only.
	Broker string `toml:"broker"`
	// Gateway is the gRPC gateway's host:port. Default DefaultGateway.
	// gRPC only: TLS unless the host is loopback and no ca_file or
	// cert_file is set (the login is never sent in clear to another host).
	Gateway string `toml:"gateway"`
	// CAFile is a PEM file of the CA that signed an ssl:// broker's or
	// the gateway's certificate; empty uses the system's roots.
	CAFile string `toml:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate and its key, for
	// a broker or gateway that asks for one (both or neither).
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`
	// Username defaults to the device id.
	Username string `toml:"username"`
	// At most one of Password, PasswordFile and LoginFile. LoginFile is
	// the JSON {"username", "password"} `loki auth add-device ID --json`
	// prints.
	Password     string `toml:"password"`
	PasswordFile string `toml:"password_file"`
	LoginFile    string `toml:"login_file"`
}

// BoardSource is where the agent's hardware comes from: a board TOML in
// Fenrir's [[boards]] format (its first board), or the simulated board.
type BoardSource struct {
	File string `toml:"file"`
	Sim  bool   `toml:"sim"`
}

// OTAConfig turns on signed updates (ota.go, docs/OTA.md).
type OTAConfig struct {
	// Dir is the installer's directory (devices/ota): current, previous,
	// ota.json. The agent must run as Dir/current (systemd:
	// ExecStart=Dir/current …) for an update to take effect. Empty: no OTA.
	Dir string `toml:"dir"`
	// PublicKeyFile is the operator's pinned ed25519 public key (the key
	// file format of devices/ota). Required with Dir.
	PublicKeyFile string `toml:"public_key_file"`
	// Model is the target model releases must match; default Device.Model.
	Model string `toml:"model"`
	// BootLimit is how many starts a new release gets without a commit
	// before it is rolled back (default 3).
	BootLimit int `toml:"boot_limit"`
	// HealthWindow is how long a new release has to prove healthy
	// (connected, accepted, board answering) before it is rolled back
	// (default 60s). An offer's health_window_seconds overrides it within
	// 5s to 1h.
	HealthWindow time.Duration `toml:"health_window"`
}

// ResilienceConfig tunes reconnects: the agent sleeps a random time
// between 0 and min(BackoffCap, BackoffBase·2^n) before attempt n.
type ResilienceConfig struct {
	BackoffBase time.Duration `toml:"backoff_base"`
	BackoffCap  time.Duration `toml:"backoff_cap"`
	// NegotiateTimeout is how long the agent waits for the platform's
	// answer to its manifest before sending it again.
	NegotiateTimeout time.Duration `toml:"negotiate_timeout"`
}

// LimitsConfig caps what the agent accepts.
type LimitsConfig struct {
	// MaxQueuedCommands are queued before a command is refused with
	// RESOURCE_EXHAUSTED.
	MaxQueuedCommands int `toml:"max_queued_commands"`
	// MaxMessageBytes caps every incoming message.
	MaxMessageBytes int `toml:"max_message_bytes"`

	// Resource budgets (budget.go); 0 turns a threshold off.
	// MemoryWarn and MemoryMax are the process's resident memory: over
	// MemoryWarn an event warns; over MemoryMax new commands are refused
	// with RESOURCE_EXHAUSTED. SystemMemoryWarn and SystemMemoryMin are the
	// system's available memory: at or below them, the same.
	MemoryWarn       ByteSize `toml:"memory_warn"`
	MemoryMax        ByteSize `toml:"memory_max"`
	SystemMemoryWarn ByteSize `toml:"system_memory_warn"`
	SystemMemoryMin  ByteSize `toml:"system_memory_min"`
	// BandwidthBudget is the bytes (topics and payloads, sent and
	// received) allowed per BandwidthWindow; over it telemetry is skipped
	// and counted. 0: unlimited.
	BandwidthWindow time.Duration `toml:"bandwidth_window"`
	BandwidthBudget ByteSize      `toml:"bandwidth_budget"`
}

// TelemetryConfig sets the periods of states and heartbeats. A config.set
// command overrides them at run time (persisted in StateFile).
type TelemetryConfig struct {
	Period    time.Duration `toml:"period"`
	Heartbeat time.Duration `toml:"heartbeat"`
	// StateFile keeps the runtime settings config.set changes. Empty: no
	// persistence (cmd/jotunheim picks a default path).
	StateFile string `toml:"state_file"`
	// SampleMaxAge is how long a sensor's measurement answers reads
	// (default 1s; 0: every read measures). A BME280 in forced mode takes
	// about 8 ms per measurement and warms itself when measured back to
	// back, so a burst of reads shares one measurement instead of queueing
	// behind each other; a State's "at" tells its age.
	SampleMaxAge time.Duration `toml:"sample_max_age"`

	// Store-and-forward (spool.go): telemetry produced offline waits in a
	// spool of at most SpoolMaxMessages and SpoolMaxBytes, oldest dropped
	// first; in SpoolFile when set, so a restart keeps it.
	SpoolMaxMessages int      `toml:"spool_max_messages"`
	SpoolMaxBytes    ByteSize `toml:"spool_max_bytes"`
	SpoolFile        string   `toml:"spool_file"`
}

// DefaultConfig returns the defaults; Device.ID and a board must still be set.
func DefaultConfig() Config {
	return Config{
		Transport:     TransportConfig{Kind: TransportMQTT, Broker: DefaultBroker, Gateway: DefaultGateway},
		Resilience:    ResilienceConfig{BackoffBase: time.Second, BackoffCap: time.Minute, NegotiateTimeout: 10 * time.Second},
		Limits:        LimitsConfig{MaxQueuedCommands: 32, MaxMessageBytes: wire.MaxMessageBytes, BandwidthWindow: time.Minute},
		Telemetry:     TelemetryConfig{Period: 30 * time.Second, Heartbeat: 15 * time.Second, SampleMaxAge: time.Second, SpoolMaxMessages: 1000, SpoolMaxBytes: 1 << 20},
		HomeAssistant: HomeAssistantConfig{Enabled: true, Prefix: subjects.HADiscoveryPrefix},
		OTA:           OTAConfig{BootLimit: 3, HealthWindow: time.Minute},
	}
}

var typeErr = regexp.MustCompile(`^toml: line (\d+) \(last key "([^"]*)"\): (.*)$`)

// LoadConfig reads the TOML file at path over DefaultConfig.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return ParseConfig(path, data)
}

// ParseConfig decodes data (read from file, named in errors) over
// DefaultConfig and validates it. Relative paths in it are relative to
// file's directory. Unknown keys are errors naming file:line.
func ParseConfig(file string, data []byte) (Config, error) {
	cfg, err := DecodeConfig(file, data)
	if err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// DecodeConfig is ParseConfig without Validate, for callers that
// override settings (command-line flags) before validating. Later
// Validate errors still name the file's lines.
func DecodeConfig(file string, data []byte) (Config, error) {
	cfg := DefaultConfig()
	md, err := toml.Decode(string(data), &cfg)
	if err != nil {
		var pe toml.ParseError
		var ppe *toml.ParseError
		switch {
		case errors.As(err, &pe):
		case errors.As(err, &ppe):
			pe = *ppe
		default:
			// Type mismatches are plain errors: "toml: line N (last key "k"): ...".
			if m := typeErr.FindStringSubmatch(err.Error()); m != nil {
				return Config{}, fmt.Errorf("%w: %s:%s: %s: %s", ErrConfig, file, m[1], m[2], m[3])
			}
			return Config{}, fmt.Errorf("%w: %s: %v", ErrConfig, file, err)
		}
		if pe.LastKey != "" { // a value its type refused (a size): name the key
			return Config{}, fmt.Errorf("%w: %s:%d: %s: %s", ErrConfig, file, pe.Position.Line, pe.LastKey, pe.Message)
		}
		return Config{}, fmt.Errorf("%w: %s:%d: %s", ErrConfig, file, pe.Position.Line, pe.Message)
	}
	cfg.file = file
	cfg.lines = keyLines(data)
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0].String()
		return Config{}, fmt.Errorf("%w: %s: unknown key %q", ErrConfig, cfg.at(k), k)
	}
	dir := filepath.Dir(file)
	for _, p := range []*string{&cfg.Transport.CAFile, &cfg.Transport.CertFile, &cfg.Transport.KeyFile, &cfg.Transport.PasswordFile, &cfg.Transport.LoginFile,
		&cfg.Board.File, &cfg.Telemetry.StateFile, &cfg.Telemetry.SpoolFile, &cfg.OTA.Dir, &cfg.OTA.PublicKeyFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	return cfg, nil
}

// at locates key for messages: file:line when known, else the file, else
// nothing but the key.
func (c Config) at(key string) string {
	switch line, ok := c.lines[key]; {
	case ok:
		return fmt.Sprintf("%s:%d", c.file, line)
	case c.file != "":
		return c.file
	}
	return "config"
}

// keyLines maps dotted keys (table.key) to the line that assigns them,
// following [table] headers. Good enough for the flat tables of this file.
func keyLines(data []byte) map[string]int {
	lines := map[string]int{}
	table := ""
	for i, raw := range bytes.Split(data, []byte("\n")) {
		s := strings.TrimSpace(string(raw))
		switch {
		case s == "" || s[0] == '#':
		case s[0] == '[':
			table = strings.Trim(strings.SplitN(s, "#", 2)[0], "[] \t")
			if _, ok := lines[table]; !ok {
				lines[table] = i + 1
			}
		default:
			k, _, ok := strings.Cut(s, "=")
			if !ok {
				continue
			}
			k = strings.Trim(strings.TrimSpace(k), `"'`)
			if table != "" {
				k = table + "." + k
			}
			if _, ok := lines[k]; !ok {
				lines[k] = i + 1
			}
		}
	}
	return lines
}

// Validate reports the first problem of the config, naming its key (and
// file:line when the config came from a file).
func (c Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s: %s", ErrConfig, c.at(key), key, fmt.Sprintf(format, args...))
	}
	if c.Device.ID == "" {
		return bad("device.id", "is required (1 to 64 of [A-Za-z0-9_-])")
	}
	if err := subjects.ValidDeviceID(c.Device.ID); err != nil {
		return bad("device.id", "%q must be 1 to 64 of [A-Za-z0-9_-]", c.Device.ID)
	}
	if len(c.Device.Name) > 256 || len(c.Device.Model) > 256 {
		return bad("device.name", "name and model are at most 256 bytes")
	}
	t := c.Transport
	switch t.Kind {
	case TransportMQTT:
		u, err := url.Parse(t.Broker)
		if err != nil || (u.Scheme != "tcp" && u.Scheme != "ssl" && u.Scheme != "tls" && u.Scheme != "mqtt" && u.Scheme != "mqtts") || u.Host == "" {
			return bad("transport.broker", "%q: want tcp://host:port or ssl://host:port", t.Broker)
		}
		if t.CAFile != "" && u.Scheme == "tcp" {
			return bad("transport.ca_file", "is only used with an ssl:// broker")
		}
		if t.CertFile != "" && u.Scheme == "tcp" {
			return bad("transport.cert_file", "is only used with an ssl:// broker")
		}
	case TransportGRPC:
		if host, port, err := net.SplitHostPort(t.Gateway); err != nil || host == "" || port == "" {
			return bad("transport.gateway", "%q: want host:port (default %s)", t.Gateway, DefaultGateway)
		}
	default:
		return bad("transport.kind", "%q: must be %q or %q", t.Kind, TransportMQTT, TransportGRPC)
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		return bad("transport.cert_file", "set both cert_file and key_file (a client certificate and its key), or neither")
	}
	n := 0
	for _, s := range []string{t.Password, t.PasswordFile, t.LoginFile} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return bad("transport.password", "set at most one of password, password_file and login_file")
	}
	if c.Board.File != "" && c.Board.Sim {
		return bad("board.sim", "set either board.file or board.sim = true, not both")
	}
	if c.Board.File == "" && !c.Board.Sim {
		return bad("board.file", "is required: a board TOML ([[boards]]), or board.sim = true for the simulated board")
	}
	r := c.Resilience
	if r.BackoffBase <= 0 {
		return bad("resilience.backoff_base", "%v must be positive", r.BackoffBase)
	}
	if r.BackoffCap < r.BackoffBase {
		return bad("resilience.backoff_cap", "%v must be at least backoff_base (%v)", r.BackoffCap, r.BackoffBase)
	}
	if r.NegotiateTimeout <= 0 {
		return bad("resilience.negotiate_timeout", "%v must be positive", r.NegotiateTimeout)
	}
	if c.Limits.MaxQueuedCommands < 1 || c.Limits.MaxQueuedCommands > 4096 {
		return bad("limits.max_queued_commands", "%d must be 1 to 4096", c.Limits.MaxQueuedCommands)
	}
	if c.Limits.MaxMessageBytes < 1024 || c.Limits.MaxMessageBytes > wire.MaxManifestBytes {
		return bad("limits.max_message_bytes", "%d must be %d to %d", c.Limits.MaxMessageBytes, 1024, wire.MaxManifestBytes)
	}
	if err := checkSeconds(c.Telemetry.Period); err != nil {
		return bad("telemetry.period", "%v", err)
	}
	if err := checkSeconds(c.Telemetry.Heartbeat); err != nil {
		return bad("telemetry.heartbeat", "%v", err)
	}
	if c.Telemetry.SampleMaxAge < 0 || c.Telemetry.SampleMaxAge > time.Hour {
		return bad("telemetry.sample_max_age", "%v must be 0 to 1h", c.Telemetry.SampleMaxAge)
	}
	if err := c.validateBudgets(); err != nil {
		return err
	}
	if _, err := subjects.HAStatusTopic(c.HomeAssistant.Prefix); err != nil {
		return bad("homeassistant.prefix", "%q must be 1 to 64 of [A-Za-z0-9_-]", c.HomeAssistant.Prefix)
	}
	return c.validateOTA(bad)
}

// validateOTA checks the [ota] section.
func (c Config) validateOTA(bad func(key, format string, args ...any) error) error {
	o := c.OTA
	if o.Dir == "" {
		if o.PublicKeyFile != "" {
			return bad("ota.public_key_file", "needs ota.dir (the installer's directory)")
		}
		return nil
	}
	if o.PublicKeyFile == "" {
		return bad("ota.public_key_file", "is required with ota.dir: the operator's pinned public key")
	}
	if len(o.Model) > 64 {
		return bad("ota.model", "is at most 64 bytes")
	}
	if o.BootLimit < 1 || o.BootLimit > 100 {
		return bad("ota.boot_limit", "%d must be 1 to 100", o.BootLimit)
	}
	if o.HealthWindow < time.Second || o.HealthWindow > time.Hour {
		return bad("ota.health_window", "%v must be 1s to 1h", o.HealthWindow)
	}
	return nil
}

// maxPeriod caps the telemetry and heartbeat periods (a day).
const maxPeriod = 24 * time.Hour

func checkSeconds(d time.Duration) error {
	if d < time.Second || d > maxPeriod || d%time.Second != 0 {
		return fmt.Errorf("%v must be whole seconds from 1s to %v", d, maxPeriod)
	}
	return nil
}

// Login is an MQTT username and password, as `loki auth add-device ID
// --json` prints it and as Loki saves it in DATA-DIR/auth/devices/<id>.json.
type Login struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// ReadLogin reads a login file.
func ReadLogin(path string) (Login, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Login{}, fmt.Errorf("%w: login: %v", ErrConfig, err)
	}
	var l Login
	if err := json.Unmarshal(data, &l); err != nil {
		return Login{}, fmt.Errorf("%w: login %s: want JSON {\"username\", \"password\"}: %v", ErrConfig, path, err)
	}
	if l.Password == "" {
		return Login{}, fmt.Errorf("%w: login %s: no password", ErrConfig, path)
	}
	return l, nil
}

// LokiLoginFile is where `loki auth add-device ID` saves the device's
// login in the Loki data dir dataDir.
func LokiLoginFile(dataDir, id string) string {
	return filepath.Join(dataDir, "auth", "devices", id+".json")
}

// HasCredentials reports whether the transport names a password or a
// login file.
func (t TransportConfig) HasCredentials() bool {
	return t.Password != "" || t.PasswordFile != "" || t.LoginFile != ""
}

// Login returns the username and password the config's transport names
// (a device id without one is its own username), reading password_file or
// login_file: the credential of a transport passed with WithTransport.
func (c Config) Login() (Login, error) { return c.login() }

// login returns the MQTT username and password the config names.
func (c Config) login() (Login, error) {
	t := c.Transport
	l := Login{Username: t.Username, Password: t.Password}
	switch {
	case t.PasswordFile != "":
		b, err := os.ReadFile(t.PasswordFile)
		if err != nil {
			return Login{}, fmt.Errorf("%w: %s: transport.password_file: %v", ErrConfig, c.at("transport.password_file"), err)
		}
		l.Password = strings.TrimSpace(string(b))
	case t.LoginFile != "":
		f, err := ReadLogin(t.LoginFile)
		if err != nil {
			return Login{}, err
		}
		if l.Username == "" {
			l.Username = f.Username
		}
		l.Password = f.Password
	}
	if l.Username == "" {
		l.Username = c.Device.ID
	}
	return l, nil
}
