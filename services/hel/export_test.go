package hel

import (
	"context"
	"time"

	"github.com/loki-iot/loki/internal/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Internals exposed to the black-box tests in package hel_test.

// DecodeRequestAll decodes h as a request that needs no particular field
// (a cache key when cacheKey) and returns the decoded values by name.
func DecodeRequestAll(h nats.Header, cacheKey bool) (map[string]any, error) {
	need := field(0)
	if cacheKey {
		need |= fCacheKey
	}
	req, err := decodeRequest(h, need)
	if err != nil {
		return nil, err
	}
	return map[string]any{
		"bucket": req.bucket, "key": req.key, "revision": req.revision, "ttl": req.ttl,
		"filter": req.filter, "object": req.object, "namespace": req.namespace, "path": req.path,
		"size": req.size, "offset": req.offset, "length": req.length, "ctype": req.ctype,
	}, nil
}

// ParseTimeout parses a Hel-Timeout header value.
func ParseTimeout(v string) (time.Duration, error) { return middleware.ParseTimeout(HeaderTimeout, v) }

// Storage encoding.
var (
	EncodeValue      = encodeValue
	DecodeValue      = decodeValue
	EncodeCacheEntry = encodeCacheEntry
	DecodeCacheEntry = decodeCacheEntry
	ValidKey         = validKey
	ValidFilter      = validFilter
	ValidCacheKey    = validCacheKey
	ValidObjectName  = validObjectName
)

// RestoreMeta runs the repair objPut applies after a failed upload whose
// whole content (SHA-256 sum, hex) was read by the object store.
func RestoreMeta(s *Service, ctx context.Context, bucket, object string, prev *jetstream.ObjectInfo, sum string) error {
	obs, err := s.objFor(ctx, bucket, false)
	if err != nil {
		return err
	}
	s.restoreMeta(ctx, obs, request{bucket: bucket, object: object}, prev, sum)
	return nil
}
