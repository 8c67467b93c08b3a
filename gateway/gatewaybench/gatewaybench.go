// Package gatewaybench measures calls through the gRPC gateway against a
// raw gRPC unary echo measured in the same run, for `loki bench --grpc`.
package gatewaybench

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"

	"github.com/loki-iot/loki/gateway"
	"github.com/loki-iot/loki/internal/bench"
	"github.com/loki-iot/loki/internal/natsrv"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/dynamicpb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Tool is the tool every gateway target calls: return a + b.
const Tool = "bench_add"

// Run starts, on loopback and in this process, an embedded NATS server, one
// Loki replica (DefaultConfig) with Tool registered, the gateway, and a raw
// gRPC echo server; then measures with bench.Run, from clients connected
// over TCP:
//
//   - "raw gRPC echo" (the baseline): a unary call echoing a Struct {a, b};
//   - "gateway ExecuteScript": loki.v1.Loki/ExecuteScript of Tool;
//   - "gateway Script_bench_add": the per-tool RPC, with dynamic messages.
//
// Everything is stopped before Run returns.
func Run(ctx context.Context, cfg bench.Config, log *slog.Logger) (rep *bench.Report, err error) {
	dir, err := os.MkdirTemp("", "loki-gwbench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	srv, err := natsrv.Start(natsrv.Config{Name: "gwbench", DataDir: dir, Port: -1}, nil)
	if err != nil {
		return nil, err
	}
	defer srv.Shutdown()

	// Services connect in-process, as under `loki up`.
	svcConn, err := srv.Connect("gwbench-loki")
	if err != nil {
		return nil, err
	}
	defer svcConn.Close()
	tool, err := loki.Compile(&lokiv1.Tool{Name: Tool, Returns: "number", Source: "return a + b",
		Params: []*lokiv1.Param{{Name: "a", Type: "number", Required: true}, {Name: "b", Type: "number", Required: true}}})
	if err != nil {
		return nil, err
	}
	reg, err := loki.OpenRegistry(ctx, svcConn, log)
	if err != nil {
		return nil, err
	}
	if err := reg.Put(ctx, tool); err != nil {
		return nil, err
	}
	svc, err := loki.New(loki.DefaultConfig(), svcConn, log)
	if err != nil {
		return nil, err
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	lokiDone := make(chan error, 1)
	go func() { lokiDone <- svc.Run(runCtx) }()
	defer func() { stop(); err = errors.Join(err, <-lokiDone) }()
	select {
	case <-svc.Ready():
	case err := <-lokiDone:
		lokiDone <- err
		return nil, fmt.Errorf("loki: %w", err)
	}

	gwConn, err := srv.Connect("gwbench-gateway")
	if err != nil {
		return nil, err
	}
	defer gwConn.Close()
	gw, err := gateway.New(gateway.DefaultConfig(), gwConn, log)
	if err != nil {
		return nil, err
	}
	gwLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	gwDone := make(chan error, 1)
	go func() { gwDone <- gw.Serve(runCtx, gwLis) }()
	defer func() { stop(); err = errors.Join(err, <-gwDone) }()
	select {
	case <-gw.Ready():
	case err := <-gwDone:
		gwDone <- err
		return nil, fmt.Errorf("gateway: %w", err)
	}

	echoLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	echo := grpc.NewServer()
	echo.RegisterService(&echoDesc, nil)
	go func() { _ = echo.Serve(echoLis) }()
	defer echo.Stop()

	targets, closeTargets, err := Targets(gwLis.Addr().String(), echoLis.Addr().String())
	if err != nil {
		return nil, err
	}
	defer closeTargets()
	return bench.Run(ctx, cfg, targets[0], targets[1:]...)
}

// Targets connects to a gateway at gatewayAddr (serving Tool) and an echo
// server at echoAddr, both plaintext, and returns the echo baseline then
// the gateway targets; close releases the connections.
func Targets(gatewayAddr, echoAddr string) (targets []bench.Target, close func(), err error) {
	dial := func(addr string) (*grpc.ClientConn, error) {
		return grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	}
	echoConn, err := dial(echoAddr)
	if err != nil {
		return nil, nil, err
	}
	gwConn, err := dial(gatewayAddr)
	if err != nil {
		echoConn.Close()
		return nil, nil, err
	}
	close = func() { echoConn.Close(); gwConn.Close() }

	args, err := structpb.NewStruct(map[string]any{"a": 1, "b": 2})
	if err != nil {
		close()
		return nil, nil, err
	}
	echoMethod := "/" + echoDesc.ServiceName + "/" + echoDesc.Methods[0].MethodName
	api := lokiv1.NewLokiClient(gwConn)
	execReq := &lokiv1.ExecuteScriptRequest{Tool: Tool, Arguments: args}

	// The per-tool RPC's messages, as a reflection client would build them;
	// here from the same builder the gateway uses, via its descriptor.
	in, out, err := scriptMessages()
	if err != nil {
		close()
		return nil, nil, err
	}
	dynReq := dynamicpb.NewMessage(in)
	dynReq.Set(in.Fields().ByName("a"), protoreflect.ValueOfFloat64(1))
	dynReq.Set(in.Fields().ByName("b"), protoreflect.ValueOfFloat64(2))
	result := out.Fields().ByName("result")

	return []bench.Target{
		{Name: "raw gRPC echo", Call: func(ctx context.Context) error {
			return echoConn.Invoke(ctx, echoMethod, args, &structpb.Struct{})
		}},
		{Name: "gateway ExecuteScript", Call: func(ctx context.Context) error {
			resp, err := api.ExecuteScript(ctx, execReq)
			if err == nil && resp.GetResult().GetNumberValue() != 3 {
				return fmt.Errorf("%s returned %v, want 3", Tool, resp.GetResult())
			}
			return err
		}},
		{Name: "gateway " + gateway.UnaryPrefix + Tool, Call: func(ctx context.Context) error {
			resp := dynamicpb.NewMessage(out)
			err := gwConn.Invoke(ctx, "/"+gateway.ScriptsService+"/"+gateway.UnaryPrefix+Tool, dynReq, resp)
			if err == nil && resp.Get(result).Float() != 3 {
				return fmt.Errorf("%s returned %v, want 3", Tool, resp.Get(result))
			}
			return err
		}},
	}, close, nil
}

// scriptMessages describes Script_bench_add's request and response.
func scriptMessages() (in, out protoreflect.MessageDescriptor, err error) {
	fd, err := gateway.DescribeScripts([]*lokiv1.Tool{{Name: Tool, Returns: "number",
		Params: []*lokiv1.Param{{Name: "a", Type: "number", Required: true}, {Name: "b", Type: "number", Required: true}}}})
	if err != nil {
		return nil, nil, err
	}
	md := fd.Services().ByName("Scripts").Methods().ByName(protoreflect.Name(gateway.UnaryPrefix + Tool))
	return md.Input(), md.Output(), nil
}

// echoDesc is a hand-written unary echo of google.protobuf.Struct.
var echoDesc = grpc.ServiceDesc{
	ServiceName: "lokibench.v1.Echo",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "Echo",
		Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			in := &structpb.Struct{}
			if err := dec(in); err != nil {
				return nil, err
			}
			return in, nil
		},
	}},
}
