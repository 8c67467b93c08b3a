package hel

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/replicas"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// kvBucket is a bound KV bucket. configured is set once this replica has
// applied the config's limits to it (on its first write here).
type kvBucket struct {
	kv         jetstream.KeyValue
	configured bool
	perKeyTTL  bool
}

// kvFor returns the KV bucket named by the request. For writes it creates
// the bucket, or applies the configured limits to an existing one, once per
// replica; reads of a bucket that does not exist are NOT_FOUND.
func (s *Service) kvFor(ctx context.Context, name string, write bool) (*kvBucket, error) {
	s.mu.Lock()
	b := s.kvBuckets[name]
	s.mu.Unlock()
	if b != nil && (b.configured || !write) {
		return b, nil
	}
	if write {
		s.setupMu.Lock()
		defer s.setupMu.Unlock()
		s.mu.Lock()
		b = s.kvBuckets[name]
		s.mu.Unlock()
		if b != nil && b.configured {
			return b, nil
		}
	}
	jsName, err := subjects.HelKVBucket(name)
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	what := fmt.Sprintf("bucket %q", name)
	if !write {
		kv, err := s.js.KeyValue(ctx, jsName)
		if err != nil {
			return nil, storeError(err, what)
		}
		b = &kvBucket{kv: kv}
	} else {
		q := quota(s.cfg.KV.Buckets, name, s.cfg.KV.MaxBytes)
		cfg := jetstream.KeyValueConfig{
			Bucket:         jsName,
			Description:    "Hel KV bucket " + name,
			MaxValueSize:   int32(min(int64(s.cfg.KV.MaxValueBytes)+headerRoom, q)),
			History:        s.cfg.KV.History,
			MaxBytes:       q,
			Storage:        s.storageType(),
			Replicas:       s.cfg.Replicas,
			LimitMarkerTTL: s.cfg.KV.LimitMarkerTTL,
		}
		// An existing bucket keeps its replica count: the update brings
		// its limits to the config, never its replicas.
		if cur, err := s.js.KeyValue(ctx, jsName); err == nil {
			cfg.Replicas = replicas.Keep(s.log, jsName, replicas.OfKV(ctx, cur), cfg.Replicas)
		}
		kv, err := s.createKV(ctx, cfg, jetstream.DiscardNew)
		perKeyTTL := true
		if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
			s.log.Warn("NATS server does not support per-key TTL; kv.create with a TTL will fail", logKeyBucket, jsName)
			cfg.LimitMarkerTTL, perKeyTTL = 0, false
			kv, err = s.createKV(ctx, cfg, jetstream.DiscardNew)
		}
		if err != nil {
			return nil, storeError(err, what)
		}
		b = &kvBucket{kv: kv, configured: true, perKeyTTL: perKeyTTL}
	}
	s.mu.Lock()
	if cur := s.kvBuckets[name]; cur == nil || !cur.configured || b.configured {
		s.kvBuckets[name] = b
	}
	s.mu.Unlock()
	return b, nil
}

// forgetKV drops a cached bucket after an error that suggests it is gone
// (deleted behind Hel's back), so the next request binds it again.
func (s *Service) forgetKV(name string, err error) {
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		s.mu.Lock()
		delete(s.kvBuckets, name)
		s.mu.Unlock()
	}
}

func keyWhat(req request) string { return fmt.Sprintf("bucket %q key %q", req.bucket, req.key) }

// kvValue reads and checks the value of a write request.
func (s *Service) kvValue(req request, r *microsvc.Request) ([]byte, error) {
	v := Value{Data: r.Data(), Type: req.ctype}
	if len(v.Data) > int(s.cfg.KV.MaxValueBytes) {
		return nil, tooLarge("value", len(v.Data), int(s.cfg.KV.MaxValueBytes))
	}
	if err := checkValue(v); err != nil {
		return nil, err
	}
	return encodeValue(v), nil
}

func revisionHeader(rev uint64) nats.Header {
	return replyHeader(HeaderRevision, strconv.FormatUint(rev, 10))
}

func (s *Service) kvGet(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	b, err := s.kvFor(ctx, req.bucket, false)
	if err != nil {
		return nil, nil, err
	}
	e, err := b.kv.Get(ctx, req.key)
	if err != nil {
		s.forgetKV(req.bucket, err)
		return nil, nil, storeError(err, keyWhat(req))
	}
	v := decodeValue(e.Value())
	h := revisionHeader(e.Revision())
	h.Set(HeaderContentType, string(v.Type))
	h.Set(HeaderCreated, e.Created().UTC().Format(time.RFC3339Nano))
	return v.Data, h, nil
}

