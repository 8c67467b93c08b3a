package fenrir_test

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/fenrir"
	"github.com/loki-iot/loki/subjects"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/physic"
)

func TestGPIOWriteRead(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	st, err := e.c.Write(ctx, "sim", "aux", 1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Level != 1 || st.Mode != hardware.ModeOut || st.Number != 5 {
		t.Fatalf("write answered %+v, want aux=5 out level 1", st)
	}
	if l := e.sim.fake(t, "aux").Read(); l != gpio.High {
		t.Fatalf("fake pin aux is %v after writing 1, want High", l)
	}
	// The same pin by number.
	st, err = e.c.Read(ctx, "sim", "5")
	if err != nil || st.Name != "aux" || st.Level != 1 {
		t.Fatalf("read pin 5: got %+v %v, want aux at level 1", st, err)
	}
	if _, err := e.c.Write(ctx, "sim", "5", 0); err != nil {
		t.Fatal(err)
	}
	if l := e.sim.fake(t, "aux").Read(); l != gpio.Low {
		t.Fatalf("fake pin aux is %v after writing 0 to pin 5, want Low", l)
	}
	// A button with a pull-up reads high until pressed.
	st, err = e.c.Read(ctx, "sim", "button")
	if err != nil || st.Level != 1 || st.Pull != hardware.PullUp {
		t.Fatalf("read button: got %+v %v, want level 1 with pull up", st, err)
	}
	e.sim.setInput(t, "button", gpio.Low)
	if st, err := e.c.Read(ctx, "sim", "button"); err != nil || st.Level != 0 {
		t.Fatalf("read pressed button: got %+v %v, want level 0", st, err)
	}
}

func TestGPIOErrors(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	level := func(n int) *int { return &n }
	duty := func(f float64) *float64 { return &f }
	tests := []struct {
		name    string
		op      string
		req     fenrir.Request
		want    fault.Code
		wantMsg string
	}{
		{"unknown pin", subjects.FenrirGPIORead, fenrir.Request{Pin: "nope"}, fault.NotFound, `no pin "nope"`},
		{"unknown pin number", subjects.FenrirGPIORead, fenrir.Request{Pin: "99"}, fault.NotFound, "no pin number 99"},
		{"no pin", subjects.FenrirGPIORead, fenrir.Request{}, fault.InvalidArgument, "pin is required"},
		{"level 2", subjects.FenrirGPIOWrite, fenrir.Request{Pin: "aux", Level: level(2)}, fault.InvalidArgument, "level must be 0 or 1"},
		{"no level", subjects.FenrirGPIOWrite, fenrir.Request{Pin: "aux"}, fault.InvalidArgument, "level must be 0 or 1"},
		{"write an input", subjects.FenrirGPIOWrite, fenrir.Request{Pin: "button", Level: level(1)}, fault.FailedPrecondition, "is an input"},
		{"write an actuator's pin", subjects.FenrirGPIOWrite, fenrir.Request{Pin: "led_pin", Level: level(1)}, fault.FailedPrecondition, `wired to "led"`},
		{"bad mode", subjects.FenrirGPIOMode, fenrir.Request{Pin: "aux", Mode: "sideways"}, fault.InvalidArgument, `mode "sideways"`},
		{"bad pull", subjects.FenrirGPIOMode, fenrir.Request{Pin: "aux", Mode: "in", Pull: "sideways"}, fault.InvalidArgument, `pull "sideways"`},
		{"pull on an output", subjects.FenrirGPIOMode, fenrir.Request{Pin: "aux", Mode: "out", Pull: "up"}, fault.InvalidArgument, "takes no pull"},
		{"reconfigure a sensor's pin", subjects.FenrirGPIOMode, fenrir.Request{Pin: "pir_pin", Mode: "out"}, fault.FailedPrecondition, `wired to "motion"`},
		{"duty over 1", subjects.FenrirGPIOPWM, fenrir.Request{Pin: "aux", Duty: duty(1.5)}, fault.InvalidArgument, "duty must be"},
		{"negative duty", subjects.FenrirGPIOPWM, fenrir.Request{Pin: "aux", Duty: duty(-0.1)}, fault.InvalidArgument, "duty must be"},
		{"no duty", subjects.FenrirGPIOPWM, fenrir.Request{Pin: "aux"}, fault.InvalidArgument, "duty must be"},
		{"negative hz", subjects.FenrirGPIOPWM, fenrir.Request{Pin: "aux", Duty: duty(0.5), Hz: -1}, fault.InvalidArgument, "hz -1"},
		{"pwm an input", subjects.FenrirGPIOPWM, fenrir.Request{Pin: "button", Duty: duty(0.5)}, fault.FailedPrecondition, "is an input"},
		{"wait without timeout", subjects.FenrirGPIOWait, fenrir.Request{Pin: "button"}, fault.InvalidArgument, "timeout is required"},
		{"wait too long", subjects.FenrirGPIOWait, fenrir.Request{Pin: "button", Timeout: "24h"}, fault.InvalidArgument, "over the limit"},
		{"wait bad edge", subjects.FenrirGPIOWait, fenrir.Request{Pin: "button", Timeout: "1s", Edge: "up"}, fault.InvalidArgument, `edge "up"`},
		{"wait on an output", subjects.FenrirGPIOWait, fenrir.Request{Pin: "aux", Timeout: "1s"}, fault.FailedPrecondition, "is an output"},
		{"unknown sensor", subjects.FenrirSensorRead, fenrir.Request{Name: "co2"}, fault.NotFound, `no sensor "co2"`},
		{"unknown actuator", subjects.FenrirActuatorSet, fenrir.Request{Name: "door", Value: "on"}, fault.NotFound, `no actuator "door"`},
		{"actuator without value", subjects.FenrirActuatorSet, fenrir.Request{Name: "led"}, fault.InvalidArgument, "value is required"},
		{"led bad word", subjects.FenrirActuatorSet, fenrir.Request{Name: "led", Value: "blink"}, fault.InvalidArgument, `value "blink"`},
		{"led too bright", subjects.FenrirActuatorSet, fenrir.Request{Name: "led", Value: 2.0}, fault.InvalidArgument, "brightness 2"},
		{"relay half on", subjects.FenrirActuatorSet, fenrir.Request{Name: "relay", Value: 0.5}, fault.InvalidArgument, "a relay is 0"},
		{"motor too fast", subjects.FenrirActuatorSet, fenrir.Request{Name: "fan", Value: -1.5}, fault.InvalidArgument, "speed -1.5"},
		{"motor bad direction", subjects.FenrirActuatorSet, fenrir.Request{Name: "fan", Value: map[string]any{"speed": 0.5, "direction": "up"}}, fault.InvalidArgument, "direction up"},
		{"motor unknown field", subjects.FenrirActuatorSet, fenrir.Request{Name: "fan", Value: map[string]any{"speed": 0.5, "rpm": 9}}, fault.InvalidArgument, `unknown field "rpm"`},
		{"led with motor fields", subjects.FenrirActuatorSet, fenrir.Request{Name: "led", Value: map[string]any{"speed": 0.5}}, fault.InvalidArgument, "only a motor"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.c.Do(ctx, "sim", tc.op, tc.req)
			wantCode(t, err, tc.want)
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Fatalf("got %q, want it to mention %q", err, tc.wantMsg)
			}
		})
	}
	// Nothing was half-applied: aux is still a low output, no PWM.
	st, err := e.c.Read(ctx, "sim", "aux")
	if err != nil || st.Mode != hardware.ModeOut || st.Level != 0 || st.Duty != 0 {
		t.Fatalf("aux after refused requests: got %+v %v, want a low output without PWM", st, err)
	}
}

