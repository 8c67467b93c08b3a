package auth

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/loki-iot/loki/internal/fault"
	"github.com/loki-iot/loki/internal/microsvc"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
)

// Version is the identity service's micro version.
const Version = "0.1.0"

// AddRequest is the body of subjects.AuthAdd: a client or admin identity
// (Name, Role), a Home Assistant login (Name, Role homeassistant), or a
// device identity (DeviceID).
type AddRequest struct {
	Name     string        `json:"name,omitempty"`
	Role     subjects.Role `json:"role,omitempty"`
	DeviceID string        `json:"device_id,omitempty"`
}

// NameRequest is the body of subjects.AuthRevoke.
type NameRequest struct {
	Name string `json:"name"`
}

// Service serves an Authority on NATS for `loki auth`, to admins only (the
// bus permissions let nobody else publish on subjects.AuthAll), and checks
// device logins for the gateway (subjects.AuthVerifyDevice, which the
// gateway role may also publish).
type Service struct {
	a     *Authority
	nc    *nats.Conn
	log   *slog.Logger
	ready chan struct{}
	// verifier answers subjects.AuthVerifyDevice, for the gateway's
	// device link.
	verifier *deviceVerifier
}

// NewService returns the identity service of a over nc.
func NewService(a *Authority, nc *nats.Conn, log *slog.Logger) *Service {
	return &Service{a: a, nc: nc, log: log.With("component", "auth"), ready: make(chan struct{}), verifier: newDeviceVerifier(a)}
}

// Ready is closed once the service serves.
func (s *Service) Ready() <-chan struct{} { return s.ready }

// Run serves until ctx ends, then drains.
func (s *Service) Run(ctx context.Context) error {
	svc, err := microsvc.Start(s.nc, microsvc.Config{
		Name: subjects.AuthService, Version: Version,
		Description: "Loki's bus identities: add, list, revoke; device login checks",
	}, s.log)
	if err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	const drain = 5 * time.Second
	go s.verifier.warm()
	if err := svc.AddEndpoints(drain,
		microsvc.Endpoint{Name: "add", Subject: subjects.AuthAdd, Handler: s.add},
		microsvc.Endpoint{Name: "list", Subject: subjects.AuthList, Handler: s.list},
		microsvc.Endpoint{Name: "revoke", Subject: subjects.AuthRevoke, Handler: s.revoke},
		microsvc.Endpoint{Name: "hel-bucket", Subject: subjects.AuthHelBucket, Handler: s.helBucket},
		// bcrypt takes tens of milliseconds: verify on a pool, so a burst of
		// devices reconnecting neither queues behind one goroutine nor holds
		// up add, list and revoke.
		microsvc.Endpoint{Name: "verify-device", Subject: subjects.AuthVerifyDevice, Handler: s.verifyDevice,
			Workers: runtime.GOMAXPROCS(0), Queue: 1024},
	); err != nil {
		return fmt.Errorf("auth: %w", err)
	}
	close(s.ready)
	<-ctx.Done()
	return svc.Stop(drain)
}

func (s *Service) add(_ context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	var req AddRequest
	if err := json.Unmarshal(r.Data(), &req); err != nil {
		return nil, nil, fault.New(fault.InvalidArgument, "add: want {\"name\":..., \"role\":...} or {\"device_id\":...}: %v", err)
	}
	var cred Credential
	var err error
	switch {
	case req.DeviceID != "":
		cred, err = s.a.AddDevice(req.DeviceID)
	case req.Role == subjects.RoleHomeAssistant:
		cred, err = s.a.AddHomeAssistant(req.Name)
	default:
		cred, err = s.a.Add(req.Name, req.Role)
	}
	if err != nil {
		return nil, nil, Fault(err)
	}
	s.log.Info("identity added", "name", cred.Identity.Name, "role", cred.Identity.Role)
	b, err := json.Marshal(cred)
	return b, nil, err
}

func (s *Service) list(context.Context, *microsvc.Request) ([]byte, nats.Header, error) {
	b, err := json.Marshal(s.a.List())
	return b, nil, err
}

func (s *Service) revoke(_ context.Context, r *microsvc.Request) ([]byte, nats.Header, error) {
	var req NameRequest
	if err := json.Unmarshal(r.Data(), &req); err != nil || req.Name == "" {
		return nil, nil, fault.New(fault.InvalidArgument, "revoke: want {\"name\":...}")
	}
	if err := s.a.Revoke(req.Name); err != nil {
		return nil, nil, Fault(err)
	}
	s.log.Info("identity revoked", "name", req.Name)
	return []byte("{}"), nil, nil
}

// Fault maps the package's errors to codes, for every edge.
func Fault(err error) error {
	switch {
	case errors.Is(err, ErrExists):
		return fault.Wrap(fault.AlreadyExists, err, "%v", err)
	case errors.Is(err, ErrNotFound):
		return fault.Wrap(fault.NotFound, err, "%v", err)
	case errors.Is(err, ErrInvalid), errors.Is(err, subjects.ErrInvalidToken):
		return fault.Wrap(fault.InvalidArgument, err, "%v", err)
	case errors.Is(err, ErrBuiltIn), errors.Is(err, ErrLocked):
		return fault.Wrap(fault.FailedPrecondition, err, "%v", err)
	}
	return err
}
