package hel_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/loki-iot/loki/services/hel"
	"github.com/nats-io/nats.go"
)

// Example runs a Hel replica and uses it from Go. Scripts use the same
// service through hel.NewModule, passed to Loki in loki.Config.Modules.
func Example() {
	nc, err := nats.Connect(nats.DefaultURL) // a server with JetStream
	if err != nil {
		fmt.Println(err)
		return
	}
	defer nc.Close()
	svc, err := hel.New(hel.DefaultConfig(os.TempDir()), nc, slog.Default())
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	go func() { _ = svc.Run(ctx) }()
	<-svc.Ready()

	c := hel.NewClient(nc)
	rev, err := c.KVCreate(ctx, "sensors", "kitchen.temp", hel.JSON([]byte(`{"c":21.5}`)), 0)
	if err != nil {
		fmt.Println(err) // e.g. ALREADY_EXISTS: bucket "sensors" key "kitchen.temp" already exists at revision 3
		return
	}
	if _, err := c.KVUpdate(ctx, "sensors", "kitchen.temp", hel.JSON([]byte(`{"c":21.7}`)), rev); err != nil {
		fmt.Println(err) // FAILED_PRECONDITION when someone else updated it first
	}
	_ = c.CacheSet(ctx, "weather/oslo", hel.Bytes([]byte("rain")), 10*time.Minute)
	f, _ := os.Open("firmware.bin")
	defer f.Close()
	info, err := c.PutObject(ctx, "firmware", "v1.2.0.bin", f, -1)
	fmt.Println(info.SHA256, err)
}
