package wire_test

import (
	"testing"

	"github.com/loki-iot/loki/devices/wire"
)

func FuzzDecodeStreamMessages(f *testing.F) {
	f.Add([]byte(`{"streamId":"s1","action":"ACTION_OPEN","source":"sine","credit":8,"maxBytes":"1000"}`))
	f.Add([]byte(`{"streamId":"s1","action":"ACTION_CREDIT","credit":8,"ackSeq":"4"}`))
	f.Add([]byte(`{"streamId":"s1","seq":"3","data":"AAEC","dropped":"2"}`))
	f.Add([]byte(`{"streamId":"s1","seq":"4","eof":true,"code":"NOT_FOUND","error":"no such source"}`))
	f.Add([]byte(`{"streamId":"a.b","seq":"0"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if c, err := wire.DecodeStreamControl(data, 0); err == nil {
			if wire.ValidStreamID(c.GetStreamId()) != nil {
				t.Fatalf("accepted a control with stream id %q", c.GetStreamId())
			}
			if _, err := wire.Encode(c); err != nil {
				t.Fatalf("accepted control does not encode: %v", err)
			}
		}
		if c, err := wire.DecodeStreamChunk(data); err == nil {
			if c.GetSeq() == 0 || wire.ValidStreamID(c.GetStreamId()) != nil {
				t.Fatalf("accepted a chunk with seq %d, stream id %q", c.GetSeq(), c.GetStreamId())
			}
		}
	})
}
