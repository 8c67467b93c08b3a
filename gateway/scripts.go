package gateway

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki/engine"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/descriptorpb"
)

// The runtime-built service with one RPC per tool.
const (
	// ScriptsPackage is the proto package of the per-tool RPCs.
	ScriptsPackage = "loki.scripts.v1"
	// ScriptsService is the full name of the service with one unary
	// Script_<tool> and one server-streaming StreamScript_<tool> per tool.
	ScriptsService = ScriptsPackage + ".Scripts"
	// ScriptsFile is the path of the generated file descriptor, as served by
	// reflection.
	ScriptsFile = "loki/scripts/v1/scripts.proto"

	// UnaryPrefix and StreamPrefix prefix a tool's name in method names.
	UnaryPrefix  = "Script_"
	StreamPrefix = "StreamScript_"
)

// Fields of the generated response messages.
const (
	fieldResult      = "result"
	fieldExecutionID = "execution_id"
	fieldChunk       = "chunk"
)

// protoTypes maps a declared param or result type to a field type; a type
// name marks a message (well-known) type.
var protoTypes = map[engine.Type]struct {
	kind    descriptorpb.FieldDescriptorProto_Type
	message string
}{
	engine.String:  {kind: descriptorpb.FieldDescriptorProto_TYPE_STRING},
	engine.Number:  {kind: descriptorpb.FieldDescriptorProto_TYPE_DOUBLE},
	engine.Integer: {kind: descriptorpb.FieldDescriptorProto_TYPE_INT64},
	engine.Boolean: {kind: descriptorpb.FieldDescriptorProto_TYPE_BOOL},
	engine.Object:  {kind: descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, message: ".google.protobuf.Struct"},
	engine.Array:   {kind: descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, message: ".google.protobuf.ListValue"},
	engine.Any:     {kind: descriptorpb.FieldDescriptorProto_TYPE_MESSAGE, message: ".google.protobuf.Value"},
}

// scriptMethod is one per-tool RPC.
type scriptMethod struct {
	tool    string
	stream  bool
	returns engine.Type
	in      protoreflect.MessageDescriptor
	// resp is Script_<tool>_Response; out is resp for unary methods and
	// Script_<tool>_StreamResponse for streaming ones.
	resp, out protoreflect.MessageDescriptor
}

// scriptSet is an immutable snapshot of the per-tool RPCs, swapped as a
// whole when the registry changes.
type scriptSet struct {
	// key identifies the tool revisions the set was built from.
	key     string
	file    protoreflect.FileDescriptor
	files   *protoregistry.Files
	methods map[string]*scriptMethod
	info    grpc.ServiceInfo
}

// registryKey fingerprints a tool list by name and revision.
func registryKey(tools []*lokiv1.Tool) string {
	var b strings.Builder
	for _, t := range tools {
		fmt.Fprintf(&b, "%s@%d,", t.GetName(), t.GetRevision())
	}
	return b.String()
}

