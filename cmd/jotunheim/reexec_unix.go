//go:build unix

package main

import (
	"os"
	"syscall"
)

// reexec replaces the process with a fresh start of the same binary and
// arguments: the reboot command restarts the agent without a supervisor,
// and under one (systemd) the process id stays the same.
func reexec() error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	return syscall.Exec(exe, os.Args, os.Environ())
}
