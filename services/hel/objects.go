package hel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/replicas"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Objects are streamed through Hel, not read or written by clients directly
// in the object store.
//
// A blob such as a firmware image can be far larger than a NATS message, so
// obj.put and obj.get are chunked transfers over inboxes with a sliding
// window of Objects.Window unacknowledged chunks (see docs/HEL.md for the
// frames). A replica therefore holds at most a window of chunks of any
// object; the object store client beneath reads and writes one chunk at a
// time. Going through Hel rather than handing clients the object store keeps
// one access point whose subjects NATS permissions can allow or deny (a
// client needs no rights on Hel's streams), checks names and quotas before a
// byte moves, verifies the SHA-256 of an upload before the previous object
// is replaced, and lets Hel change how objects are stored. The price is one
// more hop per chunk, which the window hides.

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Bucket      string    `json:"bucket"`
	Name        string    `json:"name"`
	Description string    `json:"description,omitempty"`
	Size        uint64    `json:"size"`
	Chunks      uint32    `json:"chunks"`
	SHA256      string    `json:"sha256"` // hex
	Modified    time.Time `json:"modified"`
}

// ObjectList is the reply of obj.list.
type ObjectList struct {
	Objects []ObjectInfo `json:"objects"`
	// Next is the cursor of the next page of a paged listing (HeaderLimit),
	// empty on the last page.
	Next string `json:"next,omitempty"`
}

// objBucket is a bound object store; configured as for kvBucket.
type objBucket struct {
	obs        jetstream.ObjectStore
	configured bool
}

func (s *Service) objFor(ctx context.Context, name string, write bool) (jetstream.ObjectStore, error) {
	s.mu.Lock()
	b := s.objBuckets[name]
	s.mu.Unlock()
	if b != nil && (b.configured || !write) {
		return b.obs, nil
	}
	if write {
		s.setupMu.Lock()
		defer s.setupMu.Unlock()
		s.mu.Lock()
		b = s.objBuckets[name]
		s.mu.Unlock()
		if b != nil && b.configured {
			return b.obs, nil
		}
	}
	jsName, err := subjects.HelObjBucket(name)
	if err != nil {
		return nil, fault.New(fault.InvalidArgument, "%v", err)
	}
	what := fmt.Sprintf("object bucket %q", name)
	if write {
		want := s.cfg.Replicas
		// An existing bucket keeps its replica count (see replicas.Keep).
		if cur, err := s.js.ObjectStore(ctx, jsName); err == nil {
			if st, err := cur.Status(ctx); err == nil {
				want = replicas.Keep(s.log, jsName, st.Replicas(), want)
			}
		}
		obs, err := s.createObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket:      jsName,
			Description: "Hel object bucket " + name,
			MaxBytes:    quota(s.cfg.Objects.Buckets, name, s.cfg.Objects.MaxBytes),
			Storage:     s.storageType(),
			Replicas:    want,
		})
		if err != nil {
			return nil, storeError(err, what)
		}
		b = &objBucket{obs: obs, configured: true}
	} else {
		obs, err := s.js.ObjectStore(ctx, jsName)
		if err != nil {
			return nil, storeError(err, what)
		}
		b = &objBucket{obs: obs}
	}
	s.mu.Lock()
	if cur := s.objBuckets[name]; cur == nil || !cur.configured || b.configured {
		s.objBuckets[name] = b
	}
	s.mu.Unlock()
	return b.obs, nil
}

func (s *Service) forgetObj(name string, err error) {
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) ||
		errors.Is(err, nats.ErrNoResponders) {
		s.mu.Lock()
		delete(s.objBuckets, name)
		s.mu.Unlock()
	}
}

func objWhat(req request) string { return fmt.Sprintf("bucket %q object %q", req.bucket, req.object) }

// objectInfo converts the object store's info, with the digest as hex.
func objectInfo(bucket string, i *jetstream.ObjectInfo) ObjectInfo {
	out := ObjectInfo{
		Bucket: bucket, Name: i.Name, Description: i.Description,
		Size: i.Size, Chunks: i.Chunks, Modified: i.ModTime.UTC(),
	}
	if d, err := jetstream.DecodeObjectDigest(i.Digest); err == nil {
		out.SHA256 = hex.EncodeToString(d)
	}
	return out
}

