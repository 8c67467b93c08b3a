package replicas_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/loki-iot/loki/internal/replicas"
	"github.com/nats-io/nats.go/jetstream"
)

// TestSetupRetriesTransientErrors: a bucket that cannot be placed yet (a
// cluster whose peers are still coming online) or an attempt left without
// an answer is tried again; a refusal is final.
func TestSetupRetriesTransientErrors(t *testing.T) {
	noPeers := &jetstream.APIError{Code: 400, ErrorCode: 10005, Description: "no suitable peers for placement, peer offline"}
	for _, tc := range []struct {
		name      string
		failures  []error
		wantCalls int
		wantErr   bool
	}{
		{"no peers yet", []error{noPeers, fmt.Errorf("cache bucket: %w", noPeers)}, 3, false},
		{"no answer", []error{context.DeadlineExceeded}, 2, false},
		{"refused", []error{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeBadRequest, Description: "bad"}}, 1, true},
		{"permission", []error{errors.New("nats: permissions violation")}, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			err := replicas.Setup(context.Background(), nil, "b", func(context.Context) error {
				calls++
				if calls <= len(tc.failures) {
					return tc.failures[calls-1]
				}
				return nil
			})
			if calls != tc.wantCalls || (err != nil) != tc.wantErr {
				t.Fatalf("got %d calls, err %v; want %d calls, error %v", calls, err, tc.wantCalls, tc.wantErr)
			}
		})
	}
}
