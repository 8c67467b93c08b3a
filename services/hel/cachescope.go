package hel

import (
	"context"
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/nats-io/nats.go/jetstream"
)

// Cache scopes.
//
// The cache is one bucket that evicts its oldest entries when full, so
// without more, one script setting many entries evicts every other script's.
// Entries are therefore accounted per scope: the part of the key before its
// first '/' ("weather" for "weather/oslo"; keys without '/' share the root
// scope ""), which is the unit a scoped grant hel.cache:<scope> covers.
//
//   - A scope holds at most cache.scope_max_bytes. A set that would pass it
//     first deletes the oldest entries of the same scope (by revision, each
//     deleted only if it was not rewritten since), so a scope evicts its own
//     entries and no one else's.
//   - At most cache.max_bytes / cache.scope_max_bytes - 1 scopes (at least
//     one) hold live entries at once, so that full scopes together stay under the bucket's
//     own limit, whose discard-old eviction would not respect scopes; the
//     one scope's worth left over absorbs concurrent sets on several
//     replicas. A set that would open a scope past that is refused with
//     RESOURCE_EXHAUSTED (an expired entry no longer holds its scope).
//
// Every replica keeps the accounting in memory, fed by a watch on the
// bucket (every replica's sets and deletes) and by its own sets as they are
// admitted, so two sets on one replica cannot together pass a budget.
// JetStream's silent removals (max age) need no event: entries carry their
// expiry and expired ones are dropped from the accounting. cache.clear
// writes a marker key after purging, from which every replica resets.

// cacheClearMarker is the KV key written after a purge: not base64url, so no
// cache key maps to it.
const cacheClearMarker = "=clear"

// cacheEntryOverhead bounds what JetStream counts for an entry beyond its
// stored value and key.
const cacheEntryOverhead = 96

// scopeOf returns the scope of a cache key.
func scopeOf(key string) string {
	if i := strings.IndexByte(key, '/'); i >= 0 {
		return key[:i]
	}
	return ""
}

type scopeEntry struct {
	key     string // the cache key
	rev     uint64 // 0 while a set is in flight
	size    int64
	expires time.Time
}

type scopeUsage struct {
	bytes   int64
	entries map[string]*scopeEntry
}

// cacheIndex is the per-scope accounting of the cache bucket.
type cacheIndex struct {
	budget int64 // per scope
	slots  int   // scopes with live entries at once

	mu     sync.Mutex
	scopes map[string]*scopeUsage
	loaded chan struct{} // closed once the watch delivered the bucket's entries
	once   sync.Once
}

func newCacheIndex(cfg CacheConfig) *cacheIndex {
	return &cacheIndex{
		budget: cfg.scopeBudget(),
		slots:  max(int(cfg.MaxBytes/cfg.scopeBudget())-1, 1),
		scopes: map[string]*scopeUsage{},
		loaded: make(chan struct{}),
	}
}

func (x *cacheIndex) scope(name string) *scopeUsage {
	u := x.scopes[name]
	if u == nil {
		u = &scopeUsage{entries: map[string]*scopeEntry{}}
		x.scopes[name] = u
	}
	return u
}

// put records an entry. Called with x.mu held.
func (x *cacheIndex) put(e *scopeEntry) {
	u := x.scope(scopeOf(e.key))
	if old := u.entries[e.key]; old != nil {
		if old.rev > e.rev && e.rev != 0 {
			return // an older revision delivered late
		}
		u.bytes -= old.size
	}
	u.entries[e.key] = e
	u.bytes += e.size
}

// remove forgets key if its recorded revision is at most rev (0: any).
// Called with x.mu held.
func (x *cacheIndex) remove(key string, rev uint64) {
	name := scopeOf(key)
	u := x.scopes[name]
	if u == nil {
		return
	}
	if old := u.entries[key]; old != nil && (rev == 0 || old.rev <= rev) {
		u.bytes -= old.size
		delete(u.entries, key)
	}
	if len(u.entries) == 0 {
		delete(x.scopes, name)
	}
}

// prune drops the expired entries of a scope. Called with x.mu held.
func (x *cacheIndex) prune(name string, now time.Time) {
	u := x.scopes[name]
	if u == nil {
		return
	}
	for k, e := range u.entries {
		if e.rev != 0 && !now.Before(e.expires) {
			u.bytes -= e.size
			delete(u.entries, k)
		}
	}
	if len(u.entries) == 0 {
		delete(x.scopes, name)
	}
}

// admit accounts a set of size bytes to key's scope, expiring at expires,
// and returns the entries of the scope to delete first, oldest first, so
// that the scope stays within its budget. It refuses a value over the
// budget and a new scope when every slot is taken.
func (x *cacheIndex) admit(ctx context.Context, key string, size int64, expires time.Time) ([]scopeEntry, error) {
	select {
	case <-x.loaded:
	case <-ctx.Done():
		return nil, fault.New(fault.Unavailable, "%s: the cache's accounting is still loading", cacheWhat(key))
	}
	if size > x.budget {
		return nil, fault.New(fault.ResourceExhausted, "%s: an entry of %d bytes is over the %d bytes a cache scope may hold (cache.scope_max_bytes)",
			cacheWhat(key), size, x.budget)
	}
	// Sets in flight in the scope hold what they will store; when they
	// alone fill it, wait for them (they take a round trip) rather than
	// refuse: a cache evicts, it does not refuse.
	for wait := 100 * time.Microsecond; ; wait = min(2*wait, 10*time.Millisecond) {
		victims, busy, err := x.tryAdmit(key, size, expires)
		if !busy {
			return victims, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(wait):
		}
	}
}

