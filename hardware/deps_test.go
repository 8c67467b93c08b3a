package hardware_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoNetworkOrLuaDeps: the package runs on devices; it must not pull in
// the NATS server or client, Lua or gRPC.
func TestNoNetworkOrLuaDeps(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command on PATH")
	}
	out, err := exec.Command(goBin, "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list -deps: %v", err)
	}
	forbidden := []string{"github.com/nats-io/", "github.com/yuin/gopher-lua", "google.golang.org/grpc"}
	for _, dep := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if strings.HasPrefix(dep, f) {
				t.Errorf("hardware depends on %s", dep)
			}
		}
	}
}
