// Package replicas settles the JetStream replica count of the streams and
// buckets Loki creates: the configured count for a new one, the existing
// count (never silently changed) for one that is already there.
package replicas

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Keep returns the replica count a create-or-update of bucket asks for:
// want when the bucket is new (have == 0), else have. When an existing
// bucket's count differs from the configured one it logs at WARN, naming
// the bucket, have and want: changing the replicas of live data is an
// operator's decision (`nats stream edit STREAM --replicas N`), never a
// side effect of a restart with another config.
func Keep(log *slog.Logger, bucket string, have, want int) int {
	if have == 0 {
		return want
	}
	if have != want && log != nil {
		log.Warn("bucket has another replica count than configured; keeping the bucket's (change it with `nats stream edit`)",
			"bucket", bucket, "have", have, "want", want)
	}
	return have
}

// OfKV is the replica count of kv's stream, 0 when it cannot be read.
func OfKV(ctx context.Context, kv jetstream.KeyValue) int {
	st, err := kv.Status(ctx)
	if err != nil {
		return 0
	}
	if bs, ok := st.(*jetstream.KeyValueBucketStatus); ok && bs.StreamInfo() != nil {
		return bs.StreamInfo().Config.Replicas
	}
	return 0
}

// Set-up attempts: on a cluster, two replicas creating or updating one
// replicated bucket at the same moment can leave one request without an
// answer; the next attempt finds what the other made.
const (
	attemptTimeout = 5 * time.Second
	setupTimeout   = 60 * time.Second
)

// errNoPeers is JetStream's "no suitable peers for placement": on a
// cluster that has just started, the meta leader does not know every peer
// online yet, and a replicated bucket cannot be placed for a moment.
const errNoPeers jetstream.ErrorCode = 10005

// Setup runs setup (creating or opening bucket) in attempts of 5 s, for at
// most a minute or until ctx ends, while an attempt times out or finds no
// peers to place the bucket on yet, and returns its last error. It logs a
// WARN naming bucket before each new attempt.
func Setup(ctx context.Context, log *slog.Logger, bucket string, setup func(context.Context) error) error {
	deadline := time.Now().Add(setupTimeout)
	for {
		attempt, cancel := context.WithTimeout(ctx, attemptTimeout)
		err := setup(attempt)
		cancel()
		// Only an attempt left without an answer is tried again; a refusal
		// (permissions, a bad config) is final.
		var api *jetstream.APIError
		transient := errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
			(errors.As(err, &api) && api.ErrorCode == errNoPeers)
		if err == nil || ctx.Err() != nil || time.Now().After(deadline) || !transient {
			return err
		}
		if log != nil {
			log.Warn("bucket not set up yet; trying again", "bucket", bucket, "err", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(100+rand.IntN(400)) * time.Millisecond):
		}
	}
}
