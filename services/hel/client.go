package hel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/middleware"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// DefaultClientTimeout bounds a Client call whose context has no deadline
// (object transfers excepted: they run until their context ends).
const DefaultClientTimeout = 10 * time.Second

// Client calls Hel over NATS. It is safe for concurrent use; the caller owns
// and closes the connection. Every error is a *fault.Error: the service's
// code and message, INVALID_ARGUMENT for arguments refused before sending,
// UNAVAILABLE when no Hel replica answers, DEADLINE_EXCEEDED when ctx ends.
type Client struct {
	nc *nats.Conn
}

// NewClient returns a client on nc.
func NewClient(nc *nats.Conn) *Client { return &Client{nc: nc} }

// Entry is a KV value with its revision.
type Entry struct {
	Value
	Revision uint64
	Created  time.Time
}

// args collects validated request headers; the first invalid argument wins.
type args struct {
	h   nats.Header
	err error
}

func newArgs() *args { return &args{h: nats.Header{}} }

func (a *args) name(header, v string) *args {
	if a.err == nil {
		if err := subjects.ValidHelName(v); err != nil {
			a.err = fault.New(fault.InvalidArgument, "%s %q must be 1 to 64 of [A-Za-z0-9_-]", strings.ToLower(strings.TrimPrefix(header, "Hel-")), v)
		}
	}
	a.h.Set(header, v)
	return a
}

func (a *args) check(header, v string, valid func(string) error) *args {
	if a.err == nil {
		a.err = valid(v)
	}
	a.h.Set(header, v)
	return a
}

func (a *args) path(p string) *args {
	clean, err := CleanPath(p)
	if a.err == nil {
		a.err = err
	}
	a.h.Set(HeaderPath, clean)
	return a
}

func (a *args) set(header, v string) *args {
	a.h.Set(header, v)
	return a
}

// request sends one request and returns the reply, or the reply's error
// (with the reply, whose headers may still be useful).
func (c *Client) request(ctx context.Context, subj string, a *args, body []byte) (*nats.Msg, error) {
	if a.err != nil {
		return nil, a.err
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultClientTimeout)
		defer cancel()
	}
	dl, _ := ctx.Deadline()
	middleware.SetTimeout(a.h, HeaderTimeout, dl)
	resp, err := c.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subj, Header: a.h, Data: body})
	if err != nil {
		return nil, microsvc.TransportError(err, subjects.HelService, subj)
	}
	return resp, microsvc.ReplyError(resp, subjects.HelService, subj)
}

func decodeJSON(m *nats.Msg, subj string, v any) error {
	if err := json.Unmarshal(m.Data, v); err != nil {
		return fault.Wrap(fault.Internal, err, "decode %s reply: %v", subj, err)
	}
	return nil
}

func revisionOf(m *nats.Msg) uint64 {
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseUint(m.Header.Get(HeaderRevision), 10, 64)
	return n
}

func valueArgs(a *args, v Value) *args {
	if v.Type == "" {
		v.Type = ContentBytes
	}
	return a.set(HeaderContentType, string(v.Type))
}

func (c *Client) kvArgs(bucket, key string) *args {
	return newArgs().name(HeaderBucket, bucket).check(HeaderKey, key, validKey)
}

// KVGet returns the latest value of key; NOT_FOUND when it has none.
func (c *Client) KVGet(ctx context.Context, bucket, key string) (Entry, error) {
	m, err := c.request(ctx, subjects.HelKVGet, c.kvArgs(bucket, key), nil)
	if err != nil {
		return Entry{}, err
	}
	e := Entry{Value: Value{Data: m.Data, Type: ContentType(m.Header.Get(HeaderContentType))}, Revision: revisionOf(m)}
	if e.Type == "" {
		e.Type = ContentBytes
	}
	e.Created, _ = time.Parse(time.RFC3339Nano, m.Header.Get(HeaderCreated))
	return e, nil
}

// KVPut stores v under key and returns the new revision.
func (c *Client) KVPut(ctx context.Context, bucket, key string, v Value) (uint64, error) {
	m, err := c.request(ctx, subjects.HelKVPut, valueArgs(c.kvArgs(bucket, key), v), v.Data)
	return revisionOf(m), err
}

