package natsrv_test

import (
	"context"
	"net"
	"strings"
	"testing"

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
