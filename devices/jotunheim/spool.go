package jotunheim

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/internal/atomicfile"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	"google.golang.org/protobuf/proto"
)

// Store-and-forward: telemetry (states and events) produced while the
// agent is not connected and accepted goes into a bounded spool, in
// memory or in an append-only file ([telemetry] spool_file). After the
// next acceptance the spool is delivered in order, each message at QoS 1,
// before any new telemetry, and a message leaves the spool only once the
// broker acknowledged it (PUBACK). So an acknowledged message is never
// sent again; one sent but not acknowledged when the link dropped is sent
// again after the next connect (at least once). When the spool is full the
// oldest message is dropped; drops are counted (Stats, the sys_spool_dropped
// sensor) and reported after the next connect by an
// Event{kind: "warning", data: {budget: "spool", dropped: N}}.
//
// The file: an 8-byte magic, then records. A record is a 4-byte big-endian
// body length, the body and the body's CRC-32C (4 bytes big-endian). A body
// is a type byte and its fields, big-endian:
//
//	'D' seq u64, topic length u16, topic, payload   a spooled message
//	'T' seq u64, unreported u64                     every message up to seq is gone
//	                                                (delivered or dropped); unreported
//	                                                drops not yet reported by an event
//
// Every record is written with one write and the file is fsynced after
// each one, so a power cut loses at most the record being written. A torn
// or corrupt tail is ignored with a warning: the records before it count.
// The file is rewritten (a temporary file renamed over it) when opened and
// when it grows past twice spool_max_bytes, and truncated when the spool
// empties.

const spoolMagic = "JSPOOL1\n"

// maxSpoolBody bounds one record's body, so a corrupt length cannot make
// the reader allocate much.
const maxSpoolBody = 4 << 20

const (
	recData = 'D'
	recTrim = 'T'
	// recOverhead is a data record's size beyond topic and payload.
	recOverhead = 4 + 1 + 8 + 2 + 4
)

var (
	errNotSpool    = errors.New("not a Jotunheim spool file")
	errCorruptTail = errors.New("corrupt spool record")
	crcTable       = crc32.MakeTable(crc32.Castagnoli)
)

// spoolRecord is one spooled message.
type spoolRecord struct {
	seq     uint64
	topic   string
	payload []byte
}

func (r spoolRecord) size() int64 { return int64(recOverhead + len(r.topic) + len(r.payload)) }

// spoolContents is what a spool file holds.
type spoolContents struct {
	recs       []spoolRecord // in order, those after upTo
	upTo       uint64
	unreported uint64
	good       int64 // bytes up to the end of the last good record
	tail       error // why reading stopped before the end; nil at a clean end
}

// readSpool reads a spool file's contents. It fails only when data is not
// a spool file; a corrupt tail ends the reading and is reported in tail.
func readSpool(r io.Reader) (spoolContents, error) {
	br := bufio.NewReader(r)
	var c spoolContents
	magic := make([]byte, len(spoolMagic))
	n, err := io.ReadFull(br, magic)
	if err != nil {
		if bytes.HasPrefix([]byte(spoolMagic), magic[:n]) {
			return c, nil // empty, or torn while the header was written
		}
		return c, errNotSpool
	}
	if string(magic) != spoolMagic {
		return c, errNotSpool
	}
	c.good = int64(len(spoolMagic))
	var lastSeq uint64
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			if err != io.EOF {
				c.tail = fmt.Errorf("%w at byte %d: torn length", errCorruptTail, c.good)
			}
			break
		}
		size := binary.BigEndian.Uint32(hdr[:])
		if size < 1 || size > maxSpoolBody {
			c.tail = fmt.Errorf("%w at byte %d: length %d", errCorruptTail, c.good, size)
			break
		}
		body := make([]byte, size+4)
		if _, err := io.ReadFull(br, body); err != nil {
			c.tail = fmt.Errorf("%w at byte %d: torn record", errCorruptTail, c.good)
			break
		}
		body, sum := body[:size], binary.BigEndian.Uint32(body[size:])
		if crc32.Checksum(body, crcTable) != sum {
			c.tail = fmt.Errorf("%w at byte %d: checksum", errCorruptTail, c.good)
			break
		}
		switch {
		case body[0] == recData && len(body) >= 11:
			seq := binary.BigEndian.Uint64(body[1:9])
			tl := int(binary.BigEndian.Uint16(body[9:11]))
			if len(body) < 11+tl || seq <= lastSeq {
				c.tail = fmt.Errorf("%w at byte %d: bad message record", errCorruptTail, c.good)
				break
			}
			lastSeq = seq
			c.recs = append(c.recs, spoolRecord{seq: seq, topic: string(body[11 : 11+tl]), payload: bytes.Clone(body[11+tl:])})
		case body[0] == recTrim && len(body) == 17:
			c.upTo = max(c.upTo, binary.BigEndian.Uint64(body[1:9]))
			c.unreported = binary.BigEndian.Uint64(body[9:17])
		default:
			c.tail = fmt.Errorf("%w at byte %d: unknown record", errCorruptTail, c.good)
		}
		if c.tail != nil {
			break
		}
		c.good += int64(4 + size + 4)
	}
	i := 0
	for i < len(c.recs) && c.recs[i].seq <= c.upTo {
		i++
	}
	c.recs = c.recs[i:]
	return c, nil
}

