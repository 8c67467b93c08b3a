//go:build !linux

package isolate

import (
	"errors"
	"syscall"
	"time"
)

// Without Linux, only the worker's own watchers bound a call.

func setDataLimit(uint64) {}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func pidCPU(int) (time.Duration, bool) { return 0, false }

// PeakRSS is not known outside Linux.
func PeakRSS(int) (peak, now uint64) { return 0, 0 }

// ResetPeakRSS is not supported outside Linux.
func ResetPeakRSS(int) error { return errors.New("isolate: peak RSS is not known on this system") }

func workerSysProcAttr() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