// errUploadDone unblocks the upload receiver once the store stopped reading.
var errUploadDone = errors.New("upload finished")

// Per-message storage overhead Hel counts against a bucket's quota on top
// of an upload's bytes, so that its own check refuses an upload before the
// stream limit would (chunk subjects are under 100 bytes; the meta message
// is JSON with the name and description).
const (
	chunkOverhead = 160
	metaOverhead  = 4096
)

// upload is what the receiver learned about an upload.
type upload struct {
	sha256 string       // hex, set once the whole upload arrived
	res    *reservation // of the total quota; grown per chunk when the size is unknown
}

// objPut receives an upload. Protocol: reply FrameReady with the upload
// subject; then chunks arrive there, each acked; FrameEOF (with the SHA-256)
// completes it; the final reply is the ObjectInfo. The object replaces any
// previous one of the same name only once it is complete and verified.
//
// The quota is checked by Hel as the bytes arrive, against the bucket's use
// when the upload started, and the upload is aborted through its reader: the
// object store client then discards the partial object without writing its
// meta. Leaving the refusal to the stream limit alone is not safe: the
// object store client publishes chunks asynchronously and may write the new
// meta before it learns a chunk was refused, leaving the name pointing at
// purged chunks. That can still happen when concurrent uploads together cross
// the quota; restoreMeta then puts the previous meta back.
func (s *Service) objPut(ctx context.Context, req request, r *microsvc.Request) ([]byte, nats.Header, error) {
	if !r.HasReply() {
		return nil, nil, fault.New(fault.InvalidArgument, "obj.put needs a reply subject")
	}
	// The total quota: the whole upload when its size is known, else the
	// meta now and each chunk as it arrives (receiveUpload).
	hold := int64(metaOverhead)
	if req.size >= 0 {
		hold += req.size + chunks(req.size, s.cfg.Objects.ChunkSize)*chunkOverhead
	}
	res, err := s.total.reserve(ctx, hold, false, objWhat(req))
	if err != nil {
		return nil, nil, err
	}
	written := false
	defer func() { res.end(written) }()
	obs, err := s.objFor(ctx, req.bucket, true)
	if err != nil {
		return nil, nil, err
	}
	st, err := obs.Status(ctx)
	if err != nil {
		s.forgetObj(req.bucket, err)
		return nil, nil, storeError(err, objWhat(req))
	}
	prev, err := obs.GetInfo(ctx, req.object)
	if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, nil, storeError(err, objWhat(req))
	}
	q := quota(s.cfg.Objects.Buckets, req.bucket, s.cfg.Objects.MaxBytes)
	used := int64(st.Size())
	room := q - used - metaOverhead
	if req.size >= 0 && req.size+chunks(req.size, s.cfg.Objects.ChunkSize)*chunkOverhead > room {
		return nil, nil, fault.New(fault.ResourceExhausted,
			"%s: %d bytes would exceed the bucket's quota (%d of %d bytes used)", objWhat(req), req.size, used, q)
	}
	inbox := s.nc.NewInbox()
	sub, err := s.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, nil, fmt.Errorf("subscribe upload inbox: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	w := s.cfg.Objects.Window
	_ = sub.SetPendingLimits(w+4, (w+4)*(s.cfg.Objects.ChunkSize+headerRoom))

	ready := nats.NewMsg("")
	ready.Header.Set(HeaderFrame, FrameReady)
	ready.Header.Set(HeaderUpload, inbox)
	ready.Header.Set(HeaderWindow, strconv.Itoa(w))
	ready.Header.Set(HeaderChunkSize, strconv.Itoa(s.cfg.Objects.ChunkSize))
	if err := r.Publish(ready); err != nil {
		return nil, nil, fmt.Errorf("send ready: %w", err)
	}

	pr, pw := io.Pipe()
	recv := make(chan error, 1)
	up := upload{res: res}
	go func() { recv <- s.receiveUpload(ctx, req, sub, pw, room, used, q, &up) }()
	meta := jetstream.ObjectMeta{
		Name: req.object, Description: req.description,
		Opts: &jetstream.ObjectMetaOptions{ChunkSize: uint32(s.cfg.Objects.ChunkSize)},
	}
	info, err := obs.Put(ctx, meta, pr)
	pr.CloseWithError(errUploadDone)
	rerr := <-recv
	if err != nil {
		if up.sha256 != "" {
			// The whole upload was read, so the store may have written
			// the meta of an object whose chunks it then purged.
			s.restoreMeta(ctx, obs, req, prev, up.sha256)
		}
		s.forgetObj(req.bucket, err)
		return nil, nil, storeError(err, objWhat(req))
	}
	if rerr != nil {
		return nil, nil, rerr
	}
	written = true
	return jsonReply(objectInfo(req.bucket, info))
}

