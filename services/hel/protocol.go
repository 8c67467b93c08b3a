package hel

import (
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/middleware"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// Headers of Hel requests and replies. A request names what it acts on in
// headers and carries the value, if any, as its body; see docs/HEL.md.
const (
	// HeaderTimeout (request) bounds the operation, as a Go duration
	// ("250ms"): the caller's remaining deadline. Relative, not absolute, so
	// clock skew between hosts does not matter.
	HeaderTimeout = "Hel-Timeout"
	// HeaderBucket names a KV or object bucket (not the JetStream name).
	HeaderBucket = "Hel-Bucket"
	// HeaderKey names a KV key, or a cache key.
	HeaderKey = "Hel-Key"
	// HeaderRevision is a KV revision: the expected one on update and
	// delete requests, the stored one on replies.
	HeaderRevision = "Hel-Revision"
	// HeaderTTL (request) is a time to live as a Go duration: per key on
	// kv.create (whole seconds, at least 1s), per entry on cache.set.
	HeaderTTL = "Hel-TTL"
	// HeaderFilter (kv.keys request) is a NATS-style key filter ("room.*.temp", "room.>").
	HeaderFilter = "Hel-Filter"
	// HeaderCreated (reply) is when a KV revision was stored, RFC 3339.
	HeaderCreated = "Hel-Created"
	// HeaderObject names an object in a bucket.
	HeaderObject = "Hel-Object"
	// HeaderDescription (obj.put request) describes an object.
	HeaderDescription = "Hel-Description"
	// HeaderSize is a size in bytes: of an upload, when known, so that a
	// transfer past the quota is refused before it starts; of a file or
	// object on replies.
	HeaderSize = "Hel-Size"
	// HeaderNamespace names a file namespace.
	HeaderNamespace = "Hel-Namespace"
	// HeaderPath is a slash-separated path relative to the namespace root.
	HeaderPath = "Hel-Path"
	// HeaderOffset and HeaderLength (files.read request) select a byte range.
	HeaderOffset = "Hel-Offset"
	HeaderLength = "Hel-Length"
	// HeaderContentType tells a string from JSON: ContentJSON or ContentBytes.
	HeaderContentType = "Content-Type"
	// HeaderLimit (listing requests: kv.keys, kv.history, obj.list,
	// files.list) asks for one page of at most this many items; the reply's
	// JSON then has "next", the cursor to send as HeaderAfter for the next
	// page, when more remain. See "Listings" in docs/HEL.md.
	HeaderLimit = "Hel-Limit"
	// HeaderAfter (listing requests) starts a page after this cursor: a
	// key, object or file name, or a revision for kv.history.
	HeaderAfter = "Hel-After"

	// HeaderFrame marks the intermediate messages of an object transfer;
	// the final reply has none. See the object protocol in docs/HEL.md.
	HeaderFrame = "Hel-Frame"
	// HeaderSeq numbers the chunks of a transfer from 1; an ack carries the
	// highest chunk received.
	HeaderSeq = "Hel-Seq"
	// HeaderUpload (frame "ready") is the subject to send upload chunks to.
	HeaderUpload = "Hel-Upload"
	// HeaderAckTo (frame "start") is the subject to send download acks to.
	HeaderAckTo = "Hel-Ack-To"
	// HeaderWindow (frames "ready" and "start") is how many chunks may be
	// unacknowledged at once.
	HeaderWindow = "Hel-Window"
	// HeaderChunkSize (frame "ready") is the largest chunk the service takes.
	HeaderChunkSize = "Hel-Chunk-Size"
	// HeaderSHA256 (frame "eof") is the hex SHA-256 of everything uploaded;
	// a mismatch aborts the upload and keeps the previous object.
	HeaderSHA256 = "Hel-SHA256"
)

// Frames of the object transfer protocol.
const (
	FrameReady  = "ready"  // service → uploader: send chunks to HeaderUpload
	FrameAck    = "ack"    // receiver → sender: chunks up to HeaderSeq arrived
	FrameChunk  = "chunk"  // sender → receiver: one chunk, HeaderSeq
	FrameEOF    = "eof"    // uploader → service: no more chunks, HeaderSHA256
	FrameStart  = "start"  // service → downloader: object info; ack to HeaderAckTo
	FrameCancel = "cancel" // downloader → service: stop sending
)

// ContentType says how a value's bytes are to be read.
type ContentType string

// The two kinds of value. A Lua string is ContentBytes and comes back a
// string; a table (or number or boolean) is ContentJSON and comes back as the
// same Lua value.
const (
	ContentBytes ContentType = "application/octet-stream"
	ContentJSON  ContentType = "application/json"
)

// Limits on names that travel in headers.
const (
	MaxKeyBytes      = 1024
	MaxCacheKeyBytes = 512
	MaxObjectName    = 1024
	MaxPathBytes     = 4096
	MaxPathComponent = 255
	maxFilterTokens  = 64
)

// field is one request parameter a handler needs.
type field uint16

const (
	fBucket field = 1 << iota
	fKey
	fRevision
	fTTL
	fFilter
	fObject
	fNamespace
	fPath
	fCacheKey
)

var fieldHeader = map[field]string{
	fBucket: HeaderBucket, fKey: HeaderKey, fRevision: HeaderRevision, fTTL: HeaderTTL,
	fFilter: HeaderFilter, fObject: HeaderObject, fNamespace: HeaderNamespace, fPath: HeaderPath,
	fCacheKey: HeaderKey,
}

// request is a decoded Hel request: every header it carries, validated.
type request struct {
	bucket      string
	key         string // KV key or cache key
	revision    uint64 // 0: none given
	ttl         time.Duration
	filter      string
	object      string
	description string
	size        int64 // -1: unknown
	namespace   string
	path        string // cleaned; "." is the namespace root
	offset      int64
	length      int64 // 0: to the end
	ctype       ContentType
	page        page // of a listing
}

// decodeRequest validates the headers of a request. need lists the fields
// that must be present; the others are validated when present. A key header
// is read as a KV key unless need has fCacheKey. Errors are
// INVALID_ARGUMENT (or PERMISSION_DENIED for a path leaving its root) and
// name the header.
func decodeRequest(h nats.Header, need field) (request, error) {
	req := request{size: -1, ctype: ContentBytes}
	get := func(f field) (string, bool, error) {
		name := fieldHeader[f]
		vals := h.Values(name)
		switch {
		case len(vals) > 1:
			return "", false, fault.New(fault.InvalidArgument, "header %s given %d times", name, len(vals))
		case len(vals) == 0:
			if need&f != 0 {
				return "", false, fault.New(fault.InvalidArgument, "header %s is required", name)
			}
			return "", false, nil
		}
		return vals[0], true, nil
	}
	if v, ok, err := get(fBucket); err != nil {
		return req, err
	} else if ok {
		if err := subjects.ValidHelName(v); err != nil {
			return req, fault.New(fault.InvalidArgument, "%s: bucket %q must be 1 to 64 of [A-Za-z0-9_-]", HeaderBucket, v)
		}
		req.bucket = v
	}
	if need&fCacheKey != 0 {
		v, _, err := get(fCacheKey)
		if err != nil {
			return req, err
		}
		if err := validCacheKey(v); err != nil {
			return req, err
		}
		req.key = v
	} else if v, ok, err := get(fKey); err != nil {
		return req, err
	} else if ok {
		if err := validKey(v); err != nil {
			return req, err
		}
		req.key = v
	}
	if v, ok, err := get(fRevision); err != nil {
		return req, err
	} else if ok {
		n, perr := strconv.ParseUint(v, 10, 64)
		if perr != nil || n == 0 {
			return req, fault.New(fault.InvalidArgument, "%s %q: want a revision number from 1", HeaderRevision, v)
		}
		req.revision = n
	}
	if v, ok, err := get(fTTL); err != nil {
		return req, err
	} else if ok {
		if req.ttl, err = middleware.ParseTimeout(HeaderTTL, v); err != nil {
			return req, err
		}
	}
	if v, ok, err := get(fFilter); err != nil {
		return req, err
	} else if ok {
		if err := validFilter(v); err != nil {
			return req, err
		}
		req.filter = v
	}
	if v, ok, err := get(fObject); err != nil {
		return req, err
	} else if ok {
		if err := validObjectName(v); err != nil {
			return req, err
		}
		req.object = v
	}
	if v := h.Get(HeaderDescription); v != "" {
		if len(v) > 1024 || !utf8.ValidString(v) {
			return req, fault.New(fault.InvalidArgument, "%s: at most 1024 bytes of UTF-8", HeaderDescription)
		}
		req.description = v
	}
	if v, ok, err := get(fNamespace); err != nil {
		return req, err
	} else if ok {
		if err := subjects.ValidHelName(v); err != nil {
			return req, fault.New(fault.InvalidArgument, "%s: namespace %q must be 1 to 64 of [A-Za-z0-9_-]", HeaderNamespace, v)
		}
		req.namespace = v
	}
	if v, ok, err := get(fPath); err != nil {
		return req, err
	} else if ok {
		if req.path, err = CleanPath(v); err != nil {
			return req, err
		}
	} else {
		req.path = "."
	}
	for _, n := range []struct {
		name string
		dst  *int64
	}{{HeaderSize, &req.size}, {HeaderOffset, &req.offset}, {HeaderLength, &req.length}} {
		if v := h.Get(n.name); v != "" {
			i, perr := strconv.ParseInt(v, 10, 64)
			if perr != nil || i < 0 {
				return req, fault.New(fault.InvalidArgument, "%s %q: want a byte count from 0", n.name, v)
			}
			*n.dst = i
		}
	}
	if err := decodePage(h, &req.page); err != nil {
		return req, err
	}
	if v := h.Get(HeaderContentType); v != "" {
		switch ContentType(v) {
		case ContentBytes, ContentJSON:
			req.ctype = ContentType(v)
		default:
			return req, fault.New(fault.InvalidArgument, "%s %q: want %s or %s", HeaderContentType, v, ContentBytes, ContentJSON)
		}
	}
	return req, nil
}

// validHeaderValue refuses what a NATS header cannot carry unchanged:
// invalid UTF-8, control characters (CR and LF end a header) and leading or
// trailing spaces (trimmed in transit).
func validHeaderValue(what, v string) error {
	if !utf8.ValidString(v) {
		return fault.New(fault.InvalidArgument, "%s %q is not valid UTF-8", what, v)
	}
	for i, r := range v {
		if r < 0x20 || r == 0x7f {
			return fault.New(fault.InvalidArgument, "%s %q has a control character at byte %d", what, v, i)
		}
	}
	if strings.TrimSpace(v) != v {
		return fault.New(fault.InvalidArgument, "%s %q has leading or trailing spaces", what, v)
	}
	return nil
}

// keyByte reports whether c may appear in a KV key (JetStream's rule).
func keyByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '/' || c == '_' || c == '=' || c == '.'
}

