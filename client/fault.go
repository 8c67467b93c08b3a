package client

import (
	"github.com/loki-iot/loki/internal/fault"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Fault turns a gateway error back into Loki's code and message: a
// *fault.Error with the code of FaultCode(err) when the gateway attached
// one, else the code of its gRPC status (the failure was the connection's
// or the gateway's own); a code with no Loki equivalent is INTERNAL. nil
// stays nil.
func Fault(err error) error {
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	code := fault.Code(FaultCode(err))
	if !code.Valid() {
		code = grpcFaults[st.Code()]
		if code == "" {
			code = fault.Internal
		}
	}
	return &fault.Error{Code: code, Msg: st.Message(), Err: err}
}

// grpcFaults are the Loki codes of gRPC codes, for errors without a Loki
// code (the inverse of the gateway's GRPCCode where one exists).
var grpcFaults = map[codes.Code]fault.Code{
	codes.InvalidArgument: fault.InvalidArgument, codes.NotFound: fault.NotFound,
	codes.AlreadyExists: fault.AlreadyExists, codes.FailedPrecondition: fault.FailedPrecondition,
	codes.DeadlineExceeded: fault.DeadlineExceeded, codes.Canceled: fault.DeadlineExceeded,
	codes.ResourceExhausted: fault.ResourceExhausted, codes.PermissionDenied: fault.PermissionDenied,
	codes.Unauthenticated: fault.Unauthenticated, codes.Unavailable: fault.Unavailable,
}
