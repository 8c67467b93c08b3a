package wire_test

import (
	"testing"

	"github.com/loki-iot/loki/devices/wire"
)

// The device-message decoders take untrusted bytes: none may panic, and
// what one accepts must encode again.

func FuzzDecodeManifest(f *testing.F) {
	f.Add([]byte(`{"deviceId":"demo","protocol":{"major":1},"sensors":[{"name":"temperature","kind":"temperature","unit":"°C"}]}`))
	f.Add([]byte(`{"deviceId":"demo","sensors":[{"name":"a"},{"name":"A"}]}`))
	f.Add([]byte(`{"deviceId":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := wire.DecodeManifest("demo", data)
		if err != nil {
			return
		}
		if _, err := wire.Encode(m); err != nil {
			t.Fatalf("accepted manifest does not encode: %v", err)
		}
	})
}

func FuzzDecodeCommand(f *testing.F) {
	f.Add([]byte(`{"id":"1","name":"set","entity":"led","args":{"value":true}}`))
	f.Add([]byte(`{"id":"","name":"ping"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if c, err := wire.DecodeCommand(data, 0); err == nil && (c.GetId() == "" || c.GetName() == "") {
			t.Fatalf("accepted a command without id or name: %v", c)
		}
	})
}

func FuzzDecodeDeviceMessages(f *testing.F) {
	f.Add([]byte(`{"id":"1","ok":true,"data":21.5}`))
	f.Add([]byte(`{"id":"2","tool":"add","args":{"a":1}}`))
	f.Add([]byte(`{"entity":"temperature","value":21.5,"at":1700000000}`))
	f.Add([]byte(`{"kind":"motion","entity":"pir"}`))
	f.Add([]byte(`online`))
	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = wire.DecodeResult(data)
		_, _ = wire.DecodeToolCall(data)
		if s, err := wire.DecodeState("temperature", data); err == nil && s.GetEntity() != "temperature" {
			t.Fatalf("state for another entity accepted: %v", s)
		}
		_, _ = wire.DecodeEvent(data)
		_, _ = wire.Presence(data)
	})
}
