package grpclink_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/signal"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/jotunheim/grpclink"
)

// A program that embeds the agent and speaks gRPC to the gateway: the
// config's [transport] kind = "grpc" names the gateway and the login; the
// link's Loki client answers loki.exec and is the device's own client of
// Loki.
func Example() {
	log := slog.Default()
	cfg, err := jotunheim.LoadConfig("/etc/jotunheim/device.toml")
	if err != nil {
		fmt.Println(err)
		return
	}
	lc, err := grpclink.FromAgent(cfg, log)
	if err != nil {
		fmt.Println(err)
		return
	}
	link, err := grpclink.New(lc)
	if err != nil {
		fmt.Println(err)
		return
	}
	loki := link.Loki()
	agent, err := jotunheim.New(cfg, log, jotunheim.WithTransport(link), jotunheim.WithToolRunner(loki.Runner()),
		jotunheim.WithCommand("report", func(ctx context.Context, _ map[string]any) (any, error) {
			// Code on the device calls Loki with the device's login.
			out, err := loki.Execute(ctx, "daily_report", nil, 0)
			if err != nil {
				return nil, err // its code (NOT_FOUND, SCRIPT_ERROR, ...) is the command's
			}
			return json.RawMessage(out), nil
		}))
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := agent.Run(ctx); err != nil {
		fmt.Println(err)
	}
}
