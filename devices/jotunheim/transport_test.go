package jotunheim_test

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/loki-iot/loki/devices/jotunheim"
)

// A config that asks for gRPC in a program without a gRPC transport is
// refused, naming the line and why.
func TestGRPCNeedsATransport(t *testing.T) {
	data := "[device]\nid = \"a\"\n[transport]\nkind = \"grpc\"\ngateway = \"127.0.0.1:50051\"\npassword = \"p\"\n[board]\nsim = true\n"
	cfg, err := jotunheim.ParseConfig(filepath.Join(t.TempDir(), "dev.toml"), []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	_, err = jotunheim.New(cfg, nil)
	if !errors.Is(err, jotunheim.ErrConfig) || !errors.Is(err, jotunheim.ErrNoTransport) {
		t.Fatalf("got %v, want ErrConfig and ErrNoTransport", err)
	}
}
