package hardware

import (
	"bytes"
	_ "embed"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// ErrConfig is wrapped by every error of LoadBoards and ParseBoards, and by
// NewDevice's error for an invalid BoardConfig.
var ErrConfig = errors.New("invalid board config")

// Backends a board may use.
const (
	// BackendSim is a simulated board built from periph.io's fakes: it runs
	// anywhere, with the same driver code as real hardware.
	BackendSim = "sim"
	// BackendPeriph is real hardware through periph.io/x/host.
	BackendPeriph = "periph"
)

// Sensor kinds, drivers and actuator kinds.
const (
	// KindTemperature is a temperature sensor; its value is in °C.
	KindTemperature = "temperature"
	// KindHumidity is a relative humidity sensor; its value is in %RH.
	KindHumidity = "humidity"
	// KindPressure is a barometric pressure sensor; its value is in hPa.
	KindPressure = "pressure"
	// KindMotion is a motion sensor; its value is a boolean.
	KindMotion = "motion"

	// DriverBME280 is a Bosch BME280 (temperature, humidity, pressure) on I²C.
	DriverBME280 = "bme280"
	// DriverBMP280 is a Bosch BMP280 (temperature, pressure) on I²C.
	DriverBMP280 = "bmp280"
	// DriverPIR is a PIR motion sensor whose output is an input pin.
	DriverPIR = "pir"

	// KindLED is an LED on an output pin: on/off or brightness 0..1 (PWM).
	KindLED = "led"
	// KindRelay is a relay on an output pin: on or off.
	KindRelay = "relay"
	// KindMotor is a motor: speed 0..1 as PWM on its pin, direction as the
	// level of its dir_pin.
	KindMotor = "motor"
)

// Pin modes and pulls.
const (
	// ModeIn is an input pin.
	ModeIn = "in"
	// ModeOut is an output pin.
	ModeOut = "out"

	// PullUp pulls an input up.
	PullUp = "up"
	// PullDown pulls an input down.
	PullDown = "down"
	// PullNone leaves an input floating; outputs always report it.
	PullNone = "none"
)

// Edges Device.WaitEdge can wait for.
const (
	// EdgeRising is a low-to-high transition.
	EdgeRising = "rising"
	// EdgeFalling is a high-to-low transition.
	EdgeFalling = "falling"
	// EdgeBoth is either transition.
	EdgeBoth = "both"
)

// BoardConfig describes one board: its pins, and the sensors and actuators
// wired to them. It decodes from a [[boards]] table (see LoadBoards).
type BoardConfig struct {
	// Name is the board's name in subjects and grants: 1 to 64 of [A-Za-z0-9_-].
	Name string `toml:"name"`
	// Backend is "sim" or "periph".
	Backend string `toml:"backend"`
	// I2CBus names the periph I²C bus (i2creg); "" opens the first one.
	I2CBus string `toml:"i2c_bus"`
	// SimMotionEvery makes a sim board's PIR sensors see motion this often
	// (0: never). Ignored by other backends.
	SimMotionEvery time.Duration `toml:"sim_motion_every"`

	// Pins are the board's GPIO pins; sensors and actuators refer to them
	// by name.
	Pins []PinConfig `toml:"pins"`
	// Sensors are the board's sensors.
	Sensors []SensorConfig `toml:"sensors"`
	// Actuators are the board's actuators.
	Actuators []ActuatorConfig `toml:"actuators"`
}

// PinConfig describes one GPIO pin. Scripts address it by Name or Number.
type PinConfig struct {
	// Name is unique on the board among pins, sensors and actuators: 1 to
	// 64 of [A-Za-z0-9_-], not a number.
	Name string `toml:"name"`
	// Number is the pin's number (0 to 4095), unique on the board.
	Number int `toml:"number"`
	// Line is the periph gpioreg name; default "GPIO<number>".
	Line string `toml:"line"`
	// Mode is the initial direction: "in" (default) or "out".
	Mode string `toml:"mode"`
	// Pull is the initial pull of an input: "up", "down" or "none" (default).
	Pull string `toml:"pull"`
}

// SensorConfig describes one sensor. Kind is temperature, humidity,
// pressure (drivers bme280 or bmp280 on the board's I²C bus at Addr) or
// motion (driver pir on input pin Pin).
type SensorConfig struct {
	// Name is unique on the board, as PinConfig.Name.
	Name string `toml:"name"`
	// Kind is KindTemperature, KindHumidity, KindPressure or KindMotion.
	Kind string `toml:"kind"`
	// Driver is DriverBME280 or DriverBMP280 (I²C kinds) or DriverPIR (motion).
	Driver string `toml:"driver"`
	// Addr is the I²C address: 0x76 (default) or 0x77.
	Addr uint16 `toml:"i2c_addr"`
	// Pin names the input pin of a motion sensor; I²C sensors take none.
	Pin string `toml:"pin"`
}

// ActuatorConfig describes one actuator: an LED or relay on output pin Pin,
// or a motor whose speed is PWM on Pin and direction the level of DirPin.
type ActuatorConfig struct {
	// Name is unique on the board, as PinConfig.Name.
	Name string `toml:"name"`
	// Kind is KindLED, KindRelay or KindMotor.
	Kind string `toml:"kind"`
	// Pin names the output pin that drives the actuator.
	Pin string `toml:"pin"`
	// DirPin names a motor's direction output pin (low forward, high reverse).
	DirPin string `toml:"dir_pin"`
	// PWMHz is the PWM frequency for LED brightness and motor speed; default 1000.
	PWMHz float64 `toml:"pwm_hz"`
}

//go:embed sim_board.toml
var simBoardTOML []byte

// SimBoardConfig returns the built-in simulated board "sim" that `loki up`
// serves (a new copy on every call): an LED, a relay, a motor "fan", a PIR motion sensor (motion every
// 20s), a button, a free output pin "aux" and a BME280 (temperature,
// humidity, pressure). See sim_board.toml.
func SimBoardConfig() BoardConfig {
	bs, err := ParseBoards("sim_board.toml", simBoardTOML)
	if err != nil || len(bs) != 1 {
		panic(fmt.Sprintf("hardware: built-in sim board: %v", err)) // a build defect, caught by tests
	}
	return bs[0]
}

// LoadBoards reads the boards of the TOML file at path ([[boards]] tables).
// Unknown keys, duplicate names, bad pins and dangling references are
// errors wrapping ErrConfig that name the file and the board.
func LoadBoards(path string) ([]BoardConfig, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrConfig, err)
	}
	return ParseBoards(path, data)
}