// KVCreate stores v under key only if the key has no value, and returns the
// revision; ALREADY_EXISTS otherwise, with the current revision returned
// alongside the error.
// A ttl > 0 (whole seconds) makes the key expire; only Create takes a TTL,
// and a later put or update drops it.
func (c *Client) KVCreate(ctx context.Context, bucket, key string, v Value, ttl time.Duration) (uint64, error) {
	a := valueArgs(c.kvArgs(bucket, key), v)
	if ttl > 0 {
		a.set(HeaderTTL, ttl.String())
	}
	m, err := c.request(ctx, subjects.HelKVCreate, a, v.Data)
	return revisionOf(m), err
}

// KVUpdate stores v under key only if the key's latest revision is rev, and
// returns the new revision; FAILED_PRECONDITION otherwise, with the current
// revision (0 if the key has no value) returned alongside the error.
func (c *Client) KVUpdate(ctx context.Context, bucket, key string, v Value, rev uint64) (uint64, error) {
	a := valueArgs(c.kvArgs(bucket, key), v).set(HeaderRevision, strconv.FormatUint(rev, 10))
	m, err := c.request(ctx, subjects.HelKVUpdate, a, v.Data)
	return revisionOf(m), err
}

// KVDelete deletes key (its history is kept). With rev > 0 it deletes only
// if rev is the latest revision.
func (c *Client) KVDelete(ctx context.Context, bucket, key string, rev uint64) error {
	a := c.kvArgs(bucket, key)
	if rev > 0 {
		a.set(HeaderRevision, strconv.FormatUint(rev, 10))
	}
	_, err := c.request(ctx, subjects.HelKVDelete, a, nil)
	return err
}

// KVKeys lists the keys of bucket, sorted, optionally matching a NATS-style
// filter ("" for all).
func (c *Client) KVKeys(ctx context.Context, bucket, filter string) ([]string, error) {
	a := newArgs().name(HeaderBucket, bucket)
	if filter != "" {
		a.check(HeaderFilter, filter, validFilter)
	}
	m, err := c.request(ctx, subjects.HelKVKeys, a, nil)
	if err != nil {
		return nil, err
	}
	var out KeyList
	return out.Keys, decodeJSON(m, subjects.HelKVKeys, &out)
}

// Page selects one page of a listing: at most Limit items (0: as many as
// the service gives in one reply) after the cursor After ("" for the first
// page). The listing calls ending in Page return the cursor of the next page,
// "" after the last one.
type Page struct {
	Limit int
	After string
}

func (a *args) page(p Page) *args {
	n := p.Limit
	if n <= 0 {
		n = math.MaxInt32 // the service clamps it to its cap
	}
	a.h.Set(HeaderLimit, strconv.Itoa(n))
	if p.After != "" {
		a.check(HeaderAfter, p.After, func(v string) error { return validHeaderValue("cursor", v) })
	}
	return a
}

// KVKeysPage is one page of KVKeys.
func (c *Client) KVKeysPage(ctx context.Context, bucket, filter string, p Page) ([]string, string, error) {
	a := newArgs().name(HeaderBucket, bucket).page(p)
	if filter != "" {
		a.check(HeaderFilter, filter, validFilter)
	}
	m, err := c.request(ctx, subjects.HelKVKeys, a, nil)
	if err != nil {
		return nil, "", err
	}
	var out KeyList
	return out.Keys, out.Next, decodeJSON(m, subjects.HelKVKeys, &out)
}

// KVHistoryPage is one page of KVHistory; the cursor is a revision.
func (c *Client) KVHistoryPage(ctx context.Context, bucket, key string, p Page) ([]HistoryEntry, string, error) {
	m, err := c.request(ctx, subjects.HelKVHistory, c.kvArgs(bucket, key).page(p), nil)
	if err != nil {
		return nil, "", err
	}
	var out History
	return out.Entries, out.Next, decodeJSON(m, subjects.HelKVHistory, &out)
}

