// Package ota is the device-side core of Jotunheim's over-the-air updates:
// a signed release manifest, and an Installer that stages, verifies,
// swaps, counts boots, commits and rolls back a device's binary on Linux
// so that no update, whether tampered, broken or interrupted by a power
// cut, leaves the device without a verified binary to boot.
//
// The trust chain: the operator holds an ed25519 private key and signs a
// Manifest (name, version, target, size, SHA-256, security counter); the
// device pins the matching public key and refuses any release whose
// manifest signature, target, security counter, size or digest does not
// check out, before anything replaces the running binary. docs/OTA.md
// describes the protocol for firmware not written in Go.
//
// The package imports only the standard library and internal/atomicfile:
// no transport. The agent (or any program) feeds Stage an io.Reader.
package ota

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// Errors. Every error this package returns for a refused release wraps
// exactly one of them (test with errors.Is); the message names the field
// and the values that failed.
var (
	// ErrManifest is a manifest that does not decode or whose fields are
	// out of their documented ranges.
	ErrManifest = errors.New("invalid manifest")
	// ErrSignature is a manifest whose signature does not verify against
	// the pinned public key (or a signature of the wrong length).
	ErrSignature = errors.New("manifest signature does not verify")
	// ErrTarget is a release built for another os, arch or model.
	ErrTarget = errors.New("release target does not match this device")
	// ErrDowngrade is a security counter lower than the device's floor
	// (the highest counter it ever committed): anti-rollback.
	ErrDowngrade = errors.New("security counter lower than the installed one")
	// ErrDigest is a binary whose SHA-256 differs from the manifest's.
	ErrDigest = errors.New("binary digest does not match the manifest")
	// ErrSize is a binary whose length differs from the manifest's.
	ErrSize = errors.New("binary size does not match the manifest")
	// ErrSpace is a file system without room for the staged binary.
	ErrSpace = errors.New("not enough free space")
	// ErrKey is a key file that does not parse, or a key of the wrong size.
	ErrKey = errors.New("invalid key")
	// ErrState is an operation the installer's state does not allow
	// (Install with nothing staged, Commit with nothing pending, Stage
	// while an update is pending), or a directory whose files match no
	// state the installer can leave behind.
	ErrState = errors.New("invalid update state")
)

// maxToken is the longest name, version, os, arch or model.
const maxToken = 64

// signingContext prefixes the canonical manifest in the signed message so
// that a signature over a manifest can never be replayed as a signature
// over anything else the same key might sign.
const signingContext = "loki-ota-manifest-v1\n"

// Target is what a release runs on. OS and Arch use Go's GOOS and GOARCH
// names for Linux devices ("linux", "arm64") and free names for others
// ("esp-idf", "esp32s3"); Model is the device model from its capability
// manifest.
type Target struct {
	// OS is the operating system: GOOS for a Go agent. Required.
	OS string `json:"os"`
	// Arch is the instruction set: GOARCH for a Go agent. Required.
	Arch string `json:"arch"`
	// Model is the device model. Empty in a manifest: any model with this
	// OS and Arch.
	Model string `json:"model"`
}

// Manifest describes one release artefact. Its canonical encoding
// (Canonical) is what the operator's key signs.
//
// Field rules (Validate): Name and Version are 1 to 64 of [A-Za-z0-9._+-];
// Target.OS and Target.Arch the same, Target.Model the same or empty; Size
// at least 1; SHA256 64 lower-case hex digits; SecurityCounter any uint64.
// The character set needs no escaping in JSON, which keeps the canonical
// form trivial to reproduce.
type Manifest struct {
	// Name is the artefact's name, e.g. "jotunheim".
	Name string `json:"name"`
	// Version is the release's version, e.g. "v1.4.0". Only informative:
	// ordering is the security counter's job.
	Version string `json:"version"`
	// Target is what the release runs on.
	Target Target `json:"target"`
	// Size is the artefact's length in bytes.
	Size uint64 `json:"size"`
	// SHA256 is the artefact's SHA-256, lower-case hex.
	SHA256 string `json:"sha256"`
	// SecurityCounter is the anti-rollback counter: a device refuses a
	// release whose counter is lower than the highest it has committed.
	// Raise it when a release fixes a vulnerability the previous ones had.
	SecurityCounter uint64 `json:"security_counter"`
}

// Validate reports whether every field is within the rules on Manifest;
// the error wraps ErrManifest and names the field.
func (m Manifest) Validate() error {
	for _, f := range []struct {
		name, v  string
		optional bool
	}{
		{"name", m.Name, false},
		{"version", m.Version, false},
		{"target.os", m.Target.OS, false},
		{"target.arch", m.Target.Arch, false},
		{"target.model", m.Target.Model, true},
	} {
		if f.v == "" && f.optional {
			continue
		}
		if !validToken(f.v) {
			return fmt.Errorf("%w: %s %q: want 1 to %d of [A-Za-z0-9._+-]", ErrManifest, f.name, f.v, maxToken)
		}
	}
	if m.Size == 0 {
		return fmt.Errorf("%w: size 0", ErrManifest)
	}
	if len(m.SHA256) != 64 {
		return fmt.Errorf("%w: sha256 %q: want 64 lower-case hex digits", ErrManifest, m.SHA256)
	}
	for _, c := range []byte(m.SHA256) {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return fmt.Errorf("%w: sha256 %q: want 64 lower-case hex digits", ErrManifest, m.SHA256)
		}
	}
	return nil
}