func (s *Service) kvPut(ctx context.Context, req request, r *microsvc.Request) ([]byte, nats.Header, error) {
	val, err := s.kvValue(req, r)
	if err != nil {
		return nil, nil, err
	}
	res, err := s.total.reserveKV(ctx, req.bucket, req.key, val, keyWhat(req))
	if err != nil {
		return nil, nil, err
	}
	written := false
	defer func() { res.end(written) }()
	b, err := s.kvFor(ctx, req.bucket, true)
	if err != nil {
		return nil, nil, err
	}
	rev, err := b.kv.Put(ctx, req.key, val)
	written = err == nil
	if err != nil {
		s.forgetKV(req.bucket, err)
		return nil, nil, storeError(err, keyWhat(req))
	}
	return nil, revisionHeader(rev), nil
}

func (s *Service) kvCreate(ctx context.Context, req request, r *microsvc.Request) ([]byte, nats.Header, error) {
	if minTTL := max(s.cfg.KV.LimitMarkerTTL.Round(time.Second), time.Second); req.ttl != 0 && (req.ttl < minTTL || req.ttl%time.Second != 0) {
		return nil, nil, fault.New(fault.InvalidArgument, "%s %s: a key's TTL must be whole seconds, at least %s", HeaderTTL, req.ttl, minTTL)
	}
	val, err := s.kvValue(req, r)
	if err != nil {
		return nil, nil, err
	}
	res, err := s.total.reserveKV(ctx, req.bucket, req.key, val, keyWhat(req))
	if err != nil {
		return nil, nil, err
	}
	written := false
	defer func() { res.end(written) }()
	b, err := s.kvFor(ctx, req.bucket, true)
	if err != nil {
		return nil, nil, err
	}
	var opts []jetstream.KVCreateOpt
	if req.ttl > 0 {
		if !b.perKeyTTL {
			return nil, nil, fault.New(fault.FailedPrecondition, "%s: this NATS server does not support per-key TTLs", keyWhat(req))
		}
		opts = append(opts, jetstream.KeyTTL(req.ttl))
	}
	rev, err := b.kv.Create(ctx, req.key, val, opts...)
	written = err == nil
	if err != nil {
		s.forgetKV(req.bucket, err)
		if errors.Is(err, jetstream.ErrKeyExists) {
			// The conflict's cause names the key's current revision only in
			// its text; look it up so the caller can update instead.
			if e, gerr := b.kv.Get(ctx, req.key); gerr == nil {
				return nil, revisionHeader(e.Revision()), fault.New(fault.AlreadyExists,
					"%s already exists at revision %d", keyWhat(req), e.Revision())
			}
		}
		return nil, nil, storeError(err, keyWhat(req))
	}
	return nil, revisionHeader(rev), nil
}

func (s *Service) kvUpdate(ctx context.Context, req request, r *microsvc.Request) ([]byte, nats.Header, error) {
	val, err := s.kvValue(req, r)
	if err != nil {
		return nil, nil, err
	}
	res, err := s.total.reserveKV(ctx, req.bucket, req.key, val, keyWhat(req))
	if err != nil {
		return nil, nil, err
	}
	written := false
	defer func() { res.end(written) }()
	b, err := s.kvFor(ctx, req.bucket, true)
	if err != nil {
		return nil, nil, err
	}
	rev, err := b.kv.Update(ctx, req.key, val, req.revision)
	written = err == nil
	if err == nil {
		return nil, revisionHeader(rev), nil
	}
	s.forgetKV(req.bucket, err)
	if !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return nil, nil, storeError(err, keyWhat(req))
	}
	e, gerr := b.kv.Get(ctx, req.key)
	switch {
	case gerr == nil:
		return nil, revisionHeader(e.Revision()), fault.New(fault.FailedPrecondition,
			"%s: revision %d is not the latest; the current revision is %d", keyWhat(req), req.revision, e.Revision())
	case errors.Is(gerr, jetstream.ErrKeyNotFound):
		return nil, nil, fault.New(fault.FailedPrecondition,
			"%s: revision %d is not the latest; the key has no value now (deleted or never set): create it", keyWhat(req), req.revision)
	}
	return nil, nil, fault.New(fault.FailedPrecondition, "%s: revision %d is not the latest", keyWhat(req), req.revision)
}

func (s *Service) kvDelete(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	b, err := s.kvFor(ctx, req.bucket, false)
	if fault.CodeOf(err) == fault.NotFound {
		return nil, nil, nil // nothing to delete
	}
	if err != nil {
		return nil, nil, err
	}
	var opts []jetstream.KVDeleteOpt
	if req.revision > 0 {
		opts = append(opts, jetstream.LastRevision(req.revision))
	}
	if err := b.kv.Delete(ctx, req.key, opts...); err != nil {
		s.forgetKV(req.bucket, err)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return nil, nil, fault.New(fault.FailedPrecondition, "%s: revision %d is not the latest", keyWhat(req), req.revision)
		}
		return nil, nil, storeError(err, keyWhat(req))
	}
	return nil, nil, nil
}

