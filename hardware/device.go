package hardware

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
	"periph.io/x/devices/v3/bmxx80"
)

var pulls = map[string]gpio.Pull{PullUp: gpio.PullUp, PullDown: gpio.PullDown, PullNone: gpio.Float}

// sensorOpts are the BME280/BMP280 settings: 1x oversampling of each
// quantity, forced mode. A reading takes about 8 ms; more oversampling
// lowers noise the drifting room values do not need.
var sensorOpts = bmxx80.Opts{Temperature: bmxx80.O1x, Pressure: bmxx80.O1x, Humidity: bmxx80.O1x}

// Device is one board as Fenrir and the device agent drive it: its pins
// with their state, its sensors and its actuators. It is safe for
// concurrent use: every operation on a pin holds that pin's lock, so writes
// to one pin are serialized; edge waits have a lock of their own, so a wait
// does not hold up reads of the pin. Errors are *fault.Error values (see
// the package documentation).
type Device struct {
	cfg   BoardConfig
	board Board

	pins      []*pin // in config order
	byName    map[string]*pin
	byNumber  map[int]*pin
	sensors   map[string]*SensorConfig
	actuators map[string]*actuator

	envMu sync.Mutex // serializes the I²C bus
	env   map[uint16]*bmxx80.Dev
}

type pin struct {
	cfg PinConfig
	io  gpio.PinIO
	// wiredTo names the sensor or actuator that owns the pin; scripts may
	// read such a pin but not drive or reconfigure it.
	wiredTo string

	mu      sync.Mutex
	mode    string
	pull    string
	noEdges error   // why the line cannot detect edges; nil when it can
	duty    float64 // > 0 while outputting PWM
	hz      float64

	wait chan struct{} // a one-slot semaphore: one edge waiter at a time
}

type actuator struct {
	cfg      ActuatorConfig
	pin      *pin
	dir      *pin // motors only
	mu       sync.Mutex
	on       bool
	level    float64
	reversed bool
}

// NewDevice validates cfg (an invalid board is an error wrapping ErrConfig),
// fills in its defaults, opens every pin of cfg on board and sets its
// configured mode. On success the Device owns board and Close closes it; on
// error the caller still owns board and closes it.
func NewDevice(cfg BoardConfig, board Board) (*Device, error) {
	cfg, err := cfg.normalized()
	if err != nil {
		return nil, fmt.Errorf("%w: board %q: %v", ErrConfig, cfg.Name, err)
	}
	d := &Device{
		cfg: cfg, board: board,
		byName: map[string]*pin{}, byNumber: map[int]*pin{},
		sensors: map[string]*SensorConfig{}, actuators: map[string]*actuator{},
		env: map[uint16]*bmxx80.Dev{},
	}
	for _, pc := range cfg.Pins {
		io, err := board.Pin(pc)
		if err != nil {
			return nil, err
		}
		p := &pin{cfg: pc, io: io, wait: make(chan struct{}, 1)}
		if err := p.setMode(pc.Mode, pc.Pull); err != nil {
			return nil, fmt.Errorf("board %q: pin %q: set mode %s: %w", cfg.Name, pc.Name, pc.Mode, err)
		}
		d.pins = append(d.pins, p)
		d.byName[pc.Name] = p
		d.byNumber[pc.Number] = p
	}
	for i := range cfg.Sensors {
		s := &cfg.Sensors[i]
		d.sensors[s.Name] = s
		if s.Pin != "" {
			d.byName[s.Pin].wiredTo = s.Name
		}
	}
	for _, ac := range cfg.Actuators {
		a := &actuator{cfg: ac, pin: d.byName[ac.Pin]}
		a.pin.wiredTo = ac.Name
		if ac.DirPin != "" {
			a.dir = d.byName[ac.DirPin]
			a.dir.wiredTo = ac.Name
		}
		d.actuators[ac.Name] = a
	}
	return d, nil
}

