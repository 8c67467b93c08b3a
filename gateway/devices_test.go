package gateway_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/gateway"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/subjects"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"
)

// bound is how long the device tests wait for anything that should happen.
const bound = 15 * time.Second

// bareDevice is a Jotunheim device made of nothing but a paho MQTT client
// speaking the wire protocol of docs/DEVICES.md, as firmware in another
// language would: a temperature sensor and an LED.
type bareDevice struct {
	id  string
	c   mqtt.Client
	led atomic.Value // the LED's value, as last set
}

const bareTemperature = 21.5

func (d *bareDevice) topic(t testing.TB, kind string, entity ...string) string {
	t.Helper()
	s, err := subjects.DeviceTopic(d.id, kind, entity...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (d *bareDevice) manifest(reason jv1.Manifest_Reason, requestID string) []byte {
	b, _ := protojson.Marshal(&jv1.Manifest{
		DeviceId: d.id, Name: "Bare " + d.id, Model: "paho", FirmwareVersion: "0.0.1",
		Protocol:  &jv1.ProtocolVersion{Major: 1, Minor: 0},
		Sensors:   []*jv1.Sensor{{Name: "temperature", Kind: "temperature", Unit: "°C", ValueType: "number"}},
		Actuators: []*jv1.Actuator{{Name: "led", Kind: "led", Accepts: []string{"boolean"}}},
		Features:  []string{"commands", "telemetry"},
		Reason:    reason, RequestId: requestID,
	})
	return b
}

// startBareDevice connects device id and waits until the platform accepts
// its manifest. It goes offline (cleanly) at cleanup.
func startBareDevice(t *testing.T, e *env, id string) *bareDevice {
	t.Helper()
	d := &bareDevice{id: id}
	d.led.Store(false)
	negotiated := make(chan *jv1.Negotiation, 4)
	o := mqtt.NewClientOptions().
		AddBroker("tcp://"+e.srv.MQTTAddr()).
		SetClientID(id).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetKeepAlive(30*time.Second).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetOrderMatters(false).
		SetConnectTimeout(bound).
		SetBinaryWill(d.topic(t, subjects.DeviceStatus), []byte(subjects.PresenceOffline), 1, true)
	d.c = mqtt.NewClient(o)
	if err := waitMQTT(d.c.Connect()); err != nil {
		t.Fatalf("device %s: connect: %v", id, err)
	}
	t.Cleanup(func() { d.stop(t) })
	handlers := map[string]mqtt.MessageHandler{
		d.topic(t, subjects.DeviceNegotiation): func(_ mqtt.Client, m mqtt.Message) {
			n := &jv1.Negotiation{}
			if err := protojson.Unmarshal(m.Payload(), n); err == nil {
				negotiated <- n
			}
		},
		d.topic(t, subjects.DeviceCapsGet): func(_ mqtt.Client, m mqtt.Message) {
			req := &jv1.CapsRequest{}
			if protojson.Unmarshal(m.Payload(), req) == nil {
				d.c.Publish(d.topic(t, subjects.DeviceManifest), 1, false, d.manifest(jv1.Manifest_REASON_REQUEST, req.GetId()))
			}
		},
		d.topic(t, subjects.DeviceCmd): func(_ mqtt.Client, m mqtt.Message) {
			cmd := &jv1.Command{}
			if protojson.Unmarshal(m.Payload(), cmd) != nil {
				return
			}
			b, _ := protojson.Marshal(d.run(cmd))
			d.c.Publish(d.topic(t, subjects.DeviceResult), 1, false, b)
		},
		d.topic(t, subjects.DeviceCallResult): func(mqtt.Client, mqtt.Message) {},
	}
	for topic, h := range handlers {
		if err := waitMQTT(d.c.Subscribe(topic, 0, h)); err != nil {
			t.Fatalf("device %s: subscribe %s: %v", id, topic, err)
		}
	}
	if err := waitMQTT(d.c.Publish(d.topic(t, subjects.DeviceStatus), 1, true, subjects.PresenceOnline)); err != nil {
		t.Fatal(err)
	}
	if err := waitMQTT(d.c.Publish(d.topic(t, subjects.DeviceManifest), 1, false, d.manifest(jv1.Manifest_REASON_CONNECT, ""))); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-negotiated:
		if !n.GetAccepted() {
			t.Fatalf("device %s refused: %s", id, n.GetReason())
		}
	case <-time.After(bound):
		t.Fatalf("device %s: no negotiation within %s", id, bound)
	}
	temp, _ := protojson.Marshal(&jv1.State{Entity: "temperature", Value: structpb.NewNumberValue(bareTemperature), Unit: "°C"})
	d.c.Publish(d.topic(t, subjects.DeviceState, "temperature"), 0, true, temp)
	return d
}

// run answers a command as the design's entity commands do.
func (d *bareDevice) run(cmd *jv1.Command) *jv1.CommandResult {
	res := &jv1.CommandResult{Id: cmd.GetId(), Ok: true}
	switch {
	case cmd.GetName() == "ping":
		res.Data = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"uptime": structpb.NewNumberValue(1)}})
	case cmd.GetName() == "read" && cmd.GetEntity() == "temperature":
		res.Data = structpb.NewNumberValue(bareTemperature)
	case cmd.GetName() == "set" && cmd.GetEntity() == "led":
		v, ok := cmd.GetArgs().GetFields()["value"].GetKind().(*structpb.Value_BoolValue)
		if !ok {
			return &jv1.CommandResult{Id: cmd.GetId(), Code: "INVALID_ARGUMENT", Message: "led: value must be a boolean"}
		}
		d.led.Store(v.BoolValue)
		res.Data = structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"value": structpb.NewBoolValue(v.BoolValue)}})
	default:
		return &jv1.CommandResult{Id: cmd.GetId(), Code: "NOT_FOUND", Message: "no command " + cmd.GetName() + " for entity " + cmd.GetEntity()}
	}
	return res
}

