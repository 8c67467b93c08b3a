package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/loki-iot/loki/devices/jotunheim"
	"github.com/loki-iot/loki/devices/jotunheim/grpclink"
	"github.com/loki-iot/loki/devices/wire"
	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/auth"
	"github.com/loki-iot/loki/internal/bench"
	"github.com/loki-iot/loki/internal/natsrv"
	jv1 "github.com/loki-iot/loki/proto/jotunheim/v1"
	svcjotunheim "github.com/loki-iot/loki/services/jotunheim"
	"github.com/loki-iot/loki/services/loki"
	"github.com/loki-iot/loki/services/loki/engine"
	"github.com/loki-iot/loki/subjects"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// benchDevice measures a sensor read through a device tool — caller →
// Loki → device service → MQTT or the gateway's gRPC device link → agent →
// back — against a raw NATS echo in the same run, and the time from an
// agent's start to its tools being callable. Everything runs in this
// process on loopback: an embedded server with its MQTT listener (no
// authentication on the bus: its cost is measured by --auth), a Loki
// replica with the jotunheim module, the device service, the identity
// service (it verifies the gRPC agent's device login), a gateway, and
// agents on the simulated board: "bench" over MQTT, "benchg" over gRPC.
func benchDevice(ctx context.Context, cfg bench.Config, log *slog.Logger, stdout, stderr io.Writer) error {
	dir, err := os.MkdirTemp("", "loki-bench-device-")
	if err != nil {
		return err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	srv, err := natsrv.Start(natsrv.Config{Name: "bench-device", DataDir: dir, Port: -1, MQTTPort: -1}, nil)
	if err != nil {
		return err
	}
	defer srv.Shutdown()
	// One connection per component, as under loki up.
	nc, err := srv.Connect("bench-loki")
	if err != nil {
		return err
	}
	defer nc.Close()
	jnc, err := srv.Connect("bench-jotunheim")
	if err != nil {
		return err
	}
	defer jnc.Close()
	runCtx, stop := context.WithCancel(ctx)
	var waits []chan error
	var conns []*nats.Conn // closed once everything running on them stopped
	defer func() {
		stop()
		for _, w := range waits {
			<-w
		}
		for _, c := range conns {
			c.Close()
		}
	}()
	run := func(r func(context.Context) error) {
		done := make(chan error, 1)
		waits = append(waits, done)
		go func() { done <- r(runCtx) }()
	}
	lcfg := loki.DefaultConfig()
	lcfg.Modules = []engine.Module{svcjotunheim.NewModule(nc)}
	lsvc, err := loki.New(lcfg, nc, log)
	if err != nil {
		return err
	}
	run(lsvc.Run)
	jsvc, err := svcjotunheim.New(svcjotunheim.DefaultConfig(), jnc, log)
	if err != nil {
		return err
	}
	run(jsvc.Run)
	<-lsvc.Ready()
	<-jsvc.Ready()
	// The gRPC agent's path: the identity service verifies its device
	// login, the gateway carries its link.
	authority, err := auth.Open(filepath.Join(dir, "auth"))
	if err != nil {
		return err
	}
	defer func() { _ = authority.Close() }()
	grpcLogin, err := authority.AddDevice("benchg")
	if err != nil {
		return err
	}
	anc, err := srv.Connect("bench-auth")
	if err != nil {
		return err
	}
	conns = append(conns, anc)
	asvc := auth.NewService(authority, anc, log)
	run(asvc.Run)
	gnc, err := srv.Connect("bench-gateway")
	if err != nil {
		return err
	}
	conns = append(conns, gnc)
	gw, err := gateway.New(gateway.DefaultConfig(), gnc, log)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	gwAddr := lis.Addr().String()
	run(func(ctx context.Context) error { return gw.Serve(ctx, lis) })
	<-asvc.Ready()
	<-gw.Ready()

	caller, err := nats.Connect(srv.ClientURL(), nats.Name("bench-caller"))
	if err != nil {
		return err
	}
	defer caller.Close()
	client := loki.NewClient(caller)
	startAgent := func(id string, grpcLogin *auth.Credential) (time.Time, func(), error) {
		acfg := jotunheim.DefaultConfig()
		acfg.Device.ID = id
		acfg.Transport.Broker = srv.MQTTURL()
		acfg.Transport.Username = id
		acfg.Board.Sim = true
		acfg.Telemetry.StateFile = fmt.Sprintf("%s/%s.state.json", dir, id)
		var opts []jotunheim.Option
		if grpcLogin != nil {
			acfg.Transport.Kind, acfg.Transport.Broker, acfg.Transport.Gateway = jotunheim.TransportGRPC, "", gwAddr
			acfg.Transport.Username, acfg.Transport.Password = grpcLogin.Username, grpcLogin.Password
			lc, err := grpclink.FromAgent(acfg, log)
			if err != nil {
				return time.Time{}, nil, err
			}
			tr, err := grpclink.New(lc)
			if err != nil {
				return time.Time{}, nil, err
			}
			opts = append(opts, jotunheim.WithTransport(tr))
		}
		a, err := jotunheim.New(acfg, log, opts...)
		if err != nil {
			return time.Time{}, nil, err
		}
		actx, astop := context.WithCancel(runCtx)
		done := make(chan error, 1)
		started := time.Now()
		go func() { done <- a.Run(actx) }()
		return started, func() { astop(); <-done }, nil
	}
	// callable waits until the device's temperature tool answers.
	callable := func(id string) error {
		tool, err := subjects.DeviceToolName(id, "temperature")
		if err != nil {
			return err
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			_, err := client.Call(cctx, tool, []byte("{}"))
			cancel()
			if err == nil {
				return nil
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return fmt.Errorf("device %s's tool %s not callable: %w", id, tool, err)
			}
			time.Sleep(time.Millisecond)
		}
	}

	const starts = 7
	fmt.Fprintf(stderr, "benchmarking a device tool on loopback: %d agent starts, then %d sequential calls, %d callers for %s, %d rounds...\n",
		starts, cfg.Sequential, cfg.Concurrency, cfg.Duration, cfg.Rounds)
	var took []time.Duration
	for i := range starts {
		id := fmt.Sprintf("start%d", i)
		started, stopAgent, err := startAgent(id, nil)
		if err != nil {
			return err
		}
		err = callable(id)
		took = append(took, time.Since(started))
		stopAgent()
		if err != nil {
			return err
		}
	}
	slices.Sort(took)

	_, stopAgent, err := startAgent("bench", nil)
	if err != nil {
		return err
	}
	defer stopAgent()
	if err := callable("bench"); err != nil {
		return err
	}
	_, stopGRPCAgent, err := startAgent("benchg", &grpcLogin)
	if err != nil {
		return err
	}
	defer stopGRPCAgent()
	if err := callable("benchg"); err != nil {
		return err
	}
	echo, err := jnc.QueueSubscribe(subjects.BenchEcho, "q", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		return err
	}
	defer func() { _ = echo.Unsubscribe() }()
	echoTarget := bench.Target{Name: "raw NATS echo", Call: func(ctx context.Context) error {
		_, err := caller.RequestWithContext(ctx, subjects.BenchEcho, benchBody)
		return err
	}}
	deviceTool := func(name, tool string) bench.Target {
		return bench.Target{Name: name, Call: func(ctx context.Context) error {
			res, err := client.Call(ctx, tool, []byte("{}"))
			if err == nil && len(res.JSON) == 0 {
				return fmt.Errorf("%s returned nothing", tool)
			}
			return err
		}}
	}
	device := deviceTool("device tool over MQTT (bench_temperature)", "bench_temperature")
	deviceGRPC := deviceTool("device tool over gRPC (benchg_temperature)", "benchg_temperature")
	jc := svcjotunheim.NewClient(caller)
	direct := bench.Target{Name: subjects.DevicesCmd + " ping (no Loki)", Call: func(ctx context.Context) error {
		_, err := jc.Command(ctx, "bench", &jv1.Command{Name: "ping"})
		return err
	}}
	// Each transport's leg alone: a command published straight to the
	// agent's subject and its result, with no service in between.
	var waiting sync.Map // command id → chan struct{}
	legTarget := func(name, id string) (bench.Target, func(), error) {
		resultSubj, err := subjects.DeviceSubject(id, subjects.DeviceResult)
		if err != nil {
			return bench.Target{}, nil, err
		}
		results, err := caller.Subscribe(resultSubj, func(m *nats.Msg) {
			if r, err := wire.DecodeResult(m.Data); err == nil {
				if ch, ok := waiting.LoadAndDelete(r.GetId()); ok {
					close(ch.(chan struct{}))
				}
			}
		})
		if err != nil {
			return bench.Target{}, nil, err
		}
		cmdSubj, err := subjects.DeviceSubject(id, subjects.DeviceCmd)
		if err != nil {
			_ = results.Unsubscribe()
			return bench.Target{}, nil, err
		}
		return bench.Target{Name: name, Call: func(ctx context.Context) error {
			cid := nuid.Next()
			ch := make(chan struct{})
			waiting.Store(cid, ch)
			b, err := wire.Encode(&jv1.Command{Id: cid, Name: "ping"})
			if err == nil {
				err = caller.Publish(cmdSubj, b)
			}
			if err != nil {
				waiting.Delete(cid)
				return err
			}
			select {
			case <-ch:
				return nil
			case <-ctx.Done():
				waiting.Delete(cid)
				return ctx.Err()
			}
		}}, func() { _ = results.Unsubscribe() }, nil
	}
	leg, stopLeg, err := legTarget("MQTT leg only (command to the agent and its result)", "bench")
	if err != nil {
		return err
	}
	defer stopLeg()
	legGRPC, stopLegGRPC, err := legTarget("gRPC leg only (command through the device link and its result)", "benchg")
	if err != nil {
		return err
	}
	defer stopLegGRPC()
	rep, err := bench.Run(ctx, cfg, echoTarget, device, deviceGRPC, direct, leg, legGRPC)
	if err != nil {
		return err
	}
	rep.Markdown(stdout)
	fmt.Fprintf(stdout, "\nAgent start to its tools callable (%d fresh devices): median %s, min %s, max %s\n",
		starts, took[starts/2].Round(time.Millisecond), took[0].Round(time.Millisecond), took[starts-1].Round(time.Millisecond))
	return nil
}