// KeyList is the reply of kv.keys.
type KeyList struct {
	Keys []string `json:"keys"`
	// Next is the cursor of the next page of a paged listing (HeaderLimit),
	// empty on the last page.
	Next string `json:"next,omitempty"`
}

func (s *Service) kvKeys(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	out := KeyList{Keys: []string{}}
	b, err := s.kvFor(ctx, req.bucket, false)
	if fault.CodeOf(err) == fault.NotFound {
		return jsonReply(out)
	}
	if err != nil {
		return nil, nil, err
	}
	var l jetstream.KeyLister
	if req.filter != "" {
		l, err = b.kv.ListKeysFiltered(ctx, req.filter)
	} else {
		l, err = b.kv.ListKeys(ctx)
	}
	if err != nil {
		s.forgetKV(req.bucket, err)
		return nil, nil, storeError(err, fmt.Sprintf("bucket %q", req.bucket))
	}
	defer func() { _ = l.Stop() }()
	ls := listing{field: "keys", what: fmt.Sprintf("bucket %q", req.bucket), items: "keys",
		narrow: "narrow it with a filter", cap: s.cfg.KV.MaxListKeys, lua: grantModule + ".kv.keys(bucket, filter, {limit = n, after = next})"}
	more := false
	if req.page.paged() {
		// A key rewritten while listing can show twice; firstAfter keeps
		// one of each.
		page := newFirstAfter(req.page, req.page.pageLimit(ls.cap), func(k string) string { return k })
		for k := range l.Keys() {
			page.add(k)
		}
		out.Keys, more = page.sorted(), page.dropped
	} else {
		seen := map[string]bool{}
		for k := range l.Keys() {
			if seen[k] {
				continue // a key rewritten while listing can show twice
			}
			seen[k] = true
			if len(out.Keys) == ls.cap {
				return nil, nil, ls.tooMany(len(out.Keys))
			}
			out.Keys = append(out.Keys, k)
		}
		slices.Sort(out.Keys)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, storeError(err, fmt.Sprintf("bucket %q", req.bucket))
	}
	return s.listReply(ls, req.page, len(out.Keys), func(i int) any { return out.Keys[i] },
		func(i int) string { return out.Keys[i] }, more)
}

// HistoryEntry is one revision in the reply of kv.history.
type HistoryEntry struct {
	Revision    uint64      `json:"revision"`
	Op          string      `json:"op"` // "put", "delete" or "purge"
	Created     time.Time   `json:"created"`
	ContentType ContentType `json:"content_type,omitempty"`
	Data        []byte      `json:"data,omitempty"` // base64 in JSON
}

// History is the reply of kv.history, oldest revision first.
type History struct {
	Entries []HistoryEntry `json:"entries"`
	// Next is the revision (in decimal) to send as HeaderAfter for the next
	// page of a paged history (HeaderLimit), empty on the last page.
	Next string `json:"next,omitempty"`
}

func (s *Service) kvHistory(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	b, err := s.kvFor(ctx, req.bucket, false)
	if err != nil {
		return nil, nil, err
	}
	es, err := b.kv.History(ctx, req.key)
	if err != nil {
		s.forgetKV(req.bucket, err)
		return nil, nil, storeError(err, keyWhat(req))
	}
	var after uint64
	if req.page.hasAfter {
		if after, err = strconv.ParseUint(req.page.after, 10, 64); err != nil {
			return nil, nil, fault.New(fault.InvalidArgument, "%s %q: kv.history pages after a revision number", HeaderAfter, req.page.after)
		}
	}
	out := History{Entries: make([]HistoryEntry, 0, len(es))}
	for _, e := range es {
		if e.Revision() <= after {
			continue
		}
		he := HistoryEntry{Revision: e.Revision(), Created: e.Created().UTC()}
		switch e.Operation() {
		case jetstream.KeyValuePut:
			v := decodeValue(e.Value())
			he.Op, he.ContentType, he.Data = "put", v.Type, v.Data
		case jetstream.KeyValueDelete:
			he.Op = "delete"
		case jetstream.KeyValuePurge:
			he.Op = "purge"
		}
		out.Entries = append(out.Entries, he)
	}
	ls := listing{field: "entries", what: keyWhat(req), items: "revisions", cap: len(out.Entries) + 1, lua: grantModule + ".kv.history(bucket, key, {limit = n, after = next})"}
	return s.listReply(ls, req.page, len(out.Entries), func(i int) any { return out.Entries[i] },
		func(i int) string { return strconv.FormatUint(out.Entries[i].Revision, 10) }, false)
}

// jsonReply marshals v as a JSON reply.
func jsonReply(v any) ([]byte, nats.Header, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, nil, fmt.Errorf("encode reply: %w", err)
	}
	return b, replyHeader(HeaderContentType, string(ContentJSON)), nil
}
