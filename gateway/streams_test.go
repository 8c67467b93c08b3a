package gateway_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/devices/streams"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/internal/streamtest"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
)

func pattern(tb testing.TB, name string, size int64) *streams.Pattern {
	tb.Helper()
	p, err := streams.NewPattern(name, size, 0)
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// TestOpenStream: a controller with a client token reads a device stream
// over real gRPC: in order, to max_bytes, then the last chunk; its errors
// are the device's codes; hanging up closes the stream on the device.
func TestOpenStream(t *testing.T) {
	e := start(t, gateway.Config{Tokens: []string{"s3cret"}})
	host := streamtest.Serve(t, natstest.Connect(t, e.srv), "dev1",
		streamtest.Registry(t, pattern(t, "pattern", 0)), streams.HostConfig{})
	dc := lokiv1.NewDevicesClient(e.dial(t, client.WithToken("s3cret")).Conn())

	t.Run("max bytes", func(t *testing.T) {
		const want = 300_001
		st, err := dc.OpenStream(ctxT(t), &lokiv1.OpenStreamRequest{DeviceId: "dev1", Source: "pattern", MaxBytes: want})
		if err != nil {
			t.Fatal(err)
		}
		var n int64
		var seq uint64
		for {
			c, err := st.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("after %d bytes: %v", n, err)
			}
			if c.GetSeq() != seq+1 {
				t.Fatalf("chunk %d after %d", c.GetSeq(), seq)
			}
			seq = c.GetSeq()
			for i, b := range c.GetData() {
				if b != streams.PatternByte(n+int64(i)) {
					t.Fatalf("byte %d: got %d, want %d", n+int64(i), b, streams.PatternByte(n+int64(i)))
				}
			}
			n += int64(len(c.GetData()))
			if c.GetEof() && n != want {
				t.Fatalf("eof after %d of %d bytes", n, want)
			}
			time.Sleep(time.Millisecond / 2) // a slow consumer is no error
		}
		if n != want {
			t.Fatalf("got %d bytes, want %d", n, want)
		}
	})

	t.Run("caller hangs up", func(t *testing.T) {
		ctx, cancel := context.WithCancel(ctxT(t))
		st, err := dc.OpenStream(ctx, &lokiv1.OpenStreamRequest{DeviceId: "dev1", Source: "pattern"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		cancel()
		if err := eventually(10*time.Second, func() error {
			if n := host.Open(); n != 0 {
				return fmt.Errorf("%d streams open", n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})

	for _, tc := range []struct {
		name           string
		device, source string
		want           codes.Code
	}{
		{name: "unknown source", device: "dev1", source: "camera", want: codes.NotFound},
		{name: "bad device id", device: "a.b", source: "pattern", want: codes.InvalidArgument},
		{name: "bad source", device: "dev1", source: "a b", want: codes.InvalidArgument},
		{name: "no such device", device: "ghost", source: "pattern", want: codes.Unavailable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := dc.OpenStream(ctxT(t), &lokiv1.OpenStreamRequest{DeviceId: tc.device, Source: tc.source})
			if err == nil {
				_, err = st.Recv()
			}
			checkCode(t, err, tc.want)
		})
	}

	t.Run("gateway stops", func(t *testing.T) {
		st, err := dc.OpenStream(ctxT(t), &lokiv1.OpenStreamRequest{DeviceId: "dev1", Source: "pattern"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.Recv(); err != nil {
			t.Fatal(err)
		}
		e.stop(t)
		for err == nil {
			_, err = st.Recv()
		}
		checkCode(t, err, codes.Unavailable)
		if err := eventually(10*time.Second, func() error {
			if n := host.Open(); n != 0 {
				return fmt.Errorf("%d streams open", n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	})
}

// BenchmarkOpenStream measures stream throughput from the unpaced pattern
// source, served by the device's own stream engine on NATS, to a consumer
// that reads directly from NATS (nats) or through the gateway over gRPC on
// loopback (grpc), with the default credit window of 8 chunks of 48 KiB
// (and, over NATS, a window of 32).
// peak-heap-MiB is the largest growth of the process's heap (device,
// server, gateway and consumer together) while streaming, sampled every
// millisecond; cpu-ms/MiB is the process's CPU time per MiB streamed.
//
//	go test ./gateway -run '^$' -bench OpenStream -benchtime 5x -count 3
func BenchmarkOpenStream(b *testing.B) {
	const size = 64 << 20
	e := start(b, gateway.Config{})
	streamtest.Serve(b, natstest.Connect(b, e.srv), "dev1",
		streamtest.Registry(b, pattern(b, "pattern", 0)), streams.HostConfig{})
	natsReader := func(window uint32) func(ctx context.Context) (int64, error) {
		return func(ctx context.Context) (int64, error) {
			r, err := jotunheim.OpenStream(ctx, e.nc, "dev1", "pattern", size, jotunheim.StreamOptions{Window: window})
			if err != nil {
				return 0, err
			}
			defer r.Close()
			var n int64
			for {
				c, err := r.Next(ctx)
				if errors.Is(err, io.EOF) {
					return n, nil
				}
				if err != nil {
					return n, err
				}
				n += int64(len(c.GetData()))
			}
		}
	}
	readers := map[string]func(ctx context.Context) (int64, error){
		"nats": natsReader(0), "nats-window-32": natsReader(32),
	}
	dc := lokiv1.NewDevicesClient(e.dial(b).Conn())
	readers["grpc"] = func(ctx context.Context) (int64, error) {
		st, err := dc.OpenStream(ctx, &lokiv1.OpenStreamRequest{DeviceId: "dev1", Source: "pattern", MaxBytes: size})
		if err != nil {
			return 0, err
		}
		var n int64
		for {
			c, err := st.Recv()
			if errors.Is(err, io.EOF) {
				return n, nil
			}
			if err != nil {
				return n, err
			}
			n += int64(len(c.GetData()))
		}
	}
	for _, name := range []string{"nats", "nats-window-32", "grpc"} {
		read := readers[name]
		b.Run(name, func(b *testing.B) {
			b.SetBytes(size)
			runtime.GC()
			base := heapBytes()
			var peak atomic.Uint64
			stop := make(chan struct{})
			var wg sync.WaitGroup
			wg.Go(func() {
				t := time.NewTicker(time.Millisecond)
				defer t.Stop()
				for {
					select {
					case <-stop:
						return
					case <-t.C:
						if h := heapBytes(); h > base && h-base > peak.Load() {
							peak.Store(h - base)
						}
					}
				}
			})
			cpu := cpuTime()
			b.ResetTimer()
			for b.Loop() {
				n, err := read(context.Background())
				if err != nil || n != size {
					b.Fatalf("read %d of %d bytes: %v", n, size, err)
				}
			}
			b.StopTimer()
			cpu = cpuTime() - cpu
			close(stop)
			wg.Wait()
			b.ReportMetric(float64(peak.Load())/(1<<20), "peak-heap-MiB")
			// CPU per MiB, of the whole process (device, server, gateway,
			// consumer): what a shared machine's load does not change much.
			b.ReportMetric(cpu.Seconds()*1000/float64(b.N)/float64(size>>20), "cpu-ms/MiB")
		})
	}
}

// heapBytes is the heap's objects, live or not yet collected, read without
// stopping the world (runtime.ReadMemStats would, every sample).
func heapBytes() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestOpenStreamSlowClient: a gRPC client that stops reading stops the
// device: the gateway takes (and credits) chunks only as fast as gRPC
// sends them on, so what the device sends stays within the reader's
// window plus what the HTTP/2 window holds.
func TestOpenStreamSlowClient(t *testing.T) {
	e := start(t, gateway.Config{})
	host := streamtest.Serve(t, natstest.Connect(t, e.srv), "dev1",
		streamtest.Registry(t, pattern(t, "pattern", 0)), streams.HostConfig{})
	var sent atomic.Int64
	data, _ := subjects.DeviceSubject("dev1", subjects.DeviceStreamData)
	sub, err := e.nc.Subscribe(data, func(*nats.Msg) { sent.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := e.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	// A fixed 64 KiB HTTP/2 window (no BDP growth): about one chunk.
	conn, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	st, err := lokiv1.NewDevicesClient(conn).OpenStream(ctxT(t), &lokiv1.OpenStreamRequest{DeviceId: "dev1", Source: "pattern"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Recv(); err != nil {
		t.Fatal(err)
	}
	// The client reads no more. Wait until the device stops sending.
	var last int64 = -1
	if err := eventually(20*time.Second, func() error {
		n := sent.Load()
		if n != last {
			last = n
			time.Sleep(200 * time.Millisecond)
			return errors.New("still sending")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	const bound = jotunheim.DefaultStreamWindow + 8 // the window, and a few in HTTP/2 and gRPC buffers
	if last > bound {
		t.Fatalf("the device sent %d chunks to a client that read 1: want at most %d", last, bound)
	}
	t.Logf("a stalled client held the device at %d chunks", last)
	if host.Open() != 1 {
		t.Fatalf("got %d streams open, want 1 (a slow client is not an error)", host.Open())
	}
}
