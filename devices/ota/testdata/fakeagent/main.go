// Command fakeagent stands in for the Jotunheim agent in the ota tests: it
// runs from an Installer's directory the way the agent will, calls Boot,
// re-executes itself after a rollback, reports it, prints its version, then crashes
// when FAKEAGENT_CRASH names its version, and otherwise commits a pending
// release.
package main

import (
	"fmt"
	"os"
	"syscall"

	"github.com/loki-iot/loki/devices/ota"
)

// version is set with -ldflags "-X main.version=...".
var version = "dev"

func main() {
	dir := os.Getenv("FAKEAGENT_DIR")
	inst, err := ota.Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, "open:", err)
		os.Exit(2)
	}
	d, err := inst.Boot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "boot:", err)
		os.Exit(2)
	}
	if d.Reexec {
		if err := syscall.Exec(inst.Current(), os.Args, os.Environ()); err != nil {
			fmt.Fprintln(os.Stderr, "exec:", err)
			os.Exit(2)
		}
	}
	if d.RolledBack != nil {
		// The agent reports this once connected; here stdout is the platform.
		fmt.Printf("rolled_back %s: %s\n", d.RolledBack.Version, d.RolledBack.Reason)
		if err := inst.AckRollback(); err != nil {
			fmt.Fprintln(os.Stderr, "ack:", err)
			os.Exit(2)
		}
	}
	fmt.Println("version", version)
	if os.Getenv("FAKEAGENT_CRASH") == version {
		fmt.Println("crash")
		os.Exit(3)
	}
	if d.Pending != nil {
		if err := inst.Commit(); err != nil {
			fmt.Fprintln(os.Stderr, "commit:", err)
			os.Exit(2)
		}
		fmt.Println("committed")
	}
}
