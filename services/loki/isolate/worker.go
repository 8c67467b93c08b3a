package isolate

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/loki-iot/loki/internal/fault"
)

// LinkFD is the file descriptor a worker inherits its socket on, and
// CancelFD the read end of the pipe its supervisor cancels calls on.
const (
	LinkFD   = 3
	CancelFD = 4
)

// Link is a worker's end of the socket to its supervisor. Its methods are
// not for concurrent use, except Call.Emit while Serve runs the call.
type Link struct {
	r       *bufio.Reader
	w       io.WriteCloser
	cancels io.Reader  // nil: calls are never cancelled
	mu      sync.Mutex // serialises frames written
	init    []byte
	// shutdown ends a read in progress on the link; nil: Close does.
	shutdown func()
}

// Attach opens the socket inherited on LinkFD and reads the supervisor's
// init frame (Config.Init): what the worker needs to start, such as how to
// reach NATS. It fails when the process was not started by a Supervisor.
func Attach() (*Link, error) {
	// The descriptors stay blocking: a read then waits in its own thread,
	// which the kernel wakes directly, where the runtime's poller would add
	// a wake-up per frame (about 100 µs a call on a small machine).
	var st syscall.Stat_t
	if err := syscall.Fstat(LinkFD, &st); err != nil || st.Mode&syscall.S_IFMT != syscall.S_IFSOCK {
		return nil, fmt.Errorf("isolate: no supervisor link on fd %d (a worker is started by its supervisor)", LinkFD)
	}
	f := os.NewFile(LinkFD, "isolate-link")
	var cancels io.Reader
	if c := os.NewFile(CancelFD, "isolate-cancel"); c != nil {
		cancels = c
	}
	l, err := attach(f, cancels)
	if err != nil {
		return nil, err
	}
	// Close does not end a blocking read; shutdown(2) does.
	l.shutdown = func() { _ = syscall.Shutdown(LinkFD, syscall.SHUT_RDWR) }
	return l, nil
}

func attach(rw io.ReadWriteCloser, cancels io.Reader) (*Link, error) {
	l := &Link{r: bufio.NewReaderSize(rw, 64<<10), w: rw, cancels: cancels}
	typ, body, err := readFrame(l.r)
	if err != nil {
		return nil, fmt.Errorf("isolate: read init from the supervisor: %w", err)
	}
	if typ != frameInit {
		return nil, fmt.Errorf("isolate: first frame is %q, want init", typ)
	}
	l.init = body
	return l, nil
}

// Init is the supervisor's Config.Init.
func (l *Link) Init() []byte { return l.init }

// Close closes the socket; the supervisor sees the worker gone.
func (l *Link) Close() error { return l.w.Close() }

func (l *Link) write(typ byte, body ...[]byte) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return writeFrame(l.w, typ, body...)
}

// Call is one call a worker runs.
type Call struct {
	// Name names what runs (a tool), for messages.
	Name string
	// Key and Setup are Request's: Setup is set the first time this
	// worker gets Key, nil after.
	Key   string
	Setup []byte
	// Forget tells the Handler to drop every Setup it keeps before this
	// one: the supervisor forgot which keys the worker knows (it keeps at
	// most MaxKeys), and will send Setup again for each.
	Forget bool
	// Payload is Request.Payload.
	Payload []byte
	// Limits are enforced by Serve around the Handler.
	Limits Limits
	link   *Link
	seq    uint64
}

// Emit sends a stream chunk to the supervisor, which hands it to
// Request.Emit. It may be called only while the Handler runs.
func (c *Call) Emit(chunk []byte) error { return c.link.write(frameChunk, chunk) }

// Handler runs one call. Its error, if a *fault.Error, reaches the caller
// with its code and message; any other error as INTERNAL.
type Handler func(ctx context.Context, c *Call) ([]byte, error)

