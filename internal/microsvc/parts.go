package microsvc

import (
	"strconv"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/nats-io/nats.go"
)

// Parts describes a list reply that may be larger than one NATS message.
type Parts struct {
	// Field is the JSON field of the list: each message is {"<Field>":[...]}.
	Field string
	// Ask is the request header by which a caller says it takes the list
	// in parts; Part the reply header numbering each part but the last.
	Ask, Part string
	// What names the items in the error a caller that did not ask gets
	// ("tools"); Instead says what to do instead ("loki.tools.get one tool").
	What, Instead string
	// Limit is the most bytes of items in one message: the connection's
	// payload limit less room for the wrapping and headers.
	Limit int
}

// Reply answers r with items (each the JSON of one item, in order) as
// {"<Field>":[...]}. A list that fits in one message is the reply. A
// larger one goes out in parts when the caller asked with the Ask header:
// each part but the last to the reply subject with the Part header set to
// its number from 1, the last as the reply, so a caller reads until a
// message without Part. A caller that did not ask gets RESOURCE_EXHAUSTED
// naming the header, never a reply NATS would drop.
func (p Parts) Reply(r *Request, items [][]byte) ([]byte, error) {
	var parts [][]byte
	var part []byte
	for _, b := range items {
		if len(part) > 0 && len(part)+len(b)+1 > p.Limit {
			parts = append(parts, part)
			part = nil
		}
		if len(part) > 0 {
			part = append(part, ',')
		}
		part = append(part, b...)
	}
	parts = append(parts, part)
	wrap := func(b []byte) []byte {
		return append(append([]byte(`{"`+p.Field+`":[`), b...), "]}"...)
	}
	if len(parts) == 1 {
		return wrap(parts[0]), nil
	}
	if r.Header().Get(p.Ask) == "" {
		return nil, fault.New(fault.ResourceExhausted,
			"the list of %d %s takes %d messages: ask with the header %s: 1 to get it in parts, or %s",
			len(items), p.What, len(parts), p.Ask, p.Instead)
	}
	for i, b := range parts[:len(parts)-1] {
		m := nats.NewMsg("")
		m.Header.Set(p.Part, strconv.Itoa(i+1))
		m.Data = wrap(b)
		if err := r.Publish(m); err != nil {
			return nil, fault.Wrap(fault.Unavailable, err, "send part %d of the list of %s: %v", i+1, p.What, err)
		}
	}
	return wrap(parts[len(parts)-1]), nil
}

// PartsOverhead is room in a message for a list's wrapping and headers.
const PartsOverhead = 4 << 10
