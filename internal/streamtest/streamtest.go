// Package streamtest serves a device's stream sources straight on NATS,
// with the device agent's own stream engine (devices/streams.Host): a
// device for tests and benchmarks of the platform's stream readers that
// needs no MQTT session. What the agent adds on a real device — the MQTT
// transport, the manifest — is tested with the agent.
package streamtest

import (
	"testing"

	"github.com/loki-iot/loki/devices/streams"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"

	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

// Serve answers device id's stream controls on nc with reg's sources until
// the test ends, and returns the host (to count its open streams).
func Serve(tb testing.TB, nc *nats.Conn, id string, reg *streams.Registry, cfg streams.HostConfig) *streams.Host {
	tb.Helper()
	return ServeLossy(tb, nc, id, reg, cfg, nil)
}

// ServeLossy is Serve on a link that loses the chunks lose returns true
// for (nil: none), as QoS 0 may.
func ServeLossy(tb testing.TB, nc *nats.Conn, id string, reg *streams.Registry, cfg streams.HostConfig, lose func(*jv1.StreamChunk) bool) *streams.Host {
	tb.Helper()
	ctl, err := subjects.DeviceSubject(id, subjects.DeviceStreamCtl)
	if err != nil {
		tb.Fatal(err)
	}
	data, err := subjects.DeviceSubject(id, subjects.DeviceStreamData)
	if err != nil {
		tb.Fatal(err)
	}
	if cfg.MaxChunkBytes == 0 {
		cfg.MaxChunkBytes = streams.ChunkBytesFor(wire.MaxMessageBytes)
	}
	h := streams.NewHost(reg, func(c *jv1.StreamChunk) error {
		if lose != nil && lose(c) {
			return nil
		}
		b, err := wire.Encode(c)
		if err != nil {
			return err
		}
		return nc.Publish(data, b)
	}, cfg, nil)
	sub, err := nc.Subscribe(ctl, func(m *nats.Msg) {
		c, err := wire.DecodeStreamControl(m.Data, 0)
		if err == nil {
			err = h.Control(c)
		}
		if err != nil {
			tb.Errorf("device %s: stream control: %v", id, err)
		}
	})
	if err != nil {
		tb.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		_ = sub.Unsubscribe()
		h.Close()
	})
	return h
}

// Registry returns a registry of the given sources, failing the test on
// an error.
func Registry(tb testing.TB, srcs ...streams.Source) *streams.Registry {
	tb.Helper()
	reg := streams.NewRegistry()
	for _, s := range srcs {
		if err := reg.Register(s); err != nil {
			tb.Fatal(err)
		}
	}
	return reg
}