// ListFilesPage is one page of ListFiles.
func (c *Client) ListFilesPage(ctx context.Context, ns, dir string, p Page) ([]FileInfo, string, error) {
	m, err := c.request(ctx, subjects.HelFilesList, fileArgs(ns, dir).page(p), nil)
	if err != nil {
		return nil, "", err
	}
	var out FileList
	return out.Entries, out.Next, decodeJSON(m, subjects.HelFilesList, &out)
}

// ListObjectsPage is one page of ListObjects.
func (c *Client) ListObjectsPage(ctx context.Context, bucket string, p Page) ([]ObjectInfo, string, error) {
	m, err := c.request(ctx, subjects.HelObjList, newArgs().name(HeaderBucket, bucket).page(p), nil)
	if err != nil {
		return nil, "", err
	}
	var out ObjectList
	return out.Objects, out.Next, decodeJSON(m, subjects.HelObjList, &out)
}

// KVHistory returns the kept revisions of key, oldest first.
func (c *Client) KVHistory(ctx context.Context, bucket, key string) ([]HistoryEntry, error) {
	m, err := c.request(ctx, subjects.HelKVHistory, c.kvArgs(bucket, key), nil)
	if err != nil {
		return nil, err
	}
	var out History
	return out.Entries, decodeJSON(m, subjects.HelKVHistory, &out)
}

// CacheGet returns the cached value of key; NOT_FOUND on a miss or once it expired.
func (c *Client) CacheGet(ctx context.Context, key string) (Value, error) {
	m, err := c.request(ctx, subjects.HelCacheGet, newArgs().check(HeaderKey, key, validCacheKey), nil)
	if err != nil {
		return Value{}, err
	}
	v := Value{Data: m.Data, Type: ContentType(m.Header.Get(HeaderContentType))}
	if v.Type == "" {
		v.Type = ContentBytes
	}
	return v, nil
}

// CacheSet caches v under key for ttl (0: the service's default TTL).
func (c *Client) CacheSet(ctx context.Context, key string, v Value, ttl time.Duration) error {
	a := valueArgs(newArgs().check(HeaderKey, key, validCacheKey), v)
	if ttl > 0 {
		a.set(HeaderTTL, ttl.String())
	}
	_, err := c.request(ctx, subjects.HelCacheSet, a, v.Data)
	return err
}

// CacheDelete invalidates key on every replica.
func (c *Client) CacheDelete(ctx context.Context, key string) error {
	_, err := c.request(ctx, subjects.HelCacheDelete, newArgs().check(HeaderKey, key, validCacheKey), nil)
	return err
}

// CacheClear invalidates every key.
func (c *Client) CacheClear(ctx context.Context) error {
	_, err := c.request(ctx, subjects.HelCacheClear, newArgs(), nil)
	return err
}

func fileArgs(ns, path string) *args { return newArgs().name(HeaderNamespace, ns).path(path) }

// ReadFile returns the content of a file of at most Files.MaxReadBytes.
func (c *Client) ReadFile(ctx context.Context, ns, path string) ([]byte, error) {
	data, _, err := c.ReadFileAt(ctx, ns, path, 0, 0)
	return data, err
}

// ReadFileAt returns up to length bytes (0: to the end) of a file from
// offset, and the file's size.
func (c *Client) ReadFileAt(ctx context.Context, ns, path string, offset, length int64) ([]byte, int64, error) {
	if offset < 0 || length < 0 {
		return nil, 0, fault.New(fault.InvalidArgument, "offset and length must not be negative")
	}
	a := fileArgs(ns, path).set(HeaderOffset, strconv.FormatInt(offset, 10)).set(HeaderLength, strconv.FormatInt(length, 10))
	m, err := c.request(ctx, subjects.HelFilesRead, a, nil)
	if err != nil {
		return nil, 0, err
	}
	size, _ := strconv.ParseInt(m.Header.Get(HeaderSize), 10, 64)
	return m.Data, size, nil
}

// WriteFile replaces a file atomically with data, creating its directories.
func (c *Client) WriteFile(ctx context.Context, ns, path string, data []byte) error {
	_, err := c.request(ctx, subjects.HelFilesWrite, fileArgs(ns, path), data)
	return err
}

