package natsrv_test

import (
	"context"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestStartRefusesBusyPort(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	_, err = natsrv.Start(natsrv.Config{DataDir: t.TempDir(), Port: port}, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot listen") {
		t.Fatalf("got %v, want a 'cannot listen' error", err)
	}
	// A busy MQTT port is said at once too, not after the ready timeout.
	_, err = natsrv.Start(natsrv.Config{DataDir: t.TempDir(), Port: -1, MQTTPort: port}, nil)
	if err == nil || !strings.Contains(err.Error(), "cannot listen for MQTT") {
		t.Fatalf("busy MQTT port: got %v, want a 'cannot listen for MQTT' error", err)
	}
}

func TestStartServesJetStreamAndMQTT(t *testing.T) {
	s, err := natsrv.Start(natsrv.Config{DataDir: t.TempDir(), Port: -1, MQTTPort: -1}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Shutdown()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AccountInfo(context.Background()); err != nil {
		t.Fatalf("JetStream not answering: %v", err)
	}
	c, err := net.Dial("tcp", s.MQTTAddr())
	if err != nil {
		t.Fatalf("MQTT listener at %q: %v", s.MQTTAddr(), err)
	}
	c.Close()
}

// TestReconnectDelayFullJitter: waits are random up to a ceiling that
// doubles per attempt and stops at the cap.
func TestReconnectDelayFullJitter(t *testing.T) {
	for _, tc := range []struct {
		attempts int
		ceil     time.Duration
	}{{1, 200 * time.Millisecond}, {3, 800 * time.Millisecond}, {10, 5 * time.Second}, {1000, 5 * time.Second}} {
		distinct := map[time.Duration]bool{}
		for range 50 {
			d := natsrv.ReconnectDelay(tc.attempts)
			if d <= 0 || d > tc.ceil {
				t.Fatalf("attempt %d: got %s, want in (0, %s]", tc.attempts, d, tc.ceil)
			}
			distinct[d] = true
		}
		if len(distinct) < 10 {
			t.Errorf("attempt %d: %d distinct waits in 50, want jitter", tc.attempts, len(distinct))
		}
	}
}

// TestDialKeepsTryingUntilServerUp: a component started before its server
// connects once the server is there, instead of failing.
func TestDialKeepsTryingUntilServerUp(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	dir := t.TempDir()
	go func() {
		time.Sleep(300 * time.Millisecond)
		s, err := natsrv.Start(natsrv.Config{DataDir: dir, Port: port}, nil)
		if err != nil {
			t.Error(err)
			return
		}
		t.Cleanup(s.Shutdown)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	nc, err := natsrv.Dial(ctx, "nats://127.0.0.1:1,nats://127.0.0.1:"+strconv.Itoa(port), "late", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if !nc.IsConnected() {
		t.Fatal("Dial returned a connection that is not connected")
	}
}
