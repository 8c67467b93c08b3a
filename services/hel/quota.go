package hel

import (
	"cmp"
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go/jetstream"
)

// The total quota (Config.MaxTotalBytes).
//
// Each bucket and namespace has its own quota, enforced by JetStream
// (a stream's MaxBytes) or by the file store. But a grant without a scope
// lets a script create any number of buckets and namespaces, so those bound
// nothing overall. The total quota does, with reserve-then-commit
// accounting on each replica:
//
//   - Stored bytes are measured from the source: the bytes JetStream reports
//     for every stream behind a Hel KV bucket or object store (names from
//     STREAM.NAMES, sizes from STREAM.INFO), plus the regular files under
//     this replica's file root. Measures are at most storedFor old, and are
//     taken again before a refusal (at most every remeasureAfter) and after
//     Hel deletes an object; a file Hel deletes is subtracted at once.
//   - A write reserves its bytes (an upper bound of what the store will
//     count: value, key, subject and per-message overhead) before anything
//     is sent or written; the reservation is refused with RESOURCE_EXHAUSTED
//     when stored + reserved + the write would pass the quota. The check and
//     the reservation happen under one lock, so concurrent writers on a
//     replica cannot together pass the quota.
//   - When the write ends the reservation is released; if the write
//     succeeded its bytes are added to stored until the next measure, which
//     replaces the estimate by what JetStream counts.
//
// Why not JetStream limits alone: a stream's MaxBytes bounds one bucket,
// and JetStream's account limits bound the whole NATS account, whose streams
// are shared with the other components (tools, devices, OTA). Nothing in
// JetStream bounds a set of streams, so Hel accounts it itself.
//
// Several replicas on one JetStream share the stored bytes (each measures
// them) but not their in-flight reservations, so together they can pass the
// quota by at most what the other replicas have in flight at once (at most
// workers × kv.max_value_bytes, or the uploads in progress, per replica).
// Files live on each replica's disk and count on that replica only.

// storedFor is how long a measure of the stored bytes is trusted; remeasureAfter
// the least time between two measures taken to confirm a refusal.
const (
	storedFor      = time.Second
	remeasureAfter = 100 * time.Millisecond
)

// kvOverhead bounds what JetStream counts for a KV message beyond its value
// and key: the subject prefix, the bucket name and the store's record.
const kvOverhead = 128

type totalQuota struct {
	s   *Service
	max int64

	mu       sync.Mutex
	js       int64 // bytes of Hel's streams at the last measure, plus commits since
	files    int64 // bytes of this replica's files, likewise
	jsAt     time.Time
	filesAt  time.Time
	reserved int64 // reservations of writes in progress on this replica
}

// reservation is bytes held for one write in progress.
type reservation struct {
	q     *totalQuota
	n     int64
	files bool // the write goes to a file, not to JetStream
	done  bool
}

// reserveKV reserves room for a KV value under key in bucket.
func (q *totalQuota) reserveKV(ctx context.Context, bucket, key string, val []byte, what string) (*reservation, error) {
	return q.reserve(ctx, int64(len(val)+len(key)+len(bucket)+kvOverhead), false, what)
}

// reserve holds n bytes for a write, or refuses with RESOURCE_EXHAUSTED.
func (q *totalQuota) reserve(ctx context.Context, n int64, files bool, what string) (*reservation, error) {
	r := &reservation{q: q, files: files}
	if err := r.grow(ctx, n, what); err != nil {
		return nil, err
	}
	return r, nil
}

// grow holds n more bytes for the write, or refuses (keeping what it held).
func (r *reservation) grow(ctx context.Context, n int64, what string) error {
	if n <= 0 {
		return nil // a write that frees or keeps room is never refused
	}
	q := r.q
	q.mu.Lock()
	defer q.mu.Unlock()
	if err := q.measure(ctx, storedFor); err != nil {
		return err
	}
	if q.js+q.files+q.reserved+n > q.max {
		// Confirm against a fresh measure: deletes may have made room.
		if err := q.measure(ctx, remeasureAfter); err != nil {
			return err
		}
		if used := q.js + q.files + q.reserved; used+n > q.max {
			return fault.New(fault.ResourceExhausted,
				"%s: %d more bytes would pass Hel's total quota of %d bytes (max_total_bytes) for all buckets and namespaces: %d stored, %d being written",
				what, n, q.max, q.js+q.files, q.reserved)
		}
	}
	q.reserved += n
	r.n += n
	return nil
}

// end releases the reservation; written says the write succeeded, so its
// bytes count as stored until the next measure. Calling it again does nothing.
func (r *reservation) end(written bool) {
	if r == nil || r.done {
		return
	}
	r.done = true
	q := r.q
	q.mu.Lock()
	defer q.mu.Unlock()
	q.reserved -= r.n
	if written {
		if r.files {
			q.files += r.n
		} else {
			q.js += r.n
		}
	}
}

// freedFiles counts n bytes of files this replica removed.
func (q *totalQuota) freedFiles(n int64) {
	q.mu.Lock()
	q.files = max(q.files-n, 0)
	q.mu.Unlock()
}

// freedStreams marks the stream bytes for a new measure: Hel deleted
// something from JetStream (an object), which the next write should see.
func (q *totalQuota) freedStreams() {
	q.mu.Lock()
	q.jsAt = time.Time{}
	q.mu.Unlock()
}

// measure refreshes what is older than maxAge. Called with q.mu held.
func (q *totalQuota) measure(ctx context.Context, maxAge time.Duration) error {
	now := time.Now()
	if now.Sub(q.jsAt) > maxAge {
		n, err := q.streamBytes(ctx)
		if err != nil {
			return storeError(err, "Hel's total quota: measure the buckets")
		}
		q.js, q.jsAt = n, now
	}
	// Walking the files is slower than asking JetStream: at most once a
	// second, and every rescanAfter otherwise.
	if age := now.Sub(q.filesAt); age > max(maxAge, time.Second) && (age > rescanAfter || maxAge < storedFor) {
		if root := q.s.files.root; root != nil {
			n, err := scanUsage(ctx, root)
			if err != nil {
				return fileError(err, "*", ".")
			}
			q.files = n
		}
		q.filesAt = now
	}
	return nil
}

// streamBytes sums the bytes of the streams behind Hel's KV buckets and
// object stores: their names from STREAM.NAMES, their sizes from
// STREAM.INFO, a few at a time. (STREAM.LIST would answer both in one
// request per 256 streams, but would also show Hel the components' streams,
// which its permissions keep from it.)
func (q *totalQuota) streamBytes(ctx context.Context) (int64, error) {
	names := q.s.js.StreamNames(ctx)
	var hel []string
	for name := range names.Name() {
		if strings.HasPrefix(name, subjects.HelKVStreamPrefix) || strings.HasPrefix(name, subjects.HelObjStreamPrefix) {
			hel = append(hel, name)
		}
	}
	if err := names.Err(); err != nil {
		return 0, err
	}
	var (
		mu    sync.Mutex
		total int64
		first error
		wg    sync.WaitGroup
	)
	sem := make(chan struct{}, 8)
	for _, name := range hel {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			st, err := q.s.js.Stream(ctx, name)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, jetstream.ErrStreamNotFound): // deleted since it was listed
			case err != nil:
				first = cmp.Or(first, err)
			default:
				total += int64(st.CachedInfo().State.Bytes)
			}
		}()
	}
	wg.Wait()
	return total, first
}
