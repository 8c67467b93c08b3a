package hel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// Files live in Files.Root/<namespace>/<path> on the replica's own disk.
//
// Every access goes through an os.Root opened on Files.Root and then on the
// namespace, so a symlink (or a namespace directory replaced by one) that
// points outside cannot be followed: the kernel-level openat walk refuses
// it. Paths are also checked lexically first (CleanPath) for a clear error.
//
// Writes are atomic: the data goes to a temporary file in the target's
// directory, which is fsynced, renamed over the target, and the directory
// fsynced, so a reader or a crash sees the old file or the new one. Appends
// are O_APPEND writes followed by fsync: durable once acknowledged, but a
// crash during one can leave part of it.

// tempPrefix starts the names of Hel's temporary files; user paths may not
// use it.
const tempPrefix = ".hel-"

// staleTemp is the age past which a temporary file is a leftover of a crash.
const staleTemp = time.Hour

// rescanAfter bounds how long a namespace's usage is trusted before it is
// measured again (other processes sharing the root may have written).
const rescanAfter = time.Minute

// FileInfo describes a file or directory.
type FileInfo struct {
	Name     string    `json:"name"`
	Kind     string    `json:"kind"` // "file", "dir", "symlink" or "other"
	Size     int64     `json:"size"`
	Modified time.Time `json:"modified"`
}

// FileList is the reply of files.list, sorted by name.
type FileList struct {
	Entries []FileInfo `json:"entries"`
	// Next is the cursor of the next page of a paged listing (HeaderLimit),
	// empty on the last page.
	Next string `json:"next,omitempty"`
}

type fileStore struct {
	s    *Service
	root *os.Root

	mu    sync.Mutex
	usage map[string]*nsUsage
}

// nsUsage is this replica's account of a namespace's bytes. It is measured
// by walking the namespace on first use, when older than rescanAfter, and
// before any refusal, so a write is never refused on a stale count; between
// scans it is kept up to date by this replica's writes.
type nsUsage struct {
	mu      sync.Mutex
	bytes   int64
	scanned time.Time
}

func (f *fileStore) open() error {
	if err := os.MkdirAll(f.s.cfg.Files.Root, 0o750); err != nil {
		return fmt.Errorf("hel: files root: %w", err)
	}
	r, err := os.OpenRoot(f.s.cfg.Files.Root)
	if err != nil {
		return fmt.Errorf("hel: files root: %w", err)
	}
	f.root = r
	return nil
}

func (f *fileStore) close() {
	if f.root != nil {
		_ = f.root.Close()
	}
}

// ns opens a namespace's root; with create it makes the directory first.
func (f *fileStore) ns(name string, create bool) (*os.Root, error) {
	if create {
		if err := f.root.Mkdir(name, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fileError(err, name, ".")
		}
	}
	r, err := f.root.OpenRoot(name)
	if err != nil {
		return nil, fileError(err, name, ".")
	}
	return r, nil
}

func (f *fileStore) quota(ns string) int64 {
	return quota(f.s.cfg.Files.Namespaces, ns, f.s.cfg.Files.MaxBytes)
}

func (f *fileStore) usageOf(ns string) *nsUsage {
	f.mu.Lock()
	defer f.mu.Unlock()
	u := f.usage[ns]
	if u == nil {
		u = &nsUsage{}
		f.usage[ns] = u
	}
	return u
}

// reserve accounts delta more bytes to ns, or refuses with
// RESOURCE_EXHAUSTED if that would pass the quota. The caller gives back
// what it did not use with release.
func (f *fileStore) reserve(ctx context.Context, ns string, r *os.Root, delta int64, what string) error {
	u := f.usageOf(ns)
	u.mu.Lock()
	defer u.mu.Unlock()
	q := f.quota(ns)
	if u.scanned.IsZero() || time.Since(u.scanned) > rescanAfter || u.bytes+delta > q {
		n, err := scanUsage(ctx, r)
		if err != nil {
			return fileError(err, ns, ".")
		}
		u.bytes, u.scanned = n, time.Now()
	}
	if delta > 0 && u.bytes+delta > q {
		return fault.New(fault.ResourceExhausted, "%s: %d more bytes would exceed the namespace's quota (%d of %d bytes used)",
			what, delta, u.bytes, q)
	}
	u.bytes += delta
	return nil
}

func (f *fileStore) release(ns string, delta int64) {
	u := f.usageOf(ns)
	u.mu.Lock()
	u.bytes -= delta
	u.mu.Unlock()
}

// scanUsage sums the sizes of the regular files under r (symlinks are not
// followed) and removes temporary files left by a crash.
func scanUsage(ctx context.Context, r *os.Root) (int64, error) {
	var total int64
	err := fs.WalkDir(r.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // removed while walking
			}
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		if strings.HasPrefix(d.Name(), tempPrefix) && time.Since(info.ModTime()) > staleTemp {
			if r.Remove(p) == nil {
				return nil
			}
		}
		total += info.Size()
		return nil
	})
	return total, err
}