func appendRecord(b []byte, body []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	b = append(b, body...)
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(body, crcTable))
}

func appendData(b []byte, r spoolRecord) []byte {
	body := make([]byte, 0, 11+len(r.topic)+len(r.payload))
	body = append(body, recData)
	body = binary.BigEndian.AppendUint64(body, r.seq)
	body = binary.BigEndian.AppendUint16(body, uint16(len(r.topic)))
	body = append(body, r.topic...)
	body = append(body, r.payload...)
	return appendRecord(b, body)
}

func appendTrim(b []byte, upTo, unreported uint64) []byte {
	body := make([]byte, 0, 17)
	body = append(body, recTrim)
	body = binary.BigEndian.AppendUint64(body, upTo)
	body = binary.BigEndian.AppendUint64(body, unreported)
	return appendRecord(b, body)
}

// SpoolStats are the store-and-forward figures of Agent.Stats.
type SpoolStats struct {
	// Messages and Bytes are waiting in the spool now.
	Messages int
	Bytes    int64
	// Dropped counts messages dropped (oldest first) because the spool was
	// full, since the agent started (plus those a spool file reported
	// unreported at start); Delivered those delivered from the spool.
	Dropped, Delivered uint64
}

// spool is the bounded store-and-forward buffer. Safe for concurrent use.
type spool struct {
	maxMsgs  int
	maxBytes int64
	path     string
	log      *slog.Logger

	mu         sync.Mutex
	live       bool // connected, accepted and empty: telemetry goes straight out
	recs       []spoolRecord
	bytes      int64
	seq        uint64 // last sequence number given
	upTo       uint64 // every message up to it is gone
	unreported uint64
	dropped    uint64
	delivered  uint64
	f          *os.File // nil: in memory only
	fileSize   int64
}

// openSpool opens the spool of cfg: in memory, or the file cfg names,
// whose messages (within the bounds) it keeps.
func openSpool(cfg Config, log *slog.Logger) (*spool, error) {
	t := cfg.Telemetry
	s := &spool{maxMsgs: t.SpoolMaxMessages, maxBytes: int64(t.SpoolMaxBytes), path: t.SpoolFile, log: log}
	if s.path == "" {
		return s, nil
	}
	bad := func(err error) error {
		return fmt.Errorf("%w: %s: telemetry.spool_file: %v", ErrConfig, cfg.at("telemetry.spool_file"), err)
	}
	if err := os.MkdirAll(filepath.Dir(s.path), 0o750); err != nil {
		return nil, bad(err)
	}
	f, err := os.OpenFile(s.path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, bad(err)
	}
	c, err := readSpool(f)
	f.Close()
	if err != nil {
		return nil, bad(fmt.Errorf("%s: %w", s.path, err))
	}
	if c.tail != nil {
		log.Warn("spool file: ignoring a corrupt tail", "file", s.path, logErr, c.tail)
	}
	s.upTo, s.seq, s.unreported, s.dropped = c.upTo, c.upTo, c.unreported, c.unreported
	for _, r := range c.recs {
		s.seq = max(s.seq, r.seq)
		s.push(r)
	}
	if len(c.recs) > 0 {
		log.Info("spool file: messages kept from before the start", "file", s.path, "messages", len(s.recs), "dropped", s.unreported)
	}
	if err := s.rewrite(); err != nil {
		return nil, bad(err)
	}
	return s, nil
}

