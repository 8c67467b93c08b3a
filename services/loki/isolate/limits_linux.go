package isolate

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
	"syscall"
	"time"
)

// setDataLimit sets the soft RLIMIT_DATA of the process to what it has
// mapped for data now plus budget, or lifts it for budget 0. Go reserves its
// heap's address space with PROT_NONE mappings, which the limit does not
// count, and maps pages read-write as the heap grows, which it does: so the
// limit bounds the heap's growth, not the reservations. Only the soft limit
// moves: an unprivileged process could not raise a lowered hard limit for
// its next call.
func setDataLimit(budget uint64) {
	var cur syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_DATA, &cur); err != nil {
		return
	}
	soft := cur.Max
	if budget > 0 {
		if d := vmData(); d > 0 {
			soft = min(d+budget, cur.Max)
		}
	}
	_ = syscall.Setrlimit(syscall.RLIMIT_DATA, &syscall.Rlimit{Cur: soft, Max: cur.Max})
}

// pageSize is the unit of /proc/self/statm.
var pageSize = uint64(os.Getpagesize())

// vmData is the process's data mapping size (VmData) in bytes, from
// /proc/self/statm, which is much cheaper to read than status; 0 if unknown.
func vmData() uint64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	// size resident shared text lib data dt
	f := bytes.Fields(b)
	if len(f) < 6 {
		return 0
	}
	n, _ := strconv.ParseUint(string(f[5]), 10, 64)
	return n * pageSize
}

func procStatusKiB(path, key string) uint64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Bytes()
		if rest, ok := bytes.CutPrefix(line, []byte(key)); ok {
			f := bytes.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseUint(string(f[0]), 10, 64)
				return n
			}
		}
	}
	return 0
}

// processCPU is the CPU time the process has used, user and system.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTick is the unit of /proc/<pid>/stat times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// pidCPU is the CPU time process pid has used, from /proc/<pid>/stat;
// ok is false once it cannot be read.
func pidCPU(pid int) (time.Duration, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, false
	}
	// The command name, field 2, may hold spaces: count from its ")".
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, false
	}
	f := bytes.Fields(b[i+1:])
	// Fields after ")": state is 3, utime 14 and stime 15.
	if len(f) < 13 {
		return 0, false
	}
	u, _ := strconv.ParseUint(string(f[11]), 10, 64)
	s, _ := strconv.ParseUint(string(f[12]), 10, 64)
	return time.Duration(u+s) * clockTick, true
}

// PeakRSS is the peak resident memory of process pid (VmHWM), and its
// current resident memory (VmRSS), in bytes; zero when unknown.
func PeakRSS(pid int) (peak, now uint64) {
	p := "/proc/" + strconv.Itoa(pid) + "/status"
	return procStatusKiB(p, "VmHWM:") << 10, procStatusKiB(p, "VmRSS:") << 10
}

// ResetPeakRSS resets the VmHWM of process pid to its current RSS, so a
// later PeakRSS measures from now.
func ResetPeakRSS(pid int) error {
	return os.WriteFile("/proc/"+strconv.Itoa(pid)+"/clear_refs", []byte("5"), 0)
}

func workerSysProcAttr() *syscall.SysProcAttr {
	// Own process group: a terminal's Ctrl-C goes to the supervisor, which
	// drains, not to the workers running its calls. Pdeathsig: a worker
	// does not outlive a supervisor that died without closing its link.
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
