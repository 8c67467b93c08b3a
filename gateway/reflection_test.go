package gateway_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/loki-iot/loki/gateway"
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/descriptorpb"
	"google.golang.org/protobuf/types/dynamicpb"
)

// reflector is a server reflection client, as grpcurl uses.
type reflector struct {
	stream grpc.BidiStreamingClient[reflectionv1.ServerReflectionRequest, reflectionv1.ServerReflectionResponse]
	// files keeps every file received: the server sends each file once per stream.
	files map[string]*descriptorpb.FileDescriptorProto
}

func newReflector(t testing.TB, conn grpc.ClientConnInterface) *reflector {
	t.Helper()
	stream, err := reflectionv1.NewServerReflectionClient(conn).ServerReflectionInfo(ctxT(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stream.CloseSend() })
	return &reflector{stream: stream, files: map[string]*descriptorpb.FileDescriptorProto{}}
}

func (r *reflector) ask(req *reflectionv1.ServerReflectionRequest) (*reflectionv1.ServerReflectionResponse, error) {
	// io.EOF from Send means the server already ended the stream (for
	// example refusing it for a missing token); the status comes from Recv.
	if err := r.stream.Send(req); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	resp, err := r.stream.Recv()
	if err != nil {
		return nil, err
	}
	if e := resp.GetErrorResponse(); e != nil {
		return nil, fmt.Errorf("reflection error %d: %s", e.GetErrorCode(), e.GetErrorMessage())
	}
	return resp, nil
}

func (r *reflector) services() ([]string, error) {
	resp, err := r.ask(&reflectionv1.ServerReflectionRequest{
		MessageRequest: &reflectionv1.ServerReflectionRequest_ListServices{}})
	if err != nil {
		return nil, err
	}
	var out []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		out = append(out, s.GetName())
	}
	return out, nil
}

// service resolves a service and every file it needs, as `grpcurl describe` does.
func (r *reflector) service(name string) (protoreflect.ServiceDescriptor, error) {
	resp, err := r.ask(&reflectionv1.ServerReflectionRequest{
		MessageRequest: &reflectionv1.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: name}})
	if err != nil {
		return nil, err
	}
	for _, b := range resp.GetFileDescriptorResponse().GetFileDescriptorProto() {
		fdp := &descriptorpb.FileDescriptorProto{}
		if err := proto.Unmarshal(b, fdp); err != nil {
			return nil, err
		}
		r.files[fdp.GetName()] = fdp
	}
	set := &descriptorpb.FileDescriptorSet{}
	for _, fdp := range r.files {
		set.File = append(set.File, fdp)
	}
	files, err := protodesc.NewFiles(set)
	if err != nil {
		return nil, err
	}
	d, err := files.FindDescriptorByName(protoreflect.FullName(name))
	if err != nil {
		return nil, err
	}
	sd, ok := d.(protoreflect.ServiceDescriptor)
	if !ok {
		return nil, fmt.Errorf("%s is a %T", name, d)
	}
	return sd, nil
}

func methodNames(sd protoreflect.ServiceDescriptor) []string {
	var out []string
	for i := range sd.Methods().Len() {
		out = append(out, string(sd.Methods().Get(i).Name()))
	}
	return out
}

// callDynamic calls a unary method with a JSON request, as
// `grpcurl -d JSON ADDR service/method` does, and returns the JSON answer.
func callDynamic(ctx context.Context, conn *grpc.ClientConn, md protoreflect.MethodDescriptor, reqJSON string) (*dynamicpb.Message, error) {
	req := dynamicpb.NewMessage(md.Input())
	if err := protojson.Unmarshal([]byte(reqJSON), req); err != nil {
		return nil, err
	}
	resp := dynamicpb.NewMessage(md.Output())
	full := "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
	if err := conn.Invoke(ctx, full, req, resp); err != nil {
		return nil, err
	}
	return resp, nil
}