func TestMalformedRequests(t *testing.T) {
	e := setup(t)
	subj, err := subjects.FenrirOp("sim", subjects.FenrirGPIORead)
	if err != nil {
		t.Fatal(err)
	}
	for _, body := range []string{`{"pin":1.5}`, `{"pin":true}`, `{"level":"high"}`, `{"bogus":1}`, `[1]`, `{"pin":"aux"} {}`, `{`, strings.Repeat(" ", fenrir.MaxRequestBytes+1)} {
		resp, err := e.nc.Request(subj, []byte(body), 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		err = microsvc.ReplyError(resp, subjects.FenrirService, subj)
		if fault.CodeOf(err) != fault.InvalidArgument {
			t.Errorf("body %.40q: got %v, want INVALID_ARGUMENT", body, err)
		}
	}
}

// TestPinAsNumberOnTheWire: nats req users write {"pin": 5} as naturally
// as {"pin": "5"}.
func TestPinAsNumberOnTheWire(t *testing.T) {
	e := setup(t)
	subj, err := subjects.FenrirOp("sim", subjects.FenrirGPIOWrite)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := e.nc.Request(subj, []byte(`{"pin":5,"level":1}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := microsvc.ReplyError(resp, subjects.FenrirService, subj); err != nil {
		t.Fatal(err)
	}
	if l := e.sim.fake(t, "aux").Read(); l != gpio.High {
		t.Fatalf("aux (pin 5) is %v after writing 1 to pin 5, want High", l)
	}
	resp, err = e.nc.Request(subj, []byte(`{"pin":5,"level":"high"}`), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	err = microsvc.ReplyError(resp, subjects.FenrirService, subj)
	if fault.CodeOf(err) != fault.InvalidArgument || !strings.Contains(err.Error(), `field "level": want a whole number, got a JSON string`) {
		t.Fatalf("level as a word: got %v, want a clear INVALID_ARGUMENT", err)
	}
}

func TestModeAndPWM(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	st, err := e.c.PWM(ctx, "sim", "aux", 0.25, 2000)
	if err != nil || st.Duty != 0.25 || st.Hz != 2000 {
		t.Fatalf("pwm: got %+v %v, want duty 0.25 at 2000 Hz", st, err)
	}
	fake := e.sim.fake(t, "aux")
	fake.Lock()
	d, f := fake.D, fake.F
	fake.Unlock()
	if d != gpio.DutyMax/4 || f != 2000*physic.Hertz {
		t.Fatalf("fake pin aux: duty %v at %v, want %v at 2kHz", d, f, gpio.DutyMax/4)
	}
	// Turning aux into an input with a pull-up ends the PWM.
	st, err = e.c.Mode(ctx, "sim", "aux", hardware.ModeIn, hardware.PullUp)
	if err != nil || st.Mode != hardware.ModeIn || st.Pull != hardware.PullUp || st.Duty != 0 || st.Level != 1 {
		t.Fatalf("mode in/up: got %+v %v", st, err)
	}
	if p := fake.Pull(); p != gpio.PullUp {
		t.Fatalf("fake pin aux pull %v, want PullUp", p)
	}
	// The button becomes an output a script can drive.
	if _, err := e.c.Mode(ctx, "sim", "button", hardware.ModeOut, ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.Write(ctx, "sim", "button", 1); err != nil {
		t.Fatal(err)
	}
}

func TestEdgeWait(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)

	t.Run("times out", func(t *testing.T) {
		got, err := e.c.WaitEdge(ctx, "sim", "button", hardware.EdgeFalling, 50*time.Millisecond)
		if err != nil || got.Edge || got.Level != 1 {
			t.Fatalf("got %+v %v, want no edge, level 1", got, err)
		}
	})
	t.Run("falling", func(t *testing.T) {
		type result struct {
			e   hardware.Edge
			err error
		}
		done := make(chan result, 1)
		go func() {
			e, err := e.c.WaitEdge(ctx, "sim", "button", hardware.EdgeFalling, 15*time.Second)
			done <- result{e, err}
		}()
		e.sim.setInput(t, "button", gpio.Low)
		r := <-done
		if r.err != nil || !r.e.Edge || r.e.Level != 0 || r.e.Pin != "button" {
			t.Fatalf("got %+v %v, want a falling edge on button", r.e, r.err)
		}
	})
	t.Run("rising skips falling", func(t *testing.T) {
		// The button is low now: a release (rising) is what we wait for; a
		// press and release arrive, only the release counts.
		e.sim.setInput(t, "button", gpio.High)
		e.sim.setInput(t, "button", gpio.Low)
		if _, err := e.c.Mode(ctx, "sim", "button", hardware.ModeIn, hardware.PullNone); err != nil { // flushes old edges
			t.Fatal(err)
		}
		done := make(chan hardware.Edge, 1)
		go func() {
			got, err := e.c.WaitEdge(ctx, "sim", "button", hardware.EdgeRising, 15*time.Second)
			if err != nil {
				t.Error(err)
			}
			done <- got
		}()
		e.sim.setInput(t, "button", gpio.High)
		e.sim.setInput(t, "button", gpio.Low)
		e.sim.setInput(t, "button", gpio.High)
		if got := <-done; !got.Edge || got.Level != 1 {
			t.Fatalf("got %+v, want a rising edge at level 1", got)
		}
	})
	t.Run("caller deadline", func(t *testing.T) {
		short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		// The caller's deadline, passed in the request, ends the wait
		// well before its own timeout.
		got, err := e.c.WaitEdge(short, "sim", "pir_pin", hardware.EdgeRising, 10*time.Minute)
		if err == nil && got.Edge {
			t.Fatalf("got %+v, want no edge", got)
		}
		if err != nil && fault.CodeOf(err) != fault.DeadlineExceeded {
			t.Fatalf("got %v, want a timeout answer or DEADLINE_EXCEEDED", err)
		}
	})
}

func TestSensors(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	// The simulated BME280 starts from a real BME280's raw measurement
	// (23.72 °C, 1009.43 hPa, 65.31 %RH, as in periph.io's bmxx80 tests)
	// and drifts slowly from there.
	for _, tc := range []struct {
		name, unit  string
		want, drift float64
	}{
		{"temperature", "°C", 23.72, 1},
		{"humidity", "%RH", 65.31, 2},
		{"pressure", "hPa", 1009.43, 3},
	} {
		r, err := e.c.ReadSensor(ctx, "sim", tc.name)
		if err != nil {
			t.Fatal(err)
		}
		v, ok := r.Value.(float64)
		if !ok || math.Abs(v-tc.want) > tc.drift || r.Unit != tc.unit || r.Kind != tc.name || r.At == 0 {
			t.Errorf("%s: got %+v, want %v ± %v %s", tc.name, r, tc.want, tc.drift, tc.unit)
		}
	}
	r, err := e.c.ReadSensor(ctx, "sim", "motion")
	if err != nil || r.Value != false {
		t.Fatalf("motion before any: got %+v %v, want false", r, err)
	}
	e.sim.setInput(t, "pir_pin", gpio.High)
	r, err = e.c.ReadSensor(ctx, "sim", "motion")
	if err != nil || r.Value != true {
		t.Fatalf("motion: got %+v %v, want true", r, err)
	}
}

func TestActuators(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	set := func(name string, v any) hardware.ActuatorState {
		t.Helper()
		st, err := e.c.SetActuator(ctx, "sim", name, v)
		if err != nil {
			t.Fatalf("set %s to %v: %v", name, v, err)
		}
		return st
	}
	led := e.sim.fake(t, "led_pin")
	if st := set("led", "on"); !st.On || st.Level != 1 || led.Read() != gpio.High {
		t.Fatalf("led on: got %+v, pin %v", st, led.Read())
	}
	if st := set("led", "toggle"); st.On || led.Read() != gpio.Low {
		t.Fatalf("led toggled off: got %+v, pin %v", st, led.Read())
	}
	if st := set("led", 0.5); !st.On || st.Level != 0.5 {
		t.Fatalf("led at half brightness: got %+v", st)
	}
	led.Lock()
	d := led.D
	led.Unlock()
	if d != gpio.DutyMax/2 {
		t.Fatalf("led pin duty %v, want %v", d, gpio.DutyMax/2)
	}
	if st := set("relay", true); !st.On || e.sim.fake(t, "relay_pin").Read() != gpio.High {
		t.Fatalf("relay on: got %+v", st)
	}
	dir, pwm := e.sim.fake(t, "motor_dir"), e.sim.fake(t, "motor_pwm")
	st := set("fan", -0.5)
	pwm.Lock()
	d = pwm.D
	pwm.Unlock()
	if st.Direction != "reverse" || st.Level != 0.5 || dir.Read() != gpio.High || d != gpio.DutyMax/2 {
		t.Fatalf("fan at half reverse: got %+v, dir %v, duty %v", st, dir.Read(), d)
	}
	if st := set("fan", 0.0); st.On || st.Direction != "reverse" {
		t.Fatalf("fan stopped: got %+v, want off, direction kept", st)
	}
	if st := set("fan", map[string]any{"speed": 1.0, "direction": "forward"}); st.Direction != "forward" || !st.On || dir.Read() != gpio.Low || pwm.Read() != gpio.High {
		t.Fatalf("fan full forward: got %+v, dir %v, pwm %v", st, dir.Read(), pwm.Read())
	}
	info, err := e.c.List(ctx, "sim")
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]hardware.ActuatorState{}
	for _, a := range info.Actuators {
		states[a.Name] = a
	}
	if !states["led"].On || states["led"].Level != 0.5 || !states["relay"].On || states["fan"].Direction != "forward" {
		t.Fatalf("board.list actuators: got %+v", info.Actuators)
	}
}

// TestConcurrentWritesSerialized toggles one relay from many callers at
// once: serialized, the answers alternate on/off exactly, and an even
// number of toggles leaves it where it started.
func TestConcurrentWritesSerialized(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	const n = 40
	var mu sync.Mutex
	on := 0
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			st, err := e.c.SetActuator(ctx, "sim", "relay", "toggle")
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			if st.On {
				on++
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	if on != n/2 {
		t.Fatalf("%d of %d toggles answered on, want exactly %d", on, n, n/2)
	}
	st, err := e.c.Read(ctx, "sim", "relay_pin")
	if err != nil || st.Level != 0 {
		t.Fatalf("relay pin after %d toggles: got %+v %v, want level 0", n, st, err)
	}
}

func TestBoardList(t *testing.T) {
	e := setup(t)
	info, err := e.c.List(ctxT(t), "sim")
	if err != nil {
		t.Fatal(err)
	}
	cfg := hardware.SimBoardConfig()
	if info.Name != "sim" || info.Backend != hardware.BackendSim || len(info.Pins) != len(cfg.Pins) ||
		len(info.Sensors) != len(cfg.Sensors) || len(info.Actuators) != len(cfg.Actuators) {
		t.Fatalf("got %+v, want the sim board's %d pins, %d sensors, %d actuators", info, len(cfg.Pins), len(cfg.Sensors), len(cfg.Actuators))
	}
	for _, p := range info.Pins {
		if p.Name == "led_pin" && p.WiredTo != "led" {
			t.Fatalf("led_pin: got %+v, want wired to led", p)
		}
	}
}

func TestBoardOwnership(t *testing.T) {
	e := setup(t)
	ctx := ctxT(t)
	sim := &simBoards{boards: map[string]*hardware.SimBoard{}}
	svc, err := fenrir.New(testConfig(sim, simConfig()), natstest.Connect(t, e.srv), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	err = svc.Run(ctx)
	if err == nil || !strings.Contains(err.Error(), `board "sim" is already served`) {
		t.Fatalf("second instance for board sim: got %v, want refused", err)
	}
	// Another board on the same bus is fine.
	other := simConfig()
	other.Name = "garage"
	startFenrir(t, e.srv, testConfig(sim, other))
	if _, err := e.c.Write(ctx, "garage", "aux", 1); err != nil {
		t.Fatal(err)
	}
	if st, err := e.c.Read(ctx, "sim", "aux"); err != nil || st.Level != 0 {
		t.Fatalf("sim aux after writing garage aux: got %+v %v, want untouched", st, err)
	}
}

func TestBoardNotServed(t *testing.T) {
	e := setup(t)
	_, err := e.c.Read(ctxT(t), "attic", "1")
	wantCode(t, err, fault.Unavailable)
	if !strings.Contains(err.Error(), `no Fenrir instance serves board "attic"`) {
		t.Fatalf("got %q, want it to name the board", err)
	}
	_, err = e.c.Read(ctxT(t), "no.such", "1")
	wantCode(t, err, fault.InvalidArgument)
}

func TestConfigRefusesNoBoards(t *testing.T) {
	srv := natstest.Start(t)
	_, err := fenrir.New(fenrir.DefaultConfig(), natstest.Connect(t, srv), quietLog())
	if !errors.Is(err, fenrir.ErrConfig) {
		t.Fatalf("got %v, want ErrConfig", err)
	}
}

// noEdgeBoard is a sim board whose lines cannot detect edges, as some
// hosts' GPIO drivers cannot.
type noEdgeBoard struct{ *hardware.SimBoard }

type noEdgePin struct{ gpio.PinIO }

func (p noEdgePin) In(pull gpio.Pull, edge gpio.Edge) error {
	if edge != gpio.NoEdge {
		return errors.New("edge detection not supported")
	}
	return p.PinIO.In(pull, edge)
}

func (b noEdgeBoard) Pin(pc hardware.PinConfig) (gpio.PinIO, error) {
	p, err := b.SimBoard.Pin(pc)
	return noEdgePin{p}, err
}

// TestNoEdgeDetection: a line that cannot detect edges is still a readable
// input; waiting on it says why it cannot, instead of Fenrir refusing to
// start.
func TestNoEdgeDetection(t *testing.T) {
	srv := natstest.Start(t)
	cfg := testConfig(nil, simConfig())
	cfg.OpenBoard = func(bc hardware.BoardConfig) (hardware.Board, error) {
		return noEdgeBoard{hardware.NewSimBoard(bc)}, nil
	}
	startFenrir(t, srv, cfg)
	c := fenrir.NewClient(natstest.Connect(t, srv))
	ctx := ctxT(t)
	if st, err := c.Read(ctx, "sim", "button"); err != nil || st.Level != 1 {
		t.Fatalf("read button: got %+v %v, want level 1", st, err)
	}
	_, err := c.WaitEdge(ctx, "sim", "button", hardware.EdgeFalling, time.Second)
	wantCode(t, err, fault.FailedPrecondition)
	if !strings.Contains(err.Error(), "cannot detect edges on line GPIO23") {
		t.Fatalf("got %q, want it to name the line", err)
	}
}
