package hardware_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/loki-iot/loki/hardware"
)

const goodBoard = `
[[boards]]
name = "pi"
backend = "periph"
  [[boards.pins]]
  name = "led_pin"
  number = 17
  mode = "out"
  [[boards.pins]]
  name = "pir"
  number = 22
  [[boards.actuators]]
  name = "led"
  kind = "led"
  pin = "led_pin"
  [[boards.sensors]]
  name = "temp"
  kind = "temperature"
  driver = "bme280"
  [[boards.sensors]]
  name = "motion"
  kind = "motion"
  driver = "pir"
  pin = "pir"
`

func TestParseBoards(t *testing.T) {
	bs, err := hardware.ParseBoards("boards.toml", []byte(goodBoard))
	if err != nil {
		t.Fatal(err)
	}
	b := bs[0]
	// Defaults are filled in.
	if b.Pins[0].Line != "GPIO17" || b.Pins[1].Mode != hardware.ModeIn || b.Pins[1].Pull != hardware.PullNone ||
		b.Sensors[0].Addr != 0x76 || b.Actuators[0].PWMHz != 1000 {
		t.Fatalf("defaults: got %+v", b)
	}
	if err := hardware.SimBoardConfig().Validate(); err != nil {
		t.Fatalf("built-in sim board: %v", err)
	}
}

func TestParseBoardsRefuses(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"syntax", `[[boards]` + "\n", "boards.toml"},
		{"unknown key", strings.Replace(goodBoard, `backend = "periph"`, "backend = \"periph\"\ncolour = \"red\"", 1), `boards.toml:5: unknown key "boards.colour"`},
		{"no boards", ``, "no [[boards]]"},
		{"bad board name", strings.Replace(goodBoard, `name = "pi"`, `name = "p.i"`, 1), `board "p.i": name must be`},
		{"no backend", strings.Replace(goodBoard, `backend = "periph"`, ``, 1), "backend is required"},
		{"bad backend", strings.Replace(goodBoard, `backend = "periph"`, `backend = "arduino"`, 1), `backend "arduino"`},
		{"duplicate board", goodBoard + goodBoard, `board "pi": defined twice`},
		{"duplicate pin number", strings.Replace(goodBoard, `number = 22`, `number = 17`, 1), "number 17 already used"},
		{"numeric name", strings.Replace(goodBoard, `name = "pir"`, `name = "22"`, 1), "must not be a number"},
		{"name used twice", strings.Replace(goodBoard, `name = "temp"`, `name = "led"`, 1), `actuator "led": name already used by a sensor`},
		{"bad mode", strings.Replace(goodBoard, `mode = "out"`, `mode = "both"`, 1), `mode "both"`},
		{"bad pull", strings.Replace(goodBoard, "number = 22\n", "number = 22\n  pull = \"sideways\"\n", 1), `pull "sideways"`},
		{"actuator on input", strings.Replace(goodBoard, `pin = "led_pin"`, `pin = "pir"`, 1), `pin "pir" must have mode "out"`},
		{"dangling pin", strings.Replace(goodBoard, `pin = "led_pin"`, `pin = "nowhere"`, 1), `pin "nowhere" is not a pin of the board`},
		{"bad sensor kind", strings.Replace(goodBoard, `kind = "temperature"`, `kind = "co2"`, 1), `kind "co2"`},
		{"bad driver", strings.Replace(goodBoard, `driver = "bme280"`, `driver = "dht22"`, 1), `driver "dht22"`},
		{"bad i2c address", strings.Replace(goodBoard, `driver = "bme280"`, "driver = \"bme280\"\n  i2c_addr = 0x40", 1), "i2c_addr 0x40"},
		{"humidity on bmp280", strings.Replace(strings.Replace(goodBoard, `kind = "temperature"`, `kind = "humidity"`, 1), `driver = "bme280"`, `driver = "bmp280"`, 1), "no humidity sensor"},
		{"motor without dir pin", strings.Replace(goodBoard, `kind = "led"`, `kind = "motor"`, 1), "needs dir_pin"},
		{"bad pwm", strings.Replace(goodBoard, `kind = "led"`, "kind = \"led\"\n  pwm_hz = -5", 1), "pwm_hz -5"},
		{"negative motion period", strings.Replace(goodBoard, `backend = "periph"`, "backend = \"sim\"\nsim_motion_every = \"-1s\"", 1), "sim_motion_every"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := hardware.ParseBoards("boards.toml", []byte(tc.src))
			if !errors.Is(err, hardware.ErrConfig) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrConfig mentioning %q", err, tc.want)
			}
		})
	}
}

func TestLoadBoards(t *testing.T) {
	path := filepath.Join(t.TempDir(), "boards.toml")
	if err := os.WriteFile(path, []byte(goodBoard), 0o600); err != nil {
		t.Fatal(err)
	}
	if bs, err := hardware.LoadBoards(path); err != nil || len(bs) != 1 || bs[0].Name != "pi" {
		t.Fatalf("got %+v %v", bs, err)
	}
	if _, err := hardware.LoadBoards(path + ".missing"); !errors.Is(err, hardware.ErrConfig) {
		t.Fatalf("missing file: got %v, want ErrConfig", err)
	}
}