func TestReflectionListsEverything(t *testing.T) {
	e := start(t, gateway.Config{})
	r := newReflector(t, e.dial(t).Conn())
	svcs, err := r.services()
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", gateway.ScriptsService, lokiv1.Loki_ServiceDesc.ServiceName, lokiv1.Devices_ServiceDesc.ServiceName} {
		if !slices.Contains(svcs, want) {
			t.Errorf("got services %v, want %s among them", svcs, want)
		}
	}
	sd, err := r.service(lokiv1.Loki_ServiceDesc.ServiceName)
	if err != nil {
		t.Fatal(err)
	}
	if got := sd.Methods().Len(); got != 9 {
		t.Errorf("got %d loki.v1.Loki methods, want 9", got)
	}
	sd, err = r.service(gateway.ScriptsService)
	if err != nil {
		t.Fatal(err)
	}
	got := methodNames(sd)
	want := []string{}
	for _, tool := range []string{"add", "boom", "count", "double", "echo_all", "emit_then_spin", "spin"} {
		want = append(want, "Script_"+tool, "StreamScript_"+tool)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	add := sd.Methods().ByName("Script_add")
	if c := sd.ParentFile().SourceLocations().ByDescriptor(add).LeadingComments; !strings.Contains(c, "Adds a and b.") {
		t.Errorf("Script_add comment %q lacks the tool's description", c)
	}
	a := add.Input().Fields().ByName("a")
	if a.Kind() != protoreflect.DoubleKind || !a.HasPresence() || a.JSONName() != "a" {
		t.Errorf("param a: got kind %v, presence %v, JSON name %q; want double with presence named a", a.Kind(), a.HasPresence(), a.JSONName())
	}
	if c := sd.ParentFile().SourceLocations().ByDescriptor(a).LeadingComments; !strings.Contains(c, "Required") {
		t.Errorf("param a comment %q does not say it is required", c)
	}
	if st := sd.Methods().ByName("StreamScript_add"); !st.IsStreamingServer() || st.IsStreamingClient() {
		t.Error("StreamScript_add is not server streaming")
	}
}