func fileWhat(req request) string {
	return fmt.Sprintf("namespace %q path %q", req.namespace, req.path)
}

// fileNS opens the request's namespace (creating it when create is set) for
// an operation on a file: a path naming the namespace root is refused.
func (f *fileStore) fileNS(req request, create bool) (*os.Root, error) {
	if req.path == "." {
		return nil, fault.New(fault.InvalidArgument, "namespace %q: %s must name a file, not the namespace root", req.namespace, HeaderPath)
	}
	return f.ns(req.namespace, create)
}

func (f *fileStore) read(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	r, err := f.fileNS(req, false)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	file, err := r.Open(req.path)
	if err != nil {
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	if !st.Mode().IsRegular() {
		return nil, nil, fault.New(fault.FailedPrecondition, "%s is not a regular file", fileWhat(req))
	}
	size := st.Size()
	limit := int64(f.s.cfg.Files.MaxReadBytes)
	n := max(size-req.offset, 0)
	if req.length > 0 {
		n = min(n, req.length)
	}
	if n > limit {
		if req.length == 0 && req.offset == 0 {
			return nil, nil, fault.New(fault.ResourceExhausted, "%s is %d bytes: read at most %d at a time with an offset and length",
				fileWhat(req), size, limit)
		}
		return nil, nil, fault.New(fault.ResourceExhausted, "%s: read of %d bytes: at most %d at a time", fileWhat(req), n, limit)
	}
	buf := make([]byte, n)
	if _, err := file.ReadAt(buf, req.offset); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	return buf, replyHeader(HeaderSize, strconv.FormatInt(size, 10), HeaderContentType, string(ContentBytes)), nil
}

func (f *fileStore) write(ctx context.Context, req request, m *microsvc.Request) ([]byte, nats.Header, error) {
	r, err := f.fileNS(req, true)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	data := m.Data()
	var old int64
	if st, err := r.Lstat(req.path); err == nil {
		if err := noSymlink(r, req, st); err != nil {
			return nil, nil, err
		}
		if st.IsDir() {
			return nil, nil, fault.New(fault.FailedPrecondition, "%s is a directory", fileWhat(req))
		}
		old = st.Size()
	}
	delta := int64(len(data)) - old
	if err := f.reserve(ctx, req.namespace, r, delta, fileWhat(req)); err != nil {
		return nil, nil, err
	}
	res, err := f.s.total.reserve(ctx, delta, true, fileWhat(req))
	if err != nil {
		f.release(req.namespace, delta)
		return nil, nil, err
	}
	if err := writeAtomic(r, req.path, data); err != nil {
		res.end(false)
		f.release(req.namespace, delta)
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	res.end(true)
	return nil, replyHeader(HeaderSize, strconv.Itoa(len(data))), nil
}

// noSymlink refuses to replace a symlink, which an atomic write (a rename)
// or mkdir would do instead of following it: PERMISSION_DENIED when it
// points outside the namespace, FAILED_PRECONDITION otherwise. Hel never
// creates symlinks; they come from whoever else has the disk.
func noSymlink(r *os.Root, req request, st fs.FileInfo) error {
	if st.Mode()&fs.ModeSymlink == 0 {
		return nil
	}
	if _, err := r.Stat(req.path); isEscape(err) {
		return fileError(err, req.namespace, req.path)
	}
	return fault.New(fault.FailedPrecondition, "%s is a symlink; write to its target instead", fileWhat(req))
}

// writeAtomic replaces name in r with data: temp file, fsync, rename, fsync dir.
func writeAtomic(r *os.Root, name string, data []byte) (err error) {
	dir := path.Dir(name)
	if err := r.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	tmp := path.Join(dir, tempPrefix+nuid.Next())
	t, err := r.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = r.Remove(tmp)
		}
	}()
	if _, err := t.Write(data); err != nil {
		_ = t.Close()
		return err
	}
	if err := t.Sync(); err != nil {
		_ = t.Close()
		return err
	}
	if err := t.Close(); err != nil {
		return err
	}
	if err := r.Rename(tmp, name); err != nil {
		return err
	}
	return syncDir(r, dir)
}

