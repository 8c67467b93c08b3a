package isolate

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/loki-iot/loki/internal/fault"
)

// Config configures a Supervisor. Zero fields take their defaults.
type Config struct {
	// Workers is how many worker processes run, and so how many isolated
	// calls run at once (default: GOMAXPROCS).
	Workers int
	// Command returns the command that starts one worker: a process that
	// calls Attach and Link.Serve. It is called for every worker started.
	Command func() (*exec.Cmd, error)
	// Init is sent to every worker at start (Link.Init): how to reach NATS,
	// say. It travels over the worker's socket, never in argv or the
	// environment, so it may hold what ps must not show.
	Init []byte
	// Stderr receives the workers' standard error (their logs), line by
	// line; nil discards it.
	Stderr io.Writer
	// StartTimeout bounds a worker's start, until it is ready (default 30s).
	StartTimeout time.Duration
	// StopGrace is how long a call may go on after its context ended (the
	// worker was told to stop it) before its worker is killed (default 2s).
	StopGrace time.Duration
	// Observer, when its fields are set, is told what the workers do.
	Observer Observer
}

// Observer hears about workers, for metrics, benchmarks and tests. Its
// functions may be nil; they run on the supervisor's goroutines and must
// return quickly.
type Observer struct {
	// Ready: worker pid started and is ready for calls.
	Ready func(pid int)
	// Call: a call of name (Request.Name) is about to be sent to worker pid.
	Call func(pid int, name string)
	// Exit: worker pid exited (st.SysUsage() holds its rusage).
	Exit func(pid int, st *os.ProcessState)
}

// Supervisor owns a pool of worker processes and runs calls in them. The
// workers start with the first call (a replica that never isolates a call
// costs nothing); a worker that dies, for any reason, is replaced. Methods
// are safe for concurrent use.
type Supervisor struct {
	cfg Config
	log *slog.Logger

	running chan struct{} // closed when Run starts
	ctx     context.Context
	once    sync.Once
	slots   sync.WaitGroup
	idle    chan *worker
	alive   atomic.Int32
	lastErr atomic.Pointer[error]

	mu      sync.Mutex
	workers map[*worker]struct{}
}

// New checks cfg and returns a Supervisor; Run starts it.
func New(cfg Config, log *slog.Logger) (*Supervisor, error) {
	if cfg.Command == nil {
		return nil, errors.New("isolate: Config.Command is required")
	}
	if cfg.Workers < 0 {
		return nil, fmt.Errorf("isolate: workers %d: must not be negative", cfg.Workers)
	}
	if cfg.Workers == 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 2 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Supervisor{cfg: cfg, log: log, running: make(chan struct{}), idle: make(chan *worker, 4*cfg.Workers),
		workers: map[*worker]struct{}{}}, nil
}

// Run lets the supervisor start workers until ctx ends, then stops every
// worker and waits for them to exit. Calls still running are cut off: stop
// taking calls (drain) before ending ctx.
func (s *Supervisor) Run(ctx context.Context) error {
	s.ctx = ctx
	close(s.running)
	<-ctx.Done()
	s.mu.Lock()
	for w := range s.workers {
		_ = w.conn.Close() // the worker sees EOF and exits
	}
	s.mu.Unlock()
	// A worker still in a call (past the drain) is killed.
	t := time.AfterFunc(stopWait, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for w := range s.workers {
			w.kill("stopping")
		}
	})
	defer t.Stop()
	s.slots.Wait()
	return nil
}

// stopWait is how long Run waits for workers to exit before it kills them.
const stopWait = 5 * time.Second

// Workers lists the process ids of the workers now running.
func (s *Supervisor) Workers() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]int, 0, len(s.workers))
	for w := range s.workers {
		out = append(out, w.pid)
	}
	return out
}