func chunks(size int64, chunkSize int) int64 { return (size + int64(chunkSize) - 1) / int64(chunkSize) }

// restoreMeta puts back the previous meta of an object (or deletes the name
// if it had none) when a failed upload left the name pointing at its own,
// purged, chunks. It recognises that case by the digest of the upload.
func (s *Service) restoreMeta(ctx context.Context, obs jetstream.ObjectStore, req request, prev *jetstream.ObjectInfo, sum string) {
	cur, err := obs.GetInfo(ctx, req.object, jetstream.GetObjectInfoShowDeleted())
	if err != nil || cur.Deleted || (prev != nil && cur.NUID == prev.NUID) || objectInfo(req.bucket, cur).SHA256 != sum {
		return // the failed upload left the name alone
	}
	s.log.Warn("failed upload replaced an object's meta; restoring the previous one",
		logKeyBucket, req.bucket, "object", req.object)
	if prev == nil || prev.Deleted {
		if err := obs.Delete(ctx, req.object); err != nil {
			s.log.Error("remove the meta of a failed upload", logKeyBucket, req.bucket, "object", req.object, logKeyErr, err)
		}
		return
	}
	jsName, _ := subjects.HelObjBucket(req.bucket)
	subj, err := subjects.ObjectStoreMeta(jsName, req.object)
	if err == nil {
		m := nats.NewMsg(subj)
		m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupSubject)
		if m.Data, err = json.Marshal(prev); err == nil {
			_, err = s.js.PublishMsg(ctx, m)
		}
	}
	if err != nil {
		s.log.Error("restore the meta of an object after a failed upload", logKeyBucket, req.bucket, "object", req.object, logKeyErr, err)
	}
}

