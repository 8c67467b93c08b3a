//go:build unix

package main

import (
	"os"
	"syscall"
)

// reexec replaces the process with a fresh start of exe (this binary when
// empty) with the same arguments: the reboot command restarts the agent
// without a supervisor, and under one (systemd) the process id stays the
// same. After an OTA install or rollback exe is the OTA current.
func reexec(exe string) error {
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return err
		}
	}
	return syscall.Exec(exe, os.Args, os.Environ())
}
