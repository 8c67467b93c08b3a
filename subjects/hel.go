package subjects

import (
	"encoding/base64"
	"fmt"
	"regexp"
)

// Hel service subjects. Every Hel operation is its own subject so that
// $SRV.STATS reports each one separately and NATS permissions can allow,
// say, hel.kv.get but not hel.kv.put. Parameters travel in headers and the
// value in the body; see docs/HEL.md.
const (
	// HelService is the NATS micro service name of the storage service.
	HelService = "hel"
	// HelQueueGroup is the queue group every Hel replica subscribes in, so
	// replicas share the load.
	HelQueueGroup = "hel"
	// HelPrefix prefixes every Hel subject.
	HelPrefix = "hel"
	// HelAll matches every Hel subject.
	HelAll = HelPrefix + ".>"

	// HelKVGet answers with a key's latest value.
	HelKVGet = HelPrefix + ".kv.get"
	// HelKVPut stores a value whatever the key's current revision.
	HelKVPut = HelPrefix + ".kv.put"
	// HelKVCreate stores a value only if the key has none (optionally with a TTL).
	HelKVCreate = HelPrefix + ".kv.create"
	// HelKVUpdate stores a value only if the key is at the given revision.
	HelKVUpdate = HelPrefix + ".kv.update"
	// HelKVDelete deletes a key (keeping its history).
	HelKVDelete = HelPrefix + ".kv.delete"
	// HelKVKeys answers with the bucket's keys.
	HelKVKeys = HelPrefix + ".kv.keys"
	// HelKVHistory answers with a key's kept revisions.
	HelKVHistory = HelPrefix + ".kv.history"

	// HelObjPut starts a chunked upload of an object.
	HelObjPut = HelPrefix + ".obj.put"
	// HelObjGet starts a chunked download of an object.
	HelObjGet = HelPrefix + ".obj.get"
	// HelObjInfo answers with an object's size, chunks and SHA-256 digest.
	HelObjInfo = HelPrefix + ".obj.info"
	// HelObjList answers with the info of every object in a bucket.
	HelObjList = HelPrefix + ".obj.list"
	// HelObjDelete deletes an object.
	HelObjDelete = HelPrefix + ".obj.delete"

	// HelFilesRead answers with a file's content (or a byte range of it).
	HelFilesRead = HelPrefix + ".files.read"
	// HelFilesWrite replaces a file atomically.
	HelFilesWrite = HelPrefix + ".files.write"
	// HelFilesAppend appends to a file, creating it if needed.
	HelFilesAppend = HelPrefix + ".files.append"
	// HelFilesDelete removes a file or an empty directory.
	HelFilesDelete = HelPrefix + ".files.delete"
	// HelFilesList answers with a directory's entries.
	HelFilesList = HelPrefix + ".files.list"
	// HelFilesMkdir creates a directory and its parents.
	HelFilesMkdir = HelPrefix + ".files.mkdir"
	// HelFilesStat answers with one entry's size, kind and modification time.
	HelFilesStat = HelPrefix + ".files.stat"

	// HelCacheGet answers with a cached value, or NOT_FOUND once it expired.
	HelCacheGet = HelPrefix + ".cache.get"
	// HelCacheSet caches a value for a TTL.
	HelCacheSet = HelPrefix + ".cache.set"
	// HelCacheDelete invalidates one cached key.
	HelCacheDelete = HelPrefix + ".cache.delete"
	// HelCacheClear invalidates every cached key.
	HelCacheClear = HelPrefix + ".cache.clear"
)

// JetStream names Hel owns. User-facing bucket names are prefixed so that
// Hel's buckets never collide with other components' (loki_tools) or with
// each other (a KV bucket and an object bucket may share a user name).
const (
	// HelKVBucketPrefix prefixes the JetStream KV bucket behind each Hel KV
	// bucket: Hel bucket "sensors" is JetStream bucket "hel_kv_sensors".
	HelKVBucketPrefix = "hel_kv_"
	// HelObjBucketPrefix prefixes the JetStream object store behind each Hel
	// object bucket: "firmware" is object store "hel_obj_firmware".
	HelObjBucketPrefix = "hel_obj_"
	// HelCacheBucket is the JetStream KV bucket holding the shared cache.
	HelCacheBucket = "hel_cache"
	// HelKVStreamPrefix and HelObjStreamPrefix prefix the JetStream streams
	// behind Hel's KV buckets and object stores (the jetstream library puts
	// KV_ and OBJ_ before a bucket name); Hel's total quota sums them.
	HelKVStreamPrefix  = "KV_" + HelKVBucketPrefix
	HelObjStreamPrefix = "OBJ_" + HelObjBucketPrefix
)

// helName is the shape of Hel bucket and namespace names: it fits a NATS
// token, a JetStream stream name, a directory name and a grant scope.
var helName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidHelName returns an error unless name can name a Hel KV bucket, object
// bucket or file namespace: 1 to 64 of [A-Za-z0-9_-].
func ValidHelName(name string) error {
	if !helName.MatchString(name) {
		return fmt.Errorf("%w: name %q must be 1 to 64 of [A-Za-z0-9_-]", ErrInvalidToken, name)
	}
	return nil
}

// HelKVBucket returns the JetStream KV bucket name of Hel KV bucket name.
func HelKVBucket(name string) (string, error) {
	if err := ValidHelName(name); err != nil {
		return "", err
	}
	return HelKVBucketPrefix + name, nil
}

// HelObjBucket returns the JetStream object store name of Hel object bucket name.
func HelObjBucket(name string) (string, error) {
	if err := ValidHelName(name); err != nil {
		return "", err
	}
	return HelObjBucketPrefix + name, nil
}

// ObjectStoreMeta returns the subject of the meta message of object name in
// the JetStream object store named store: $O.<store>.M.<base64url(name)>,
// as the object store format (NATS ADR-20) defines it. Hel publishes there
// only to put back an object's previous meta after a failed upload.
func ObjectStoreMeta(store, name string) (string, error) {
	if err := ValidToken(store); err != nil {
		return "", err
	}
	if name == "" {
		return "", fmt.Errorf("%w: empty object name", ErrInvalidToken)
	}
	return "$O." + store + ".M." + base64.URLEncoding.EncodeToString([]byte(name)), nil
}
