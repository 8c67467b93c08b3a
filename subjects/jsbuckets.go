package subjects

// KVStream returns the stream behind JetStream KV bucket bucket and the
// subjects that stream captures: KV_<bucket> and $KV.<bucket>.>, as the KV
// format (NATS ADR-8) defines them. The bucket broker makes Hel's buckets
// with exactly these.
func KVStream(bucket string) (stream string, subs []string) {
	return kvStream(bucket), []string{"$KV." + bucket + ".>"}
}

// ObjectStream returns the stream behind JetStream object store bucket and
// the subjects that stream captures: OBJ_<bucket>, $O.<bucket>.C.> (chunks)
// and $O.<bucket>.M.> (meta), as the object store format (NATS ADR-20)
// defines them.
func ObjectStream(bucket string) (stream string, subs []string) {
	return "OBJ_" + bucket, []string{"$O." + bucket + ".C.>", "$O." + bucket + ".M.>"}
}