// tryAdmit is one attempt of admit; busy reports that sets in flight hold
// the room the set needs.
func (x *cacheIndex) tryAdmit(key string, size int64, expires time.Time) ([]scopeEntry, bool, error) {
	name := scopeOf(key)
	now := time.Now()
	x.mu.Lock()
	defer x.mu.Unlock()
	x.prune(name, now)
	if _, ok := x.scopes[name]; !ok {
		for other := range x.scopes {
			x.prune(other, now)
		}
		if len(x.scopes) >= x.slots {
			return nil, false, fault.New(fault.ResourceExhausted,
				"%s: the cache holds entries of %d scopes, the most cache.max_bytes / cache.scope_max_bytes allows; scope %q must wait for one to expire or be cleared",
				cacheWhat(key), len(x.scopes), name)
		}
	}
	u := x.scope(name)
	need := u.bytes + size
	if old := u.entries[key]; old != nil {
		need -= old.size // the set replaces it
	}
	var victims []scopeEntry
	if need > x.budget {
		var cands []*scopeEntry
		for _, e := range u.entries {
			if e.key != key && e.rev != 0 {
				cands = append(cands, e)
			}
		}
		sortByRev(cands)
		for _, e := range cands {
			if need <= x.budget {
				break
			}
			victims = append(victims, *e)
			need -= e.size
			u.bytes -= e.size
			delete(u.entries, e.key)
		}
		if need > x.budget {
			// The rest is held by sets in flight: refuse rather than pass
			// the budget.
			for _, v := range victims {
				x.put(&v)
			}
			return nil, true, fault.New(fault.ResourceExhausted, "%s: scope %q stayed full with sets in progress until the deadline (cache.scope_max_bytes = %d)",
				cacheWhat(key), name, x.budget)
		}
	}
	x.put(&scopeEntry{key: key, size: size, expires: expires})
	return victims, false, nil
}

// settled records the outcome of an admitted set: its revision, or its
// failure (rev 0), which gives back what admit accounted.
func (x *cacheIndex) settled(key string, rev uint64, size int64, expires time.Time) {
	x.mu.Lock()
	defer x.mu.Unlock()
	u := x.scope(scopeOf(key))
	cur := u.entries[key]
	switch {
	case rev == 0 && cur != nil && cur.rev == 0:
		x.remove(key, 0)
	case rev != 0 && (cur == nil || cur.rev <= rev):
		x.put(&scopeEntry{key: key, rev: rev, size: size, expires: expires})
	}
	if len(u.entries) == 0 {
		delete(x.scopes, scopeOf(key))
	}
}

func (x *cacheIndex) reset() {
	x.mu.Lock()
	x.scopes = map[string]*scopeUsage{}
	x.mu.Unlock()
}

func sortByRev(es []*scopeEntry) {
	for i := 1; i < len(es); i++ { // few entries per eviction round: insertion sort
		for j := i; j > 0 && es[j].rev < es[j-1].rev; j-- {
			es[j], es[j-1] = es[j-1], es[j]
		}
	}
}

// entrySize is what an entry of the stored bytes val under kvKey counts.
func entrySize(kvKey string, val []byte) int64 {
	return int64(len(kvKey) + len(val) + cacheEntryOverhead)
}

// watch keeps the index in step with the bucket until ctx ends, watching
// again (and reloading) whenever the watch stops.
func (c *cacheStore) watch(ctx context.Context) {
	for ctx.Err() == nil {
		if err := c.watchOnce(ctx); err != nil && ctx.Err() == nil {
			c.s.log.Warn("cache accounting: watch stopped; watching again", logKeyErr, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(time.Second):
		}
	}
}

func (c *cacheStore) watchOnce(ctx context.Context) error {
	kv := c.bucket()
	if kv == nil {
		return errors.New("no cache bucket")
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = w.Stop() }()
	x := c.index
	x.reset()
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return errors.New("watch closed")
			}
			if e == nil {
				x.once.Do(func() { close(x.loaded) })
				continue
			}
			c.apply(e)
		}
	}
}

// apply records one change of the bucket.
func (c *cacheStore) apply(e jetstream.KeyValueEntry) {
	x := c.index
	x.mu.Lock()
	defer x.mu.Unlock()
	if e.Key() == cacheClearMarker {
		if e.Operation() == jetstream.KeyValuePut {
			for name, u := range x.scopes {
				for k, se := range u.entries {
					if se.rev != 0 && se.rev < e.Revision() {
						u.bytes -= se.size
						delete(u.entries, k)
					}
				}
				if len(u.entries) == 0 {
					delete(x.scopes, name)
				}
			}
		}
		return
	}
	raw, err := base64.RawURLEncoding.DecodeString(e.Key())
	if err != nil {
		return // not a cache entry
	}
	key := string(raw)
	if e.Operation() != jetstream.KeyValuePut {
		x.remove(key, e.Revision())
		return
	}
	_, ttl, ok := decodeCacheEntry(e.Value())
	if !ok {
		return
	}
	x.put(&scopeEntry{key: key, rev: e.Revision(), size: entrySize(e.Key(), e.Value()), expires: e.Created().Add(ttl)})
}

// evict deletes the entries admit chose, each only at the revision it
// was accounted at: one rewritten since is left alone (and accounted anew
// by the watch).
func (c *cacheStore) evict(ctx context.Context, victims []scopeEntry) {
	for _, v := range victims {
		err := c.bucket().Delete(ctx, cacheKey(v.key), jetstream.LastRevision(v.rev))
		if err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && !errors.Is(err, jetstream.ErrKeyNotFound) {
			c.s.log.Warn("cache: evict an entry of a full scope", "key", trunc(v.key), logKeyErr, err)
		}
	}
}
