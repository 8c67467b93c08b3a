// Package client is the Go client of the Loki gRPC gateway, for controllers
// and the `loki` CLI: run tools, stream their emit() chunks, manage the
// registry, and watch script events.
//
// Errors are the gateway's gRPC status errors, unchanged: use
// status.Code(err) for the gRPC code and FaultCode(err) for Loki's finer
// code (for example SCRIPT_ERROR). The one exception: on a WithInsecure
// connection, an UNAVAILABLE that looks like a TLS server refusing
// plaintext keeps its code and gains a hint that the gateway may require TLS.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"
)

// ErrorDomain is the domain of the google.rpc.ErrorInfo the gateway attaches
// to its errors; it equals gateway.ErrorDomain.
const ErrorDomain = "loki-iot.github.io"

// watchLiveHeader equals gateway.WatchLiveHeader.
const watchLiveHeader = "loki-watch-live"

// Option configures Dial.
type Option func(*options)

type options struct {
	token    string
	tls      *tls.Config
	caFile   string
	insecure bool
	dial     []grpc.DialOption
}

// WithToken sends token as "authorization: Bearer <token>" on every call.
// Over a plaintext connection (WithInsecure) the token is sent in clear.
func WithToken(token string) Option { return func(o *options) { o.token = token } }

// WithTLSConfig uses cfg for TLS (the default is TLS with the system roots).
func WithTLSConfig(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// WithCAFile trusts the PEM certificates in path (for example the gateway's
// self-signed certificate) instead of the system roots.
func WithCAFile(path string) Option { return func(o *options) { o.caFile = path } }

// WithInsecure connects without TLS, as to a gateway on loopback.
func WithInsecure() Option { return func(o *options) { o.insecure = true } }

// WithDialOptions adds grpc dial options.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, opts...) }
}

// Client talks to one gateway. It is safe for concurrent use; Close
// releases the connection.
type Client struct {
	conn *grpc.ClientConn
	api  lokiv1.LokiClient
}

// Dial prepares a client for the gateway at addr ("host:port"). The
// connection is made lazily, on the first call; Dial fails only on bad
// options. Without WithInsecure the connection uses TLS.
func Dial(addr string, opts ...Option) (*Client, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	dial := []grpc.DialOption{}
	switch {
	case o.insecure:
		if o.tls != nil || o.caFile != "" {
			return nil, errors.New("client: WithInsecure conflicts with TLS options")
		}
		hint := tlsHint{addr: addr}
		dial = append(dial, grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithChainUnaryInterceptor(hint.unary), grpc.WithChainStreamInterceptor(hint.stream))
	default:
		cfg := &tls.Config{MinVersion: tls.VersionTLS12}
		if o.tls != nil {
			cfg = o.tls.Clone()
		}
		if o.caFile != "" {
			pem, err := os.ReadFile(o.caFile)
			if err != nil {
				return nil, fmt.Errorf("client: CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("client: CA file %s: no PEM certificate", o.caFile)
			}
			cfg.RootCAs = pool
		}
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	}
	if o.token != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(bearer{token: o.token, secure: !o.insecure}))
	}
	dial = append(dial, o.dial...)
	conn, err := grpc.NewClient(addr, dial...)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return &Client{conn: conn, api: lokiv1.NewLokiClient(conn)}, nil
}

// New is a client over conn, a connection the caller dialed with its own
// credentials (a device's login, for example); Close closes conn.
func New(conn *grpc.ClientConn) *Client {
	return &Client{conn: conn, api: lokiv1.NewLokiClient(conn)}
}

// tlsHint adds to a plaintext connection's UNAVAILABLE errors that look
// like a TLS server hanging up on a plaintext HTTP/2 preface a hint that
// the gateway may require TLS. It cannot be sure (a gateway restarting
// looks the same), so the hint says "may".
type tlsHint struct{ addr string }

// plaintextOnTLS are what grpc-go and crypto/tls say when one side speaks
// TLS and the other does not.
var plaintextOnTLS = []string{
	"first record does not look like a TLS handshake",
	"connection closed before server preface received",
	"error reading server preface",
}

func (h tlsHint) wrap(err error) error {
	st, ok := status.FromError(err)
	if !ok || st.Code() != codes.Unavailable {
		return err
	}
	for _, s := range plaintextOnTLS {
		if strings.Contains(st.Message(), s) {
			return status.Errorf(codes.Unavailable, "%s (the gateway at %s may require TLS: pass --ca-file, or dial with WithCAFile instead of WithInsecure)", st.Message(), h.addr)
		}
	}
	return err
}

func (h tlsHint) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	return h.wrap(invoker(ctx, method, req, reply, cc, opts...))
}

func (h tlsHint) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, h.wrap(err)
	}
	return hintStream{ClientStream: s, h: h}, nil
}

// hintStream is a stream whose receive errors carry the hint.
type hintStream struct {
	grpc.ClientStream
	h tlsHint
}

func (s hintStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil || err == io.EOF {
		return err
	}
	return s.h.wrap(err)
}

// Close closes the connection; calls in flight fail.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection, for the per-tool RPCs of
// loki.scripts.v1.Scripts, the health service and reflection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// bearer is per-call credentials carrying a token.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }

// Execute runs tool with args (JSON-shaped values: nil, bool, numbers,
// string, []any, map[string]any) and returns its result as JSON-shaped
// values (numbers are float64) and the execution id. ctx's deadline bounds
// the script too.
func (c *Client) Execute(ctx context.Context, tool string, args map[string]any) (result any, execID string, err error) {
	s, err := argsStruct(args)
	if err != nil {
		return nil, "", err
	}
	resp, err := c.api.ExecuteScript(ctx, &lokiv1.ExecuteScriptRequest{Tool: tool, Arguments: s})
	if err != nil {
		return nil, "", err
	}
	return resp.GetResult().AsInterface(), resp.GetExecutionId(), nil
}

