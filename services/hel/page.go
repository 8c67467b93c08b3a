package hel

import (
	"cmp"
	"container/heap"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/nats-io/nats.go"
)

// Listings (kv.keys, kv.history, obj.list, files.list) can grow past what
// one NATS message carries. A reply that NATS would drop leaves the caller
// waiting out its deadline for a call that succeeded, so every listing is
// built against a byte budget (the connection's max payload less room for
// headers) as well as its count cap:
//
//   - Asked for whole (no HeaderLimit), a listing over either is
//     RESOURCE_EXHAUSTED naming the listing, its count and size, and how to
//     narrow it (a filter, a directory) or to page it.
//   - Asked with HeaderLimit (and HeaderAfter from the second page on), the
//     reply holds at most that many items (and never more than the cap),
//     sorted, after the cursor, stopping early at the byte budget; its
//     "next" field is the cursor of the next page, absent on the last one.
//     The service keeps only a page's worth of items while it reads a
//     listing, whatever the listing's size.

// page is the paging of a listing request.
type page struct {
	limit    int    // items in this page; 0: not paged
	after    string // cursor: the last item of the previous page
	hasAfter bool
}

// paged reports whether the caller asked for a page.
func (p page) paged() bool { return p.limit > 0 || p.hasAfter }

// maxCursorBytes bounds HeaderAfter: the longest name a listing holds.
const maxCursorBytes = MaxPathBytes

func decodePage(h nats.Header, p *page) error {
	if v := h.Get(HeaderLimit); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fault.New(fault.InvalidArgument, "%s %q: want a count from 1", HeaderLimit, v)
		}
		p.limit = n
	}
	vals := h.Values(HeaderAfter)
	switch {
	case len(vals) > 1:
		return fault.New(fault.InvalidArgument, "header %s given %d times", HeaderAfter, len(vals))
	case len(vals) == 1 && vals[0] != "":
		if len(vals[0]) > maxCursorBytes {
			return fault.New(fault.InvalidArgument, "%s is %d bytes: at most %d", HeaderAfter, len(vals[0]), maxCursorBytes)
		}
		if err := validHeaderValue(HeaderAfter, vals[0]); err != nil {
			return err
		}
		p.after, p.hasAfter = vals[0], true
	}
	return nil
}

// pageLimit is the number of items a page may hold under cap.
func (p page) pageLimit(cap int) int {
	if p.limit <= 0 || p.limit > cap {
		return cap
	}
	return p.limit
}

// replyBudget is the most bytes of JSON one reply may carry.
func (s *Service) replyBudget() int {
	mp := s.nc.MaxPayload()
	if mp <= 0 {
		mp = nats.MAX_CONTROL_LINE_SIZE * 256 // 1 MiB, the server's default
	}
	return int(max(mp-headerRoom, 1024))
}

// listing describes one listing for its reply and its errors.
type listing struct {
	field  string // JSON field of the items
	what   string // what is listed, for errors: `bucket "a" keys`
	items  string // the items' name: "keys"
	narrow string // how to narrow it other than by paging, "" if none
	cap    int    // the configured count cap
	lua    string // how a script or Go program pages it, for the hint
}

// tooMany is the error of a whole listing over its count cap.
func (l listing) tooMany(n int) error {
	return fault.New(fault.ResourceExhausted, "%s: more than %d %s, the limit of one reply: %s",
		l.what, l.cap, l.items, l.hint())
}

func (l listing) hint() string {
	h := fmt.Sprintf("page it with %s/%s (%s)", HeaderLimit, HeaderAfter, l.lua)
	if l.narrow != "" {
		h = l.narrow + ", or " + h
	}
	return h
}

// reply encodes the n items of a listing, sorted by cursor: all of them
// when the request is not paged, else a page of them (the caller passes
// the items after the cursor, and more when it left further ones out).
func (s *Service) listReply(l listing, p page, n int, item func(i int) any, cursor func(i int) string, more bool) ([]byte, nats.Header, error) {
	budget := s.replyBudget()
	limit := n
	if p.paged() {
		limit = p.pageLimit(l.cap)
	}
	buf := append(make([]byte, 0, 256), `{"`+l.field+`":[`...)
	// Room for the closing and the next cursor.
	tail := 16
	taken := 0
	for i := 0; i < n; i++ {
		if taken == limit {
			more = true
			break
		}
		b, err := json.Marshal(item(i))
		if err != nil {
			return nil, nil, fmt.Errorf("encode reply: %w", err)
		}
		if p.paged() {
			tail = 16 + 2*len(cursor(i)) + 16
		}
		if len(buf)+len(b)+1+tail > budget {
			if !p.paged() {
				return nil, nil, fault.New(fault.ResourceExhausted,
					"%s: the listing of %d %s is over the %d-byte reply limit (the NATS max payload less headers): %s",
					l.what, n, l.items, budget, l.hint())
			}
			if taken == 0 {
				return nil, nil, fault.New(fault.ResourceExhausted,
					"%s: the item after %q is over the %d-byte reply limit (the NATS max payload less headers)",
					l.what, p.after, budget)
			}
			more = true
			break
		}
		if taken > 0 {
			buf = append(buf, ',')
		}
		buf = append(buf, b...)
		taken++
	}
	buf = append(buf, ']')
	if more && taken > 0 && p.paged() {
		c, _ := json.Marshal(cursor(taken - 1))
		buf = append(buf, `,"next":`...)
		buf = append(buf, c...)
	}
	buf = append(buf, '}')
	return buf, replyHeader(HeaderContentType, string(ContentJSON)), nil
}

// firstAfter keeps, of the items added, the k with the smallest keys above
// a cursor, so that a page of a listing of any size holds k items: a
// max-heap by key, without duplicate keys.
type firstAfter[T any] struct {
	k        int
	after    string
	hasAfter bool
	key      func(T) string
	items    []T
	member   map[string]bool
	dropped  bool // an item above the cursor was left out
}

func newFirstAfter[T any](p page, k int, key func(T) string) *firstAfter[T] {
	return &firstAfter[T]{k: k, after: p.after, hasAfter: p.hasAfter, key: key, member: map[string]bool{}}
}

func (f *firstAfter[T]) Len() int           { return len(f.items) }
func (f *firstAfter[T]) Less(i, j int) bool { return f.key(f.items[i]) > f.key(f.items[j]) }
func (f *firstAfter[T]) Swap(i, j int)      { f.items[i], f.items[j] = f.items[j], f.items[i] }
func (f *firstAfter[T]) Push(x any)         { f.items = append(f.items, x.(T)) }
func (f *firstAfter[T]) Pop() any {
	v := f.items[len(f.items)-1]
	f.items = f.items[:len(f.items)-1]
	return v
}

// add offers v.
func (f *firstAfter[T]) add(v T) {
	k := f.key(v)
	if (f.hasAfter && k <= f.after) || f.member[k] {
		return
	}
	if len(f.items) < f.k {
		f.member[k] = true
		heap.Push(f, v)
		return
	}
	f.dropped = true
	if top := f.key(f.items[0]); k < top {
		delete(f.member, top)
		f.member[k] = true
		f.items[0] = v
		heap.Fix(f, 0)
	}
}

// sorted returns the items kept, by key.
func (f *firstAfter[T]) sorted() []T {
	slices.SortFunc(f.items, func(a, b T) int { return cmp.Compare(f.key(a), f.key(b)) })
	return f.items
}