// AppendFile appends data to a file, creating it and its directories.
func (c *Client) AppendFile(ctx context.Context, ns, path string, data []byte) error {
	_, err := c.request(ctx, subjects.HelFilesAppend, fileArgs(ns, path), data)
	return err
}

// DeleteFile removes a file or an empty directory.
func (c *Client) DeleteFile(ctx context.Context, ns, path string) error {
	_, err := c.request(ctx, subjects.HelFilesDelete, fileArgs(ns, path), nil)
	return err
}

// Mkdir creates a directory and its parents.
func (c *Client) Mkdir(ctx context.Context, ns, path string) error {
	_, err := c.request(ctx, subjects.HelFilesMkdir, fileArgs(ns, path), nil)
	return err
}

// Stat describes a file or directory ("" or "." is the namespace root).
func (c *Client) Stat(ctx context.Context, ns, path string) (FileInfo, error) {
	m, err := c.request(ctx, subjects.HelFilesStat, fileArgs(ns, path), nil)
	if err != nil {
		return FileInfo{}, err
	}
	var fi FileInfo
	return fi, decodeJSON(m, subjects.HelFilesStat, &fi)
}

// ListFiles lists a directory ("" or "." is the namespace root), sorted by name.
func (c *Client) ListFiles(ctx context.Context, ns, dir string) ([]FileInfo, error) {
	m, err := c.request(ctx, subjects.HelFilesList, fileArgs(ns, dir), nil)
	if err != nil {
		return nil, err
	}
	var out FileList
	return out.Entries, decodeJSON(m, subjects.HelFilesList, &out)
}

func objArgs(bucket, name string) *args {
	return newArgs().name(HeaderBucket, bucket).check(HeaderObject, name, validObjectName)
}

// ObjectInfo describes an object.
func (c *Client) ObjectInfo(ctx context.Context, bucket, name string) (ObjectInfo, error) {
	m, err := c.request(ctx, subjects.HelObjInfo, objArgs(bucket, name), nil)
	if err != nil {
		return ObjectInfo{}, err
	}
	var oi ObjectInfo
	return oi, decodeJSON(m, subjects.HelObjInfo, &oi)
}

// ListObjects describes every object of bucket.
func (c *Client) ListObjects(ctx context.Context, bucket string) ([]ObjectInfo, error) {
	m, err := c.request(ctx, subjects.HelObjList, newArgs().name(HeaderBucket, bucket), nil)
	if err != nil {
		return nil, err
	}
	var out ObjectList
	return out.Objects, decodeJSON(m, subjects.HelObjList, &out)
}

// DeleteObject deletes an object.
func (c *Client) DeleteObject(ctx context.Context, bucket, name string) error {
	_, err := c.request(ctx, subjects.HelObjDelete, objArgs(bucket, name), nil)
	return err
}

// transfer is one side of an object transfer: a subscription on an inbox
// the service sends frames and the final reply to.
type transfer struct {
	nc    *nats.Conn
	sub   *nats.Subscription
	inbox string
	subj  string
	// uploading is set once chunks go to the service's upload subject.
	// A chunk that finds no subscriber there then means the service has
	// ended the upload (refused it); its final reply is on its way.
	uploading bool
}

// endedUploadGrace is how long a client waits for the service's final
// reply after a chunk found the upload subject gone.
const endedUploadGrace = 2 * time.Second

func (c *Client) startTransfer(ctx context.Context, subj string, a *args) (*transfer, error) {
	if a.err != nil {
		return nil, a.err
	}
	t := &transfer{nc: c.nc, inbox: c.nc.NewRespInbox(), subj: subj}
	sub, err := c.nc.SubscribeSync(t.inbox)
	if err != nil {
		return nil, microsvc.TransportError(err, subjects.HelService, subj)
	}
	t.sub = sub
	if dl, ok := ctx.Deadline(); ok {
		middleware.SetTimeout(a.h, HeaderTimeout, dl)
	}
	if err := c.nc.PublishMsg(&nats.Msg{Subject: subj, Reply: t.inbox, Header: a.h}); err != nil {
		_ = sub.Unsubscribe()
		return nil, microsvc.TransportError(err, subjects.HelService, subj)
	}
	return t, nil
}