// validKey checks a KV key: 1 to MaxKeyBytes of [A-Za-z0-9-/_=.], not
// starting or ending with '.' and without empty tokens.
func validKey(k string) error {
	if k == "" || len(k) > MaxKeyBytes {
		return fault.New(fault.InvalidArgument, "key %q: must be 1 to %d bytes", trunc(k), MaxKeyBytes)
	}
	for i := 0; i < len(k); i++ {
		if !keyByte(k[i]) {
			return fault.New(fault.InvalidArgument, "key %q: byte %d (%q) is not one of [A-Za-z0-9-/_=.]", trunc(k), i, k[i:i+1])
		}
	}
	if k[0] == '.' || k[len(k)-1] == '.' || strings.Contains(k, "..") {
		return fault.New(fault.InvalidArgument, "key %q: must not start or end with '.' or contain '..'", trunc(k))
	}
	return nil
}

// validFilter checks a kv.keys filter: dot-separated tokens that are key
// tokens, "*", or a final ">".
func validFilter(f string) error {
	toks := strings.Split(f, ".")
	if len(f) > MaxKeyBytes || len(toks) > maxFilterTokens {
		return fault.New(fault.InvalidArgument, "filter %q: too long", trunc(f))
	}
	for i, t := range toks {
		switch {
		case t == "*":
		case t == ">" && i == len(toks)-1:
		case t == "":
			return fault.New(fault.InvalidArgument, "filter %q: empty token", trunc(f))
		default:
			for j := 0; j < len(t); j++ {
				if !keyByte(t[j]) || t[j] == '.' {
					return fault.New(fault.InvalidArgument, "filter %q: token %q must be a key token, * or a final >", trunc(f), t)
				}
			}
		}
	}
	return nil
}