// setMode configures the line; the caller holds p.mu (or owns p). Inputs
// detect both edges, so WaitEdge works on every input — unless the host
// cannot detect edges on that line (not every GPIO driver can), in which
// case the pin is still a readable input and WaitEdge says why it cannot
// wait.
func (p *pin) setMode(mode, pull string) error {
	var err error
	p.noEdges = nil
	if mode == ModeOut {
		err = p.io.Out(gpio.Low)
		pull = PullNone
	} else if err = p.io.In(pulls[pull], gpio.BothEdges); err != nil {
		if plain := p.io.In(pulls[pull], gpio.NoEdge); plain == nil {
			p.noEdges, err = err, nil
		}
	}
	if err != nil {
		return err
	}
	p.mode, p.pull, p.duty, p.hz = mode, pull, 0, 0
	return nil
}

// Config returns the board's configuration, with its defaults filled in.
// The caller must not modify its slices.
func (d *Device) Config() BoardConfig { return d.cfg }

// Close halts every sensor and closes the board. The Device must not be
// used afterwards.
func (d *Device) Close() error {
	d.envMu.Lock()
	var errs []error
	for _, dev := range d.env {
		errs = append(errs, dev.Halt())
	}
	d.env = map[uint16]*bmxx80.Dev{}
	d.envMu.Unlock()
	errs = append(errs, d.board.Close())
	return errors.Join(errs...)
}

// lookupPin finds a pin by name or decimal number.
func (d *Device) lookupPin(ref string) (*pin, error) {
	if ref == "" {
		return nil, fault.New(fault.InvalidArgument, "board %q: pin is required (a name or a number)", d.cfg.Name)
	}
	if p, ok := d.byName[ref]; ok {
		return p, nil
	}
	if n, err := strconv.Atoi(ref); err == nil {
		if p, ok := d.byNumber[n]; ok {
			return p, nil
		}
		return nil, fault.New(fault.NotFound, "board %q has no pin number %d (pins: %s)", d.cfg.Name, n, d.pinList())
	}
	return nil, fault.New(fault.NotFound, "board %q has no pin %q (pins: %s)", d.cfg.Name, trunc(ref), d.pinList())
}

func (d *Device) pinList() string {
	names := make([]string, len(d.pins))
	for i, p := range d.pins {
		names[i] = fmt.Sprintf("%s=%d", p.cfg.Name, p.cfg.Number)
	}
	return strings.Join(names, ", ")
}

// hwError reports a failure of the hardware itself.
func (d *Device) hwError(err error, format string, args ...any) error {
	return fault.Wrap(fault.Unavailable, err, "board %q: %s: %v", d.cfg.Name, fmt.Sprintf(format, args...), err)
}

// state describes the pin; the caller holds p.mu.
func (p *pin) state() PinState {
	return PinState{
		Name: p.cfg.Name, Number: p.cfg.Number, Mode: p.mode, Pull: p.pull,
		Level: levelInt(p.io.Read()), Duty: p.duty, Hz: p.hz, WiredTo: p.wiredTo,
	}
}

func levelInt(l gpio.Level) int {
	if l == gpio.High {
		return 1
	}
	return 0
}

// ownedBy refuses to drive a pin a sensor or actuator owns.
func (d *Device) ownedBy(p *pin, op string) error {
	if p.wiredTo == "" {
		return nil
	}
	return fault.New(fault.FailedPrecondition, "board %q: pin %q is wired to %q: %s it through %q, not the pin",
		d.cfg.Name, p.cfg.Name, p.wiredTo, op, p.wiredTo)
}

