// Package gateway serves Loki over gRPC: the static service loki.v1.Loki
// (tools, executions, events, status of the services on the bus), the
// static service loki.v1.Devices (Jotunheim devices: list, get, command,
// watch; forwarded to the device service over NATS), loki.v1.DeviceLink
// (devices that speak gRPC instead of MQTT, bridged onto the same NATS
// subjects, each authenticated with its device login), one RPC
// per registered tool in loki.scripts.v1.Scripts (built at runtime from the
// tool registry and described by server reflection), and the gRPC health
// service. Every call is forwarded to the Loki replicas over NATS with
// loki.Client; the gateway keeps no state of its own beyond its view of the
// registry, so any number of gateways can run side by side.
package gateway

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/loki-iot/loki/internal/metrics"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
)

// refreshInterval is how often the gateway compares its per-tool RPCs with
// the registry and its health status with the NATS connection. The registry
// is pushed to the gateway by a KV watch, and each change rebuilds the RPCs
// at once; the interval is a backstop.
const refreshInterval = 100 * time.Millisecond

// ErrServed is returned by Serve when called more than once.
var ErrServed = errors.New("gateway: Serve called twice")

// Gateway is the gRPC server. Its methods are safe for concurrent use;
// Serve runs it once.
type Gateway struct {
	cfg    Config
	nc     *nats.Conn
	log    *slog.Logger
	lc     *loki.Client
	srv    *grpc.Server
	health *health.Server
	auth   *authenticator

	scripts atomic.Pointer[scriptSet]
	// healthState is the status last set; only refresh touches it.
	healthState healthpb.HealthCheckResponse_ServingStatus
	ready       chan struct{}
	stopping    chan struct{}
	// staticMethods are the full names of the methods registered in New.
	staticMethods map[string]struct{}
	served        atomic.Bool
	// metrics is nil without cfg.Metrics; its methods then do nothing.
	metrics *metrics.Gateway
	links   *deviceLinks
}

// New validates cfg (zero durations take DefaultConfig's), loads the TLS
// key pair if configured, and builds the server. nc is used, not owned: the
// caller closes it after Serve returns.
func New(cfg Config, nc *nats.Conn, log *slog.Logger) (*Gateway, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("gateway config: %w", err)
	}
	if nc == nil {
		return nil, errors.New("gateway: nil NATS connection")
	}
	log = log.With("component", "gateway")
	g := &Gateway{
		cfg: cfg, nc: nc, log: log, lc: loki.NewClient(nc),
		health:   health.NewServer(),
		ready:    make(chan struct{}),
		stopping: make(chan struct{}),
	}
	empty, err := buildScripts(nil, log)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.scripts.Store(empty)

	auth, err := newAuthenticator(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	auth.devices = newDeviceAuth(nc, cfg.DeviceReverify)
	g.auth = auth
	rec := recoverer{log: log}
	unary := []grpc.UnaryServerInterceptor{rec.unary, auth.unary}
	stream := []grpc.StreamServerInterceptor{rec.stream, auth.stream}
	g.metrics = cfg.Metrics.Gateway()
	if m := g.metrics; m != nil {
		met := metered{m: m, known: g.servesMethod}
		unary = append([]grpc.UnaryServerInterceptor{met.unary}, unary...)
		stream = append([]grpc.StreamServerInterceptor{met.stream}, stream...)
		cfg.Metrics.AddCheck("gateway", metrics.ReadyWhenClosed(g.ready))
	}
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.UnknownServiceHandler(g.handleScript),
		// Reuse handler goroutines, whose stacks have already grown, rather
		// than start one per call: in gatewaybench's profile stack growth was
		// a visible share of the gateway's CPU, and p50 dropped by about a
		// fifth. When every worker is busy grpc still starts a goroutine.
		grpc.NumStreamWorkers(uint32(runtime.GOMAXPROCS(0))),
	}
	opts = append(opts, keepaliveOptions(cfg)...)
	if cfg.TLSCertFile != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCertFile, cfg.TLSKeyFile)
		if err != nil {
			return nil, fmt.Errorf("gateway: TLS key pair %s, %s: %w", cfg.TLSCertFile, cfg.TLSKeyFile, err)
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(&tls.Config{
			Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		})))
	} else if cfg.hasTokens() {
		log.Warn("bearer tokens are configured without TLS: they cross the network in clear text")
	}
	g.srv = grpc.NewServer(opts...)
	lokiv1.RegisterLokiServer(g.srv, &lokiServer{g: g})
	lokiv1.RegisterDevicesServer(g.srv, &devicesServer{g: g, jc: jotunheim.NewClient(nc)})
	g.links = newDeviceLinks(g)
	lokiv1.RegisterDeviceLinkServer(g.srv, g.links)
	healthpb.RegisterHealthServer(g.srv, g.health)
	g.healthState = healthpb.HealthCheckResponse_NOT_SERVING
	for _, svc := range g.healthServices() {
		g.health.SetServingStatus(svc, g.healthState)
	}
	refl := reflection.ServerOptions{
		Services:           services{srv: g.srv, current: g.scripts.Load},
		DescriptorResolver: resolver{current: g.scripts.Load},
	}
	reflectionv1.RegisterServerReflectionServer(g.srv, reflection.NewServerV1(refl))
	reflectionv1alpha.RegisterServerReflectionServer(g.srv, reflection.NewServer(refl))
	// Every method needs a known role: a method missing from the table
	// would be open to every token.
	g.staticMethods = map[string]struct{}{}
	for svc, info := range g.srv.GetServiceInfo() {
		for _, m := range info.Methods {
			g.staticMethods["/"+svc+"/"+m.Name] = struct{}{}
			if _, ok := accessOf("/" + svc + "/" + m.Name); !ok {
				return nil, fmt.Errorf("gateway: no role rule for /%s/%s", svc, m.Name)
			}
		}
	}
	return g, nil
}