// stop publishes offline and disconnects, as a device's clean stop does;
// safe to repeat.
func (d *bareDevice) stop(t testing.TB) {
	if !d.c.IsConnected() {
		return
	}
	if err := waitMQTT(d.c.Publish(d.topic(t, subjects.DeviceStatus), 1, true, subjects.PresenceOffline)); err != nil {
		t.Errorf("device %s: publish offline: %v", d.id, err)
	}
	d.c.Disconnect(250)
}

func waitMQTT(tok mqtt.Token) error {
	if !tok.WaitTimeout(bound) {
		return errors.New("MQTT: no answer from the server")
	}
	return tok.Error()
}

// watchDevices opens WatchDevices and waits until it is live.
func watchDevices(t *testing.T, dc lokiv1.DevicesClient, req *lokiv1.WatchDevicesRequest) grpc.ServerStreamingClient[jv1.DeviceEvent] {
	t.Helper()
	ctx, cancel := context.WithCancel(ctxT(t))
	t.Cleanup(cancel)
	w, err := dc.WatchDevices(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	md, err := w.Header()
	if err != nil {
		t.Fatal(err)
	}
	if got := md.Get(gateway.WatchLiveHeader); len(got) == 0 {
		t.Fatalf("got headers %v, want %s", md, gateway.WatchLiveHeader)
	}
	return w
}

// awaitEvent reads w until an event of kind arrives and returns it.
func awaitEvent(t *testing.T, w grpc.ServerStreamingClient[jv1.DeviceEvent], kind string) *jv1.DeviceEvent {
	t.Helper()
	for {
		ev, err := w.Recv()
		if err != nil {
			t.Fatalf("waiting for a %s event: %v", kind, err)
		}
		if ev.GetKind() == kind {
			return ev
		}
	}
}

func TestDevicesThroughTheGateway(t *testing.T) {
	e := startDevices(t, gateway.Config{})
	c := e.dial(t)
	dc := lokiv1.NewDevicesClient(c.Conn())
	w := watchDevices(t, dc, &lokiv1.WatchDevicesRequest{Device: "demo"})
	onlyOffline := watchDevices(t, dc, &lokiv1.WatchDevicesRequest{Kind: "offline"})

	dev := startBareDevice(t, e, "demo")
	if ev := awaitEvent(t, w, "online"); ev.GetDevice() != "demo" {
		t.Errorf("online event of %q, want demo", ev.GetDevice())
	}

	t.Run("ListDevices", func(t *testing.T) {
		resp, err := dc.ListDevices(ctxT(t), &lokiv1.ListDevicesRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.GetDevices()) != 1 {
			t.Fatalf("got %d devices, want 1: %v", len(resp.GetDevices()), resp.GetDevices())
		}
		d := resp.GetDevices()[0]
		if d.GetId() != "demo" || !d.GetOnline() || d.GetManifest().GetName() != "Bare demo" {
			t.Errorf("got id %q online %v name %q, want demo, online, \"Bare demo\"", d.GetId(), d.GetOnline(), d.GetManifest().GetName())
		}
	})

	t.Run("GetDevice", func(t *testing.T) {
		want := []string{"demo_led", "demo_temperature"}
		var got []string
		// The tools are registered as the manifest is accepted; the
		// record may be written just before.
		if err := eventually(bound, func() error {
			resp, err := dc.GetDevice(ctxT(t), &lokiv1.GetDeviceRequest{Id: "demo"})
			if err != nil {
				return err
			}
			got = slices.Sorted(slices.Values(resp.GetDevice().GetTools()))
			if !slices.Equal(got, want) {
				return errors.New("tools not there yet")
			}
			return nil
		}); err != nil {
			t.Fatalf("got tools %v, want %v: %v", got, want, err)
		}
	})

	t.Run("CommandDevice", func(t *testing.T) {
		resp, err := dc.CommandDevice(ctxT(t), &jv1.CommandRequest{Device: "demo", Command: &jv1.Command{Name: "read", Entity: "temperature"}})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetData().GetNumberValue(); got != bareTemperature {
			t.Errorf("read temperature: got %v, want %v", resp.GetData(), bareTemperature)
		}
		args, _ := structpb.NewStruct(map[string]any{"value": true})
		resp, err = dc.CommandDevice(ctxT(t), &jv1.CommandRequest{Device: "demo", Command: &jv1.Command{Name: "set", Entity: "led", Args: args, Priority: 5}})
		if err != nil {
			t.Fatal(err)
		}
		if got := resp.GetData().GetStructValue().GetFields()["value"].GetBoolValue(); !got {
			t.Errorf("set led: got data %v, want {value: true}", resp.GetData())
		}
		if got := dev.led.Load(); got != true {
			t.Errorf("the device's LED is %v, want true", got)
		}
	})

	t.Run("CommandDevice errors", func(t *testing.T) {
		tests := []struct {
			name    string
			req     *jv1.CommandRequest
			want    codes.Code
			wantMsg string
		}{
			{name: "unknown device", req: &jv1.CommandRequest{Device: "ghost", Command: &jv1.Command{Name: "ping"}}, want: codes.NotFound, wantMsg: "ghost"},
			{name: "invalid device id", req: &jv1.CommandRequest{Device: "no/such", Command: &jv1.Command{Name: "ping"}}, want: codes.InvalidArgument, wantMsg: "device"},
			{name: "no command name", req: &jv1.CommandRequest{Device: "demo", Command: &jv1.Command{}}, want: codes.InvalidArgument, wantMsg: "command.name"},
			{name: "the device's own error keeps its code", req: &jv1.CommandRequest{Device: "demo", Command: &jv1.Command{Name: "read", Entity: "nosuch"}}, want: codes.NotFound, wantMsg: "nosuch"},
			{name: "a bad value is the device's INVALID_ARGUMENT", req: &jv1.CommandRequest{Device: "demo", Command: &jv1.Command{Name: "set", Entity: "led"}}, want: codes.InvalidArgument, wantMsg: "boolean"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				_, err := dc.CommandDevice(ctxT(t), tc.req)
				checkCode(t, err, tc.want)
				if msg := status.Convert(err).Message(); !strings.Contains(msg, tc.wantMsg) {
					t.Errorf("got message %q, want it to contain %q", msg, tc.wantMsg)
				}
			})
		}
	})

	t.Run("GetDevice errors", func(t *testing.T) {
		_, err := dc.GetDevice(ctxT(t), &lokiv1.GetDeviceRequest{Id: "ghost"})
		checkCode(t, err, codes.NotFound)
		_, err = dc.GetDevice(ctxT(t), &lokiv1.GetDeviceRequest{Id: ""})
		checkCode(t, err, codes.InvalidArgument)
	})

	t.Run("sensor tool through the gateway", func(t *testing.T) {
		// The device's sensor is a Loki tool: ExecuteScript and the per-tool
		// RPC reach it through Loki, the device service and MQTT.
		if err := eventually(bound, func() error {
			got, _, err := c.Execute(ctxT(t), "demo_temperature", nil)
			if err == nil && got != bareTemperature {
				t.Fatalf("got %v, want %v", got, bareTemperature)
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("WatchDevices bad filter", func(t *testing.T) {
		for _, req := range []*lokiv1.WatchDevicesRequest{{Kind: "bogus"}, {Device: "a.b"}} {
			s, err := dc.WatchDevices(ctxT(t), req)
			if err == nil {
				_, err = s.Recv()
			}
			checkCode(t, err, codes.InvalidArgument)
		}
	})

	dev.stop(t)
	if ev := awaitEvent(t, w, "offline"); ev.GetDevice() != "demo" {
		t.Errorf("offline event of %q, want demo", ev.GetDevice())
	}
	if ev := awaitEvent(t, onlyOffline, "offline"); ev.GetDevice() != "demo" {
		t.Errorf("offline event of %q, want demo", ev.GetDevice())
	}
	_, err := dc.CommandDevice(ctxT(t), &jv1.CommandRequest{Device: "demo", Command: &jv1.Command{Name: "ping"}})
	checkCode(t, err, codes.Unavailable)
	if msg := status.Convert(err).Message(); !strings.Contains(msg, "demo") {
		t.Errorf("got message %q, want it to name the device", msg)
	}
}

// TestWatchDevicesFilters checks that a watch of one device and kind sees
// only those events.
func TestWatchDevicesFilters(t *testing.T) {
	e := startDevices(t, gateway.Config{})
	dc := lokiv1.NewDevicesClient(e.dial(t).Conn())
	w := watchDevices(t, dc, &lokiv1.WatchDevicesRequest{Device: "two", Kind: "online"})
	startBareDevice(t, e, "one")
	startBareDevice(t, e, "two")
	ev, err := w.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if ev.GetDevice() != "two" || ev.GetKind() != "online" {
		t.Errorf("got %s event of %q, want the online event of two", ev.GetKind(), ev.GetDevice())
	}
}

// deviceCallPassed is nil for an error that shows the call passed the
// gateway's token check and reached the device service: NOT_FOUND for a
// device no test connected.
func deviceCallPassed(err error) error {
	if status.Code(err) == codes.NotFound {
		return nil
	}
	return err
}

// deviceRoleRPCs are the loki.v1.Devices calls of TestRoles.
func deviceRoleRPCs() []roleRPC {
	dc := func(c *client.Client) lokiv1.DevicesClient { return lokiv1.NewDevicesClient(c.Conn()) }
	return []roleRPC{
		{name: "ListDevices", call: func(t *testing.T, _ *env, c *client.Client) error {
			_, err := dc(c).ListDevices(ctxT(t), &lokiv1.ListDevicesRequest{})
			return err
		}},
		{name: "GetDevice", call: func(t *testing.T, _ *env, c *client.Client) error {
			_, err := dc(c).GetDevice(ctxT(t), &lokiv1.GetDeviceRequest{Id: "nobody"})
			return deviceCallPassed(err)
		}},
		{name: "GetRolloutStatus", call: func(t *testing.T, _ *env, c *client.Client) error {
			_, err := dc(c).GetRolloutStatus(ctxT(t), &lokiv1.GetRolloutStatusRequest{RolloutId: "nobody"})
			return deviceCallPassed(err)
		}},
		{name: "CommandDevice", call: func(t *testing.T, _ *env, c *client.Client) error {
			_, err := dc(c).CommandDevice(ctxT(t), &jv1.CommandRequest{Device: "nobody", Command: &jv1.Command{Name: "ping"}})
			return deviceCallPassed(err)
		}},
		{name: "OpenStream", call: func(t *testing.T, _ *env, c *client.Client) error {
			// A source name no device can have: INVALID_ARGUMENT shows the
			// call passed the token check (gateway/streams_test.go reads real streams).
			s, err := dc(c).OpenStream(ctxT(t), &lokiv1.OpenStreamRequest{DeviceId: "nobody", Source: "No Source"})
			if err == nil {
				_, err = s.Recv()
			}
			if status.Code(err) == codes.InvalidArgument {
				return nil
			}
			return err
		}},
		{name: "WatchDevices", call: func(t *testing.T, _ *env, c *client.Client) error {
			ctx, cancel := context.WithCancel(ctxT(t))
			defer cancel()
			s, err := dc(c).WatchDevices(ctx, &lokiv1.WatchDevicesRequest{})
			if err != nil {
				return err
			}
			var md metadata.MD
			if md, err = s.Header(); err != nil {
				return err
			}
			if len(md.Get(gateway.WatchLiveHeader)) == 0 {
				// No header: the stream ended with a status.
				_, err = s.Recv()
				return err
			}
			return nil
		}},
	}
}
