package gateway

import (
	"context"
	"errors"
	"log/slog"

	"github.com/loki-iot/loki/internal/fault"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrorDomain is the Domain of the google.rpc.ErrorInfo detail attached to
// every error status the gateway returns; its Reason is the fault code
// (for example SCRIPT_ERROR), finer-grained than the gRPC code.
const ErrorDomain = "loki-iot.github.io"

// GRPCCode maps an error to the gRPC code a caller sees. It is the one place
// fault codes become gRPC codes; docs/GATEWAY.md has the table. An error
// without a fault code is INTERNAL, and a cancelled context is CANCELLED
// (loki.Client reports it as DEADLINE_EXCEEDED, which is wrong for a caller
// that hung up).
func GRPCCode(err error) codes.Code {
	if err == nil {
		return codes.OK
	}
	if errors.Is(err, context.Canceled) {
		return codes.Canceled
	}
	switch fault.CodeOf(err) {
	case fault.InvalidArgument:
		return codes.InvalidArgument
	case fault.NotFound:
		return codes.NotFound
	case fault.AlreadyExists:
		return codes.AlreadyExists
	case fault.DeadlineExceeded:
		return codes.DeadlineExceeded
	case fault.ResourceExhausted:
		return codes.ResourceExhausted
	case fault.PermissionDenied:
		return codes.PermissionDenied
	case fault.FailedPrecondition:
		return codes.FailedPrecondition
	case fault.ScriptError:
		// FAILED_PRECONDITION, not UNKNOWN: the call reached a tool whose own
		// code failed, so retrying the same call will fail the same way until
		// the tool (the system's state) is fixed — exactly FAILED_PRECONDITION's
		// contract. UNKNOWN is what grpc-go reports for panics and errors that
		// carry no status, so script errors would be indistinguishable from
		// gateway bugs. The ErrorInfo reason still says SCRIPT_ERROR.
		return codes.FailedPrecondition
	case fault.Unavailable:
		return codes.Unavailable
	case fault.Unauthenticated:
		return codes.Unauthenticated
	}
	return codes.Internal
}

// statusError turns err into the status error returned to the caller, with
// the fault code as an ErrorInfo detail. Errors that already are statuses
// (from grpc itself) pass through. INTERNAL errors are logged with the tool
// and execution id; the caller gets a generic message.
func statusError(log *slog.Logger, err error, tool, execID string) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	code := GRPCCode(err)
	msg := fault.MessageOf(err)
	reason := string(fault.CodeOf(err))
	switch code {
	case codes.Canceled:
		reason = "CANCELLED"
		msg = "call cancelled"
	case codes.Internal:
		log.Error("internal error", keyTool, tool, keyExecID, execID, keyErr, err)
		msg = "internal error (details in the gateway log)"
		if execID != "" {
			msg = "internal error in execution " + execID + " (details in the gateway log)"
		}
	}
	st := status.New(code, msg)
	info := &errdetails.ErrorInfo{Reason: reason, Domain: ErrorDomain}
	if execID != "" {
		info.Metadata = map[string]string{"execution_id": execID}
	}
	if withInfo, derr := st.WithDetails(info); derr == nil {
		st = withInfo
	}
	return st.Err()
}
