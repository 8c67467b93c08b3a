// Package helbucket is the wire protocol of the bucket broker and the rules
// it applies. Hel may not create, update or delete streams itself (a stream
// of its choosing could capture any subject, loki.exec.> included); it asks
// the broker, which runs with the identity service's rights, on
// subjects.AuthHelBucket. The broker creates or updates a KV bucket or an
// object store only when its name is one of Hel's (Check), always with the
// subjects its kind implies and never others, and marks its stream as
// Hel's (OwnerKey).
package helbucket

import (
	"errors"
	"fmt"
	"maps"
	"strings"

	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go/jetstream"
)

// ErrInvalid is a request the broker refuses: a name that is not Hel's,
// settings that would give the stream other subjects or other streams'
// data, or not exactly one of KV and Object.
var ErrInvalid = errors.New("invalid bucket request")

// OwnerKey is the stream metadata key that names a stream's owner, and
// Owner its value on the streams the broker makes for Hel.
const (
	OwnerKey = "loki_owner"
	Owner    = "hel"
)

// LimitMarkerTTLUnsupported is the message of the FAILED_PRECONDITION the
// broker answers when the server does not support per-key TTLs; Hel turns
// it back into jetstream.ErrLimitMarkerTTLNotSupported.
const LimitMarkerTTLUnsupported = "this NATS server does not support per-key TTLs (limit_marker_ttl)"

// Request is the body of subjects.AuthHelBucket: exactly one of KV and
// Object, with the settings the jetstream library takes. DiscardOld asks
// for the discard-old policy (Hel's cache evicts instead of refusing).
type Request struct {
	KV         *jetstream.KeyValueConfig    `json:"kv,omitempty"`
	Object     *jetstream.ObjectStoreConfig `json:"object,omitempty"`
	DiscardOld bool                         `json:"discard_old,omitempty"`
}

// Reply is the broker's answer: the stream behind the bucket.
type Reply struct {
	Stream string `json:"stream"`
}

// Check returns the stream name and subjects of r's bucket, or an error
// wrapping ErrInvalid that says what is wrong. A KV bucket must be
// hel_kv_<name> or hel_cache, an object store hel_obj_<name>, <name> as
// subjects.ValidHelName allows; neither may mirror, source or republish,
// which would fill it with another stream's data or send its writes to
// other subjects.
func (r Request) Check() (stream string, subs []string, err error) {
	switch {
	case (r.KV == nil) == (r.Object == nil):
		return "", nil, fmt.Errorf("%w: want exactly one of \"kv\" and \"object\"", ErrInvalid)
	case r.KV != nil:
		c := r.KV
		if err := checkName(c.Bucket, subjects.HelKVBucketPrefix, subjects.HelCacheBucket); err != nil {
			return "", nil, err
		}
		switch {
		case c.Mirror != nil || len(c.Sources) > 0:
			return "", nil, fmt.Errorf("%w: KV bucket %q: mirror and sources are not allowed", ErrInvalid, c.Bucket)
		case c.RePublish != nil:
			return "", nil, fmt.Errorf("%w: KV bucket %q: republish is not allowed", ErrInvalid, c.Bucket)
		}
		stream, subs := subjects.KVStream(c.Bucket)
		return stream, subs, nil
	default:
		c := r.Object
		if err := checkName(c.Bucket, subjects.HelObjBucketPrefix, ""); err != nil {
			return "", nil, err
		}
		stream, subs := subjects.ObjectStream(c.Bucket)
		return stream, subs, nil
	}
}

func checkName(bucket, prefix, fixed string) error {
	if fixed != "" && bucket == fixed {
		return nil
	}
	name, ok := strings.CutPrefix(bucket, prefix)
	if !ok || subjects.ValidHelName(name) != nil {
		want := prefix + "<name>"
		if fixed != "" {
			want += " or " + fixed
		}
		return fmt.Errorf("%w: bucket %q is not one of Hel's: want %s, <name> 1 to 64 of [A-Za-z0-9_-]", ErrInvalid, bucket, want)
	}
	return nil
}

// Mark returns md with the owner set to Hel, leaving md unchanged.
func Mark(md map[string]string) map[string]string {
	out := maps.Clone(md)
	if out == nil {
		out = map[string]string{}
	}
	out[OwnerKey] = Owner
	return out
}

// IsHel reports whether stream metadata md marks the stream as Hel's.
func IsHel(md map[string]string) bool { return md[OwnerKey] == Owner }
