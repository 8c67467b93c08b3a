//go:build !unix

package auth

import (
	"os"
	"path/filepath"
)

// lockDir opens dir/lock; without flock, it does not exclude other processes.
func lockDir(dir string) (*os.File, error) {
	return os.OpenFile(filepath.Join(dir, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
}
