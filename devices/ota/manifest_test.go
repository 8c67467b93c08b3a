package ota_test

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/loki-iot/loki/devices/ota"
)

var sample = ota.Manifest{
	Name: "jotunheim", Version: "v1.4.0",
	Target: ota.Target{OS: "linux", Arch: "arm", Model: "pi-zero"},
	Size:   1234, SHA256: strings.Repeat("ab", 32), SecurityCounter: 7,
}

// TestCanonical pins the canonical encoding byte for byte: firmware in
// other languages reproduces exactly this.
func TestCanonical(t *testing.T) {
	got, err := sample.Canonical()
	if err != nil {
		t.Fatal(err)
	}
	want := `{"name":"jotunheim","security_counter":7,"sha256":"` + strings.Repeat("ab", 32) +
		`","size":1234,"target":{"arch":"arm","model":"pi-zero","os":"linux"},"version":"v1.4.0"}`
	if string(got) != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	m, err := ota.DecodeManifest(got)
	if err != nil || m != sample {
		t.Fatalf("decode: got %+v, %v, want %+v", m, err, sample)
	}
}

// TestVerifyFixedKey verifies a signature made with a fixed seed, so that
// the signed message (context line + canonical bytes) cannot drift.
func TestVerifyFixedKey(t *testing.T) {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{1}, ed25519.SeedSize))
	pub := priv.Public().(ed25519.PublicKey)
	canon, _ := sample.Canonical()
	sig := ed25519.Sign(priv, append([]byte("loki-ota-manifest-v1\n"), canon...))
	if err := ota.Verify(sample, sig, pub); err != nil {
		t.Fatal(err)
	}
	got, err := ota.Sign(sample, priv)
	if err != nil || !bytes.Equal(got, sig) {
		t.Fatalf("Sign: got %x, %v, want %x", got, err, sig)
	}
	// The test vector in docs/OTA.md.
	if h := hex.EncodeToString(sig); h != vectorSig {
		t.Fatalf("signature: got %s, want %s", h, vectorSig)
	}
	if f := string(ota.MarshalPublicKey(pub)); f != vectorPub {
		t.Fatalf("public key file: got %q, want %q", f, vectorPub)
	}
}

const (
	vectorPub = "loki-ota-ed25519-public-key\niojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=\n"
	vectorSig = "c1a4986806abb7474e4143f998d3bcb36f3b24f555bf888206818109f12c0451" +
		"15903778a3bc10b4fc8c89000856219bc901d475befb15c4ef880da045fcfc09"
)

func TestDecodeManifestRefuses(t *testing.T) {
	good, _ := sample.Canonical()
	for _, tc := range []struct{ name, data string }{
		{"not json", "nope"},
		{"unknown key", strings.Replace(string(good), `{"name"`, `{"extra":1,"name"`, 1)},
		{"trailing value", string(good) + "{}"},
		{"missing size", strings.Replace(string(good), `"size":1234,`, ``, 1)},
		{"upper-case digest", strings.Replace(string(good), strings.Repeat("ab", 32), strings.Repeat("AB", 32), 1)},
		{"space in version", strings.Replace(string(good), `v1.4.0`, `v1 4`, 1)},
		{"empty name", strings.Replace(string(good), `"jotunheim"`, `""`, 1)},
		{"negative counter", strings.Replace(string(good), `:7,`, `:-7,`, 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := ota.DecodeManifest([]byte(tc.data)); !errors.Is(err, ota.ErrManifest) {
				t.Fatalf("got %v, want %v", err, ota.ErrManifest)
			}
		})
	}
}

func TestKeyFiles(t *testing.T) {
	pub, priv, err := ota.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pubFile, privFile := ota.MarshalPublicKey(pub), ota.MarshalPrivateKey(priv)
	if !bytes.HasPrefix(pubFile, []byte(ota.PublicKeyHeader+"\n")) || !bytes.HasPrefix(privFile, []byte(ota.PrivateKeyHeader+"\n")) {
		t.Fatalf("headers: got %q and %q", pubFile, privFile)
	}
	gotPub, err := ota.ParsePublicKey(bytes.ReplaceAll(pubFile, []byte("\n"), []byte("\r\n")))
	if err != nil || !gotPub.Equal(pub) {
		t.Fatalf("public: got %x, %v, want %x", gotPub, err, pub)
	}
	gotPriv, err := ota.ParsePrivateKey(privFile)
	if err != nil || !gotPriv.Equal(priv) {
		t.Fatalf("private: got %v, want the same key", err)
	}
	for _, bad := range [][]byte{privFile, []byte("x"), []byte(ota.PublicKeyHeader + "\nAAAA\n"), []byte(ota.PublicKeyHeader + "\n!!\n")} {
		if _, err := ota.ParsePublicKey(bad); !errors.Is(err, ota.ErrKey) {
			t.Fatalf("ParsePublicKey(%q): got %v, want %v", bad, err, ota.ErrKey)
		}
	}
	if err := ota.Verify(sample, make([]byte, 64), pub[:5]); !errors.Is(err, ota.ErrKey) {
		t.Fatalf("short key: got %v, want %v", err, ota.ErrKey)
	}
}

// FuzzDecodeManifest: the decoder never panics, and whatever it accepts
// is valid and survives a canonical round trip unchanged.
func FuzzDecodeManifest(f *testing.F) {
	good, _ := sample.Canonical()
	f.Add(good)
	f.Add([]byte(`{"name":"a","version":"1","target":{"os":"l","arch":"x"},"size":1,"sha256":"` + strings.Repeat("0", 64) + `","security_counter":18446744073709551615}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"name":"\u00e9"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ota.DecodeManifest(data)
		if err != nil {
			if !errors.Is(err, ota.ErrManifest) {
				t.Fatalf("error %v does not wrap ErrManifest", err)
			}
			return
		}
		c, err := m.Canonical()
		if err != nil {
			t.Fatalf("accepted %q but Canonical: %v", data, err)
		}
		m2, err := ota.DecodeManifest(c)
		if err != nil || m2 != m {
			t.Fatalf("round trip of %q: got %+v, %v, want %+v", c, m2, err, m)
		}
		c2, _ := m2.Canonical()
		if !bytes.Equal(c, c2) {
			t.Fatalf("canonical not stable: %q then %q", c, c2)
		}
	})
}
