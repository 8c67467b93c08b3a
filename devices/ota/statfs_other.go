//go:build !linux

package ota

import (
	"errors"
	"runtime"
)

// statfsFree refuses to guess: outside Linux, pass WithFreeSpace.
func statfsFree(string) (uint64, error) {
	return 0, errors.New("free space unknown on " + runtime.GOOS + ": use WithFreeSpace")
}
