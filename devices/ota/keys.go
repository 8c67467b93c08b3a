package ota

import (
	"bytes"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
)

// Key file headers: the first line of a key file.
const (
	// PublicKeyHeader is the first line of a public key file.
	PublicKeyHeader = "loki-ota-ed25519-public-key"
	// PrivateKeyHeader is the first line of a private key file.
	PrivateKeyHeader = "loki-ota-ed25519-private-key"
)

// GenerateKey returns a new ed25519 key pair from crypto/rand. The private
// key stays with the operator; the public key is pinned on devices.
func GenerateKey() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(nil)
}

// MarshalPublicKey encodes pub as a key file: the line PublicKeyHeader,
// then the 32-byte key in standard base64 with padding, each line ending
// in "\n".
func MarshalPublicKey(pub ed25519.PublicKey) []byte {
	return marshalKey(PublicKeyHeader, pub)
}

// MarshalPrivateKey encodes priv as a key file: the line PrivateKeyHeader,
// then the key's 32-byte seed (RFC 8032's private key) in standard base64
// with padding, each line ending in "\n". Keep the file mode 0600.
func MarshalPrivateKey(priv ed25519.PrivateKey) []byte {
	return marshalKey(PrivateKeyHeader, priv.Seed())
}

func marshalKey(header string, key []byte) []byte {
	return []byte(header + "\n" + base64.StdEncoding.EncodeToString(key) + "\n")
}

// ParsePublicKey decodes a file MarshalPublicKey wrote (a "\r\n" line end
// and a missing final newline are accepted). The error wraps ErrKey.
func ParsePublicKey(data []byte) (ed25519.PublicKey, error) {
	raw, err := parseKey(PublicKeyHeader, data, ed25519.PublicKeySize)
	if err != nil {
		return nil, err
	}
	return ed25519.PublicKey(raw), nil
}

// ParsePrivateKey decodes a file MarshalPrivateKey wrote. The error wraps
// ErrKey.
func ParsePrivateKey(data []byte) (ed25519.PrivateKey, error) {
	seed, err := parseKey(PrivateKeyHeader, data, ed25519.SeedSize)
	if err != nil {
		return nil, err
	}
	return ed25519.NewKeyFromSeed(seed), nil
}

func parseKey(header string, data []byte, size int) ([]byte, error) {
	lines := bytes.Split(bytes.TrimRight(data, "\r\n"), []byte("\n"))
	if len(lines) != 2 || string(bytes.TrimRight(lines[0], "\r")) != header {
		return nil, fmt.Errorf("%w: want the line %q then one base64 line", ErrKey, header)
	}
	raw, err := base64.StdEncoding.DecodeString(string(bytes.TrimRight(lines[1], "\r")))
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrKey, header, err)
	}
	if len(raw) != size {
		return nil, fmt.Errorf("%w: %s: %d bytes, want %d", ErrKey, header, len(raw), size)
	}
	return raw, nil
}