// receiveUpload copies chunks from sub into pw until FrameEOF, acking each.
// On any problem, including the upload growing past room bytes (the quota
// left when it started), it closes pw with the error, so the store's Put
// fails with it and discards the partial object without writing its meta.
func (s *Service) receiveUpload(ctx context.Context, req request, sub *nats.Subscription, pw *io.PipeWriter,
	room, used, q int64, up *upload) (err error) {
	defer func() {
		if err != nil {
			pw.CloseWithError(err)
		}
	}()
	h := sha256.New()
	var seq uint64
	var total int64
	for {
		m, err := nextFrame(ctx, sub, s.cfg.Objects.IdleTimeout, "chunk")
		if err != nil {
			return err
		}
		if m.Header.Get(HeaderFrame) == FrameCancel {
			return fault.New(fault.DeadlineExceeded, "%s: upload cancelled by the uploader", objWhat(req))
		}
		got, perr := strconv.ParseUint(m.Header.Get(HeaderSeq), 10, 64)
		if perr != nil || got != seq+1 {
			return fault.New(fault.InvalidArgument, "%s: upload frame %q arrived after chunk %d (lost or reordered)",
				objWhat(req), m.Header.Get(HeaderSeq), seq)
		}
		seq = got
		switch m.Header.Get(HeaderFrame) {
		case FrameChunk:
			if len(m.Data) > s.cfg.Objects.ChunkSize {
				return fault.New(fault.InvalidArgument, "%s: chunk %d is %d bytes: at most %d", objWhat(req), seq, len(m.Data), s.cfg.Objects.ChunkSize)
			}
			total += int64(len(m.Data))
			if req.size >= 0 && total > req.size {
				return fault.New(fault.InvalidArgument, "%s: more than the %d bytes announced in %s", objWhat(req), req.size, HeaderSize)
			}
			if total+int64(seq)*chunkOverhead > room {
				return fault.New(fault.ResourceExhausted, "%s: upload passed %d bytes, over the bucket's quota (%d of %d bytes used)",
					objWhat(req), total, used, q)
			}
			if req.size < 0 {
				if err := up.res.grow(ctx, int64(len(m.Data))+chunkOverhead, objWhat(req)); err != nil {
					return err
				}
			}
			h.Write(m.Data)
			if _, err := pw.Write(m.Data); err != nil {
				return err // the store stopped reading; its error is reported
			}
			ack := nats.NewMsg("")
			ack.Header.Set(HeaderFrame, FrameAck)
			ack.Header.Set(HeaderSeq, strconv.FormatUint(seq, 10))
			if err := m.RespondMsg(ack); err != nil {
				return fmt.Errorf("ack chunk %d: %w", seq, err)
			}
		case FrameEOF:
			if req.size >= 0 && total != req.size {
				return fault.New(fault.InvalidArgument, "%s: %d bytes uploaded, %d announced in %s", objWhat(req), total, req.size, HeaderSize)
			}
			sum := hex.EncodeToString(h.Sum(nil))
			if want := m.Header.Get(HeaderSHA256); want != "" && !strings.EqualFold(want, sum) {
				return fault.New(fault.InvalidArgument, "%s: SHA-256 of the upload is %s, the uploader sent %s; the upload was discarded",
					objWhat(req), sum, want)
			}
			up.sha256 = sum
			return pw.Close()
		default:
			return fault.New(fault.InvalidArgument, "%s: unexpected frame %q during upload", objWhat(req), m.Header.Get(HeaderFrame))
		}
	}
}

// nextFrame waits for the next message of a transfer for at most idle.
func nextFrame(ctx context.Context, sub *nats.Subscription, idle time.Duration, what string) (*nats.Msg, error) {
	wctx, cancel := context.WithTimeout(ctx, idle)
	defer cancel()
	m, err := sub.NextMsgWithContext(wctx)
	switch {
	case err == nil:
		return m, nil
	case ctx.Err() != nil:
		return nil, fault.New(fault.DeadlineExceeded, "transfer exceeded its deadline")
	case errors.Is(err, context.DeadlineExceeded):
		return nil, fault.New(fault.DeadlineExceeded, "no %s for %s: transfer abandoned", what, idle)
	}
	return nil, fmt.Errorf("transfer: %w", err)
}

