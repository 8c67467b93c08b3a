// Package atomicfile replaces files so that a crash or a power cut leaves
// either the old content or the new, never a mix: identities, a device's
// settings and its spool.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write replaces path with data (mode perm): a temporary file in the same
// directory, written and fsynced, renamed over path, then the directory
// fsynced so that the rename itself survives a power cut. On error path is
// unchanged and the temporary file removed.
func Write(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() { _ = os.Remove(tmp) }() // a no-op after the rename
	if err := f.Chmod(perm); err != nil {
		_ = f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}
