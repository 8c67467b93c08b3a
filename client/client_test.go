package client_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/loki-iot/loki/client"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestDialOptions(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		opts    []client.Option
		wantErr bool
	}{
		{name: "insecure", opts: []client.Option{client.WithInsecure()}},
		{name: "insecure with token", opts: []client.Option{client.WithInsecure(), client.WithToken("t")}},
		{name: "default TLS", opts: nil},
		{name: "insecure and CA", opts: []client.Option{client.WithInsecure(), client.WithCAFile(notPEM)}, wantErr: true},
		{name: "missing CA file", opts: []client.Option{client.WithCAFile(filepath.Join(dir, "nope.pem"))}, wantErr: true},
		{name: "CA file without PEM", opts: []client.Option{client.WithCAFile(notPEM)}, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := client.Dial("127.0.0.1:1", tc.opts...)
			if (err != nil) != tc.wantErr {
				t.Fatalf("got %v, want error %v", err, tc.wantErr)
			}
			if c != nil {
				_ = c.Close()
			}
		})
	}
}

func TestArgumentsAreCheckedLocally(t *testing.T) {
	c, err := client.Dial("127.0.0.1:1", client.WithInsecure())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, _, err = c.Execute(context.Background(), "add", map[string]any{"a": make(chan int)})
	if got, want := status.Code(err), codes.InvalidArgument; got != want {
		t.Fatalf("got %v (%v), want %v", got, err, want)
	}
}

func TestFaultCode(t *testing.T) {
	withInfo := func(domain, reason string) error {
		st, err := status.New(codes.FailedPrecondition, "x").WithDetails(&errdetails.ErrorInfo{Domain: domain, Reason: reason})
		if err != nil {
			t.Fatal(err)
		}
		return st.Err()
	}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{name: "nil", err: nil, want: ""},
		{name: "not a status", err: context.Canceled, want: ""},
		{name: "no details", err: status.Error(codes.NotFound, "x"), want: ""},
		{name: "other domain", err: withInfo("example.com", "QUOTA"), want: ""},
		{name: "loki", err: withInfo(client.ErrorDomain, "SCRIPT_ERROR"), want: "SCRIPT_ERROR"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := client.FaultCode(tc.err); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