// ParseBoards is LoadBoards on data read from file (file is only used in
// messages). The boards it returns are valid and have their defaults filled
// in.
func ParseBoards(file string, data []byte) ([]BoardConfig, error) {
	var f struct {
		Boards []BoardConfig `toml:"boards"`
	}
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrConfig, file, err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		k := und[0]
		return nil, fmt.Errorf("%w: %s:%d: unknown key %q", ErrConfig, file, keyLine(data, k), k.String())
	}
	if len(f.Boards) == 0 {
		return nil, fmt.Errorf("%w: %s: no [[boards]] defined", ErrConfig, file)
	}
	seen := map[string]bool{}
	for i := range f.Boards {
		b := &f.Boards[i]
		if err := b.normalize(); err != nil {
			return nil, fmt.Errorf("%w: %s: board %q: %v", ErrConfig, file, b.Name, err)
		}
		if seen[b.Name] {
			return nil, fmt.Errorf("%w: %s: board %q: defined twice", ErrConfig, file, b.Name)
		}
		seen[b.Name] = true
	}
	return f.Boards, nil
}

// validName reports whether name can name a board, pin, sensor or actuator:
// 1 to 64 of [A-Za-z0-9_-]. Fenrir puts these names in NATS subjects and grant
// scopes, so it is the rule of subjects.ValidFenrirName (which the package
// does not import: subjects depends on the NATS client).
func validName(name string) bool {
	if len(name) == 0 || len(name) > 64 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// keyLine guesses the line of an undecoded key: the first line assigning
// its last part (1 when not found).
func keyLine(data []byte, k toml.Key) int {
	last := k[len(k)-1]
	for i, line := range bytes.Split(data, []byte("\n")) {
		s := strings.TrimSpace(string(line))
		if strings.HasPrefix(s, last) && strings.HasPrefix(strings.TrimSpace(s[len(last):]), "=") {
			return i + 1
		}
	}
	return 1
}

// Validate reports the first problem of the board: names, pins, drivers and
// references between them. The error describes the problem within the board
// (it neither names the board nor wraps ErrConfig); nil means NewDevice
// accepts the board.
func (b BoardConfig) Validate() error {
	_, err := b.normalized()
	return err
}

// normalized returns a copy of b with defaults filled in, or b's first
// problem.
func (b BoardConfig) normalized() (BoardConfig, error) {
	c := b
	c.Pins = append([]PinConfig(nil), b.Pins...)
	c.Sensors = append([]SensorConfig(nil), b.Sensors...)
	c.Actuators = append([]ActuatorConfig(nil), b.Actuators...)
	return c, c.normalize()
}

// normalize fills defaults and validates.
func (b *BoardConfig) normalize() error {
	if !validName(b.Name) {
		return fmt.Errorf("name must be 1 to 64 of [A-Za-z0-9_-]")
	}
	switch b.Backend {
	case BackendSim, BackendPeriph:
	case "":
		return fmt.Errorf("backend is required: %q or %q", BackendSim, BackendPeriph)
	default:
		return fmt.Errorf("backend %q: must be %q or %q", b.Backend, BackendSim, BackendPeriph)
	}
	if b.SimMotionEvery < 0 {
		return fmt.Errorf("sim_motion_every = %v: must not be negative", b.SimMotionEvery)
	}
	names := map[string]string{} // every name on the board, to its kind
	claim := func(kind, name string) error {
		if !validName(name) {
			return fmt.Errorf("%s name %q must be 1 to 64 of [A-Za-z0-9_-]", kind, name)
		}
		if _, err := strconv.Atoi(name); err == nil {
			return fmt.Errorf("%s name %q must not be a number (numbers address pins)", kind, name)
		}
		if k, dup := names[name]; dup {
			return fmt.Errorf("%s %q: name already used by a %s", kind, name, k)
		}
		names[name] = kind
		return nil
	}
	pins := map[string]*PinConfig{}
	numbers := map[int]string{}
	for i := range b.Pins {
		p := &b.Pins[i]
		if err := claim("pin", p.Name); err != nil {
			return err
		}
		if p.Number < 0 || p.Number > 4095 {
			return fmt.Errorf("pin %q: number %d must be 0 to 4095", p.Name, p.Number)
		}
		if other, dup := numbers[p.Number]; dup {
			return fmt.Errorf("pin %q: number %d already used by pin %q", p.Name, p.Number, other)
		}
		numbers[p.Number] = p.Name
		if p.Line == "" {
			p.Line = "GPIO" + strconv.Itoa(p.Number)
		}
		if p.Mode == "" {
			p.Mode = ModeIn
		}
		if p.Mode != ModeIn && p.Mode != ModeOut {
			return fmt.Errorf("pin %q: mode %q must be %q or %q", p.Name, p.Mode, ModeIn, ModeOut)
		}
		if p.Pull == "" {
			p.Pull = PullNone
		}
		if _, ok := pulls[p.Pull]; !ok {
			return fmt.Errorf("pin %q: pull %q must be %q, %q or %q", p.Name, p.Pull, PullUp, PullDown, PullNone)
		}
		pins[p.Name] = p
	}
	pin := func(what, ref, mode string) error {
		p, ok := pins[ref]
		if !ok {
			return fmt.Errorf("%s: pin %q is not a pin of the board", what, ref)
		}
		if p.Mode != mode {
			return fmt.Errorf("%s: pin %q must have mode %q", what, ref, mode)
		}
		return nil
	}
	for i := range b.Sensors {
		s := &b.Sensors[i]
		if err := claim("sensor", s.Name); err != nil {
			return err
		}
		what := fmt.Sprintf("sensor %q", s.Name)
		switch s.Kind {
		case KindTemperature, KindHumidity, KindPressure:
			if s.Driver != DriverBME280 && s.Driver != DriverBMP280 {
				return fmt.Errorf("%s: driver %q must be %q or %q for kind %q", what, s.Driver, DriverBME280, DriverBMP280, s.Kind)
			}
			if s.Kind == KindHumidity && s.Driver == DriverBMP280 {
				return fmt.Errorf("%s: a %s has no humidity sensor", what, DriverBMP280)
			}
			if s.Addr == 0 {
				s.Addr = 0x76
			}
			if s.Addr != 0x76 && s.Addr != 0x77 {
				return fmt.Errorf("%s: i2c_addr 0x%x must be 0x76 or 0x77", what, s.Addr)
			}
			if s.Pin != "" {
				return fmt.Errorf("%s: an I²C sensor takes no pin", what)
			}
		case KindMotion:
			if s.Driver != DriverPIR {
				return fmt.Errorf("%s: driver %q must be %q for kind %q", what, s.Driver, DriverPIR, s.Kind)
			}
			if err := pin(what, s.Pin, ModeIn); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%s: kind %q must be temperature, humidity, pressure or motion", what, s.Kind)
		}
	}
	used := map[string]string{}
	for i := range b.Actuators {
		a := &b.Actuators[i]
		if err := claim("actuator", a.Name); err != nil {
			return err
		}
		what := fmt.Sprintf("actuator %q", a.Name)
		switch a.Kind {
		case KindLED, KindRelay, KindMotor:
		default:
			return fmt.Errorf("%s: kind %q must be led, relay or motor", what, a.Kind)
		}
		if a.PWMHz == 0 {
			a.PWMHz = 1000
		}
		if !(a.PWMHz > 0 && a.PWMHz <= 1e6) {
			return fmt.Errorf("%s: pwm_hz %v must be above 0 and at most 1e6", what, a.PWMHz)
		}
		refs := []string{a.Pin}
		if a.Kind == KindMotor {
			if a.DirPin == "" {
				return fmt.Errorf("%s: a motor needs dir_pin", what)
			}
			refs = append(refs, a.DirPin)
		} else if a.DirPin != "" {
			return fmt.Errorf("%s: only a motor takes dir_pin", what)
		}
		for _, r := range refs {
			if err := pin(what, r, ModeOut); err != nil {
				return err
			}
			if other, dup := used[r]; dup {
				return fmt.Errorf("%s: pin %q already drives actuator %q", what, r, other)
			}
			used[r] = a.Name
		}
	}
	return nil
}
