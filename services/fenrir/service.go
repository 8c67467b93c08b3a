// Package fenrir is Fenrir, Loki's hardware service: GPIO, PWM, sensors and
// actuators through periph.io. It serves the NATS micro service "fenrir"
// with one set of subjects per board it owns, fenrir.<board>.<area>.<op>,
// so many boards — one Fenrir instance per host they are wired to — share
// one bus. Each board is described in TOML (hardware.LoadBoards) and runs
// on a backend: "periph" for real hardware (Raspberry Pi-class boards),
// "sim" for a simulated board built from periph.io's own fakes, with the
// same driver code above it. The boards themselves are package hardware;
// this package serves them over NATS.
//
// Scripts reach it through the Lua module returned by NewModule; Go programs
// through Client. The protocol and design choices are in docs/FENRIR.md.
package fenrir

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"

	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/internal/middleware"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// Version is the service version reported in $SRV.INFO.
const Version = "0.1.0"

// Log keys.
const (
	logKeyBoard   = "board"
	logKeyBackend = "backend"
	logKeyErr     = "err"
)

// Service is one Fenrir instance serving the boards of its config. Its
// methods are safe for concurrent use.
type Service struct {
	cfg   Config
	nc    *nats.Conn
	log   *slog.Logger
	ready chan struct{}
}