// validCacheKey checks a cache key: 1 to MaxCacheKeyBytes of printable UTF-8.
func validCacheKey(k string) error {
	if k == "" || len(k) > MaxCacheKeyBytes {
		return fault.New(fault.InvalidArgument, "cache key %q: must be 1 to %d bytes", trunc(k), MaxCacheKeyBytes)
	}
	return validHeaderValue("cache key", k)
}

// validObjectName checks an object name: 1 to MaxObjectName bytes of printable UTF-8.
func validObjectName(n string) error {
	if n == "" || len(n) > MaxObjectName {
		return fault.New(fault.InvalidArgument, "object name %q: must be 1 to %d bytes", trunc(n), MaxObjectName)
	}
	return validHeaderValue("object name", n)
}

// CleanPath validates a file path sent to Hel and returns its clean form,
// "." for the namespace root. Paths are slash-separated and relative to the
// namespace. It refuses, with PERMISSION_DENIED, absolute paths and any ".."
// component (even one that would stay inside); with INVALID_ARGUMENT, NUL and
// other control characters, backslashes, invalid UTF-8, leading or trailing
// spaces, components over MaxPathComponent bytes, paths over MaxPathBytes,
// and components starting with ".hel-" (Hel's temporary files). Empty and
// "." components are dropped. Symlinks are checked when the path is used,
// not here.
func CleanPath(p string) (string, error) {
	if len(p) > MaxPathBytes {
		return "", fault.New(fault.InvalidArgument, "path is %d bytes: at most %d", len(p), MaxPathBytes)
	}
	if err := validHeaderValue("path", p); err != nil {
		return "", err
	}
	if strings.ContainsRune(p, '\\') {
		return "", fault.New(fault.InvalidArgument, "path %q: backslashes are not allowed; separate with /", p)
	}
	if strings.HasPrefix(p, "/") {
		return "", fault.New(fault.PermissionDenied, "path %q: absolute paths are not allowed; paths are relative to the namespace", p)
	}
	parts := strings.Split(p, "/")
	out := parts[:0]
	for _, c := range parts {
		switch {
		case c == "" || c == ".":
			continue
		case c == "..":
			return "", fault.New(fault.PermissionDenied, "path %q: '..' is not allowed", p)
		case len(c) > MaxPathComponent:
			return "", fault.New(fault.InvalidArgument, "path %q: component is %d bytes: at most %d", trunc(p), len(c), MaxPathComponent)
		case strings.HasPrefix(c, tempPrefix):
			return "", fault.New(fault.InvalidArgument, "path %q: names starting with %q are reserved", p, tempPrefix)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return ".", nil
	}
	clean := strings.Join(out, "/")
	if strings.TrimSpace(clean) != clean { // "a /" cleans to "a ", which a header would trim
		return "", fault.New(fault.InvalidArgument, "path %q: its clean form %q starts or ends with a space", p, clean)
	}
	return clean, nil
}

// trunc shortens s for error messages.
func trunc(s string) string {
	if len(s) <= 80 {
		return s
	}
	return s[:80] + "..."
}
