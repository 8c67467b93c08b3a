package loki

import (
	"strconv"
	"time"
	"unicode/utf8"

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
	b = appendJSONString(b, ev.GetExecutionId())
	b = append(b, `,"tool":`...)
	b = appendJSONString(b, ev.GetTool())
	b = append(b, `,"kind":`...)
	b = appendJSONString(b, ev.GetKind())
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
		b = appendJSONString(b, ev.GetErrorCode())
	}
	if ev.GetErrorMessage() != "" {
		b = append(b, `,"errorMessage":`...)
		b = appendJSONString(b, ev.GetErrorMessage())
	}
	if ev.GetToolRevision() != 0 {
		b = append(b, `,"toolRevision":"`...)
		b = strconv.AppendUint(b, ev.GetToolRevision(), 10)
		b = append(b, '"')
	}
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// appendJSONString appends s as a JSON string; invalid UTF-8 becomes U+FFFD.
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return append(b, '"')
}