// syncDir makes a rename or create in dir durable.
func syncDir(r *os.Root, dir string) error {
	d, err := r.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func (f *fileStore) append(ctx context.Context, req request, m *microsvc.Request) ([]byte, nats.Header, error) {
	r, err := f.fileNS(req, true)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	data := m.Data()
	delta := int64(len(data))
	if err := f.reserve(ctx, req.namespace, r, delta, fileWhat(req)); err != nil {
		return nil, nil, err
	}
	res, err := f.s.total.reserve(ctx, delta, true, fileWhat(req))
	if err != nil {
		f.release(req.namespace, delta)
		return nil, nil, err
	}
	size, err := appendFile(r, req.path, data)
	res.end(err == nil)
	if err != nil {
		f.release(req.namespace, delta)
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	return nil, replyHeader(HeaderSize, strconv.FormatInt(size, 10)), nil
}

// appendFile appends data to name, creating it (and its parents), fsyncs
// it, and returns its new size.
func appendFile(r *os.Root, name string, data []byte) (int64, error) {
	dir := path.Dir(name)
	if err := r.MkdirAll(dir, 0o750); err != nil {
		return 0, err
	}
	_, statErr := r.Lstat(name)
	created := errors.Is(statErr, fs.ErrNotExist)
	file, err := r.OpenFile(name, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return 0, err
	}
	defer file.Close()
	st, err := file.Stat()
	if err != nil {
		return 0, err
	}
	if !st.Mode().IsRegular() {
		return 0, fault.New(fault.FailedPrecondition, "path %q is not a regular file", name)
	}
	if _, err := file.Write(data); err != nil {
		return 0, err
	}
	if err := file.Sync(); err != nil {
		return 0, err
	}
	if created {
		if err := syncDir(r, dir); err != nil {
			return 0, err
		}
	}
	st, err = file.Stat()
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func (f *fileStore) remove(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	r, err := f.fileNS(req, false)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	st, err := r.Lstat(req.path)
	if err != nil {
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	if err := r.Remove(req.path); err != nil {
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	if st.Mode().IsRegular() {
		f.release(req.namespace, st.Size())
		f.s.total.freedFiles(st.Size())
	}
	if err := syncDir(r, path.Dir(req.path)); err != nil {
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	return nil, nil, nil
}

func (f *fileStore) mkdir(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	r, err := f.fileNS(req, true)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	if st, err := r.Lstat(req.path); err == nil {
		if err := noSymlink(r, req, st); err != nil {
			return nil, nil, err
		}
	}
	if err := r.MkdirAll(req.path, 0o750); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, nil, fault.New(fault.AlreadyExists, "%s exists and is not a directory", fileWhat(req))
		}
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	return nil, nil, nil
}

func fileInfo(name string, st fs.FileInfo) FileInfo {
	fi := FileInfo{Name: name, Size: st.Size(), Modified: st.ModTime().UTC()}
	switch m := st.Mode(); {
	case m.IsRegular():
		fi.Kind = "file"
	case m.IsDir():
		fi.Kind, fi.Size = "dir", 0
	case m&fs.ModeSymlink != 0:
		fi.Kind = "symlink"
	default:
		fi.Kind = "other"
	}
	return fi
}

func (f *fileStore) stat(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	r, err := f.ns(req.namespace, false)
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	st, err := r.Stat(req.path)
	if err != nil {
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	return jsonReply(fileInfo(path.Base(req.path), st))
}

func (f *fileStore) list(ctx context.Context, req request, _ *microsvc.Request) ([]byte, nats.Header, error) {
	out := FileList{Entries: []FileInfo{}}
	r, err := f.ns(req.namespace, false)
	if fault.CodeOf(err) == fault.NotFound && req.path == "." {
		return jsonReply(out) // a namespace nothing was written to yet
	}
	if err != nil {
		return nil, nil, err
	}
	defer r.Close()
	d, err := r.Open(req.path)
	if err != nil {
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	defer d.Close()
	ls := listing{field: "entries", what: fileWhat(req), items: "entries",
		narrow: "list a subdirectory", cap: f.s.cfg.Files.MaxListEntries, lua: grantModule + ".files.list(namespace, path, {limit = n, after = next})"}
	var page *firstAfter[fs.DirEntry]
	if req.page.paged() {
		page = newFirstAfter(req.page, req.page.pageLimit(ls.cap), func(e fs.DirEntry) string { return e.Name() })
	}
	for {
		ents, err := d.ReadDir(256)
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), tempPrefix) {
				continue
			}
			if page != nil {
				page.add(e)
				continue
			}
			if len(out.Entries) == ls.cap {
				return nil, nil, ls.tooMany(len(out.Entries))
			}
			st, err := e.Info()
			if err != nil {
				continue // removed while listing
			}
			out.Entries = append(out.Entries, fileInfo(e.Name(), st))
		}
		if errors.Is(err, io.EOF) || (err == nil && len(ents) == 0) {
			break
		}
		if err != nil {
			return nil, nil, fileError(err, req.namespace, req.path)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, fileError(err, req.namespace, req.path)
	}
	more := false
	if page != nil {
		for _, e := range page.sorted() {
			if st, err := e.Info(); err == nil { // else removed while listing
				out.Entries = append(out.Entries, fileInfo(e.Name(), st))
			}
		}
		more = page.dropped
	}
	slices.SortFunc(out.Entries, func(a, b FileInfo) int { return strings.Compare(a.Name, b.Name) })
	return f.s.listReply(ls, req.page, len(out.Entries), func(i int) any { return out.Entries[i] },
		func(i int) string { return out.Entries[i].Name }, more)
}