// push appends r, dropping the oldest messages to stay within the bounds
// (r itself when it alone is larger than the spool). It reports whether
// it dropped any. Holds mu.
func (s *spool) push(r spoolRecord) (dropped bool) {
	if r.size() > s.maxBytes {
		s.drop(1)
		s.upTo = max(s.upTo, r.seq)
		return true
	}
	for len(s.recs) > 0 && (len(s.recs) >= s.maxMsgs || s.bytes+r.size() > s.maxBytes) {
		s.upTo = max(s.upTo, s.recs[0].seq)
		s.removeHead()
		s.drop(1)
		dropped = true
	}
	s.recs = append(s.recs, r)
	s.bytes += r.size()
	return dropped
}

func (s *spool) drop(n uint64) {
	s.dropped += n
	s.unreported += n
}

func (s *spool) removeHead() {
	s.bytes -= s.recs[0].size()
	s.recs[0] = spoolRecord{}
	s.recs = s.recs[1:]
	if len(s.recs) == 0 {
		s.recs = nil // let the old array go
	}
}

// hold spools a telemetry message unless the agent is live and nothing is
// waiting before it; it reports whether it spooled it.
func (s *spool) hold(topic string, payload []byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.live && len(s.recs) == 0 {
		return false
	}
	s.add(topic, payload)
	return true
}

// keep spools a message whose live send failed.
func (s *spool) keep(topic string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.add(topic, payload)
}

// add spools a message and writes it to the file. Holds mu.
func (s *spool) add(topic string, payload []byte) {
	s.seq++
	r := spoolRecord{seq: s.seq, topic: topic, payload: payload}
	dropped := s.push(r)
	if s.f == nil {
		return
	}
	var b []byte
	if dropped {
		b = appendTrim(b, s.upTo, s.unreported)
	}
	if s.upTo < r.seq {
		b = appendData(b, r)
	}
	s.write(b)
	if s.f != nil && s.fileSize > 2*s.maxBytes+64<<10 {
		if err := s.rewrite(); err != nil {
			s.fileFailed(err)
		}
	}
}

// write appends b to the file and fsyncs it; on failure the spool goes on
// in memory. Holds mu.
func (s *spool) write(b []byte) {
	if s.f == nil || len(b) == 0 {
		return
	}
	if _, err := s.f.Write(b); err != nil {
		s.fileFailed(err)
		return
	}
	if err := s.f.Sync(); err != nil {
		s.fileFailed(err)
		return
	}
	s.fileSize += int64(len(b))
}

func (s *spool) fileFailed(err error) {
	s.log.Warn("spool file failed: spooling in memory only until the agent restarts", "file", s.path, logErr, err)
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// rewrite replaces the file with one holding only what the spool holds: a
// temporary file, fsynced, renamed over it. Holds mu (or is called before
// the spool is shared).
func (s *spool) rewrite() error {
	if s.path == "" {
		return nil
	}
	b := appendTrim([]byte(spoolMagic), s.upTo, s.unreported)
	for _, r := range s.recs {
		b = appendData(b, r)
	}
	if err := atomicfile.Write(s.path, b, 0o600); err != nil {
		return err
	}
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	if s.f != nil {
		s.f.Close()
	}
	s.f, s.fileSize = f, int64(len(b))
	return nil
}

// next returns the oldest spooled message; when there is none the spool
// goes live (telemetry is sent straight out) and ok is false.
func (s *spool) next() (r spoolRecord, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.recs) == 0 {
		s.live = true
		return r, false
	}
	return s.recs[0], true
}

// ack removes the message seq, which the broker acknowledged, for good.
func (s *spool) ack(seq uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.upTo = max(s.upTo, seq)
	for len(s.recs) > 0 && s.recs[0].seq <= seq {
		s.removeHead()
		s.delivered++
	}
	if s.f == nil {
		return
	}
	if len(s.recs) == 0 {
		// Empty: start the file over (a cut mid-way leaves an empty file,
		// which reads as an empty spool).
		if err := s.f.Truncate(0); err != nil {
			s.fileFailed(err)
			return
		}
		s.fileSize = 0
		s.write(appendTrim([]byte(spoolMagic), s.upTo, s.unreported))
		return
	}
	s.write(appendTrim(nil, s.upTo, s.unreported))
}

