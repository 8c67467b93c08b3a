package jotunheim_test

import (
	"context"
	"errors"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/streams"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natsrv"
	svc "github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"

	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
)

// simStreams is what the sim board offers (cmd/jotunheim --sim).
func simStreams(t testing.TB) *streams.Registry {
	t.Helper()
	reg := streams.NewRegistry()
	sine, err := streams.NewSine("sine", 16000, 440)
	if err != nil {
		t.Fatal(err)
	}
	pattern, err := streams.NewPattern("pattern", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []streams.Source{sine, pattern} {
		if err := reg.Register(s); err != nil {
			t.Fatal(err)
		}
	}
	return reg
}

// TestAgentStreams: the agent announces its stream sources and serves
// them over MQTT to the platform's reader: in order, to max_bytes; an
// unknown source is NOT_FOUND.
func TestAgentStreams(t *testing.T) {
	s := startServer(t)
	p := newPlatform(t, s, "cam1")
	from := p.mark()
	r := runAgent(t, testConfig(t, s, "cam1"), jotunheim.WithStreams(simStreams(t)))
	man := p.waitManifest(from, jv1.Manifest_REASON_CONNECT)
	var names []string
	for _, src := range man.GetStreams() {
		names = append(names, src.GetName()+"/"+src.GetPolicy().String())
	}
	if len(names) != 2 || names[0] != "pattern/POLICY_BLOCK" || names[1] != "sine/POLICY_DROP" {
		t.Fatalf("manifest streams: got %v, want pattern (block) and sine (drop)", names)
	}
	if topic, _ := subjects.DeviceTopic("cam1", subjects.DeviceStreamCtl); r.agent.StreamCtlTopic() != topic {
		t.Fatalf("stream control topic: got %q, want %q", r.agent.StreamCtlTopic(), topic)
	}

	for _, tc := range []struct {
		source string
		max    uint64
	}{{"pattern", 300_000}, {"sine", 3200}} {
		t.Run(tc.source, func(t *testing.T) {
			rd, err := svc.OpenStream(ctx(t), p.nc, "cam1", tc.source, tc.max, svc.StreamOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer rd.Close()
			var data []byte
			for {
				c, err := rd.Next(ctx(t))
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatalf("after %d bytes: %v", len(data), err)
				}
				if len(c.GetData()) > streams.ChunkBytesFor(jotunheim.DefaultConfig().Limits.MaxMessageBytes) {
					t.Fatalf("a chunk of %d bytes", len(c.GetData()))
				}
				data = append(data, c.GetData()...)
			}
			if uint64(len(data)) != tc.max {
				t.Fatalf("got %d bytes, want %d", len(data), tc.max)
			}
			if tc.source == "pattern" {
				for i, b := range data {
					if b != streams.PatternByte(int64(i)) {
						t.Fatalf("byte %d: got %d, want %d", i, b, streams.PatternByte(int64(i)))
					}
				}
			}
			if st := rd.Stats(); st.Lost != 0 {
				t.Fatalf("lost %d chunks", st.Lost)
			}
		})
	}
	_, err := svc.OpenStream(ctx(t), p.nc, "cam1", "camera", 0, svc.StreamOptions{})
	if got := fault.CodeOf(err); got != fault.NotFound {
		t.Fatalf("unknown source: got %v, want %s", err, fault.NotFound)
	}

	// An agent that stops ends its streams: the reader hears why.
	rd, err := svc.OpenStream(ctx(t), p.nc, "cam1", "pattern", 0, svc.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	r.agent.CloseStreams()
	for {
		_, err := rd.Next(ctx(t))
		if err == nil {
			continue
		}
		if got := fault.CodeOf(err); got != fault.Unavailable {
			t.Fatalf("after CloseStreams: got %v, want %s", err, fault.Unavailable)
		}
		break
	}
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), waitLimit)
	t.Cleanup(cancel)
	return c
}

// BenchmarkAgentStream measures a stream from the agent's pattern source
// over the real device path: the agent publishes over MQTT into the NATS
// server's listener, the platform's reader takes the chunks from NATS with
// the default credit window (8 chunks of up to 48 KiB).
//
//	go test ./devices/jotunheim -run '^$' -bench AgentStream -benchtime 5x
func BenchmarkAgentStream(b *testing.B) {
	const size = 32 << 20
	srv, err := natsrv.Start(natsrv.Config{Name: "bench", DataDir: b.TempDir(), Port: -1, MQTTPort: -1}, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	// The platform's answer to the manifest.
	man, _ := subjects.DeviceSubject("bench1", subjects.DeviceManifest)
	neg, _ := subjects.DeviceSubject("bench1", subjects.DeviceNegotiation)
	accept, _ := wire.Encode(&jv1.Negotiation{Accepted: true, PlatformProtocol: wire.Version})
	if _, err := nc.Subscribe(man, func(*nats.Msg) { _ = nc.Publish(neg, accept) }); err != nil {
		b.Fatal(err)
	}
	cfg := jotunheim.DefaultConfig()
	cfg.Device.ID, cfg.Device.Model = "bench1", "bench"
	cfg.Transport.Broker = srv.MQTTURL()
	cfg.Board.Sim = true
	cfg.Telemetry.StateFile = filepath.Join(b.TempDir(), "state.json")
	a, err := jotunheim.New(cfg, nil, jotunheim.WithStreams(simStreams(b)))
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(waitLimit); !a.Stats().Online; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatal("the agent did not come online")
		}
	}
	b.SetBytes(size)
	for b.Loop() {
		rd, err := svc.OpenStream(context.Background(), nc, "bench1", "pattern", size, svc.StreamOptions{})
		if err != nil {
			b.Fatal(err)
		}
		var n int64
		for {
			c, err := rd.Next(context.Background())
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				b.Fatalf("after %d bytes: %v", n, err)
			}
			n += int64(len(c.GetData()))
		}
		_ = rd.Close()
		if n != size {
			b.Fatalf("read %d of %d bytes", n, size)
		}
	}
}
