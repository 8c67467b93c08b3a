package ota

import "syscall"

// statfsFree returns the bytes an unprivileged user may still write in
// dir's file system (f_bavail blocks of f_frsize bytes, as df counts).
func statfsFree(dir string) (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	bsize := uint64(st.Frsize)
	if bsize == 0 {
		bsize = uint64(st.Bsize)
	}
	return uint64(st.Bavail) * bsize, nil
}