// Request is one call to run in a worker.
type Request struct {
	// Name names what runs (a tool), in messages such as "tool "x" passed
	// its memory limit of 64 MiB".
	Name string
	// Limits bound the call.
	Limits Limits
	// Key and Setup let a worker keep what many calls share (a compiled
	// tool): Setup is called, and its result sent along, only the first
	// time a worker gets Key. Both may be empty.
	Key   string
	Setup func() ([]byte, error)
	// Payload is the call itself (Call.Payload in the worker).
	Payload []byte
	// Emit, when not nil, receives the chunks the worker emits, in order,
	// on the goroutine calling Do; an error stops the call.
	Emit func(chunk []byte) error
}

// Do runs req in an idle worker, waiting for one until ctx ends, and
// returns the worker's result. Errors are *fault.Error: the handler's own,
// RESOURCE_EXHAUSTED naming the limit when the call passed one, UNAVAILABLE
// when its worker died or no worker can start, DEADLINE_EXCEEDED when ctx
// ended and the worker had to be stopped. Only the call's own worker is
// affected by what the call does.
func (s *Supervisor) Do(ctx context.Context, req Request) ([]byte, error) {
	select {
	case <-s.running:
	default:
		return nil, fault.New(fault.Unavailable, "tool %q: isolated workers are not running", req.Name)
	}
	s.once.Do(s.startSlots)
	var w *worker
	for w == nil {
		if s.alive.Load() == 0 {
			if p := s.lastErr.Load(); p != nil {
				return nil, fault.Wrap(fault.Unavailable, *p, "tool %q: no worker process could be started to run it (details in the service log)", req.Name)
			}
		}
		select {
		case w = <-s.idle:
			if w.isDead() {
				w = nil
			}
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.Canceled) {
				return nil, fault.New(fault.DeadlineExceeded, "tool %q was canceled while waiting for a free worker process", req.Name)
			}
			return nil, fault.New(fault.DeadlineExceeded, "tool %q: no worker process became free before its deadline", req.Name)
		case <-s.ctx.Done():
			return nil, fault.New(fault.Unavailable, "tool %q: the service is stopping", req.Name)
		case <-time.After(100 * time.Millisecond): // look at lastErr again
		}
	}
	out, err := s.call(ctx, w, req)
	if !w.isDead() {
		select {
		case s.idle <- w:
		default: // only dead workers can fill it; replace this one too
			w.kill("pool full")
		}
	}
	return out, err
}

func (s *Supervisor) startSlots() {
	for range s.cfg.Workers {
		s.slots.Add(1)
		go s.slot()
	}
}

// slot keeps one worker running until the supervisor stops, starting a new
// one whenever its worker dies, with a growing pause after failed starts.
func (s *Supervisor) slot() {
	defer s.slots.Done()
	pause := 100 * time.Millisecond
	for s.ctx.Err() == nil {
		w, err := s.start()
		if err != nil {
			s.lastErr.Store(&err)
			s.log.Error("isolated worker did not start", "err", err, "retry_in", pause)
			select {
			case <-s.ctx.Done():
				return
			case <-time.After(pause):
			}
			pause = min(2*pause, 10*time.Second)
			continue
		}
		pause = 100 * time.Millisecond
		s.lastErr.Store(nil)
		s.alive.Add(1)
		select {
		case s.idle <- w:
		case <-s.ctx.Done():
		}
		<-w.dead
		s.alive.Add(-1)
		s.mu.Lock()
		delete(s.workers, w)
		s.mu.Unlock()
		s.purge()
		if s.ctx.Err() == nil {
			s.log.Debug("isolated worker exited; starting another", "pid", w.pid, "status", w.status())
		}
	}
}

// purge drops dead workers from the idle queue: a worker that died idle
// stays there until taken, and enough of them would fill it.
func (s *Supervisor) purge() {
	var live []*worker
	for drained := false; !drained; {
		select {
		case w := <-s.idle:
			if !w.isDead() {
				live = append(live, w)
			}
		default:
			drained = true
		}
	}
	for _, w := range live {
		select {
		case s.idle <- w:
		default: // cannot happen: room for four times the workers
			w.kill("pool full")
		}
	}
}

