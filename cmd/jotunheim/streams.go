package main

import (
	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/streams"
)

// simStreamOptions offers the sim board's synthetic stream sources: "sine",
// a 440 Hz tone as 16 kHz 16-bit PCM paced in real time (policy drop), and
// "pattern", an unpaced endless test pattern for throughput (policy
// block). A real board offers none unless its own code registers some.
func simStreamOptions(sim bool) []jotunheim.Option {
	if !sim {
		return nil
	}
	reg := streams.NewRegistry()
	sine, err := streams.NewSine("sine", 16000, 440)
	if err == nil {
		err = reg.Register(sine)
	}
	var pattern *streams.Pattern
	if err == nil {
		pattern, err = streams.NewPattern("pattern", 0, 0)
	}
	if err == nil {
		err = reg.Register(pattern)
	}
	if err != nil {
		panic(err) // constants: a failure is a bug
	}
	return []jotunheim.Option{jotunheim.WithStreams(reg)}
}
