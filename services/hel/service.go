// Package hel is Hel, Loki's storage service: the data scripts produce and
// read. It serves the NATS micro service "hel" (every replica in the queue
// group subjects.HelQueueGroup, so replicas share the load) with
//
//   - KV on JetStream KV: get, put, create (optionally with a per-key TTL),
//     update with an expected revision, delete, keys, history;
//   - objects on the JetStream object store, streamed in chunks with flow
//     control so no replica holds more than a window of chunks of an object;
//   - files under a root directory per namespace, confined with os.Root and
//     written atomically;
//   - a shared cache with per-entry TTL and explicit invalidation;
//   - byte quotas per bucket and namespace.
//
// Scripts reach it through the Lua module returned by NewModule; Go programs
// through Client. The subjects are in package subjects; the protocol,
// semantics and design choices in docs/HEL.md.
package hel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/middleware"
	"github.com/loki-iot/loki/internal/replicas"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Version is the service version reported in $SRV.INFO.
const Version = "0.1.0"

// Log keys.
const (
	logKeySubject = "subject"
	logKeyErr     = "err"
	logKeyBucket  = "bucket"
)

// headerRoom is what a Hel message reserves for headers within the NATS
// max payload.
const headerRoom = 8 << 10

// Service is one Hel replica. Any number of replicas share the load through
// the queue group; KV, objects and the cache live in JetStream and are
// shared, files live on each replica's disk. Its methods are safe for
// concurrent use.
type Service struct {
	cfg   Config
	nc    *nats.Conn
	js    jetstream.JetStream
	log   *slog.Logger
	ready chan struct{}

	mu         sync.Mutex
	setupMu    sync.Mutex // serializes bucket creation, so a burst of first writes creates once
	kvBuckets  map[string]*kvBucket
	objBuckets map[string]*objBucket

	cache *cacheStore
	files *fileStore
	total *totalQuota
}

