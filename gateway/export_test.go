package gateway

import (
	lokiv1 "github.com/loki-iot/loki/proto/loki/v1"
	"github.com/loki-iot/loki/services/loki/engine"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Internals for the fuzz and conversion tests.
var (
	ArgsJSON      = argsJSON
	StructJSON    = structJSON
	ValueFromJSON = valueFromJSON
)

// ResultValue is resultValue for tests.
func ResultValue(t string, data []byte) (protoreflect.Value, error) {
	return resultValue(engine.Type(t), data)
}

// RequestDescriptor returns the request message of tool's unary RPC.
func RequestDescriptor(tool *lokiv1.Tool) (protoreflect.MessageDescriptor, error) {
	fd, err := DescribeScripts([]*lokiv1.Tool{tool})
	if err != nil {
		return nil, err
	}
	return fd.Services().Get(0).Methods().ByName(protoreflect.Name(UnaryPrefix + tool.GetName())).Input(), nil
}
