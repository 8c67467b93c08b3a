//go:build !mqttonly

package main

import (
	"log/slog"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/jotunheim/grpclink"
)

// noGRPCHint explains a refused transport.kind = "grpc"; this build has
// the gRPC transport, so it never shows.
const noGRPCHint = ""

// transportOptions adds the gRPC transport (and loki.exec through the
// gateway's Loki service) when the config asks for it.
func transportOptions(cfg jotunheim.Config, log *slog.Logger) ([]jotunheim.Option, error) {
	if cfg.Transport.Kind != jotunheim.TransportGRPC {
		return nil, nil
	}
	lc, err := grpclink.FromAgent(cfg, log)
	if err != nil {
		return nil, err
	}
	t, err := grpclink.New(lc)
	if err != nil {
		return nil, err
	}
	return []jotunheim.Option{jotunheim.WithTransport(t), jotunheim.WithToolRunner(t.Loki().Runner())}, nil
}
