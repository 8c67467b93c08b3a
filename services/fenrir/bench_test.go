package fenrir_test

import (
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/nats-io/nats.go"
)

// BenchmarkNATSEcho is the baseline: a raw NATS request/reply echo on the
// same server as the Fenrir benchmarks below.
func BenchmarkNATSEcho(b *testing.B) {
	e := setup(b)
	sub, err := e.nc.Subscribe("bench.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	nc := natstest.Connect(b, e.srv)
	if err := e.nc.Flush(); err != nil {
		b.Fatal(err)
	}
	body := []byte(`{"pin":"aux","level":1}`)
	for b.Loop() {
		if _, err := nc.Request("bench.echo", body, 10*time.Second); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGPIOWrite is one gpio.write through Fenrir (client → NATS →
// Fenrir → periph's fake pin and back).
func BenchmarkGPIOWrite(b *testing.B) {
	e := setup(b)
	ctx := ctxT(b)
	level := 0
	for b.Loop() {
		level ^= 1
		if _, err := e.c.Write(ctx, "sim", "aux", level); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScriptGPIOWrite is the same write from a script: caller → Loki
// → fenrir module → Fenrir.
func BenchmarkScriptGPIOWrite(b *testing.B) {
	e := setupLoki(b, lokitest.Parse(b, `
[[tools]]
name = "toggle_aux"
returns = "integer"
grants = ["fenrir.gpio:sim/aux"]
script = "return fenrir.gpio.write('sim', 'aux', level).level"
  [[tools.params]]
  name = "level"
  type = "integer"
`))
	args := [][]byte{[]byte(`{"level":0}`), []byte(`{"level":1}`)}
	ctx := ctxT(b)
	i := 0
	for b.Loop() {
		i ^= 1
		if _, err := e.loki.Call(ctx, "toggle_aux", args[i]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSensorRead is one BME280 temperature reading on the sim board:
// the bmxx80 driver's forced-mode measurement, which waits out the chip's
// measurement time (about 8 ms at 1x oversampling) as on real hardware.
func BenchmarkSensorRead(b *testing.B) {
	e := setup(b)
	ctx := ctxT(b)
	for b.Loop() {
		if _, err := e.c.ReadSensor(ctx, "sim", "temperature"); err != nil {
			b.Fatal(err)
		}
	}
}