// buildScripts builds the per-tool service for tools (valid definitions, as
// compiled by the registry). A tool whose messages cannot be described is
// left out and logged rather than hiding every other tool.
func buildScripts(tools []*lokiv1.Tool, log *slog.Logger) (*scriptSet, error) {
	usable := make([]*lokiv1.Tool, 0, len(tools))
	for _, t := range tools {
		if _, err := newScriptFile([]*lokiv1.Tool{t}); err != nil {
			log.Error("tool has no per-tool RPC", keyTool, t.GetName(), keyErr, err)
			continue
		}
		usable = append(usable, t)
	}
	fd, err := newScriptFile(usable)
	if err != nil {
		return nil, err
	}
	files := &protoregistry.Files{}
	if err := files.RegisterFile(fd); err != nil {
		return nil, fmt.Errorf("register %s: %w", ScriptsFile, err)
	}
	set := &scriptSet{
		key: registryKey(tools), file: fd, files: files,
		methods: map[string]*scriptMethod{},
		info:    grpc.ServiceInfo{Metadata: ScriptsFile},
	}
	sd := fd.Services().ByName("Scripts")
	for i := range sd.Methods().Len() {
		md := sd.Methods().Get(i)
		name := string(md.Name())
		m := &scriptMethod{stream: md.IsStreamingServer(), in: md.Input(), out: md.Output()}
		m.tool = strings.TrimPrefix(name, UnaryPrefix)
		m.resp = md.Output()
		if m.stream {
			m.tool = strings.TrimPrefix(name, StreamPrefix)
			m.resp = md.Output().Fields().ByName(fieldResult).Message()
		}
		set.methods[name] = m
		set.info.Methods = append(set.info.Methods, grpc.MethodInfo{Name: name, IsServerStream: m.stream})
	}
	for _, t := range usable {
		rt := engine.Type(t.GetReturns())
		if rt == "" {
			rt = engine.Any
		}
		set.methods[UnaryPrefix+t.GetName()].returns = rt
		set.methods[StreamPrefix+t.GetName()].returns = rt
	}
	return set, nil
}

// DescribeScripts returns the file descriptor (ScriptsFile) of the per-tool
// service for tools, as the gateway builds and serves it: a Go caller can
// build dynamicpb messages from it without a reflection round trip. Tools
// must be valid definitions.
func DescribeScripts(tools []*lokiv1.Tool) (protoreflect.FileDescriptor, error) {
	return newScriptFile(tools)
}

// newScriptFile describes the service for tools as a file descriptor.
func newScriptFile(tools []*lokiv1.Tool) (protoreflect.FileDescriptor, error) {
	fdp := &descriptorpb.FileDescriptorProto{
		Name:       proto.String(ScriptsFile),
		Package:    proto.String(ScriptsPackage),
		Syntax:     proto.String("proto3"),
		Dependency: []string{"google/protobuf/struct.proto", "loki/v1/loki.proto"},
		Options:    &descriptorpb.FileOptions{GoPackage: proto.String("github.com/loki-iot/loki/gateway/scripts;scripts")},
	}
	svc := &descriptorpb.ServiceDescriptorProto{Name: proto.String("Scripts")}
	src := &sourceInfo{}
	src.add([]int32{fileService, 0}, "Scripts has one RPC per registered Loki tool, rebuilt when the registry\nchanges. Script_<tool> returns the result; StreamScript_<tool> streams each\nemit() chunk, then the result.")
	for _, t := range tools {
		if err := addTool(fdp, svc, src, t); err != nil {
			return nil, fmt.Errorf("tool %q: %w", t.GetName(), err)
		}
	}
	fdp.Service = []*descriptorpb.ServiceDescriptorProto{svc}
	fdp.SourceCodeInfo = &descriptorpb.SourceCodeInfo{Location: src.locs}
	return protodesc.NewFile(fdp, protoregistry.GlobalFiles)
}

// Paths into FileDescriptorProto for SourceCodeInfo comments.
const (
	fileMessage   = 4
	fileService   = 6
	messageField  = 2
	serviceMethod = 2
)

type sourceInfo struct {
	locs []*descriptorpb.SourceCodeInfo_Location
}

// add attaches a leading comment to the element at path. Spans are
// required but meaningless here: there is no source text.
func (s *sourceInfo) add(path []int32, comment string) {
	if comment == "" {
		return
	}
	line := int32(len(s.locs))
	s.locs = append(s.locs, &descriptorpb.SourceCodeInfo_Location{
		Path: path, Span: []int32{line, 0, 1},
		LeadingComments: proto.String(" " + strings.ReplaceAll(comment, "\n", "\n ") + "\n"),
	})
}

