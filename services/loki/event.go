package loki

import (
	"github.com/loki-iot/loki/internal/jsonenc"
	"strconv"
	"time"

	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
)

// marshalEvent encodes a ScriptEvent in protojson's JSON mapping (camelCase
// names, uint64 as a string, Duration as "1.5s", Timestamp as RFC 3339 UTC),
// so subscribers decode it with protojson.Unmarshal. It exists because two
// events go out per execution and protojson.Marshal cost more than running
// the script; event_test.go checks it against protojson.
func marshalEvent(ev *lokiv1.ScriptEvent) []byte {
	b := make([]byte, 0, 192+len(ev.GetErrorMessage()))
	b = append(b, `{"executionId":`...)
	b = jsonenc.AppendString(b, ev.GetExecutionId())
	b = append(b, `,"tool":`...)
	b = jsonenc.AppendString(b, ev.GetTool())
	b = append(b, `,"kind":`...)
	b = jsonenc.AppendString(b, ev.GetKind())
	if ev.Time != nil {
		b = append(b, `,"time":"`...)
		b = ev.Time.AsTime().UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	if ev.Duration != nil {
		b = append(b, `,"duration":"`...)
		b = strconv.AppendFloat(b, ev.Duration.AsDuration().Seconds(), 'f', -1, 64)
		b = append(b, `s"`...)
	}
	if ev.GetErrorCode() != "" {
		b = append(b, `,"errorCode":`...)
		b = jsonenc.AppendString(b, ev.GetErrorCode())
	}
	if ev.GetErrorMessage() != "" {
		b = append(b, `,"errorMessage":`...)
		b = jsonenc.AppendString(b, ev.GetErrorMessage())
	}
	if ev.GetToolRevision() != 0 {
		b = append(b, `,"toolRevision":"`...)
		b = strconv.AppendUint(b, ev.GetToolRevision(), 10)
		b = append(b, '"')
	}
	return append(b, '}')
}
