package hel

import (
	"encoding/binary"
	"encoding/json"
	"time"

	"github.com/loki-iot/loki/internal/fault"
)

// Value is a stored value: bytes (a Lua string) or a JSON document (a Lua
// table, number or boolean).
type Value struct {
	Data []byte
	Type ContentType
}

// Bytes returns a ContentBytes value.
func Bytes(b []byte) Value { return Value{Data: b, Type: ContentBytes} }

// JSON returns a ContentJSON value holding data, which must be valid JSON.
func JSON(data []byte) Value { return Value{Data: data, Type: ContentJSON} }

// Storage encoding of KV and cache values.
//
// JetStream KV keeps no per-entry headers, so the content type is kept in the
// value itself, in a way that leaves plain strings readable by any KV client
// (`nats kv get`, devices):
//
//   - bytes not starting with 0x00 are stored verbatim;
//   - everything else is stored as 0x00, a tag byte, then the payload:
//     tagJSON for JSON documents, tagBytes for bytes that start with 0x00.
//
// Decoding reads a value without that envelope (written by another client)
// as bytes, so decoding never fails.
const (
	envelopeMark byte = 0x00
	tagJSON      byte = 'j'
	tagBytes     byte = 'b'
)

// encodeValue returns the stored form of v.
func encodeValue(v Value) []byte {
	if v.Type != ContentJSON && (len(v.Data) == 0 || v.Data[0] != envelopeMark) {
		return v.Data
	}
	tag := tagBytes
	if v.Type == ContentJSON {
		tag = tagJSON
	}
	out := make([]byte, 0, len(v.Data)+2)
	out = append(out, envelopeMark, tag)
	return append(out, v.Data...)
}

// decodeValue reverses encodeValue. The result aliases b.
func decodeValue(b []byte) Value {
	if len(b) >= 2 && b[0] == envelopeMark {
		switch b[1] {
		case tagJSON:
			return Value{Data: b[2:], Type: ContentJSON}
		case tagBytes:
			return Value{Data: b[2:], Type: ContentBytes}
		}
	}
	return Value{Data: b, Type: ContentBytes}
}

// checkValue refuses a JSON value that is not JSON, so that what is stored
// as a table always comes back as one.
func checkValue(v Value) error {
	if v.Type == ContentJSON && !json.Valid(v.Data) {
		return fault.New(fault.InvalidArgument, "value is marked %s but is not valid JSON", ContentJSON)
	}
	return nil
}

// Cache entries are a value prefixed by its TTL in milliseconds (8 bytes,
// big endian). The entry expires at the revision's server timestamp plus the
// TTL, so only the reading replica's clock matters.
const cacheHeaderLen = 8

func encodeCacheEntry(v Value, ttl time.Duration) []byte {
	enc := encodeValue(v)
	out := make([]byte, cacheHeaderLen, cacheHeaderLen+len(enc))
	binary.BigEndian.PutUint64(out, uint64(ttl.Milliseconds()))
	return append(out, enc...)
}

// decodeCacheEntry reverses encodeCacheEntry; ok is false for an entry too
// short to be one (written by another client), which reads as a miss.
func decodeCacheEntry(b []byte) (v Value, ttl time.Duration, ok bool) {
	if len(b) < cacheHeaderLen {
		return Value{}, 0, false
	}
	ms := binary.BigEndian.Uint64(b[:cacheHeaderLen])
	if ms > uint64(365*24*time.Hour/time.Millisecond) {
		return Value{}, 0, false
	}
	return decodeValue(b[cacheHeaderLen:]), time.Duration(ms) * time.Millisecond, true
}
