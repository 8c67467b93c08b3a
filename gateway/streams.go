package gateway

import (
	"context"
	"errors"
	"io"

	"github.com/loki-iot/loki/devices/streams"
	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// OpenStream reads a device's stream source for the caller. The device is
// credited only as chunks are sent on: Send blocks while the caller's
// HTTP/2 window is full, so a slow caller holds back credit and slows (or
// makes drop) the device, and the gateway holds at most the reader's
// window of chunks per stream. The stream is closed on the device when the
// caller goes away or the gateway stops (UNAVAILABLE).
func (s *devicesServer) OpenStream(req *lokiv1.OpenStreamRequest, stream grpc.ServerStreamingServer[jv1.StreamChunk]) error {
	if err := deviceIDError("device_id", req.GetDeviceId()); err != nil {
		return statusError(s.g.log, err, "", "")
	}
	if err := streams.ValidName(req.GetSource()); err != nil {
		return statusError(s.g.log, fault.New(fault.InvalidArgument, "source: %v", err), "", "")
	}
	// The stream ends when the caller goes away or the gateway stops.
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	go func() {
		select {
		case <-s.g.stopping:
			cancel()
		case <-ctx.Done():
		}
	}()
	r, err := jotunheim.OpenStream(ctx, s.g.nc, req.GetDeviceId(), req.GetSource(), req.GetMaxBytes(), jotunheim.StreamOptions{})
	if err != nil {
		return statusError(s.g.log, err, "", "")
	}
	defer r.Close()
	for {
		c, err := r.Next(ctx)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			select {
			case <-s.g.stopping:
				return status.Error(codes.Unavailable, "gateway shutting down; open the stream again")
			default:
			}
			return statusError(s.g.log, err, "", "")
		}
		if err := stream.Send(c); err != nil {
			return err
		}
	}
}
