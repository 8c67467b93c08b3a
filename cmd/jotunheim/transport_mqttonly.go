//go:build mqttonly

package main

import (
	"log/slog"

	"github.com/loki-iot/loki/devices/jotunheim"
)

// noGRPCHint explains why transport.kind = "grpc" is refused.
const noGRPCHint = `this jotunheim was built with -tags mqttonly, which leaves the gRPC transport out: ` +
	`use transport.kind = "mqtt", or a build without the tag`

// transportOptions adds nothing: this build speaks MQTT only, and
// jotunheim.New refuses a config that asks for gRPC.
func transportOptions(jotunheim.Config, *slog.Logger) ([]jotunheim.Option, error) { return nil, nil }
