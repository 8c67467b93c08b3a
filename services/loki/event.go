package loki

import (
	"strconv"
	"time"

	"github.com/loki-iot/loki/internal/jsonenc"
	"github.com/loki-iot/loki/subjects"
)

// event is a lokiv1.ScriptEvent in the fields Loki sets; a zero field is
// left out, as protojson leaves out an unset one.
type event struct {
	execID       string
	tool         string
	kind         subjects.EventKind
	time         time.Time
	duration     time.Duration
	hasDuration  bool
	errorCode    string
	errorMessage string
	toolRevision uint64
}

// appendEvent appends ev in protojson's JSON mapping of ScriptEvent
// (camelCase names, uint64 as a string, Duration as "1.5s", Timestamp as
// RFC 3339 UTC), so subscribers decode it with protojson.Unmarshal. It exists
// because two events go out per execution and building and marshalling the
// proto message cost more than running the script; event_test.go checks it
// against protojson.
func appendEvent(b []byte, ev *event) []byte {
	b = append(b, `{"executionId":`...)
	b = jsonenc.AppendString(b, ev.execID)
	b = append(b, `,"tool":`...)
	b = jsonenc.AppendString(b, ev.tool)
	b = append(b, `,"kind":`...)
	b = jsonenc.AppendString(b, string(ev.kind))
	if !ev.time.IsZero() {
		b = append(b, `,"time":"`...)
		b = appendTime(b, ev.time.UTC())
		b = append(b, '"')
	}
	if ev.hasDuration {
		b = append(b, `,"duration":"`...)
		b = appendSeconds(b, ev.duration)
		b = append(b, `s"`...)
	}
	if ev.errorCode != "" {
		b = append(b, `,"errorCode":`...)
		b = jsonenc.AppendString(b, ev.errorCode)
	}
	if ev.errorMessage != "" {
		b = append(b, `,"errorMessage":`...)
		b = jsonenc.AppendString(b, ev.errorMessage)
	}
	if ev.toolRevision != 0 {
		b = append(b, `,"toolRevision":"`...)
		b = strconv.AppendUint(b, ev.toolRevision, 10)
		b = append(b, '"')
	}
	return append(b, '}')
}

// eventSubjects are loki.events.<tool>.<kind> for each kind, spelled once
// per compiled tool.
type eventSubjects struct {
	started, completed, failed string
}

func newEventSubjects(tool string) (eventSubjects, error) {
	var es eventSubjects
	var err error
	for _, k := range []struct {
		kind subjects.EventKind
		subj *string
	}{
		{subjects.EventStarted, &es.started}, {subjects.EventCompleted, &es.completed}, {subjects.EventFailed, &es.failed},
	} {
		if *k.subj, err = subjects.ScriptEvent(tool, k.kind); err != nil {
			return eventSubjects{}, err
		}
	}
	return es, nil
}

func (es *eventSubjects) of(kind subjects.EventKind) string {
	switch kind {
	case subjects.EventStarted:
		return es.started
	case subjects.EventCompleted:
		return es.completed
	}
	return es.failed
}

// appendTime appends t (in UTC) as time.RFC3339Nano does, without its
// general layout machinery.
func appendTime(b []byte, t time.Time) []byte {
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(b, time.RFC3339Nano)
	}
	hour, minute, sec := t.Clock()
	b = appendDigits(b, year, 4)
	b = append(b, '-')
	b = appendDigits(b, int(month), 2)
	b = append(b, '-')
	b = appendDigits(b, day, 2)
	b = append(b, 'T')
	b = appendDigits(b, hour, 2)
	b = append(b, ':')
	b = appendDigits(b, minute, 2)
	b = append(b, ':')
	b = appendDigits(b, sec, 2)
	b = appendFraction(b, t.Nanosecond())
	return append(b, 'Z')
}

// appendSeconds appends d in seconds, exactly, as protojson's Duration
// mapping reads it ("1.5", "0.000155227"). (d.Seconds() rounds twice, and
// its shortest decimal can have more than the nine fractional digits
// protojson accepts.)
func appendSeconds(b []byte, d time.Duration) []byte {
	u := uint64(d)
	if d < 0 {
		b = append(b, '-')
		u = -u
	}
	b = strconv.AppendUint(b, u/uint64(time.Second), 10)
	return appendFraction(b, int(u%uint64(time.Second)))
}

// appendFraction appends ".ddddddddd" for ns nanoseconds without trailing
// zeros, or nothing for 0.
func appendFraction(b []byte, ns int) []byte {
	if ns == 0 {
		return b
	}
	digits := 9
	for ns%10 == 0 {
		ns /= 10
		digits--
	}
	b = append(b, '.')
	return appendDigits(b, ns, digits)
}

// appendDigits appends v (non-negative) zero-padded to width digits.
func appendDigits(b []byte, v, width int) []byte {
	var buf [9]byte
	for i := width - 1; i >= 0; i-- {
		buf[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, buf[:width]...)
}