// New validates cfg and prepares an instance on nc (owned by the caller);
// Run opens the boards and serves them.
func New(cfg Config, nc *nats.Conn, log *slog.Logger) (*Service, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nc == nil {
		return nil, errors.New("fenrir: nil NATS connection")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Service{cfg: cfg, nc: nc, log: log.With("component", "fenrir"), ready: make(chan struct{})}, nil
}

// Ready is closed once every board's endpoints serve.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Run opens every board, refuses to start if another instance already
// serves one of them, serves until ctx is cancelled, then stops taking
// requests, waits up to DrainTimeout for running ones and closes the boards.
func (s *Service) Run(ctx context.Context) (err error) {
	devices := make([]*hardware.Device, 0, len(s.cfg.Boards))
	defer func() {
		for _, d := range devices {
			if cerr := d.Close(); cerr != nil {
				s.log.Warn("close board", logKeyBoard, d.Config().Name, logKeyErr, cerr)
			}
		}
	}()
	for _, bc := range s.cfg.Boards {
		if err := s.checkUnowned(ctx, bc.Name); err != nil {
			return err
		}
		open := s.cfg.OpenBoard
		if open == nil {
			open = hardware.OpenBoard
		}
		b, err := open(bc)
		if err != nil {
			return fmt.Errorf("fenrir: %w", err)
		}
		d, err := hardware.NewDevice(bc, b)
		if err != nil {
			_ = b.Close()
			return fmt.Errorf("fenrir: %w", err)
		}
		devices = append(devices, d)
	}
	names := make([]string, len(devices))
	for i, d := range devices {
		names[i] = d.Config().Name
	}
	svc, err := microsvc.Start(s.nc, microsvc.Config{
		Metrics:     s.cfg.Metrics,
		Name:        subjects.FenrirService,
		Version:     Version,
		Description: "Fenrir hardware: GPIO, PWM, sensors and actuators for Loki scripts",
		QueueGroup:  subjects.FenrirQueueGroup,
		Metadata:    map[string]string{"boards": strings.Join(names, ",")},
	}, s.log)
	if err != nil {
		return fmt.Errorf("fenrir: %w", err)
	}
	var endpoints []microsvc.Endpoint
	for _, d := range devices {
		for _, o := range s.ops(d) {
			subj, err := subjects.FenrirOp(d.Config().Name, o.op)
			if err != nil {
				_ = svc.Stop(s.cfg.DrainTimeout)
				return fmt.Errorf("fenrir: %w", err)
			}
			timeout := s.cfg.RequestTimeout
			if o.op == subjects.FenrirGPIOWait {
				timeout = s.cfg.MaxEdgeWait
			}
			endpoints = append(endpoints, microsvc.Endpoint{
				Name:    d.Config().Name + "_" + strings.ReplaceAll(o.op, ".", "_"),
				Subject: subj,
				Handler: middleware.ErrorLog(s.log, subj, middleware.Deadline(HeaderTimeout, timeout, s.cfg.MaxRequestTimeout, o.handler)),
				Workers: s.cfg.Workers, Queue: s.cfg.Queue,
				Metadata: map[string]string{"board": d.Config().Name},
			})
		}
	}
	if err := svc.AddEndpoints(s.cfg.DrainTimeout, endpoints...); err != nil {
		return fmt.Errorf("fenrir: %w", err)
	}
	close(s.ready)
	for _, d := range devices {
		s.log.Debug("fenrir serving board", logKeyBoard, d.Config().Name, logKeyBackend, d.Config().Backend)
	}
	<-ctx.Done()
	return svc.Stop(s.cfg.DrainTimeout)
}

// checkUnowned refuses to serve a board another instance already serves:
// a board's pins are wired to one host, and two instances driving "the
// same" board would each hold a different idea of its state.
func (s *Service) checkUnowned(ctx context.Context, board string) error {
	subj, err := subjects.FenrirOp(board, subjects.FenrirBoardList)
	if err != nil {
		return fmt.Errorf("fenrir: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = s.nc.RequestWithContext(ctx, subj, nil)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil
	case err == nil:
		return fmt.Errorf("fenrir: board %q is already served by another Fenrir instance on this bus: a board is owned by one instance (give this one another name)", board)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return fmt.Errorf("fenrir: board %q: something subscribes to %s but does not answer: refusing to share the board", board, subj)
	}
	return fmt.Errorf("fenrir: board %q: check for another instance: %w", board, err)
}

// boardOp is one endpoint of a board.
type boardOp struct {
	op      string
	handler microsvc.Handler
}

func (s *Service) ops(d *hardware.Device) []boardOp {
	return []boardOp{
		{subjects.FenrirGPIORead, handle(d, func(_ context.Context, r Request) (any, error) { return d.Read(r.Pin) })},
		{subjects.FenrirGPIOWrite, handle(d, func(_ context.Context, r Request) (any, error) {
			level := -1 // a missing level is refused as an invalid one
			if r.Level != nil {
				level = *r.Level
			}
			return d.Write(r.Pin, level)
		})},
		{subjects.FenrirGPIOMode, handle(d, func(_ context.Context, r Request) (any, error) { return d.SetMode(r.Pin, r.Mode, r.Pull) })},
		{subjects.FenrirGPIOPWM, handle(d, func(_ context.Context, r Request) (any, error) {
			duty := math.NaN() // a missing duty is refused as an invalid one
			if r.Duty != nil {
				duty = *r.Duty
			}
			return d.PWM(r.Pin, duty, r.Hz)
		})},
		{subjects.FenrirGPIOWait, handle(d, func(ctx context.Context, r Request) (any, error) {
			timeout, err := s.edgeTimeout(d, r)
			if err != nil {
				return nil, err
			}
			return d.WaitEdge(ctx, r.Pin, r.Edge, timeout)
		})},
		{subjects.FenrirSensorRead, handle(d, func(_ context.Context, r Request) (any, error) { return d.ReadSensor(r.Name) })},
		{subjects.FenrirActuatorSet, handle(d, func(_ context.Context, r Request) (any, error) { return d.SetActuator(r.Name, r.Value) })},
		{subjects.FenrirBoardList, handle(d, func(context.Context, Request) (any, error) { return d.Info(), nil })},
	}
}

// edgeTimeout is the wait's timeout: required, positive, at most MaxEdgeWait.
func (s *Service) edgeTimeout(d *hardware.Device, r Request) (time.Duration, error) {
	if r.Timeout == "" {
		return 0, fault.New(fault.InvalidArgument, "board %q: gpio.wait: timeout is required (a duration such as \"5s\")", d.Config().Name)
	}
	t, err := time.ParseDuration(r.Timeout)
	if err != nil || t <= 0 {
		return 0, fault.New(fault.InvalidArgument, "board %q: gpio.wait: timeout %q must be a positive duration such as \"5s\"", d.Config().Name, trunc(r.Timeout))
	}
	if t > s.cfg.MaxEdgeWait {
		return 0, fault.New(fault.InvalidArgument, "board %q: gpio.wait: timeout %v is over the limit of %v", d.Config().Name, t, s.cfg.MaxEdgeWait)
	}
	return t, nil
}

// handle decodes the request, runs op and encodes its answer as JSON.
func handle(d *hardware.Device, op func(context.Context, Request) (any, error)) microsvc.Handler {
	return func(ctx context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
		req, err := DecodeRequest(r.Data())
		if err != nil {
			return nil, nil, err
		}
		v, err := op(ctx, req)
		if err != nil {
			return nil, nil, err
		}
		b, err := json.Marshal(v)
		if err != nil {
			return nil, nil, fmt.Errorf("board %q: encode reply: %w", d.Config().Name, err)
		}
		return b, nil, nil
	}
}