func validToken(s string) bool {
	if s == "" || len(s) > maxToken {
		return false
	}
	for _, c := range []byte(s) {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9',
			c == '.', c == '_', c == '+', c == '-':
		default:
			return false
		}
	}
	return true
}

// Canonical returns the manifest's canonical encoding, the bytes a
// signature covers once prefixed (see Sign). It is JSON with the keys in
// byte order at every level, no white space, integers in decimal without
// sign, leading zeros or exponent, strings without escapes (the field
// rules allow none), and no trailing newline:
//
//	{"name":N,"security_counter":C,"sha256":H,"size":S,"target":{"arch":A,"model":M,"os":O},"version":V}
//
// "model" is always present, "" when empty. The error wraps ErrManifest
// when the manifest is invalid.
func (m Manifest) Canonical() ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString(`{"name":"` + m.Name + `","security_counter":`)
	b.WriteString(strconv.FormatUint(m.SecurityCounter, 10))
	b.WriteString(`,"sha256":"` + m.SHA256 + `","size":`)
	b.WriteString(strconv.FormatUint(m.Size, 10))
	b.WriteString(`,"target":{"arch":"` + m.Target.Arch + `","model":"` + m.Target.Model + `","os":"` + m.Target.OS + `"}`)
	b.WriteString(`,"version":"` + m.Version + `"}`)
	return b.Bytes(), nil
}

// signedMessage is what the ed25519 signature covers: the context line
// "loki-ota-manifest-v1\n" followed by the canonical encoding.
func (m Manifest) signedMessage() ([]byte, error) {
	c, err := m.Canonical()
	if err != nil {
		return nil, err
	}
	return append([]byte(signingContext), c...), nil
}

// DecodeManifest parses a manifest from JSON in any key order and spacing
// (the canonical form is one of them). Unknown keys, a trailing value,
// missing fields and fields outside the rules on Manifest are refused with
// an error wrapping ErrManifest.
func DecodeManifest(data []byte) (Manifest, error) {
	var m Manifest
	d := json.NewDecoder(bytes.NewReader(data))
	d.DisallowUnknownFields()
	if err := d.Decode(&m); err != nil {
		return Manifest{}, fmt.Errorf("%w: %v", ErrManifest, err)
	}
	if d.More() {
		return Manifest{}, fmt.Errorf("%w: data after the manifest", ErrManifest)
	}
	if err := m.Validate(); err != nil {
		return Manifest{}, err
	}
	return m, nil
}

// Sign returns the ed25519 signature (64 bytes) of "loki-ota-manifest-v1\n"
// followed by m's canonical encoding. The error wraps ErrManifest for an
// invalid manifest and ErrKey for a private key of the wrong size.
func Sign(m Manifest, priv ed25519.PrivateKey) ([]byte, error) {
	if len(priv) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: private key of %d bytes, want %d", ErrKey, len(priv), ed25519.PrivateKeySize)
	}
	msg, err := m.signedMessage()
	if err != nil {
		return nil, err
	}
	return ed25519.Sign(priv, msg), nil
}

// Verify checks sig against m under pub. It returns nil only for a valid
// manifest whose signature verifies; otherwise an error wrapping
// ErrManifest, ErrKey (a public key of the wrong size) or ErrSignature.
func Verify(m Manifest, sig []byte, pub ed25519.PublicKey) error {
	if len(pub) != ed25519.PublicKeySize {
		return fmt.Errorf("%w: public key of %d bytes, want %d", ErrKey, len(pub), ed25519.PublicKeySize)
	}
	msg, err := m.signedMessage()
	if err != nil {
		return err
	}
	if len(sig) != ed25519.SignatureSize {
		return fmt.Errorf("%w: %s %s: signature of %d bytes, want %d", ErrSignature, m.Name, m.Version, len(sig), ed25519.SignatureSize)
	}
	if !ed25519.Verify(pub, msg, sig) {
		return fmt.Errorf("%w: %s %s (sha256 %s)", ErrSignature, m.Name, m.Version, m.SHA256)
	}
	return nil
}

// Matches reports nil when a release for m's target runs on device t:
// same OS and Arch, and the same Model unless the manifest's is empty.
// Otherwise the error wraps ErrTarget and names both targets.
func (m Manifest) Matches(t Target) error {
	if m.Target.OS != t.OS || m.Target.Arch != t.Arch || (m.Target.Model != "" && m.Target.Model != t.Model) {
		return fmt.Errorf("%w: release for %s, device is %s", ErrTarget, m.Target, t)
	}
	return nil
}

// String formats t as os/arch/model ("linux/arm64/pi-zero"), or os/arch
// when Model is empty.
func (t Target) String() string {
	if t.Model == "" {
		return t.OS + "/" + t.Arch
	}
	return t.OS + "/" + t.Arch + "/" + t.Model
}

// digestHex is the lower-case hex form Manifest.SHA256 uses.
func digestHex(sum []byte) string { return hex.EncodeToString(sum) }
