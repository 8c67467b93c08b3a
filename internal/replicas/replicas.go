// Package replicas settles the JetStream replica count of the streams and
// buckets Loki creates: the configured count for a new one, the existing
// count (never silently changed) for one that is already there.
package replicas

import (
	"context"
	"log/slog"

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