// SetTokens makes tokens (the client role) and adminTokens the bearer
// tokens calls need from now on, as Config.Tokens and Config.AdminTokens
// do at start: with neither, calls need no token. Calls already admitted
// (a running stream included) are not checked again. It refuses tokens
// Config.Validate would refuse, and then changes nothing. It is safe for
// concurrent use, before or during Serve.
func (g *Gateway) SetTokens(tokens, adminTokens []string) error {
	cfg := g.cfg
	cfg.Tokens, cfg.AdminTokens = tokens, adminTokens
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("gateway config: %w", err)
	}
	g.auth.setTokens(tokens, adminTokens)
	if cfg.TLSCertFile == "" && cfg.hasTokens() {
		g.log.Warn("bearer tokens are configured without TLS: they cross the network in clear text")
	}
	return nil
}

// Ready is closed once Serve has loaded the registry and accepts calls.
func (g *Gateway) Ready() <-chan struct{} { return g.ready }

// Serve loads the tool registry, serves gRPC on lis until ctx is done, then
// stops gracefully: new calls are refused, event watches end, and calls
// still running after Config.ShutdownTimeout are cancelled. It closes lis.
// It returns nil after a shutdown asked for by ctx, or the error that
// stopped it (the registry could not be opened, or lis failed).
func (g *Gateway) Serve(ctx context.Context, lis net.Listener) error {
	if !g.served.CompareAndSwap(false, true) {
		return ErrServed
	}
	defer lis.Close()
	// The registry logs every tool it loads at Info; Loki's replicas already
	// do, so the gateway's copy only reports warnings and errors.
	regLog := slog.New(minLevel{min: slog.LevelWarn, Handler: g.log.Handler()})
	// A gateway with the gateway role may only read the registry: when it
	// cannot create it, it waits for a Loki replica to.
	reg, err := loki.OpenRegistry(ctx, g.nc, regLog)
	if err != nil && ctx.Err() == nil {
		reg, err = loki.WaitRegistry(ctx, g.nc, regLog)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("gateway: %w", err)
	}
	bg, stopBG := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stopBG(); wg.Wait() }()
	loaded := make(chan struct{})
	watchErr := make(chan error, 1)
	wg.Go(func() { g.watchRegistry(bg, reg, loaded, watchErr) })
	select {
	case <-loaded:
	case err := <-watchErr:
		return fmt.Errorf("gateway: %w", err)
	case <-ctx.Done():
		return nil
	}
	g.refresh(reg)
	wg.Go(func() {
		t := time.NewTicker(refreshInterval)
		defer t.Stop()
		for {
			select {
			case <-bg.Done():
				return
			case <-t.C:
				g.refresh(reg)
			case <-reg.Changed():
				g.refresh(reg)
			}
		}
	})

	claims, err := g.nc.Subscribe(subjects.DeviceLinkClaimAll, g.links.onClaim)
	if err != nil {
		return fmt.Errorf("gateway: device link claims: %w", err)
	}
	defer func() { _ = claims.Unsubscribe() }()

	serveErr := make(chan error, 1)
	go func() { serveErr <- g.srv.Serve(lis) }()
	g.log.Debug("serving gRPC", keyAddr, lis.Addr().String(), "tls", g.cfg.TLSCertFile != "",
		"tokens", len(g.cfg.Tokens), "admin_tokens", len(g.cfg.AdminTokens), "tools", len(reg.List()))
	if !g.cfg.hasTokens() && !isLoopback(lis.Addr()) {
		g.log.Warn("no tokens configured on a non-loopback address: anyone who can reach it may call, list and watch tools "+
			"(the client role); set tokens and admin_tokens", keyAddr, lis.Addr().String())
	}
	close(g.ready)
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		g.srv.Stop()
		return fmt.Errorf("gateway: serve: %w", err)
	}
	g.log.Info("stopping", "timeout", g.cfg.ShutdownTimeout)
	g.health.Shutdown()
	close(g.stopping)
	stopped := make(chan struct{})
	go func() { g.srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(g.cfg.ShutdownTimeout):
		g.log.Warn("calls still running at shutdown; cancelling them")
		g.srv.Stop()
		<-stopped
	}
	<-serveErr
	return nil
}