func (t *transfer) close() { _ = t.sub.Unsubscribe() }

// next returns the next frame or final reply; service errors are returned
// as errors.
func (t *transfer) next(ctx context.Context) (*nats.Msg, error) {
	var ended error // set once a chunk found the upload subject gone
	for {
		wait := ctx
		if ended != nil {
			var cancel context.CancelFunc
			wait, cancel = context.WithTimeout(ctx, endedUploadGrace)
			defer cancel()
		}
		m, err := t.sub.NextMsgWithContext(wait)
		if err != nil {
			if ended != nil && ctx.Err() == nil {
				return nil, ended
			}
			return nil, microsvc.TransportError(err, subjects.HelService, t.subj)
		}
		if err := microsvc.ReplyError(m, subjects.HelService, t.subj); err != nil {
			if t.uploading && m.Header.Get("Status") == "503" {
				ended = err
				continue
			}
			return nil, err
		}
		return m, nil
	}
}

func protocolError(subj, format string, args ...any) error {
	return fault.New(fault.Internal, "%s: protocol error: %s", subj, fmt.Sprintf(format, args...))
}

func frameMsg(subj, reply, frame string, seq uint64) *nats.Msg {
	m := nats.NewMsg(subj)
	m.Reply = reply
	m.Header.Set(HeaderFrame, frame)
	m.Header.Set(HeaderSeq, strconv.FormatUint(seq, 10))
	return m
}

// PutObject uploads r as object name in bucket, streaming it in chunks with
// at most the service's window unacknowledged, and returns the stored
// object's info. size is r's length if known (so an upload past the quota
// is refused before it starts), or -1. The SHA-256 of what was read is
// checked by the service before the object replaces any previous one, and
// checked again against the stored digest here. Nothing is stored if the
// upload fails or ctx ends.
func (c *Client) PutObject(ctx context.Context, bucket, name string, r io.Reader, size int64) (ObjectInfo, error) {
	a := objArgs(bucket, name)
	if size >= 0 {
		a.set(HeaderSize, strconv.FormatInt(size, 10))
	}
	t, err := c.startTransfer(ctx, subjects.HelObjPut, a)
	if err != nil {
		return ObjectInfo{}, err
	}
	defer t.close()
	ready, err := t.next(ctx)
	if err != nil {
		return ObjectInfo{}, err
	}
	upload := ready.Header.Get(HeaderUpload)
	window, _ := strconv.ParseUint(ready.Header.Get(HeaderWindow), 10, 64)
	chunkSize, _ := strconv.Atoi(ready.Header.Get(HeaderChunkSize))
	if ready.Header.Get(HeaderFrame) != FrameReady || upload == "" || window == 0 || chunkSize <= 0 {
		return ObjectInfo{}, protocolError(t.subj, "want a ready frame with upload subject, window and chunk size")
	}
	t.uploading = true
	cancel := func() { _ = c.nc.PublishMsg(frameMsg(upload, "", FrameCancel, 0)) }
	h := sha256.New()
	buf := make([]byte, chunkSize)
	var seq, acked uint64
	awaitAck := func() error {
		m, err := t.next(ctx)
		if err != nil {
			return err
		}
		if m.Header.Get(HeaderFrame) != FrameAck {
			return protocolError(t.subj, "want an ack, got frame %q", m.Header.Get(HeaderFrame))
		}
		if n, err := strconv.ParseUint(m.Header.Get(HeaderSeq), 10, 64); err == nil && n > acked && n <= seq {
			acked = n
		}
		return nil
	}
	for {
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			for seq-acked >= window {
				if err := awaitAck(); err != nil {
					cancel()
					return ObjectInfo{}, err
				}
			}
			seq++
			h.Write(buf[:n])
			m := frameMsg(upload, t.inbox, FrameChunk, seq)
			m.Data = buf[:n] // copied by PublishMsg
			if err := c.nc.PublishMsg(m); err != nil {
				cancel()
				return ObjectInfo{}, microsvc.TransportError(err, subjects.HelService, t.subj)
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			cancel()
			return ObjectInfo{}, fault.Wrap(fault.InvalidArgument, rerr, "read object %q: %v", name, rerr)
		}
	}
	sum := hex.EncodeToString(h.Sum(nil))
	seq++
	eof := frameMsg(upload, t.inbox, FrameEOF, seq)
	eof.Header.Set(HeaderSHA256, sum)
	if err := c.nc.PublishMsg(eof); err != nil {
		return ObjectInfo{}, microsvc.TransportError(err, subjects.HelService, t.subj)
	}
	for {
		m, err := t.next(ctx)
		if err != nil {
			return ObjectInfo{}, err
		}
		switch m.Header.Get(HeaderFrame) {
		case FrameAck:
			continue
		case "":
			var info ObjectInfo
			if err := decodeJSON(m, t.subj, &info); err != nil {
				return ObjectInfo{}, err
			}
			if info.SHA256 != sum {
				return info, fault.New(fault.Internal, "bucket %q object %q: stored SHA-256 %s differs from the uploaded %s", bucket, name, info.SHA256, sum)
			}
			return info, nil
		default:
			return ObjectInfo{}, protocolError(t.subj, "unexpected frame %q after eof", m.Header.Get(HeaderFrame))
		}
	}
}