// objGet sends an object. Protocol: FrameStart with the ObjectInfo and the
// ack subject; chunks numbered from 1, at most a window ahead of the acks;
// the final reply is the ObjectInfo again. A digest mismatch found while
// reading ends the transfer with an error instead of the final reply.
func (s *Service) objGet(ctx context.Context, req request, r *microsvc.Request) ([]byte, nats.Header, error) {
	if !r.HasReply() {
		return nil, nil, fault.New(fault.InvalidArgument, "obj.get needs a reply subject")
	}
	obs, err := s.objFor(ctx, req.bucket, false)
	if err != nil {
		return nil, nil, err
	}
	res, err := obs.Get(ctx, req.object)
	if err != nil {
		s.forgetObj(req.bucket, err)
		return nil, nil, storeError(err, objWhat(req))
	}
	defer res.Close()
	ji, err := res.Info()
	if err != nil {
		return nil, nil, storeError(err, objWhat(req))
	}
	info := objectInfo(req.bucket, ji)
	body, _, err := jsonReply(info)
	if err != nil {
		return nil, nil, err
	}

	ackInbox := s.nc.NewInbox()
	acks, err := s.nc.SubscribeSync(ackInbox)
	if err != nil {
		return nil, nil, fmt.Errorf("subscribe ack inbox: %w", err)
	}
	defer func() { _ = acks.Unsubscribe() }()
	w := uint64(s.cfg.Objects.Window)
	start := nats.NewMsg("")
	start.Header.Set(HeaderFrame, FrameStart)
	start.Header.Set(HeaderAckTo, ackInbox)
	start.Header.Set(HeaderWindow, strconv.FormatUint(w, 10))
	start.Header.Set(HeaderSize, strconv.FormatUint(info.Size, 10))
	start.Header.Set(HeaderContentType, string(ContentJSON))
	start.Data = body
	if err := r.Publish(start); err != nil {
		return nil, nil, fmt.Errorf("send start: %w", err)
	}

	buf := make([]byte, s.cfg.Objects.ChunkSize)
	var sent, acked uint64
	for {
		n, rerr := io.ReadFull(res, buf)
		if n > 0 {
			for sent-acked >= w {
				m, err := nextFrame(ctx, acks, s.cfg.Objects.IdleTimeout, "ack")
				if err != nil {
					return nil, nil, err
				}
				if m.Header.Get(HeaderFrame) == FrameCancel {
					return nil, nil, fault.New(fault.DeadlineExceeded, "%s: download cancelled by the receiver", objWhat(req))
				}
				if a, err := strconv.ParseUint(m.Header.Get(HeaderSeq), 10, 64); err == nil && a > acked && a <= sent {
					acked = a
				}
			}
			sent++
			chunk := nats.NewMsg("")
			chunk.Header.Set(HeaderFrame, FrameChunk)
			chunk.Header.Set(HeaderSeq, strconv.FormatUint(sent, 10))
			chunk.Data = buf[:n] // copied into the connection's buffer by Publish
			if err := r.Publish(chunk); err != nil {
				return nil, nil, fmt.Errorf("send chunk %d: %w", sent, err)
			}
		}
		if errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF) {
			break
		}
		if rerr != nil {
			return nil, nil, storeError(rerr, objWhat(req))
		}
	}
	h := replyHeader(HeaderContentType, string(ContentJSON), HeaderSeq, strconv.FormatUint(sent, 10))
	return body, h, nil
}

func (s *Service) objInfo(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	obs, err := s.objFor(ctx, req.bucket, false)
	if err != nil {
		return nil, nil, err
	}
	i, err := obs.GetInfo(ctx, req.object)
	if err != nil {
		s.forgetObj(req.bucket, err)
		return nil, nil, storeError(err, objWhat(req))
	}
	return jsonReply(objectInfo(req.bucket, i))
}

func (s *Service) objList(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	out := ObjectList{Objects: []ObjectInfo{}}
	obs, err := s.objFor(ctx, req.bucket, false)
	if fault.CodeOf(err) == fault.NotFound {
		return jsonReply(out)
	}
	if err != nil {
		return nil, nil, err
	}
	infos, err := obs.List(ctx)
	if err != nil && !errors.Is(err, jetstream.ErrNoObjectsFound) {
		s.forgetObj(req.bucket, err)
		return nil, nil, storeError(err, fmt.Sprintf("object bucket %q", req.bucket))
	}
	ls := listing{field: "objects", what: fmt.Sprintf("object bucket %q", req.bucket), items: "objects",
		cap: s.cfg.Objects.MaxList, lua: "Client.ListObjectsPage"}
	more := false
	if req.page.paged() {
		page := newFirstAfter(req.page, req.page.pageLimit(ls.cap), func(i *jetstream.ObjectInfo) string { return i.Name })
		for _, i := range infos {
			page.add(i)
		}
		infos, more = page.sorted(), page.dropped
	} else {
		if len(infos) > ls.cap {
			return nil, nil, ls.tooMany(len(infos))
		}
		slices.SortFunc(infos, func(a, b *jetstream.ObjectInfo) int { return strings.Compare(a.Name, b.Name) })
	}
	for _, i := range infos {
		out.Objects = append(out.Objects, objectInfo(req.bucket, i))
	}
	return s.listReply(ls, req.page, len(out.Objects), func(i int) any { return out.Objects[i] },
		func(i int) string { return out.Objects[i].Name }, more)
}

func (s *Service) objDelete(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	obs, err := s.objFor(ctx, req.bucket, false)
	if err != nil {
		return nil, nil, err
	}
	if err := obs.Delete(ctx, req.object); err != nil {
		s.forgetObj(req.bucket, err)
		return nil, nil, storeError(err, objWhat(req))
	}
	s.total.freedStreams()
	return nil, nil, nil
}