// Stream runs tool like Execute and calls onChunk with each value the
// script emits, in order, before returning the result. If onChunk returns
// an error the call is cancelled (which stops the script) and Stream
// returns that error; cancelling ctx does the same.
func (c *Client) Stream(ctx context.Context, tool string, args map[string]any, onChunk func(seq uint64, value any) error) (result any, execID string, err error) {
	s, err := argsStruct(args)
	if err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := c.api.StreamScriptExecution(ctx, &lokiv1.StreamScriptExecutionRequest{Tool: tool, Arguments: s})
	if err != nil {
		return nil, "", err
	}
	for {
		msg, err := stream.Recv()
		if err == io.EOF {
			return nil, "", status.Error(codes.Internal, "stream ended without a result")
		}
		if err != nil {
			return nil, "", err
		}
		switch ev := msg.GetEvent().(type) {
		case *lokiv1.StreamScriptExecutionResponse_Chunk:
			if onChunk != nil {
				if err := onChunk(ev.Chunk.GetSequence(), ev.Chunk.GetValue().AsInterface()); err != nil {
					return nil, "", err
				}
			}
		case *lokiv1.StreamScriptExecutionResponse_Result:
			return ev.Result.GetResult().AsInterface(), ev.Result.GetExecutionId(), nil
		}
	}
}

func argsStruct(args map[string]any) (*structpb.Struct, error) {
	if args == nil {
		return nil, nil
	}
	s, err := structpb.NewStruct(args)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "arguments: %v", err)
	}
	return s, nil
}

// List returns every registered tool.
func (c *Client) List(ctx context.Context) ([]*lokiv1.Tool, error) {
	resp, err := c.api.ListScripts(ctx, &lokiv1.ListScriptsRequest{})
	return resp.GetTools(), err
}

// Get returns one tool; NOT_FOUND if there is none by that name.
func (c *Client) Get(ctx context.Context, name string) (*lokiv1.Tool, error) {
	resp, err := c.api.GetScript(ctx, &lokiv1.GetScriptRequest{Name: name})
	return resp.GetTool(), err
}

// Register validates and stores tool (its Lua source inline) exactly as a
// TOML tool is checked, and returns it with its registry revision. An
// invalid tool is INVALID_ARGUMENT naming the problem.
func (c *Client) Register(ctx context.Context, tool *lokiv1.Tool) (*lokiv1.Tool, error) {
	resp, err := c.api.RegisterScript(ctx, &lokiv1.RegisterScriptRequest{Tool: tool})
	return resp.GetTool(), err
}

// Unregister removes a tool; NOT_FOUND if there is none by that name.
func (c *Client) Unregister(ctx context.Context, name string) error {
	_, err := c.api.UnregisterScript(ctx, &lokiv1.UnregisterScriptRequest{Name: name})
	return err
}

// Capabilities returns what the answering Loki replica offers.
func (c *Client) Capabilities(ctx context.Context) (*lokiv1.Capabilities, error) {
	resp, err := c.api.GetCapabilities(ctx, &lokiv1.GetCapabilitiesRequest{})
	return resp.GetCapabilities(), err
}

// ChildrenStatus returns the running instances of the named services (all
// services when none are named) that answer within the gateway's window.
func (c *Client) ChildrenStatus(ctx context.Context, names ...string) ([]*lokiv1.ServiceStatus, error) {
	resp, err := c.api.GetChildrenStatus(ctx, &lokiv1.GetChildrenStatusRequest{Names: names})
	return resp.GetServices(), err
}

// EventWatch is a live stream of script events. Recv and Close may be called
// from different goroutines; Recv from one at a time.
type EventWatch struct {
	stream grpc.ServerStreamingClient[lokiv1.WatchEventsResponse]
	cancel context.CancelFunc
}

// WatchEvents starts watching script events of tool and kind ("started",
// "completed", "failed"; empty strings match all). It returns once the
// watch is live: every event published after that is delivered. The watch
// ends when ctx is done or Close is called.
func (c *Client) WatchEvents(ctx context.Context, tool, kind string) (*EventWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	stream, err := c.api.WatchEvents(ctx, &lokiv1.WatchEventsRequest{Tool: tool, Kind: kind})
	if err != nil {
		cancel()
		return nil, err
	}
	// The gateway sends this header once its subscription is live; without
	// it the call failed, and Recv has the status.
	md, err := stream.Header()
	if err == nil && len(md.Get(watchLiveHeader)) == 0 {
		_, err = stream.Recv()
		if err == nil || err == io.EOF {
			err = status.Error(codes.Internal, "event watch ended before it started")
		}
	}
	if err != nil {
		cancel()
		return nil, err
	}
	return &EventWatch{stream: stream, cancel: cancel}, nil
}

// Recv blocks for the next event. After Close or the end of ctx it returns
// a CANCELLED status error; when the gateway ends the watch (shutting down:
// UNAVAILABLE; the watcher fell behind: RESOURCE_EXHAUSTED) its status.
func (w *EventWatch) Recv() (*lokiv1.ScriptEvent, error) {
	resp, err := w.stream.Recv()
	if err != nil {
		return nil, err
	}
	return resp.GetEvent(), nil
}

// Close ends the watch.
func (w *EventWatch) Close() { w.cancel() }

// FaultCode returns Loki's code of a gateway error (for example
// "SCRIPT_ERROR", "INVALID_ARGUMENT"), or "" when err carries none.
func FaultCode(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return ""
	}
	for _, d := range st.Details() {
		if info, ok := d.(*errdetails.ErrorInfo); ok && info.GetDomain() == ErrorDomain {
			return info.GetReason()
		}
	}
	return ""
}