// worker is the supervisor's side of one worker process.
type worker struct {
	pid     int
	cmd     *exec.Cmd
	conn    net.Conn
	r       *bufio.Reader // frames from the worker; read by the caller holding it
	cancels *os.File      // the write end of the worker's cancel pipe
	seq     uint64        // of the last call sent
	dead    chan struct{}
	state   *os.ProcessState // set before dead is closed
	known   map[string]bool  // Request.Keys sent; only the caller holding the worker uses it
	// killed says why the supervisor killed the worker, if it did.
	killed atomic.Pointer[string]

	tailMu sync.Mutex
	tail   []byte // the end of the worker's stderr
	fatal  string // its first "fatal error:" or "SIGSEGV:" line
}

func (w *worker) isDead() bool {
	select {
	case <-w.dead:
		return true
	default:
		return false
	}
}

func (w *worker) kill(why string) {
	w.killed.CompareAndSwap(nil, &why)
	_ = w.cmd.Process.Kill()
}

func (w *worker) status() string {
	if w.state == nil {
		return "running"
	}
	return w.state.String()
}

const tailBytes = 4 << 10

func (w *worker) stderrTail() string {
	w.tailMu.Lock()
	defer w.tailMu.Unlock()
	return string(w.tail)
}

// outOfMemory reports whether the worker's runtime failed to get memory:
// what Go prints when a mapping fails under RLIMIT_DATA ("out of memory",
// "cannot allocate memory"; the race detector's "failed to allocate"). Under a memory limit, a fault of the runtime
// itself (SIGSEGV with a register dump, not a Go panic) counts too: that
// is how some of the runtime's own allocations fail when a mapping is
// refused.
func (w *worker) outOfMemory(limited bool) bool {
	w.tailMu.Lock()
	defer w.tailMu.Unlock()
	return strings.Contains(w.fatal, "out of memory") || strings.Contains(w.fatal, "cannot allocate memory") ||
		strings.Contains(w.fatal, "failed to allocate") || (limited && strings.HasPrefix(w.fatal, "SIGSEGV:"))
}

// start starts one worker and waits until it is ready.
func (s *Supervisor) start() (*worker, error) {
	cmd, err := s.cfg.Command()
	if err != nil {
		return nil, fmt.Errorf("isolate: worker command: %w", err)
	}
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("isolate: socketpair: %w", err)
	}
	mine, theirs := os.NewFile(uintptr(fds[0]), "isolate-supervisor"), os.NewFile(uintptr(fds[1]), "isolate-worker")
	defer theirs.Close()
	conn, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		return nil, fmt.Errorf("isolate: socket: %w", err)
	}
	cancelR, cancelW, err := os.Pipe()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("isolate: pipe: %w", err)
	}
	defer cancelR.Close()
	cmd.ExtraFiles = []*os.File{theirs, cancelR} // LinkFD, CancelFD
	cmd.SysProcAttr = workerSysProcAttr()
	stderr, err := cmd.StderrPipe()
	if err != nil {
		conn.Close()
		cancelW.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		conn.Close()
		cancelW.Close()
		return nil, fmt.Errorf("isolate: start worker %s: %w", cmd.Path, err)
	}
	w := &worker{pid: cmd.Process.Pid, cmd: cmd, conn: conn, cancels: cancelW,
		dead: make(chan struct{}), known: map[string]bool{}}
	s.mu.Lock()
	s.workers[w] = struct{}{}
	s.mu.Unlock()
	stderrDone := make(chan struct{})
	go func() {
		defer close(stderrDone)
		s.copyStderr(w, stderr)
	}()
	go func() {
		<-stderrDone
		_ = cmd.Wait()
		w.cancels.Close()
		w.state = cmd.ProcessState
		if f := s.cfg.Observer.Exit; f != nil {
			f(w.pid, w.state)
		}
		close(w.dead)
	}()
	fail := func(err error) (*worker, error) {
		w.kill("start failed")
		conn.Close()
		<-w.dead
		s.mu.Lock()
		delete(s.workers, w)
		s.mu.Unlock()
		if t := strings.TrimSpace(w.stderrTail()); t != "" {
			err = fmt.Errorf("%w; its last output: %s", err, lastLine(t))
		}
		return nil, err
	}
	r := bufio.NewReaderSize(conn, 64<<10)
	w.r = r
	_ = conn.SetDeadline(time.Now().Add(s.cfg.StartTimeout))
	if err := writeFrame(conn, frameInit, s.cfg.Init); err != nil {
		return fail(fmt.Errorf("isolate: worker %d: send init: %w", w.pid, err))
	}
	typ, _, err := readFrame(r)
	if err != nil {
		return fail(fmt.Errorf("isolate: worker %d did not get ready: %w", w.pid, err))
	}
	if typ != frameReady {
		return fail(fmt.Errorf("isolate: worker %d: first frame %q, want ready", w.pid, typ))
	}
	_ = conn.SetDeadline(time.Time{})
	if f := s.cfg.Observer.Ready; f != nil {
		f(w.pid)
	}
	return w, nil
}

