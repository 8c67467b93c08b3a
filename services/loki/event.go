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
		b = ev.time.UTC().AppendFormat(b, time.RFC3339Nano)
		b = append(b, '"')
	}
	if ev.hasDuration {
		b = append(b, `,"duration":"`...)
		b = strconv.AppendFloat(b, ev.duration.Seconds(), 'f', -1, 64)
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