// offline makes telemetry go to the spool again.
func (s *spool) offline() {
	s.mu.Lock()
	s.live = false
	s.mu.Unlock()
}

// unreportedDrops is how many drops no event has reported yet.
func (s *spool) unreportedDrops() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.unreported
}

// reported records that an event reported n drops.
func (s *spool) reported(n uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unreported -= min(n, s.unreported)
	s.write(appendTrim(nil, s.upTo, s.unreported))
}

func (s *spool) stats() SpoolStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return SpoolStats{Messages: len(s.recs), Bytes: s.bytes, Dropped: s.dropped, Delivered: s.delivered}
}

func (s *spool) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.f != nil {
		s.f.Close()
		s.f = nil
	}
}

// emit sends one telemetry message (a state or an event): into the spool
// while the agent is not live or the spool is not empty; skipped and
// counted over the bandwidth budget when throttle; else straight out, and
// into the spool when that fails.
func (a *Agent) emit(topic string, qos byte, retain bool, m proto.Message, throttle bool) {
	payload, err := wire.Encode(m)
	if err != nil {
		a.log.Warn("encode telemetry", logTopic, topic, logErr, err)
		return
	}
	if a.spool.hold(topic, payload) {
		return
	}
	if throttle && a.checkBandwidth() {
		a.throttled.Add(1)
		return
	}
	if err := a.publishRaw(topic, qos, retain, payload); err != nil {
		a.log.Debug("telemetry not sent: spooled", logTopic, topic, logErr, err)
		a.spool.keep(topic, payload)
	}
}

// emitEvent sends an event as telemetry (see emit).
func (a *Agent) emitEvent(kind, entity string, data any, throttle bool) {
	v, err := toValue(data)
	if err != nil {
		a.log.Warn("event data", "kind", kind, logErr, err)
		return
	}
	a.emit(a.topics.event, 1, false, &jv1.Event{Kind: kind, Entity: entity, Data: v, At: unixNow()}, throttle)
}

// flushSpool reports drops, then delivers the spool in order at QoS 1,
// removing each message once acknowledged, pausing while over the
// bandwidth budget. It returns when the spool is empty (and live) or the
// connection is lost.
func (a *Agent) flushSpool(ctx context.Context, s *session) error {
	if n := a.spool.unreportedDrops(); n > 0 {
		a.log.Warn("the spool was full while offline: the oldest telemetry was dropped", "dropped", n)
		v, err := toValue(map[string]any{"budget": budgetSpool, "dropped": float64(n),
			"max_messages": float64(a.cfg.Telemetry.SpoolMaxMessages), "max_bytes": float64(a.cfg.Telemetry.SpoolMaxBytes)})
		if err != nil {
			return err
		}
		payload, err := wire.Encode(&jv1.Event{Kind: eventWarning, Data: v, At: unixNow()})
		if err != nil {
			return err
		}
		if err := a.deliver(ctx, s, a.topics.event, payload); err != nil {
			return fmt.Errorf("report spool drops: %w", err)
		}
		a.spool.reported(n)
	}
	for {
		r, ok := a.spool.next()
		if !ok {
			return nil
		}
		for a.bw.exceeded() {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-s.lost:
				return fmt.Errorf("connection lost: %w", s.lostErr)
			case <-time.After(a.bw.slot):
			}
		}
		if err := a.deliver(ctx, s, r.topic, r.payload); err != nil {
			return fmt.Errorf("deliver spooled telemetry: %w", err)
		}
		a.spool.ack(r.seq)
	}
}

// deliver publishes payload at QoS 1 on s and waits for the broker's
// acknowledgement, the connection's loss or ctx's end.
func (a *Agent) deliver(ctx context.Context, s *session, topic string, payload []byte) error {
	a.bw.sent(len(topic) + len(payload))
	t := s.client.Publish(topic, 1, false, payload)
	return a.waitSession(ctx, s, t)
}

func (a *Agent) waitSession(ctx context.Context, s *session, t Token) error {
	timer := time.NewTimer(publishTimeout)
	defer timer.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-s.lost:
		return fmt.Errorf("connection lost: %w", s.lostErr)
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return errors.New("no acknowledgement from the platform in time")
	}
}