func addTool(fdp *descriptorpb.FileDescriptorProto, svc *descriptorpb.ServiceDescriptorProto, src *sourceInfo, t *lokiv1.Tool) error {
	name := t.GetName()
	reqName, respName, streamName := UnaryPrefix+name+"_Request", UnaryPrefix+name+"_Response", UnaryPrefix+name+"_StreamResponse"

	req := &descriptorpb.DescriptorProto{Name: proto.String(reqName)}
	reqIdx := int32(len(fdp.MessageType))
	src.add([]int32{fileMessage, reqIdx}, fmt.Sprintf("Arguments of tool %s. Unset params take their defaults.", name))
	taken := map[string]bool{}
	for _, p := range t.GetParams() {
		taken[p.GetName()] = true
	}
	var optionals []*descriptorpb.FieldDescriptorProto
	for i, p := range t.GetParams() {
		pt, ok := protoTypes[engine.Type(p.GetType())]
		if !ok {
			return fmt.Errorf("param %q: unknown type %q", p.GetName(), p.GetType())
		}
		f := &descriptorpb.FieldDescriptorProto{
			Name:     proto.String(p.GetName()),
			Number:   proto.Int32(int32(i + 1)),
			Label:    descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(),
			Type:     pt.kind.Enum(),
			JsonName: proto.String(p.GetName()), // JSON keys are the param names, as in `loki call`
		}
		if pt.message != "" {
			f.TypeName = proto.String(pt.message)
		} else {
			f.Proto3Optional = proto.Bool(true) // presence: an unset param stays unset and takes its default
			optionals = append(optionals, f)
		}
		req.Field = append(req.Field, f)
		src.add([]int32{fileMessage, reqIdx, messageField, int32(i)}, paramComment(p))
	}
	// Synthetic oneofs of proto3 optional fields come after real ones (there
	// are none) and are named as protoc names them: "_" + field, prefixed
	// with "X" until unique among fields and oneofs.
	for _, f := range optionals {
		on := "_" + f.GetName()
		for taken[on] {
			on = "X" + on
		}
		taken[on] = true
		f.OneofIndex = proto.Int32(int32(len(req.OneofDecl)))
		req.OneofDecl = append(req.OneofDecl, &descriptorpb.OneofDescriptorProto{Name: proto.String(on)})
	}
	fdp.MessageType = append(fdp.MessageType, req)

	rt := engine.Type(t.GetReturns())
	if rt == "" {
		rt = engine.Any
	}
	pt, ok := protoTypes[rt]
	if !ok {
		return fmt.Errorf("returns: unknown type %q", t.GetReturns())
	}
	result := &descriptorpb.FieldDescriptorProto{
		Name: proto.String(fieldResult), Number: proto.Int32(1),
		Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: pt.kind.Enum(),
	}
	resp := &descriptorpb.DescriptorProto{Name: proto.String(respName), Field: []*descriptorpb.FieldDescriptorProto{
		result,
		{Name: proto.String(fieldExecutionID), Number: proto.Int32(2),
			Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: descriptorpb.FieldDescriptorProto_TYPE_STRING.Enum()},
	}}
	if pt.message != "" {
		result.TypeName = proto.String(pt.message)
	} else {
		// Presence, so a result of 0, "" or false still shows in JSON output.
		result.Proto3Optional = proto.Bool(true)
		result.OneofIndex = proto.Int32(0)
		resp.OneofDecl = []*descriptorpb.OneofDescriptorProto{{Name: proto.String("_" + fieldResult)}}
	}
	respIdx := int32(len(fdp.MessageType))
	src.add([]int32{fileMessage, respIdx}, fmt.Sprintf("Result of tool %s (declared %s) and the execution id.", name, rt))
	fdp.MessageType = append(fdp.MessageType, resp)

	streamIdx := int32(len(fdp.MessageType))
	src.add([]int32{fileMessage, streamIdx}, "One emit() chunk or, last, the result.")
	fdp.MessageType = append(fdp.MessageType, &descriptorpb.DescriptorProto{
		Name: proto.String(streamName),
		Field: []*descriptorpb.FieldDescriptorProto{
			{Name: proto.String(fieldChunk), Number: proto.Int32(1), OneofIndex: proto.Int32(0),
				Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum(),
				TypeName: proto.String(".loki.v1.EmitChunk")},
			{Name: proto.String(fieldResult), Number: proto.Int32(2), OneofIndex: proto.Int32(0),
				Label: descriptorpb.FieldDescriptorProto_LABEL_OPTIONAL.Enum(), Type: descriptorpb.FieldDescriptorProto_TYPE_MESSAGE.Enum(),
				TypeName: proto.String("." + ScriptsPackage + "." + respName)},
		},
		OneofDecl: []*descriptorpb.OneofDescriptorProto{{Name: proto.String("event")}},
	})

	desc := strings.TrimSpace(t.GetDescription())
	if desc == "" {
		desc = "Runs tool " + name + "."
	}
	timeout := ""
	if t.GetTimeout() != nil {
		timeout = fmt.Sprintf(" Timeout %s.", t.GetTimeout().AsDuration())
	}
	methodIdx := int32(len(svc.Method))
	svc.Method = append(svc.Method,
		&descriptorpb.MethodDescriptorProto{
			Name:       proto.String(UnaryPrefix + name),
			InputType:  proto.String("." + ScriptsPackage + "." + reqName),
			OutputType: proto.String("." + ScriptsPackage + "." + respName),
		},
		&descriptorpb.MethodDescriptorProto{
			Name:            proto.String(StreamPrefix + name),
			InputType:       proto.String("." + ScriptsPackage + "." + reqName),
			OutputType:      proto.String("." + ScriptsPackage + "." + streamName),
			ServerStreaming: proto.Bool(true),
		})
	src.add([]int32{fileService, 0, serviceMethod, methodIdx}, fmt.Sprintf("%s\nReturns %s.%s", desc, rt, timeout))
	src.add([]int32{fileService, 0, serviceMethod, methodIdx + 1}, fmt.Sprintf("%s\nStreams each emit() chunk, then the result (%s).%s", desc, rt, timeout))
	return nil
}

