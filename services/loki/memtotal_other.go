//go:build !linux

package loki

// totalMemory is the machine's RAM in bytes, 0 if unknown.
func totalMemory() uint64 { return 0 }
