// Package isolate runs calls in supervised worker processes, one call at a
// time per process, so that a call that passes its memory or CPU limit ends
// only its own process.
//
// A Supervisor owns a pool of workers: the same binary re-executed (the
// caller says how, with Config.Command) and joined to the supervisor by a
// Unix socket inherited as file descriptor 3, and a pipe for cancellations
// as 4. The supervisor sends each call to an idle worker over the socket and
// reads back stream chunks and the result, so when a worker dies it knows
// exactly which call died and why. The worker side is Attach and
// Link.Serve.
//
// Limits are enforced by the kernel and by the worker itself:
//
//   - memory: before each call the worker lowers its soft RLIMIT_DATA to
//     what it has mapped now plus the limit, so no allocation can take it
//     far past that (Go's runtime then exits with "out of memory"); a
//     watcher samples the heap every millisecond and exits the worker as
//     soon as the heap has grown by more than the limit;
//     debug.SetMemoryLimit makes the collector work hard before either
//     happens.
//   - cpu: the watcher reads the process's CPU time every millisecond and
//     cancels the call at the limit (the call ends with RESOURCE_EXHAUSTED
//     and the worker lives on); if the call does not stop within a grace
//     the worker exits. The supervisor, reading /proc/<pid>/stat, kills a
//     worker that runs on further still. RLIMIT_CPU is not used: an
//     unprivileged process cannot raise a lowered hard limit again for its
//     next call.
//
// cgroup v2 (memory.max, cpu.max) is not used yet: the hosts this was built
// on have cgroup v1 without delegation.
package isolate

import (
	"encoding/binary"
	"errors"
	"github.com/loki-iot/loki/internal/bytesize"
	"io"
	"strconv"
	"time"
)

// Limits bound one call in a worker. A zero field is no limit.
type Limits struct {
	// Memory is how far the worker's memory may grow during the call, in
	// bytes.
	Memory uint64
	// CPU is the CPU time the worker may spend on the call: time spent
	// waiting (on the network, on a timer) does not count.
	CPU time.Duration
}

// Exit codes of a worker that ended itself because a call passed a limit.
// Go's runtime exits with 2 on a fatal error such as "out of memory".
const (
	ExitMemory = 70
	ExitCPU    = 71
)

// MinMemory is the smallest memory limit. The bound is kept to within
// about 10% for limits of 64 MiB and more; below, the runtime's own
// granularity (memory it released and takes back without a new mapping, a
// millisecond of allocation between heap samples) can add a few MiB.
const MinMemory = 4 << 20

// ParseSize parses a size such as "64MiB", "512KiB", "1GiB", "1.5GiB" or a
// plain number of bytes, as every size in Loki's configs is parsed
// (internal/bytesize: KiB, MiB, GiB are powers of 1024; kB, MB, GB of 1000).
func ParseSize(s string) (uint64, error) { return bytesize.Parse(s) }

// FormatSize renders n bytes for people: "64 MiB", "1.5 GiB", "512 KiB".
func FormatSize(n uint64) string {
	units := []string{"B", "KiB", "MiB", "GiB", "TiB"}
	f, i := float64(n), 0
	for f >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	if f == float64(int64(f)) {
		return strconv.FormatInt(int64(f), 10) + " " + units[i]
	}
	return strconv.FormatFloat(f, 'f', 1, 64) + " " + units[i]
}

// Frame types. The supervisor sends init and calls; the worker sends
// ready, chunks, results and failures. Cancellations go on a pipe of their
// own: the call's sequence number, 8 bytes big-endian.
const (
	frameInit   byte = 'I'
	frameCall   byte = 'C'
	frameReady  byte = 'R'
	frameChunk  byte = 'K'
	frameResult byte = 'O'
	frameFail   byte = 'F'
)

// maxFrame caps one frame: results and chunks are capped far below it by
// the engine and by the NATS payload limit.
const maxFrame = 256 << 20

var errFrameTooLarge = errors.New("isolate: frame too large")

// writeFrame writes one frame: a 4-byte big-endian length of what follows,
// the type, and the body.
func writeFrame(w io.Writer, typ byte, body ...[]byte) error {
	n := 1
	for _, b := range body {
		n += len(b)
	}
	if n > maxFrame {
		return errFrameTooLarge
	}
	buf := make([]byte, 5, 5+n-1)
	binary.BigEndian.PutUint32(buf, uint32(n))
	buf[4] = typ
	for _, b := range body {
		buf = append(buf, b...)
	}
	_, err := w.Write(buf)
	return err
}

// readFrame reads one frame written by writeFrame.
func readFrame(r io.Reader) (byte, []byte, error) {
	var h [5]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	n := binary.BigEndian.Uint32(h[:4])
	if n < 1 || n > maxFrame {
		return 0, nil, errFrameTooLarge
	}
	body := make([]byte, n-1)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, nil, err
	}
	return h[4], body, nil
}

// callMeta is the head of a call frame; the payload follows it.
// MaxKeys is how many Request.Keys a worker keeps set up; past it the
// supervisor and the worker forget them all together (Call.Forget).
const MaxKeys = 256

type callMeta struct {
	Seq    uint64 `json:"seq"`
	Name   string `json:"name"`
	Key    string `json:"key,omitempty"`
	Setup  []byte `json:"setup,omitempty"`
	Forget bool   `json:"forget,omitempty"`
	Memory uint64 `json:"memory,omitempty"`
	CPU    int64  `json:"cpu,omitempty"`
}

// failure is the body of a fail frame.
type failure struct {
	Code string `json:"code"`
	Msg  string `json:"msg"`
}