// Serve tells the supervisor the worker is ready and runs its calls, one at
// a time, under their limits, until the supervisor closes the link (then
// it returns nil) or ctx ends. A call that passes its memory limit, or
// does not stop soon after passing its CPU limit, exits the process with
// ExitMemory or ExitCPU: that is how it is bounded.
//
// Calls are read and run on the goroutine calling Serve, with no hand-off
// between goroutines on the way: on a small machine each costs a wake-up
// of tens of microseconds. Cancellations come on a pipe of their own
// (CancelFD), read by a goroutine of their own.
func (l *Link) Serve(ctx context.Context, h Handler) error {
	if err := l.write(frameReady); err != nil {
		return fmt.Errorf("isolate: tell the supervisor ready: %w", err)
	}
	var cur struct {
		sync.Mutex
		seq    uint64
		cancel context.CancelCauseFunc
		// early is a call cancelled before its frame was read: the pipe
		// and the socket keep no order between them.
		early uint64
	}
	if l.cancels != nil {
		go func() {
			var b [8]byte
			for {
				if _, err := io.ReadFull(l.cancels, b[:]); err != nil {
					return
				}
				seq := binary.BigEndian.Uint64(b[:])
				cur.Lock()
				switch {
				case cur.seq == seq && cur.cancel != nil:
					cur.cancel(context.Canceled)
				case seq > cur.seq:
					cur.early = seq
				}
				cur.Unlock()
			}
		}()
	}
	stop := context.AfterFunc(ctx, func() {
		if l.shutdown != nil {
			l.shutdown()
		}
		_ = l.w.Close()
	})
	defer stop()
	for {
		typ, body, err := readFrame(l.r)
		if err != nil {
			if errors.Is(err, io.EOF) || ctx.Err() != nil {
				return nil // the supervisor let go of us
			}
			return fmt.Errorf("isolate: read from the supervisor: %w", err)
		}
		if typ != frameCall {
			return fmt.Errorf("isolate: protocol error: unexpected frame %q", typ)
		}
		c, err := l.decodeCall(body)
		if err != nil {
			return err
		}
		cctx, cancel := context.WithCancelCause(ctx)
		cur.Lock()
		cur.seq, cur.cancel = c.seq, cancel
		if cur.early == c.seq {
			cancel(context.Canceled)
		}
		cur.Unlock()
		o := l.run(cctx, h, c)
		cur.Lock()
		cur.cancel = nil
		cur.Unlock()
		cancel(nil)
		if err := l.write(o.typ, o.body); err != nil {
			return fmt.Errorf("isolate: answer the supervisor: %w", err)
		}
		if o.guard != nil {
			o.guard.restore()
		}
	}
}

func (l *Link) decodeCall(b []byte) (*Call, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return nil, errors.New("isolate: protocol error: bad call frame")
	}
	var m callMeta
	if err := json.Unmarshal(b[k:k+int(n)], &m); err != nil {
		return nil, fmt.Errorf("isolate: protocol error: call frame: %w", err)
	}
	return &Call{seq: m.Seq, Name: m.Name, Key: m.Key, Setup: m.Setup, Forget: m.Forget, Payload: b[k+int(n):],
		Limits: Limits{Memory: m.Memory, CPU: time.Duration(m.CPU)}, link: l}, nil
}

// errCPU ends a call's context when it passes its CPU limit.
var errCPU = errors.New("cpu limit passed")

// outcome is the last frame of a call, and its guard to restore.
type outcome struct {
	typ   byte
	body  []byte
	guard *guard
}

func (l *Link) run(ctx context.Context, h Handler, c *Call) outcome {
	var g *guard
	if c.Limits != (Limits{}) {
		var cancel context.CancelCauseFunc
		ctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
		g = startGuard(c.Limits, cancel)
	}
	out, err := safeCall(ctx, h, c)
	if g != nil {
		g.stop()
		if errors.Is(context.Cause(ctx), errCPU) {
			out, err = nil, fault.New(fault.ResourceExhausted, "tool %q passed its cpu limit of %s", c.Name, c.Limits.CPU)
		}
	}
	if err != nil {
		fe := &fault.Error{}
		if !errors.As(err, &fe) {
			fe = fault.New(fault.Internal, "%v", err)
		}
		b, _ := json.Marshal(failure{Code: string(fe.Code), Msg: fe.Msg})
		return outcome{typ: frameFail, body: b, guard: g}
	}
	return outcome{typ: frameResult, body: out, guard: g}
}

func safeCall(ctx context.Context, h Handler, c *Call) (out []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in worker call: %v", p)
		}
	}()
	return h(ctx, c)
}

// guard enforces one call's limits from inside the worker.
type guard struct {
	lim     Limits
	cancel  context.CancelCauseFunc
	heap0   uint64
	cpu0    time.Duration
	sample  []metrics.Sample
	watchS  []metrics.Sample // the watcher's own
	timer   *time.Timer
	stopped atomic.Bool
	fired   atomic.Bool
}

// Runtime metrics the guard reads.
const (
	metricHeapObjects  = "/memory/classes/heap/objects:bytes"
	metricTotal        = "/memory/classes/total:bytes"
	metricHeapReleased = "/memory/classes/heap/released:bytes"
)

