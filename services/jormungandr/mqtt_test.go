package jormungandr_test

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/jormungandr"
)

// mqttSetup is a replica allowed to reach the NATS server's MQTT listener.
func mqttSetup(t testing.TB) (*env, string) {
	t.Helper()
	srv := startNATS(t)
	cfg := testConfig()
	if err := cfg.Policy.AllowAddr(srv.MQTTAddr()); err != nil {
		t.Fatal(err)
	}
	runService(t, srv, cfg)
	e := &env{srv: srv, c: jormungandr.NewClient(natstest.Connect(t, srv))}
	return e, "tcp://" + srv.MQTTAddr()
}

func TestMQTT(t *testing.T) {
	e, broker := mqttSetup(t)
	ctx := ctxT(t)
	sub, err := e.c.ConnectMQTT(ctx, jormungandr.MQTTConnectRequest{Broker: broker, ClientID: "sub-1"})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := e.c.ConnectMQTT(ctx, jormungandr.MQTTConnectRequest{Broker: broker})
	if err != nil {
		t.Fatal(err)
	}
	if err := e.c.Subscribe(ctx, sub, "sensors/+/temp", 0); err != nil {
		t.Fatal(err)
	}
	for qos := range 2 {
		payload := "21." + strconv.Itoa(qos)
		if err := e.c.Publish(ctx, pub, "sensors/kitchen/temp", []byte(payload), qos, false); err != nil {
			t.Fatalf("publish qos %d: %v", qos, err)
		}
		m, err := e.c.Receive(ctx, sub, 20*time.Second)
		if err != nil || m == nil || m.Topic != "sensors/kitchen/temp" || string(m.Data) != payload {
			t.Fatalf("qos %d: got %+v, %v, want %q on sensors/kitchen/temp", qos, m, err, payload)
		}
	}
	t.Run("retained", func(t *testing.T) {
		if err := e.c.Publish(ctx, pub, "status/dev1", []byte("online"), 1, true); err != nil {
			t.Fatal(err)
		}
		// The server stores a retained message after it acknowledges it, so
		// a subscriber right behind it may come too early: try again.
		var m *jormungandr.Message
		for range 20 {
			late, err := e.c.ConnectMQTT(ctx, jormungandr.MQTTConnectRequest{Broker: broker})
			if err != nil {
				t.Fatal(err)
			}
			if err := e.c.Subscribe(ctx, late, "status/dev1", 1); err != nil {
				t.Fatal(err)
			}
			m, err = e.c.Receive(ctx, late, time.Second)
			_ = e.c.Close(ctx, late)
			if err != nil {
				t.Fatal(err)
			}
			if m != nil {
				break
			}
		}
		if m == nil || string(m.Data) != "online" {
			t.Fatalf("got %+v, want the retained \"online\"", m)
		}
	})
	t.Run("receive times out with nothing", func(t *testing.T) {
		m, err := e.c.Receive(ctx, sub, 10*time.Millisecond)
		if err != nil || m != nil {
			t.Fatalf("got %+v, %v, want no message and no error", m, err)
		}
	})
	t.Run("bad topics", func(t *testing.T) {
		wantCode(t, e.c.Publish(ctx, pub, "a/+/b", nil, 0, false), fault.InvalidArgument)
		wantCode(t, e.c.Publish(ctx, pub, "a b", nil, 0, false), fault.InvalidArgument)
		wantCode(t, e.c.Subscribe(ctx, sub, "a/#/b", 0), fault.InvalidArgument)
		wantCode(t, e.c.Publish(ctx, pub, "a/b", nil, 2, false), fault.InvalidArgument)
	})
	t.Run("wrong operation", func(t *testing.T) {
		wantCode(t, e.c.Send(ctx, pub, []byte("x"), false), fault.InvalidArgument)
	})
	for _, h := range []jormungandr.Handle{sub, pub} {
		if err := e.c.Close(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	wantCode(t, e.c.Publish(ctx, pub, "a/b", nil, 0, false), fault.NotFound)
}

func TestMQTTPolicy(t *testing.T) {
	e, broker := mqttSetup(t)
	ctx := ctxT(t)
	port := strconv.Itoa(portOf(t, broker))
	for _, b := range []string{
		"tcp://localhost:" + port,
		"tcp://2130706433:" + port,
		"tcp://[::ffff:127.0.0.1]:" + port,
		"tcp://127.0.0.1:1",
		"tcp://169.254.169.254",
	} {
		_, err := e.c.ConnectMQTT(ctx, jormungandr.MQTTConnectRequest{Broker: b})
		if fault.CodeOf(err) != fault.PermissionDenied {
			t.Errorf("%s: got %v, want PERMISSION_DENIED", b, err)
		}
	}
	_, err := e.c.ConnectMQTT(ctx, jormungandr.MQTTConnectRequest{Broker: "http://127.0.0.1:" + port})
	wantCode(t, err, fault.InvalidArgument)
}

// TestMQTTLocalWithoutListener checks broker "local" names what is missing
// when Jörmungandr runs without Loki's own MQTT listener.
func TestMQTTLocalWithoutListener(t *testing.T) {
	e, _ := mqttSetup(t)
	_, err := e.c.ConnectMQTT(ctxT(t), jormungandr.MQTTConnectRequest{Broker: jormungandr.LocalBroker, Topics: []string{"readings/#"}})
	if got := fault.CodeOf(err); got != fault.FailedPrecondition {
		t.Fatalf("got %v (%v), want %s", got, err, fault.FailedPrecondition)
	}
	if !strings.Contains(err.Error(), "Loki's own MQTT listener") {
		t.Fatalf("got %v, want it to say what \"local\" is", err)
	}
}
