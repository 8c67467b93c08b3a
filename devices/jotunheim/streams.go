package jotunheim

import (
	"sync"

	"github.com/loki-iot/loki/devices/streams"
	"github.com/loki-iot/loki/devices/wire"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"github.com/loki-iot/loki/subjects"
)

// WithStreams offers the sources in reg as device streams: the manifest
// lists them (Manifest.streams) and the platform opens them with
// StreamControls (docs/DEVICES.md, "Streams"). reg may change until New
// returns; the agent reads it afterwards. Without it the agent answers
// every OPEN with NOT_FOUND.
func WithStreams(reg *streams.Registry) Option { return func(a *Agent) { a.streams.reg = reg } }

// streamHost is the agent's part of device streams: its topics and the
// transport-independent streams.Host, built on first use (the zero value
// is ready).
type streamHost struct {
	reg *streams.Registry // WithStreams

	once      sync.Once
	ctl, data string
	host      *streams.Host
}

// streamsInit builds the topics and host once.
func (a *Agent) streamsInit() *streamHost {
	h := &a.streams
	h.once.Do(func() {
		var err error
		if h.ctl, err = subjects.DeviceTopic(a.cfg.Device.ID, subjects.DeviceStreamCtl); err != nil {
			panic(err) // the id was validated by Config.Validate
		}
		if h.data, err = subjects.DeviceTopic(a.cfg.Device.ID, subjects.DeviceStreamData); err != nil {
			panic(err)
		}
		// A chunk's message must fit what the platform accepts (and what
		// this device says it handles).
		maxMsg := min(a.cfg.Limits.MaxMessageBytes, wire.MaxMessageBytes)
		h.host = streams.NewHost(h.reg, a.publishStreamChunk,
			streams.HostConfig{MaxChunkBytes: streams.ChunkBytesFor(maxMsg)}, a.log.With("part", "streams"))
	})
	return h
}

// streamCtlTopic is the topic of the platform's StreamControls, which the
// session subscribes to and handle dispatches to handleStreamCtl.
func (a *Agent) streamCtlTopic() string { return a.streamsInit().ctl }

// handleStreamCtl acts on one StreamControl from the platform. A payload
// that does not decode, or names no valid stream, is counted as bad and
// dropped.
func (a *Agent) handleStreamCtl(payload []byte) {
	h := a.streamsInit()
	c, err := wire.DecodeStreamControl(payload, a.cfg.Limits.MaxMessageBytes)
	if err == nil {
		err = h.host.Control(c)
	}
	if err != nil {
		a.bad.Add(1)
		a.log.Warn("bad message from the platform: dropped", logTopic, h.ctl, "bytes", len(payload), logErr, err)
	}
}

// publishStreamChunk sends one chunk (QoS 0: a lost chunk shows as a gap
// in seq, and credit is renewed by the next acknowledgement).
func (a *Agent) publishStreamChunk(c *jv1.StreamChunk) error {
	return a.publish(a.streams.data, 0, false, c)
}

// closeStreams ends every open stream; Run calls it on its way out.
func (a *Agent) closeStreams() { a.streamsInit().host.Close() }

// streamSources is what the manifest says of the stream sources.
func (a *Agent) streamSources() []*jv1.StreamSource {
	var out []*jv1.StreamSource
	for _, i := range a.streams.reg.List() {
		out = append(out, i.Proto())
	}
	return out
}