func lastLine(s string) string {
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}

// copyStderr copies the worker's stderr to Config.Stderr, keeping its end
// to explain the worker's death. After a fatal error, the runtime's dump
// of every goroutine is kept out of the log: the supervisor logs the
// death in one line.
func (s *Supervisor) copyStderr(w *worker, r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		w.tailMu.Lock()
		if w.fatal == "" && (bytes.HasPrefix(line, []byte("fatal error:")) || bytes.HasPrefix(line, []byte("SIGSEGV:")) ||
			bytes.Contains(line, []byte("ThreadSanitizer failed to allocate"))) {
			w.fatal = string(line)
		}
		if s.cfg.Stderr != nil && w.fatal == "" {
			_, _ = s.cfg.Stderr.Write(append(line, '\n'))
		}
		w.tail = append(w.tail, line...)
		w.tail = append(w.tail, '\n')
		if len(w.tail) > tailBytes {
			w.tail = w.tail[len(w.tail)-tailBytes:]
		}
		w.tailMu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r)
}

// Reasons the supervisor kills a worker.
const (
	killDeadline = "deadline"
	killCPU      = "cpu"
)

// cancel asks the worker to stop call seq; a call that has ended already
// is not affected.
func (w *worker) cancel(seq uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	_, _ = w.cancels.Write(b[:])
}

// call sends req to w and reads its frames on the calling goroutine until
// the result: no goroutine hand-off on the way.
func (s *Supervisor) call(ctx context.Context, w *worker, req Request) (_ []byte, err error) {
	w.seq++
	seq := w.seq
	meta := callMeta{Seq: seq, Name: req.Name, Key: req.Key, Memory: req.Limits.Memory, CPU: int64(req.Limits.CPU)}
	if req.Key != "" && !w.known[req.Key] && req.Setup != nil {
		b, err := req.Setup()
		if err != nil {
			return nil, err
		}
		meta.Setup = b
		if len(w.known) >= MaxKeys {
			// The worker forgets with us, in this same call: the two
			// never disagree on what it knows.
			clear(w.known)
			meta.Forget = true
		}
	}
	mb, err := json.Marshal(meta)
	if err != nil {
		return nil, err
	}
	head := binary.AppendUvarint(nil, uint64(len(mb)))
	if f := s.cfg.Observer.Call; f != nil {
		f(w.pid, req.Name)
	}
	if err := writeFrame(w.conn, frameCall, head, mb, req.Payload); err != nil {
		w.kill("write failed")
		<-w.dead
		return nil, s.deathError(ctx, w, req)
	}
	if meta.Setup != nil {
		// Known unless the call fails: a Setup the worker could not
		// install (it did not compile) is sent again next time rather
		// than the worker answering "no tool" for good.
		w.known[req.Key] = true
		defer func() {
			if err != nil {
				delete(w.known, req.Key)
			}
		}()
	}
	// When ctx ends, the worker is told to stop the call, and killed if it
	// has not within StopGrace.
	var mu sync.Mutex
	ended := false
	var grace *time.Timer
	stopWatch := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if ended {
			return
		}
		w.cancel(seq)
		grace = time.AfterFunc(s.cfg.StopGrace, func() {
			mu.Lock()
			defer mu.Unlock()
			if !ended {
				w.kill(killDeadline)
			}
		})
	})
	var cpuDone chan struct{}
	if req.Limits.CPU > 0 {
		cpuDone = make(chan struct{})
		go s.cpuBackstop(w, req.Limits.CPU, cpuDone)
	}
	defer func() {
		stopWatch()
		mu.Lock()
		ended = true
		if grace != nil {
			grace.Stop()
		}
		mu.Unlock()
		if cpuDone != nil {
			close(cpuDone)
		}
	}()
	var emitErr error
	for {
		typ, body, err := readFrame(w.r)
		if err != nil {
			// The worker died, most likely; if not, its link is of no use.
			select {
			case <-w.dead:
			case <-time.After(time.Second):
				w.kill("link broken")
				<-w.dead
			}
			return nil, s.deathError(ctx, w, req)
		}
		switch typ {
		case frameChunk:
			if req.Emit != nil && emitErr == nil {
				if emitErr = req.Emit(body); emitErr != nil {
					w.cancel(seq)
				}
			}
		case frameResult:
			if emitErr != nil {
				return nil, emitErr
			}
			return body, nil
		case frameFail:
			if emitErr != nil {
				return nil, emitErr
			}
			var fl failure
			if err := json.Unmarshal(body, &fl); err != nil || !fault.Code(fl.Code).Valid() {
				return nil, fmt.Errorf("isolate: worker %d: bad failure frame", w.pid)
			}
			return nil, &fault.Error{Code: fault.Code(fl.Code), Msg: fl.Msg}
		default:
			w.kill("protocol error")
		}
	}
}

