package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/loki-iot/loki/internal/fault"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// devicesServer implements loki.v1.Devices by forwarding to the device
// service (services/jotunheim) over NATS. Its errors go through
// statusError, like every other RPC's.
type devicesServer struct {
	lokiv1.UnimplementedDevicesServer
	g  *Gateway
	jc *jotunheim.Client
}

var _ lokiv1.DevicesServer = (*devicesServer)(nil)

// deviceIDError is INVALID_ARGUMENT for a device id that cannot name a
// device, found before anything is sent on the bus.
func deviceIDError(field, id string) error {
	if err := subjects.ValidDeviceID(id); err != nil {
		return fault.New(fault.InvalidArgument, "%s: %v", field, err)
	}
	return nil
}

func (s *devicesServer) ListDevices(ctx context.Context, _ *lokiv1.ListDevicesRequest) (*lokiv1.ListDevicesResponse, error) {
	list, err := s.jc.List(ctx)
	if err != nil {
		return nil, statusError(s.g.log, err, "", "")
	}
	list = slices.Clone(list)
	slices.SortFunc(list, func(a, b *jv1.Device) int { return strings.Compare(a.GetId(), b.GetId()) })
	return &lokiv1.ListDevicesResponse{Devices: list}, nil
}

func (s *devicesServer) GetDevice(ctx context.Context, req *lokiv1.GetDeviceRequest) (*lokiv1.GetDeviceResponse, error) {
	if err := deviceIDError("id", req.GetId()); err != nil {
		return nil, statusError(s.g.log, err, "", "")
	}
	d, err := s.jc.Get(ctx, req.GetId())
	if err != nil {
		return nil, statusError(s.g.log, err, "", "")
	}
	return &lokiv1.GetDeviceResponse{Device: d}, nil
}

func (s *devicesServer) CommandDevice(ctx context.Context, req *jv1.CommandRequest) (*lokiv1.CommandDeviceResponse, error) {
	if err := deviceIDError("device", req.GetDevice()); err != nil {
		return nil, statusError(s.g.log, err, "", "")
	}
	if req.GetCommand().GetName() == "" {
		return nil, statusError(s.g.log, fault.New(fault.InvalidArgument, "command.name: empty"), "", "")
	}
	cmd := proto.Clone(req.GetCommand()).(*jv1.Command)
	cmd.Id = "" // the device service gives every command its own id
	data, err := s.jc.Command(ctx, req.GetDevice(), cmd)
	if err != nil {
		return nil, statusError(s.g.log, err, "", "")
	}
	v, err := valueFromJSON(data)
	if err != nil {
		return nil, statusError(s.g.log, fmt.Errorf("decode the data of device %s's result: %w", req.GetDevice(), err), "", "")
	}
	return &lokiv1.CommandDeviceResponse{Data: v}, nil
}

func (s *devicesServer) WatchDevices(req *lokiv1.WatchDevicesRequest, stream grpc.ServerStreamingServer[jv1.DeviceEvent]) error {
	subj, err := subjects.DeviceEvents(req.GetDevice(), req.GetKind())
	if err != nil {
		return statusError(s.g.log, fault.New(fault.InvalidArgument, "%v (kinds: %s)", err,
			strings.Join(subjects.DeviceEventKinds, ", ")), "", "")
	}
	return s.g.watch(stream, subj, req.GetDevice(), func(m *nats.Msg) error {
		ev := &jv1.DeviceEvent{}
		// A newer device service may add fields: keep what this gateway knows.
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(m.Data, ev); err != nil {
			s.g.log.Warn("skipping an event that is not a DeviceEvent", "subject", m.Subject, keyErr, err)
			return nil
		}
		return stream.Send(ev)
	})
}

func (s *devicesServer) GetRolloutStatus(ctx context.Context, req *lokiv1.GetRolloutStatusRequest) (*lokiv1.GetRolloutStatusResponse, error) {
	rollouts, err := s.jc.RolloutStatus(ctx, req.GetRolloutId())
	if err != nil {
		return nil, statusError(s.g.log, err, "", "")
	}
	b, err := json.Marshal(rollouts)
	if err != nil {
		return nil, statusError(s.g.log, fmt.Errorf("encode rollouts: %w", err), "", "")
	}
	v, err := valueFromJSON(b)
	if err != nil {
		return nil, statusError(s.g.log, fmt.Errorf("decode rollouts: %w", err), "", "")
	}
	return &lokiv1.GetRolloutStatusResponse{Rollouts: v}, nil
}