// New validates cfg and prepares a replica on nc (owned by the caller); Run
// starts it. It fails if a setting does not fit nc's max payload.
func New(cfg Config, nc *nats.Conn, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nc == nil {
		return nil, errors.New("hel: nil NATS connection")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if mp := nc.MaxPayload(); mp > 0 {
		if int64(cfg.Objects.ChunkSize)+headerRoom > mp {
			return nil, fmt.Errorf("%w: objects.chunk_size = %d: must leave %d bytes for headers below the NATS max payload (%d)",
				ErrConfig, cfg.Objects.ChunkSize, headerRoom, mp)
		}
		for _, v := range []struct {
			key string
			n   int32
		}{{"kv.max_value_bytes", cfg.KV.MaxValueBytes}, {"cache.max_value_bytes", cfg.Cache.MaxValueBytes}} {
			if int64(v.n)+headerRoom > mp {
				return nil, fmt.Errorf("%w: %s = %d: must leave %d bytes for headers below the NATS max payload (%d)",
					ErrConfig, v.key, v.n, headerRoom, mp)
			}
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("hel: %w", err)
	}
	s := &Service{
		cfg:        cfg,
		nc:         nc,
		js:         js,
		log:        log.With("component", "hel"),
		ready:      make(chan struct{}),
		kvBuckets:  map[string]*kvBucket{},
		objBuckets: map[string]*objBucket{},
	}
	s.cache = &cacheStore{s: s, index: newCacheIndex(cfg.Cache)}
	s.files = &fileStore{s: s, usage: map[string]*nsUsage{}}
	s.total = &totalQuota{s: s, max: cfg.MaxTotalBytes}
	return s, nil
}

// Ready is closed once the endpoints serve.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Run opens the file root and the cache bucket, serves until ctx is
// cancelled, then stops taking requests and waits up to DrainTimeout for
// running ones. It returns an error if it cannot start (JetStream not
// enabled, file root unusable).
func (s *Service) Run(ctx context.Context) error {
	if err := s.files.open(); err != nil {
		return err
	}
	defer s.files.close()
	if err := replicas.Setup(ctx, s.log, subjects.HelCacheBucket, s.cache.ensure); err != nil {
		return fmt.Errorf("hel: cache bucket: %w", err)
	}
	watchCtx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { defer close(watched); s.cache.watch(watchCtx) }()
	defer func() { stopWatch(); <-watched }()
	svc, err := microsvc.Start(s.nc, microsvc.Config{
		Metrics:     s.cfg.Metrics,
		Name:        subjects.HelService,
		Version:     Version,
		Description: "Hel storage: KV, objects, files and cache for Loki scripts",
		QueueGroup:  subjects.HelQueueGroup,
	}, s.log)
	if err != nil {
		return fmt.Errorf("hel: %w", err)
	}
	var endpoints []microsvc.Endpoint
	for _, op := range s.ops() {
		h := middleware.ErrorLog(s.log, op.subject, middleware.Deadline(HeaderTimeout, op.timeout, s.cfg.MaxRequestTimeout, s.decode(op)))
		e := microsvc.Endpoint{Name: op.name, Subject: op.subject, Handler: h, Workers: s.cfg.Workers, Queue: s.cfg.Queue}
		if op.transfer {
			e.Workers, e.Queue = s.cfg.Objects.Transfers, s.cfg.Objects.Transfers
		}
		endpoints = append(endpoints, e)
	}
	if err := svc.AddEndpoints(s.cfg.DrainTimeout, endpoints...); err != nil {
		return fmt.Errorf("hel: %w", err)
	}
	close(s.ready)
	s.log.Debug("hel serving", "files_root", s.cfg.Files.Root)
	<-ctx.Done()
	return svc.Stop(s.cfg.DrainTimeout)
}

// handler serves one decoded request.
type handler func(ctx context.Context, req request, r *microsvc.Request) ([]byte, nats.Header, error)

// op is one endpoint: a subject, the request fields it needs and its handler.
type op struct {
	name, subject string
	need          field
	handle        handler
	timeout       time.Duration // when the request has no Hel-Timeout
	transfer      bool          // an object transfer: its own small worker pool
}

func (s *Service) ops() []op {
	t := s.cfg.RequestTimeout
	xfer := min(s.cfg.Objects.MaxTransferTime, s.cfg.MaxRequestTimeout)
	return []op{
		{"kv_get", subjects.HelKVGet, fBucket | fKey, s.kvGet, t, false},
		{"kv_put", subjects.HelKVPut, fBucket | fKey, bounded(s.kvPut), t, false},
		{"kv_create", subjects.HelKVCreate, fBucket | fKey, bounded(s.kvCreate), t, false},
		{"kv_update", subjects.HelKVUpdate, fBucket | fKey | fRevision, bounded(s.kvUpdate), t, false},
		{"kv_delete", subjects.HelKVDelete, fBucket | fKey, bounded(s.kvDelete), t, false},
		{"kv_keys", subjects.HelKVKeys, fBucket, s.kvKeys, t, false},
		{"kv_history", subjects.HelKVHistory, fBucket | fKey, s.kvHistory, t, false},

		{"obj_put", subjects.HelObjPut, fBucket | fObject, s.objPut, xfer, true},
		{"obj_get", subjects.HelObjGet, fBucket | fObject, s.objGet, xfer, true},
		{"obj_info", subjects.HelObjInfo, fBucket | fObject, s.objInfo, t, false},
		{"obj_list", subjects.HelObjList, fBucket, s.objList, t, false},
		{"obj_delete", subjects.HelObjDelete, fBucket | fObject, s.objDelete, t, false},

		{"files_read", subjects.HelFilesRead, fNamespace | fPath, s.files.read, t, false},
		{"files_write", subjects.HelFilesWrite, fNamespace | fPath, s.files.write, t, false},
		{"files_append", subjects.HelFilesAppend, fNamespace | fPath, s.files.append, t, false},
		{"files_delete", subjects.HelFilesDelete, fNamespace | fPath, s.files.remove, t, false},
		{"files_list", subjects.HelFilesList, fNamespace, s.files.list, t, false},
		{"files_mkdir", subjects.HelFilesMkdir, fNamespace | fPath, s.files.mkdir, t, false},
		{"files_stat", subjects.HelFilesStat, fNamespace | fPath, s.files.stat, t, false},

		{"cache_get", subjects.HelCacheGet, fCacheKey, s.cache.get, t, false},
		{"cache_set", subjects.HelCacheSet, fCacheKey, bounded(s.cache.set), t, false},
		{"cache_delete", subjects.HelCacheDelete, fCacheKey, bounded(s.cache.remove), t, false},
		{"cache_clear", subjects.HelCacheClear, 0, s.cache.clear, t, false},
	}
}

// decode turns an op into a microsvc handler that decodes the request first.
func (s *Service) decode(o op) microsvc.Handler {
	return func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
		req, err := decodeRequest(r.Header(), o.need)
		if err != nil {
			return nil, nil, err
		}
		return o.handle(ctx, req, r)
	}
}

// replyHeader returns a header with the given key/value pairs set.
func replyHeader(kv ...string) nats.Header {
	h := make(nats.Header, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// tooLarge is the error of a value over a size limit.
func tooLarge(what string, n, limit int) error {
	return fault.New(fault.ResourceExhausted, "%s is %d bytes: at most %d", what, n, limit)
}

// storageType maps the config's storage to JetStream's.
func (s *Service) storageType() jetstream.StorageType {
	if s.cfg.Storage == "memory" {
		return jetstream.MemoryStorage
	}
	return jetstream.FileStorage
}