// cpuBackstop kills w when the call has used far more CPU than limit: the
// worker stops a call at its limit itself; this is for one that cannot.
func (s *Supervisor) cpuBackstop(w *worker, limit time.Duration, done <-chan struct{}) {
	cpu0, ok := pidCPU(w.pid)
	if !ok {
		return
	}
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		if c, ok := pidCPU(w.pid); ok && c-cpu0 > limit+max(limit/2, time.Second) {
			w.kill(killCPU)
			return
		}
	}
}

// deathError says why w died during req.
func (s *Supervisor) deathError(ctx context.Context, w *worker, req Request) error {
	st, tail := w.state, w.stderrTail()
	code := -1
	if st != nil {
		code = st.ExitCode()
	}
	why := ""
	if p := w.killed.Load(); p != nil {
		why = *p
	}
	oom := w.outOfMemory(req.Limits.Memory > 0)
	s.log.Warn("isolated worker died during a call", "tool", req.Name, "pid", w.pid, "status", w.status(),
		"killed_by_supervisor", why, "memory_limit", req.Limits.Memory, "cpu_limit", req.Limits.CPU, "fatal", w.fatal, "last_output", lastLine(strings.TrimSpace(tail)))
	switch {
	case why == killDeadline:
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return fault.New(fault.DeadlineExceeded, "tool %q ran past its timeout and did not stop; its worker process was stopped", req.Name)
		}
		return fault.New(fault.DeadlineExceeded, "tool %q was canceled and did not stop; its worker process was stopped", req.Name)
	case why == killCPU || code == ExitCPU:
		return fault.New(fault.ResourceExhausted, "tool %q passed its cpu limit of %s", req.Name, req.Limits.CPU)
	case req.Limits.Memory > 0 && (code == ExitMemory || oom):
		return fault.New(fault.ResourceExhausted, "tool %q passed its memory limit of %s", req.Name, FormatSize(req.Limits.Memory))
	case oom:
		return fault.New(fault.Unavailable, "tool %q: its worker process ran out of memory; the call did not finish", req.Name)
	case st != nil && !st.Exited():
		return fault.New(fault.Unavailable, "tool %q: its worker process was killed (%s) while the call ran; the call did not finish", req.Name, st)
	default:
		return fault.New(fault.Unavailable, "tool %q: its worker process ended (%s) while the call ran; the call did not finish", req.Name, w.status())
	}
}