// Read returns the state of the pin ref: its name, or its number in
// decimal ("led_pin", "17").
func (d *Device) Read(ref string) (PinState, error) {
	p, err := d.lookupPin(ref)
	if err != nil {
		return PinState{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state(), nil
}

// Write drives the output pin ref to level 0 or 1 (any other level is
// INVALID_ARGUMENT), ending any PWM on it. An input, or a pin wired to a
// sensor or actuator, is FAILED_PRECONDITION.
func (d *Device) Write(ref string, level int) (PinState, error) {
	p, err := d.lookupPin(ref)
	if err != nil {
		return PinState{}, err
	}
	if level != 0 && level != 1 {
		return PinState{}, fault.New(fault.InvalidArgument, "board %q: pin %q: level must be 0 or 1", d.cfg.Name, p.cfg.Name)
	}
	if err := d.ownedBy(p, "drive"); err != nil {
		return PinState{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode != ModeOut {
		return PinState{}, fault.New(fault.FailedPrecondition, "board %q: pin %q is an input: set its mode to %q first", d.cfg.Name, p.cfg.Name, ModeOut)
	}
	if err := p.io.Out(gpio.Level(level == 1)); err != nil {
		return PinState{}, d.hwError(err, "pin %q: write", p.cfg.Name)
	}
	p.duty, p.hz = 0, 0
	return p.state(), nil
}

// SetMode sets the direction of pin ref to ModeIn or ModeOut and, for an
// input, its pull (PullUp, PullDown, or PullNone when ""). An output starts
// low. A pin wired to a sensor or actuator is FAILED_PRECONDITION.
func (d *Device) SetMode(ref, mode, pull string) (PinState, error) {
	p, err := d.lookupPin(ref)
	if err != nil {
		return PinState{}, err
	}
	if mode != ModeIn && mode != ModeOut {
		return PinState{}, fault.New(fault.InvalidArgument, "board %q: pin %q: mode %q must be %q or %q", d.cfg.Name, p.cfg.Name, mode, ModeIn, ModeOut)
	}
	if pull == "" {
		pull = PullNone
	}
	if _, ok := pulls[pull]; !ok {
		return PinState{}, fault.New(fault.InvalidArgument, "board %q: pin %q: pull %q must be %q, %q or %q", d.cfg.Name, p.cfg.Name, pull, PullUp, PullDown, PullNone)
	}
	if mode == ModeOut && pull != PullNone {
		return PinState{}, fault.New(fault.InvalidArgument, "board %q: pin %q: an output takes no pull (got %q)", d.cfg.Name, p.cfg.Name, pull)
	}
	if err := d.ownedBy(p, "configure"); err != nil {
		return PinState{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.setMode(mode, pull); err != nil {
		return PinState{}, d.hwError(err, "pin %q: set mode %s", p.cfg.Name, mode)
	}
	return p.state(), nil
}

// PWM outputs duty (0..1) at hz (0 means 1000; at most 1e6) on the output
// pin ref; duty 0 and 1 are steady levels. A NaN duty is INVALID_ARGUMENT, as
// any duty out of range. An input, or a pin wired to a sensor or actuator,
// is FAILED_PRECONDITION.
func (d *Device) PWM(ref string, duty, hz float64) (PinState, error) {
	p, err := d.lookupPin(ref)
	if err != nil {
		return PinState{}, err
	}
	if math.IsNaN(duty) || duty < 0 || duty > 1 {
		return PinState{}, fault.New(fault.InvalidArgument, "board %q: pin %q: duty must be a number from 0 to 1", d.cfg.Name, p.cfg.Name)
	}
	if hz == 0 {
		hz = 1000
	}
	if math.IsNaN(hz) || hz <= 0 || hz > 1e6 {
		return PinState{}, fault.New(fault.InvalidArgument, "board %q: pin %q: hz %v must be above 0 and at most 1000000", d.cfg.Name, p.cfg.Name, hz)
	}
	if err := d.ownedBy(p, "drive"); err != nil {
		return PinState{}, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mode != ModeOut {
		return PinState{}, fault.New(fault.FailedPrecondition, "board %q: pin %q is an input: set its mode to %q first", d.cfg.Name, p.cfg.Name, ModeOut)
	}
	if err := p.drive(duty, hz); err != nil {
		return PinState{}, d.hwError(err, "pin %q: pwm", p.cfg.Name)
	}
	return p.state(), nil
}

// drive outputs duty at hz: a steady level at 0 and 1, PWM between. The
// caller holds p.mu.
func (p *pin) drive(duty, hz float64) error {
	switch duty {
	case 0, 1:
		if err := p.io.Out(gpio.Level(duty == 1)); err != nil {
			return err
		}
		p.duty, p.hz = 0, 0
		return nil
	}
	f := physic.Frequency(hz * float64(physic.Hertz))
	if err := p.io.PWM(gpio.Duty(math.Round(duty*float64(gpio.DutyMax))), f); err != nil {
		return err
	}
	p.duty, p.hz = duty, hz
	return nil
}

// WaitEdge waits for edge (EdgeRising, EdgeFalling, or EdgeBoth when "") on
// the input pin ref until timeout or ctx's deadline, whichever is first. A
// timeout is an answer (Edge false), not an error. One wait runs on a pin at
// a time: a second waits for the first, and is DEADLINE_EXCEEDED if ctx ends
// first. An output is FAILED_PRECONDITION, as is an input on a line whose
// host cannot detect edges.
func (d *Device) WaitEdge(ctx context.Context, ref, edge string, timeout time.Duration) (Edge, error) {
	p, err := d.lookupPin(ref)
	if err != nil {
		return Edge{}, err
	}
	if edge == "" {
		edge = EdgeBoth
	}
	if edge != EdgeRising && edge != EdgeFalling && edge != EdgeBoth {
		return Edge{}, fault.New(fault.InvalidArgument, "board %q: pin %q: edge %q must be %q, %q or %q", d.cfg.Name, p.cfg.Name, edge, EdgeRising, EdgeFalling, EdgeBoth)
	}
	p.mu.Lock()
	mode, noEdges := p.mode, p.noEdges
	p.mu.Unlock()
	if mode != ModeIn {
		return Edge{}, fault.New(fault.FailedPrecondition, "board %q: pin %q is an output: edges are seen on inputs", d.cfg.Name, p.cfg.Name)
	}
	if noEdges != nil {
		return Edge{}, fault.New(fault.FailedPrecondition, "board %q: pin %q: this host cannot detect edges on line %s: %v", d.cfg.Name, p.cfg.Name, p.cfg.Line, noEdges)
	}
	deadline := time.Now().Add(timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	select {
	case p.wait <- struct{}{}:
		defer func() { <-p.wait }()
	case <-ctx.Done():
		return Edge{}, fault.New(fault.DeadlineExceeded, "board %q: pin %q: another wait on the pin did not end in time", d.cfg.Name, p.cfg.Name)
	}
	for {
		left := time.Until(deadline)
		if left <= 0 || !p.io.WaitForEdge(left) {
			return Edge{Pin: p.cfg.Name, Level: levelInt(p.io.Read()), At: unixSeconds(time.Now())}, nil
		}
		l := p.io.Read()
		if edge == EdgeBoth || (edge == EdgeRising) == (l == gpio.High) {
			return Edge{Pin: p.cfg.Name, Edge: true, Level: levelInt(l), At: unixSeconds(time.Now())}, nil
		}
	}
}

// ReadSensor reads the sensor name: a BME280/BMP280 quantity over I²C
// (taking one forced-mode measurement, about 8 ms), or a PIR motion pin. An
// unknown sensor is NOT_FOUND; a bus or chip failure is UNAVAILABLE.
func (d *Device) ReadSensor(name string) (Reading, error) {
	s, ok := d.sensors[name]
	if !ok {
		return Reading{}, fault.New(fault.NotFound, "board %q has no sensor %q (sensors: %s)", d.cfg.Name, trunc(name), d.sensorNames())
	}
	r := Reading{Sensor: s.Name, Kind: s.Kind, Unit: units[s.Kind]}
	if s.Kind == KindMotion {
		p := d.byName[s.Pin]
		p.mu.Lock()
		r.Value = p.io.Read() == gpio.High
		p.mu.Unlock()
		r.At = unixSeconds(time.Now())
		return r, nil
	}
	var e physic.Env
	if err := d.sense(s.Addr, &e); err != nil {
		return Reading{}, d.hwError(err, "sensor %q", s.Name)
	}
	r.At = unixSeconds(time.Now())
	switch s.Kind {
	case KindTemperature:
		r.Value = round(float64(e.Temperature-physic.ZeroCelsius)/float64(physic.Celsius), 2)
	case KindHumidity:
		r.Value = round(float64(e.Humidity)/float64(physic.PercentRH), 2)
	case KindPressure:
		r.Value = round(float64(e.Pressure)/float64(100*physic.Pascal), 2)
	}
	return r, nil
}

// units of each sensor kind's value.
var units = map[string]string{KindTemperature: "°C", KindHumidity: "%RH", KindPressure: "hPa", KindMotion: ""}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// sense takes one measurement of the BME280/BMP280 at addr, opening the
// driver on first use.
func (d *Device) sense(addr uint16, e *physic.Env) error {
	d.envMu.Lock()
	defer d.envMu.Unlock()
	dev, ok := d.env[addr]
	if !ok {
		bus, err := d.board.I2C()
		if err != nil {
			return err
		}
		if dev, err = bmxx80.NewI2C(bus, addr, &sensorOpts); err != nil {
			return err
		}
		d.env[addr] = dev
	}
	return dev.Sense(e)
}

func (d *Device) sensorNames() string {
	names := make([]string, len(d.cfg.Sensors))
	for i, s := range d.cfg.Sensors {
		names[i] = s.Name
	}
	return strings.Join(names, ", ")
}

// Info describes the whole board with the current state of its pins and
// actuators.
func (d *Device) Info() BoardInfo {
	info := BoardInfo{Name: d.cfg.Name, Backend: d.cfg.Backend, Pins: []PinState{}, Sensors: []SensorInfo{}, Actuators: []ActuatorState{}}
	for _, p := range d.pins {
		p.mu.Lock()
		info.Pins = append(info.Pins, p.state())
		p.mu.Unlock()
	}
	for _, s := range d.cfg.Sensors {
		info.Sensors = append(info.Sensors, SensorInfo{Name: s.Name, Kind: s.Kind, Driver: s.Driver, Unit: units[s.Kind], Pin: s.Pin})
	}
	for _, ac := range d.cfg.Actuators {
		a := d.actuators[ac.Name]
		a.mu.Lock()
		info.Actuators = append(info.Actuators, a.state())
		a.mu.Unlock()
	}
	return info
}

// state describes the actuator; the caller holds a.mu.
func (a *actuator) state() ActuatorState {
	s := ActuatorState{Name: a.cfg.Name, Kind: a.cfg.Kind, On: a.on, Level: a.level}
	if a.cfg.Kind == KindMotor {
		s.Direction = "forward"
		if a.reversed {
			s.Direction = "reverse"
		}
	}
	return s
}

// SetActuator drives the actuator name to value, which is what JSON
// decodes to: "on", "off", "toggle", a bool, a float64 (LED brightness 0..1,
// relay 0 or 1, motor speed -1..1, negative in reverse) or, for a motor,
// map[string]any{"speed": 0..1, "direction": "forward"|"reverse"}. Turning a
// motor on or off, or stopping it, keeps its direction. An unknown actuator
// is NOT_FOUND, a value the actuator's kind does not take INVALID_ARGUMENT.
func (d *Device) SetActuator(name string, value any) (ActuatorState, error) {
	a, ok := d.actuators[name]
	if !ok {
		names := make([]string, 0, len(d.actuators))
		for _, ac := range d.cfg.Actuators {
			names = append(names, ac.Name)
		}
		return ActuatorState{}, fault.New(fault.NotFound, "board %q has no actuator %q (actuators: %s)", d.cfg.Name, trunc(name), strings.Join(names, ", "))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	level, reverse, err := a.target(value)
	if err != nil {
		return ActuatorState{}, fault.New(fault.InvalidArgument, "board %q: actuator %q (%s): %v", d.cfg.Name, a.cfg.Name, a.cfg.Kind, err)
	}
	// Lock order: the actuator, then its pin, then its direction pin.
	a.pin.mu.Lock()
	defer a.pin.mu.Unlock()
	if a.dir != nil {
		a.dir.mu.Lock()
		defer a.dir.mu.Unlock()
		if level == 0 {
			reverse = a.reversed // stopping keeps the direction
		}
		if err := a.dir.io.Out(gpio.Level(reverse)); err != nil {
			return ActuatorState{}, d.hwError(err, "actuator %q: direction pin %q", a.cfg.Name, a.dir.cfg.Name)
		}
	}
	if err := a.pin.drive(level, a.cfg.PWMHz); err != nil {
		return ActuatorState{}, d.hwError(err, "actuator %q: pin %q", a.cfg.Name, a.pin.cfg.Name)
	}
	a.on, a.level, a.reversed = level > 0, level, reverse
	return a.state(), nil
}

// target parses value for the actuator's kind into a level 0..1 and, for a
// motor, a direction. The caller holds a.mu (toggle reads the state).
func (a *actuator) target(value any) (level float64, reverse bool, err error) {
	onOff := func(on bool) (float64, bool, error) {
		if on {
			return 1, a.reversed, nil
		}
		return 0, a.reversed, nil
	}
	switch v := value.(type) {
	case nil:
		return 0, false, errors.New("value is required")
	case bool:
		return onOff(v)
	case string:
		switch v {
		case "on":
			return onOff(true)
		case "off":
			return onOff(false)
		case "toggle":
			return onOff(!a.on)
		}
		return 0, false, fmt.Errorf("value %q must be \"on\", \"off\", \"toggle\", a boolean or a number", trunc(v))
	case float64:
		switch a.cfg.Kind {
		case KindRelay:
			if v != 0 && v != 1 {
				return 0, false, fmt.Errorf("value %v: a relay is 0 (off) or 1 (on)", v)
			}
			return v, false, nil
		case KindLED:
			if math.IsNaN(v) || v < 0 || v > 1 {
				return 0, false, fmt.Errorf("brightness %v must be from 0 to 1", v)
			}
			return v, false, nil
		default: // motor: signed speed
			if math.IsNaN(v) || v < -1 || v > 1 {
				return 0, false, fmt.Errorf("speed %v must be from -1 (full reverse) to 1 (full forward)", v)
			}
			return math.Abs(v), v < 0, nil
		}
	case map[string]any:
		if a.cfg.Kind != KindMotor {
			return 0, false, errors.New("only a motor takes {speed=, direction=}")
		}
		return motorTarget(v, a.reversed)
	}
	return 0, false, fmt.Errorf("value of type %T is not understood", value)
}

func motorTarget(m map[string]any, reverse bool) (float64, bool, error) {
	for k := range m {
		if k != "speed" && k != "direction" {
			return 0, false, fmt.Errorf("unknown field %q (want speed, direction)", trunc(k))
		}
	}
	speed, ok := m["speed"].(float64)
	if !ok || math.IsNaN(speed) || speed < 0 || speed > 1 {
		return 0, false, errors.New("speed must be a number from 0 to 1")
	}
	switch m["direction"] {
	case nil:
	case "forward":
		reverse = false
	case "reverse":
		reverse = true
	default:
		return 0, false, fmt.Errorf("direction %v must be \"forward\" or \"reverse\"", m["direction"])
	}
	return speed, reverse, nil
}

// trunc shortens s for error messages.
func trunc(s string) string {
	if len(s) <= 64 {
		return s
	}
	return s[:64] + "..."
}
