package jotunheim_test

import (
	"encoding/json"
	"testing"

	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
)

// FuzzDeviceRequest: any body yields a valid device id or INVALID_ARGUMENT.
func FuzzDeviceRequest(f *testing.F) {
	for _, s := range []string{"demo", `{"id":"demo"}`, `{"id":5}`, "", "a b", `{"id":"x","zz":1}`, "{", " demo "} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		id, err := jotunheim.DeviceRequest(data)
		if err != nil {
			if fault.CodeOf(err) != fault.InvalidArgument {
				t.Fatalf("got %v, want INVALID_ARGUMENT", err)
			}
			return
		}
		if err := subjects.ValidDeviceID(id); err != nil {
			t.Fatalf("accepted %q: %v", id, err)
		}
	})
}

// FuzzCommandResult: any result payload a device sends is refused by the
// decoder, or becomes valid JSON, or a *fault.Error with a known code that
// names the device.
func FuzzCommandResult(f *testing.F) {
	for _, s := range []string{`{"id":"1","ok":true,"data":21.5}`, `{"id":"1","ok":true}`,
		`{"id":"1","code":"NOT_FOUND","message":"no"}`, `{"id":"1","code":"WEIRD"}`, `{"id":"1","ok":true,"data":{"a":[1,null]}}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := wire.DecodeResult(data)
		if err != nil {
			return
		}
		b, err := jotunheim.ResultData("demo", res)
		if err != nil {
			if !fault.CodeOf(err).Valid() {
				t.Fatalf("code %q is not a known code", fault.CodeOf(err))
			}
			return
		}
		if !json.Valid(b) {
			t.Fatalf("data %q is not JSON", b)
		}
	})
}
