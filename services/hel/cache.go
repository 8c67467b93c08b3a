package hel

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/replicas"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The cache is shared by every replica: one JetStream KV bucket
// (subjects.HelCacheBucket), not a map in each replica's memory.
//
// Replicas sit behind one queue group, so consecutive requests of one script
// land on different replicas. A per-replica cache would hit or miss at
// random, and worse, cache.delete would invalidate the key on one replica
// only, leaving stale values to be served by the others. With a shared
// bucket, a set is visible to every replica at once and a delete or clear
// invalidates everywhere; the price is a JetStream round trip per access
// (the cache saves the work of producing a value, not a network hop).
//
// Each entry carries its TTL; it expires at the revision's server timestamp
// plus the TTL, checked on read, so expiry is exact to the millisecond and
// needs no per-key TTL support from the server. The bucket's max age is
// Cache.MaxTTL, so expired entries are also removed from storage. The bucket
// discards its oldest entries when full (Cache.MaxBytes): a cache evicts, it
// does not refuse a set.
type cacheStore struct {
	s *Service

	mu     sync.Mutex
	kv     jetstream.KeyValue
	stream string

	index *cacheIndex // per-scope accounting (cachescope.go)
}

// ensure creates the cache bucket, or brings an existing one to the
// configured limits with the discard-old policy.
func (c *cacheStore) ensure(ctx context.Context) error {
	cfg := c.s.cfg.Cache
	kvc := jetstream.KeyValueConfig{
		Bucket:       subjects.HelCacheBucket,
		Description:  "Hel shared cache",
		MaxValueSize: cfg.MaxValueBytes + headerRoom,
		History:      1,
		TTL:          cfg.MaxTTL,
		MaxBytes:     cfg.MaxBytes,
		Storage:      c.s.storageType(),
		Replicas:     c.s.cfg.Replicas,
	}
	kv, err := c.s.js.KeyValue(ctx, kvc.Bucket)
	if err == nil {
		if si, ok := streamInfo(ctx, kv); ok && si.Config.Discard == jetstream.DiscardOld &&
			si.Config.MaxBytes == kvc.MaxBytes && si.Config.MaxAge == kvc.TTL && si.Config.MaxMsgSize == kvc.MaxValueSize {
			c.bind(kv, si.Config.Name)
			return nil
		}
		kvc.Replicas = replicas.Keep(c.s.log, kvc.Bucket, replicas.OfKV(ctx, kv), kvc.Replicas)
	} else if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return err
	}
	if kv, err = c.s.createKV(ctx, kvc, jetstream.DiscardOld); err != nil {
		return err
	}
	si, ok := streamInfo(ctx, kv)
	if !ok {
		return errors.New("cache bucket has no stream info")
	}
	if si.Config.Discard != jetstream.DiscardOld {
		sc := si.Config
		sc.Discard = jetstream.DiscardOld
		if _, err := c.s.js.UpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("set discard-old on the cache: %w", err)
		}
	}
	c.bind(kv, si.Config.Name)
	return nil
}

func streamInfo(ctx context.Context, kv jetstream.KeyValue) (*jetstream.StreamInfo, bool) {
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, false
	}
	bs, ok := st.(*jetstream.KeyValueBucketStatus)
	if !ok || bs.StreamInfo() == nil {
		return nil, false
	}
	return bs.StreamInfo(), true
}

func (c *cacheStore) bind(kv jetstream.KeyValue, stream string) {
	c.mu.Lock()
	c.kv, c.stream = kv, stream
	c.mu.Unlock()
}

func (c *cacheStore) bucket() jetstream.KeyValue {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.kv
}

// cacheKey maps any cache key to a valid KV key.
func cacheKey(k string) string { return base64.RawURLEncoding.EncodeToString([]byte(k)) }

func cacheWhat(key string) string { return fmt.Sprintf("cache key %q", trunc(key)) }

// failed maps an error, re-ensuring the bucket if it was deleted behind Hel's back.
func (c *cacheStore) failed(ctx context.Context, err error, key string) error {
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		if eerr := c.ensure(ctx); eerr != nil {
			c.s.log.Error("re-create cache bucket", logKeyErr, eerr)
		}
	}
	return storeError(err, cacheWhat(key))
}

func (c *cacheStore) get(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	e, err := c.bucket().Get(ctx, cacheKey(req.key))
	if err != nil {
		return nil, nil, c.failed(ctx, err, req.key)
	}
	v, ttl, ok := decodeCacheEntry(e.Value())
	left := time.Until(e.Created().Add(ttl))
	if !ok || left <= 0 {
		return nil, nil, fault.New(fault.NotFound, "%s not found", cacheWhat(req.key))
	}
	return v.Data, replyHeader(HeaderContentType, string(v.Type), HeaderTTL, left.Round(time.Millisecond).String()), nil
}

func (c *cacheStore) set(ctx context.Context, req request, r *microsvc.Request) ([]byte, nats.Header, error) {
	cfg := c.s.cfg.Cache
	ttl := req.ttl
	if ttl == 0 {
		ttl = cfg.DefaultTTL
	}
	if ttl < time.Millisecond || ttl > cfg.MaxTTL {
		return nil, nil, fault.New(fault.InvalidArgument, "%s: TTL %s must be 1ms to %s", cacheWhat(req.key), ttl, cfg.MaxTTL)
	}
	v := Value{Data: r.Data(), Type: req.ctype}
	if len(v.Data) > int(cfg.MaxValueBytes) {
		return nil, nil, tooLarge("cache value", len(v.Data), int(cfg.MaxValueBytes))
	}
	if err := checkValue(v); err != nil {
		return nil, nil, err
	}
	kvKey, entry := cacheKey(req.key), encodeCacheEntry(v, ttl)
	size, expires := entrySize(kvKey, entry), time.Now().Add(ttl)
	victims, err := c.index.admit(ctx, req.key, size, expires)
	if err != nil {
		return nil, nil, err
	}
	c.evict(ctx, victims)
	rev, err := c.bucket().Put(ctx, kvKey, entry)
	c.index.settled(req.key, rev, size, expires)
	if err != nil {
		return nil, nil, c.failed(ctx, err, req.key)
	}
	return nil, replyHeader(HeaderRevision, strconv.FormatUint(rev, 10)), nil
}

func (c *cacheStore) remove(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	if err := c.bucket().Delete(ctx, cacheKey(req.key)); err != nil {
		return nil, nil, c.failed(ctx, err, req.key)
	}
	return nil, nil, nil
}

func (c *cacheStore) clear(ctx context.Context, _ request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	c.mu.Lock()
	name := c.stream
	c.mu.Unlock()
	st, err := c.s.js.Stream(ctx, name)
	if err == nil {
		err = st.Purge(ctx)
	}
	if err != nil {
		return nil, nil, c.failed(ctx, err, "*")
	}
	// Every replica's accounting resets when its watch sees the marker.
	if _, err := c.bucket().Put(ctx, cacheClearMarker, nil); err != nil {
		return nil, nil, c.failed(ctx, err, "*")
	}
	return nil, nil, nil
}