// isLoopback reports whether addr is reachable from this host only: a
// loopback IP or a Unix socket. An unspecified address (0.0.0.0, ::) is
// every interface, so not loopback.
func isLoopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// watchRegistry keeps reg in step with the KV bucket until ctx is done,
// closing loaded after the first full load. An error before that is sent on
// errs (Serve gives up); a watch that ends later is logged and restarted.
func (g *Gateway) watchRegistry(ctx context.Context, reg *loki.Registry, loaded chan struct{}, errs chan<- error) {
	var once sync.Once
	ready := func() { once.Do(func() { close(loaded) }) }
	for {
		err := reg.Watch(ctx, ready)
		if ctx.Err() != nil {
			return
		}
		select {
		case <-loaded:
			g.log.Error("registry watch ended; restarting it", keyErr, err)
		default:
			if err == nil {
				err = errors.New("registry watch ended before the first load")
			}
			errs <- err
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// healthServices are the names the health service reports on; "" is the
// server as a whole.
func (g *Gateway) healthServices() []string {
	return []string{"", lokiv1.Loki_ServiceDesc.ServiceName, lokiv1.Devices_ServiceDesc.ServiceName,
		lokiv1.DeviceLink_ServiceDesc.ServiceName, ScriptsService}
}

// refresh rebuilds the per-tool RPCs when the registry changed and sets the
// health status from the NATS connection.
func (g *Gateway) refresh(reg *loki.Registry) {
	compiled := reg.List()
	tools := make([]*lokiv1.Tool, len(compiled))
	for i, c := range compiled {
		tools[i] = c.Def
	}
	if key := registryKey(tools); key != g.scripts.Load().key {
		set, err := buildScripts(tools, g.log)
		if err != nil {
			g.log.Error("cannot build per-tool RPCs; keeping the previous ones", keyErr, err)
		} else {
			g.scripts.Store(set)
			g.log.Debug("per-tool RPCs rebuilt", "tools", len(tools))
		}
	}
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if g.nc.IsConnected() {
		st = healthpb.HealthCheckResponse_SERVING
	}
	if st == g.healthState {
		return
	}
	g.healthState = st
	if st != healthpb.HealthCheckResponse_SERVING {
		g.log.Warn("NATS connection lost: health is NOT_SERVING")
	}
	for _, svc := range g.healthServices() {
		g.health.SetServingStatus(svc, st)
	}
}

// minLevel drops records below min.
type minLevel struct {
	min slog.Level
	slog.Handler
}

func (h minLevel) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.min && h.Handler.Enabled(ctx, l)
}

func (h minLevel) WithAttrs(attrs []slog.Attr) slog.Handler {
	return minLevel{h.min, h.Handler.WithAttrs(attrs)}
}

func (h minLevel) WithGroup(name string) slog.Handler {
	return minLevel{h.min, h.Handler.WithGroup(name)}
}