func paramComment(p *lokiv1.Param) string {
	var parts []string
	if d := strings.TrimSpace(p.GetDescription()); d != "" {
		if !strings.ContainsAny(d[len(d)-1:], ".!?") {
			d += "."
		}
		parts = append(parts, d)
	}
	switch {
	case p.GetRequired():
		parts = append(parts, "Required.")
	case p.GetDefault() != nil:
		b, err := json.Marshal(p.GetDefault().AsInterface())
		if err == nil {
			parts = append(parts, "Default: "+string(b)+".")
		}
	}
	return strings.Join(parts, " ")
}

// resolver serves descriptors to reflection: the current per-tool file,
// then everything linked into the binary.
type resolver struct {
	current func() *scriptSet
}

var _ protodesc.Resolver = resolver{}

func (r resolver) FindFileByPath(path string) (protoreflect.FileDescriptor, error) {
	if path == ScriptsFile {
		return r.current().file, nil
	}
	return protoregistry.GlobalFiles.FindFileByPath(path)
}

func (r resolver) FindDescriptorByName(name protoreflect.FullName) (protoreflect.Descriptor, error) {
	if strings.HasPrefix(string(name), ScriptsPackage+".") {
		d, err := r.current().files.FindDescriptorByName(name)
		if err == nil || !errors.Is(err, protoregistry.NotFound) {
			return d, err
		}
	}
	return protoregistry.GlobalFiles.FindDescriptorByName(name)
}

// services lists the server's registered services plus the per-tool one,
// for reflection's ListServices.
type services struct {
	srv     *grpc.Server
	current func() *scriptSet
}

func (s services) GetServiceInfo() map[string]grpc.ServiceInfo {
	m := s.srv.GetServiceInfo()
	m[ScriptsService] = s.current().info
	return m
}

// setResult sets the result field of a per-tool response from the tool's
// JSON result.
func setResult(resp protoreflect.Message, returns engine.Type, data []byte) error {
	v, err := resultValue(returns, data)
	if err != nil {
		return err
	}
	resp.Set(resp.Descriptor().Fields().ByName(fieldResult), v)
	return nil
}