// GetObject streams object name of bucket into w, acknowledging each chunk,
// and returns its info once the whole object arrived and its SHA-256
// matched. On an error w may have received part of the object.
func (c *Client) GetObject(ctx context.Context, bucket, name string, w io.Writer) (ObjectInfo, error) {
	t, err := c.startTransfer(ctx, subjects.HelObjGet, objArgs(bucket, name))
	if err != nil {
		return ObjectInfo{}, err
	}
	defer t.close()
	start, err := t.next(ctx)
	if err != nil {
		return ObjectInfo{}, err
	}
	var info ObjectInfo
	ackTo := start.Header.Get(HeaderAckTo)
	if start.Header.Get(HeaderFrame) != FrameStart || ackTo == "" {
		return ObjectInfo{}, protocolError(t.subj, "want a start frame with an ack subject")
	}
	if err := decodeJSON(start, t.subj, &info); err != nil {
		return ObjectInfo{}, err
	}
	cancel := func() { _ = c.nc.PublishMsg(frameMsg(ackTo, "", FrameCancel, 0)) }
	h := sha256.New()
	var seq uint64
	var total uint64
	for {
		m, err := t.next(ctx)
		if err != nil {
			cancel()
			return ObjectInfo{}, err
		}
		switch m.Header.Get(HeaderFrame) {
		case FrameChunk:
			got, _ := strconv.ParseUint(m.Header.Get(HeaderSeq), 10, 64)
			if got != seq+1 {
				cancel()
				return ObjectInfo{}, protocolError(t.subj, "chunk %d arrived after %d", got, seq)
			}
			seq = got
			total += uint64(len(m.Data))
			h.Write(m.Data)
			if _, err := w.Write(m.Data); err != nil {
				cancel()
				return ObjectInfo{}, fault.Wrap(fault.Internal, err, "write object %q: %v", name, err)
			}
			if err := c.nc.PublishMsg(frameMsg(ackTo, "", FrameAck, seq)); err != nil {
				return ObjectInfo{}, microsvc.TransportError(err, subjects.HelService, t.subj)
			}
		case "":
			if n, _ := strconv.ParseUint(m.Header.Get(HeaderSeq), 10, 64); n != seq || total != info.Size {
				return ObjectInfo{}, protocolError(t.subj, "got %d chunks (%d bytes), the service sent %d (%d bytes)", seq, total, n, info.Size)
			}
			if sum := hex.EncodeToString(h.Sum(nil)); sum != info.SHA256 {
				return ObjectInfo{}, fault.New(fault.Internal, "bucket %q object %q: received SHA-256 %s, stored %s", bucket, name, sum, info.SHA256)
			}
			return info, nil
		default:
			cancel()
			return ObjectInfo{}, protocolError(t.subj, "unexpected frame %q", m.Header.Get(HeaderFrame))
		}
	}
}