func TestDynamicCall(t *testing.T) {
	e := start(t, gateway.Config{})
	conn := e.dial(t).Conn()
	sd, err := newReflector(t, conn).service(gateway.ScriptsService)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		method   string
		req      string
		want     map[string]any // of the response's protojson, without executionId
		wantCode codes.Code
	}{
		{name: "add", method: "Script_add", req: `{"a":1,"b":2}`, want: map[string]any{"result": 3.0}},
		{name: "default", method: "Script_add", req: `{"a":1}`, want: map[string]any{"result": 1.0}},
		{name: "zero result is present", method: "Script_add", req: `{"a":0}`, want: map[string]any{"result": 0.0}},
		{name: "missing required", method: "Script_add", req: `{}`, wantCode: codes.InvalidArgument},
		{name: "NaN", method: "Script_add", req: `{"a":"NaN"}`, wantCode: codes.InvalidArgument},
		// int64 crosses to Loki as a JSON number (Loki refuses the string
		// protojson would write); the int64 result prints as a string.
		{name: "int64 exact", method: "Script_double", req: `{"i":2251799813685249}`, want: map[string]any{"result": "4503599627370498"}},
		{name: "int64 beyond 2^53 is refused by Loki", method: "Script_double", req: `{"i":100000000000000000}`, wantCode: codes.InvalidArgument},
		{name: "script error", method: "Script_boom", req: `{}`, wantCode: codes.FailedPrecondition},
		{name: "omitted stay omitted", method: "Script_echo_all", req: `{}`,
			want: map[string]any{"result": map[string]any{"d": "dflt", "given": []any{"d"}}}},
		{name: "zero values are given", method: "Script_echo_all", req: `{"s":"","n":0,"i":0,"b":false}`,
			want: map[string]any{"result": map[string]any{"s": "", "n": 0.0, "i": 0.0, "b": false, "d": "dflt",
				"given": []any{"s", "n", "i", "b", "d"}}}},
		{name: "every type", method: "Script_echo_all",
			req: `{"s":"héllo \"q\"","n":-1.25e-3,"i":-42,"b":true,"o":{"k":[1,"a",true,{"z":null}]},"arr":[1,[2]],"x":"any","d":"set"}`,
			want: map[string]any{"result": map[string]any{"s": "héllo \"q\"", "n": -1.25e-3, "i": -42.0, "b": true,
				"o": map[string]any{"k": []any{1.0, "a", true, map[string]any{}}}, "arr": []any{1.0, []any{2.0}}, "x": "any", "d": "set",
				"given": []any{"s", "n", "i", "b", "o", "arr", "x", "d"}}}},
		{name: "null any is omitted", method: "Script_echo_all", req: `{"x":null}`,
			want: map[string]any{"result": map[string]any{"d": "dflt", "given": []any{"d"}}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := callDynamic(ctxT(t), conn, sd.Methods().ByName(protoreflect.Name(tc.method)), tc.req)
			checkCode(t, err, tc.wantCode)
			if err != nil {
				return
			}
			b, err := protojson.Marshal(resp)
			if err != nil {
				t.Fatal(err)
			}
			var got map[string]any
			if err := json.Unmarshal(b, &got); err != nil {
				t.Fatal(err)
			}
			if id, _ := got["executionId"].(string); id == "" {
				t.Errorf("no execution id in %s", b)
			}
			delete(got, "executionId")
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDynamicStream(t *testing.T) {
	e := start(t, gateway.Config{})
	conn := e.dial(t).Conn()
	sd, err := newReflector(t, conn).service(gateway.ScriptsService)
	if err != nil {
		t.Fatal(err)
	}
	md := sd.Methods().ByName("StreamScript_count")
	stream, err := conn.NewStream(ctxT(t), &grpc.StreamDesc{ServerStreams: true}, "/"+gateway.ScriptsService+"/StreamScript_count")
	if err != nil {
		t.Fatal(err)
	}
	req := dynamicpb.NewMessage(md.Input())
	if err := protojson.Unmarshal([]byte(`{"n":4}`), req); err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(req); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		out := dynamicpb.NewMessage(md.Output())
		err := stream.RecvMsg(out)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := protojson.Marshal(out)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if r, ok := m["result"].(map[string]any); ok {
			got = append(got, fmt.Sprint("result ", r["result"]))
			continue
		}
		c := m["chunk"].(map[string]any)
		got = append(got, fmt.Sprint(c["sequence"], " ", c["value"]))
	}
	want := []string{"1 map[i:1]", "2 map[i:2]", "3 map[i:3]", "4 map[i:4]", "result done"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestHotRegisterAndUnregister(t *testing.T) {
	e := start(t, gateway.Config{})
	conn := e.dial(t).Conn()
	ctx := ctxT(t)
	// Registered through Loki over NATS, not through this gateway.
	lc := loki.NewClient(e.nc)
	hot := &lokiv1.Tool{Name: "hot", Returns: "string", Source: "return 'hot ' .. who",
		Params: []*lokiv1.Param{{Name: "who", Type: "string", Required: true}}}
	if _, err := lc.Register(ctx, hot); err != nil {
		t.Fatal(err)
	}
	var sd protoreflect.ServiceDescriptor
	if err := eventually(5*time.Second, func() error {
		var err error
		sd, err = newReflector(t, conn).service(gateway.ScriptsService)
		if err == nil && sd.Methods().ByName("Script_hot") == nil {
			err = fmt.Errorf("no Script_hot in %v", methodNames(sd))
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	resp, err := callDynamic(ctx, conn, sd.Methods().ByName("Script_hot"), `{"who":"loki"}`)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Get(resp.Descriptor().Fields().ByName("result")).String(); got != "hot loki" {
		t.Errorf("got %q, want %q", got, "hot loki")
	}

	// A new revision with another param set changes the request message.
	hot.Params = append(hot.Params, &lokiv1.Param{Name: "n", Type: "integer"})
	hot.Source = "return 'hot ' .. who .. (n or '')"
	if _, err := lc.Register(ctx, hot); err != nil {
		t.Fatal(err)
	}
	if err := eventually(5*time.Second, func() error {
		sd, err = newReflector(t, conn).service(gateway.ScriptsService)
		if err == nil && sd.Methods().ByName("Script_hot").Input().Fields().ByName("n") == nil {
			err = errors.New("Script_hot has no field n yet")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	resp, err = callDynamic(ctx, conn, sd.Methods().ByName("Script_hot"), `{"who":"loki","n":2}`)
	if err != nil {
		t.Fatal(err)
	}
	if got := resp.Get(resp.Descriptor().Fields().ByName("result")).String(); got != "hot loki2" {
		t.Errorf("got %q, want %q", got, "hot loki2")
	}

	if err := lc.Unregister(ctx, "hot"); err != nil {
		t.Fatal(err)
	}
	if err := eventually(5*time.Second, func() error {
		sd, err := newReflector(t, conn).service(gateway.ScriptsService)
		if err == nil && sd.Methods().ByName("Script_hot") != nil {
			err = errors.New("Script_hot still listed")
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	old := sd.Methods().ByName("Script_hot")
	_, err = callDynamic(ctx, conn, old, `{"who":"loki"}`)
	checkCode(t, err, codes.Unimplemented)
}

func TestUnknownMethods(t *testing.T) {
	e := start(t, gateway.Config{})
	conn := e.dial(t).Conn()
	for _, method := range []string{"/" + gateway.ScriptsService + "/Script_nope", "/nope.v1.Nope/Call", "/loki.v1.Loki/Nope"} {
		t.Run(method, func(t *testing.T) {
			err := conn.Invoke(ctxT(t), method, &descriptorpb.FileDescriptorProto{}, &descriptorpb.FileDescriptorProto{})
			checkCode(t, err, codes.Unimplemented)
		})
	}
}
