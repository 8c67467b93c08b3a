package ota_test

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"log"
	"os"
	"syscall"

	"github.com/loki-iot/loki/devices/ota"
)

// The operator signs a manifest; a device holding the pinned public key
// verifies it.
func ExampleSign() {
	priv := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize)) // ota.GenerateKey in real use
	pub := priv.Public().(ed25519.PublicKey)
	m := ota.Manifest{
		Name: "jotunheim", Version: "v1.4.0",
		Target: ota.Target{OS: "linux", Arch: "arm64"},
		Size:   1234, SHA256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", SecurityCounter: 3,
	}
	sig, err := ota.Sign(m, priv)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ota.Verify(m, sig, pub))
	m.SecurityCounter = 2
	fmt.Println(ota.Verify(m, sig, pub) != nil)
	// Output:
	// <nil>
	// true
}

// At every start the agent asks the installer what to do before it
// connects; after its health window it commits.
func ExampleInstaller_Boot() {
	inst, err := ota.Open("/var/lib/jotunheim/bin")
	if err != nil {
		log.Fatal(err)
	}
	d, err := inst.Boot()
	if err != nil {
		log.Fatal(err)
	}
	if d.Reexec { // a rollback replaced current
		log.Fatal(syscall.Exec(inst.Current(), os.Args, os.Environ()))
	}
	// ... connect; report d.RolledBack (then inst.AckRollback()) ...
	if d.Pending != nil {
		// ... once reconnected, the manifest accepted and the board
		// answering within the health window:
		if err := inst.Commit(); err != nil {
			log.Print(err)
		}
	}
}