// guardEvery is how often the guard samples the heap and the CPU time: at a
// few GB/s of allocation, a millisecond is a few MB.
const guardEvery = time.Millisecond

func startGuard(lim Limits, cancel context.CancelCauseFunc) *guard {
	g := &guard{lim: lim, cancel: cancel,
		sample: []metrics.Sample{{Name: metricHeapObjects}, {Name: metricTotal}, {Name: metricHeapReleased}},
		watchS: []metrics.Sample{{Name: metricHeapObjects}}}
	metrics.Read(g.sample)
	g.heap0 = g.sample[0].Value.Uint64()
	if lim.Memory > 0 {
		total, released := g.sample[1].Value.Uint64(), g.sample[2].Value.Uint64()
		// The collector works hard as the process nears the limit, so a
		// call with much garbage and little live data is not stopped.
		// (SetMemoryLimit stops the world: skipped when it would barely
		// change.)
		setGoMemoryLimit(total - released + lim.Memory)
		// The kernel's bound on new mappings: memory the runtime mapped and
		// gave back (released) is used again without one, so it comes out
		// of the budget; a sixteenth more than the watcher's bound lets the
		// watcher end steady growth cleanly, while one huge allocation
		// fails in the kernel before a byte of it is touched.
		setDataLimit(lim.Memory + lim.Memory/16 - min(released, lim.Memory/4))
	}
	if lim.CPU > 0 {
		g.cpu0 = processCPU()
	}
	// A timer, not a goroutine with a ticker: a call shorter than
	// guardEvery costs no goroutine and no wake-up at all.
	// Set before it can fire: check re-arms it.
	g.timer = time.AfterFunc(time.Hour, g.check)
	g.timer.Reset(guardEvery)
	return g
}

// cpuGrace is how long past its CPU limit a cancelled call may run (a
// long built-in does not see the cancellation) before the worker exits.
func (g *guard) cpuGrace() time.Duration { return max(g.lim.CPU/4, 200*time.Millisecond) }

// check samples the heap and the CPU time, acts on what it finds, and
// sets itself to run again unless the call has ended.
func (g *guard) check() {
	if g.stopped.Load() {
		return
	}
	if g.lim.Memory > 0 {
		metrics.Read(g.watchS)
		if h := g.watchS[0].Value.Uint64(); h > g.heap0+g.lim.Memory && !g.stopped.Load() {
			fmt.Fprintf(os.Stderr, "isolate: worker heap grew by %s, past the call's memory limit of %s: exiting\n",
				FormatSize(h-g.heap0), FormatSize(g.lim.Memory))
			os.Exit(ExitMemory)
		}
	}
	if g.lim.CPU > 0 {
		used := processCPU() - g.cpu0
		if used >= g.lim.CPU && g.fired.CompareAndSwap(false, true) {
			g.cancel(errCPU)
		}
		if used >= g.lim.CPU+g.cpuGrace() && !g.stopped.Load() {
			fmt.Fprintf(os.Stderr, "isolate: call used %s of CPU, past its limit of %s, and did not stop: exiting\n", used, g.lim.CPU)
			os.Exit(ExitCPU)
		}
	}
	if !g.stopped.Load() {
		g.timer.Reset(guardEvery)
	}
}

// stop ends the watch; a check already running finds it stopped.
func (g *guard) stop() {
	g.stopped.Store(true)
	g.timer.Stop()
}

// goMemoryLimit is the last value given to debug.SetMemoryLimit.
var goMemoryLimit atomic.Uint64

// setGoMemoryLimit sets the runtime's memory limit to v unless it is
// within 1/32 of what it is. Between calls the last call's limit stays:
// the worker's heap is small then.
func setGoMemoryLimit(v uint64) {
	cur := goMemoryLimit.Load()
	if cur != 0 && v >= cur-cur/32 && v <= cur+cur/32 {
		return
	}
	goMemoryLimit.Store(v)
	debug.SetMemoryLimit(int64(min(v, math.MaxInt64)))
}

// restore lifts the call's limits and, when the call left much garbage,
// collects it, so the next call starts from a small heap.
func (g *guard) restore() {
	if g.lim.Memory == 0 {
		return
	}
	setDataLimit(0)
	metrics.Read(g.sample[:1])
	if g.sample[0].Value.Uint64() > g.heap0+4<<20 {
		runtime.GC()
	}
}
