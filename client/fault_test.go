package client_test

import (
	"errors"
	"testing"

	"github.com/loki-iot/loki/client"
	"github.com/loki-iot/loki/internal/fault"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestFault(t *testing.T) {
	withInfo := func(c codes.Code, reason string) error {
		st, err := status.New(c, "msg").WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: client.ErrorDomain})
		if err != nil {
			t.Fatal(err)
		}
		return st.Err()
	}
	for _, tc := range []struct {
		name string
		err  error
		want fault.Code
	}{
		{"Loki's code wins", withInfo(codes.FailedPrecondition, "SCRIPT_ERROR"), fault.ScriptError},
		{"no Loki code", status.Error(codes.Unavailable, "connection refused"), fault.Unavailable},
		{"cancelled is a deadline", status.Error(codes.Canceled, "gone"), fault.DeadlineExceeded},
		{"unknown reason", withInfo(codes.NotFound, "CANCELLED"), fault.NotFound},
		{"no equivalent", status.Error(codes.DataLoss, "x"), fault.Internal},
		{"not a status", errors.New("boom"), fault.Internal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fault.CodeOf(client.Fault(tc.err)); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
	if client.Fault(nil) != nil {
		t.Fatal("Fault(nil): got an error, want nil")
	}
}
