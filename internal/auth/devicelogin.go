package auth

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/loki-iot/loki/subjects"
)

// DeviceLoginsDir is the subdirectory of an identity directory that holds
// the device logins `loki auth add-device` saves for agents on this host.
const DeviceLoginsDir = "devices"

// DeviceLogin is a device's MQTT login as saved in its login file: the
// JSON object {"username": ..., "password": ...} the agent (cmd/jotunheim)
// reads by default.
type DeviceLogin struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

// DeviceLoginFile is the path of device deviceID's login file in the
// identity directory dir: dir/devices/<deviceID>.json.
func DeviceLoginFile(dir, deviceID string) string {
	return filepath.Join(dir, DeviceLoginsDir, deviceID+".json")
}

// SaveDeviceLogin writes cred's MQTT login to DeviceLoginFile(dir, id) of
// its device: the devices directory 0700, the file 0600, replaced
// atomically (a crash leaves the old file or the new one). It returns the
// path. The login is a secret: only the host that runs the agent should
// keep it.
func SaveDeviceLogin(dir string, cred Credential) (string, error) {
	id := cred.Identity.DeviceID
	if err := subjects.ValidDeviceID(id); err != nil || cred.Username == "" || cred.Password == "" {
		return "", fmt.Errorf("%w: not a device credential (device id %q)", ErrInvalid, id)
	}
	devDir := filepath.Join(dir, DeviceLoginsDir)
	if err := os.MkdirAll(devDir, 0o700); err != nil {
		return "", fmt.Errorf("device logins directory %s: %w", devDir, err)
	}
	// MkdirAll keeps an existing directory's mode; secrets need 0700.
	if err := os.Chmod(devDir, 0o700); err != nil {
		return "", fmt.Errorf("device logins directory %s: %w", devDir, err)
	}
	b, err := json.MarshalIndent(DeviceLogin{Username: cred.Username, Password: cred.Password}, "", "  ")
	if err != nil {
		return "", err
	}
	path := DeviceLoginFile(dir, id)
	if err := writeFileAtomic(path, append(b, '\n')); err != nil {
		return "", fmt.Errorf("device login %s: %w", path, err)
	}
	return path, nil
}

// RemoveDeviceLogin removes device deviceID's login file from the identity
// directory dir, reporting whether there was one. A name that cannot be a
// device id has none.
func RemoveDeviceLogin(dir, deviceID string) (bool, error) {
	if subjects.ValidDeviceID(deviceID) != nil {
		return false, nil
	}
	err := os.Remove(DeviceLoginFile(dir, deviceID))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("device login %s: %w", DeviceLoginFile(dir, deviceID), err)
	}
	return true, nil
}
