package subjects_test

import (
	"errors"
	"testing"

	"github.com/loki-iot/loki/subjects"
)

func TestJormungandrHandle(t *testing.T) {
	tests := []struct {
		name     string
		instance string
		op       subjects.HandleOp
		want     string
		wantErr  error
	}{
		{name: "send", instance: "Ab3_x-9", op: subjects.HandleSend, want: "jormungandr.handle.Ab3_x-9.send"},
		{name: "close", instance: "N1", op: subjects.HandleClose, want: "jormungandr.handle.N1.close"},
		{name: "empty instance", instance: "", op: subjects.HandleSend, wantErr: subjects.ErrInvalidToken},
		{name: "dotted instance", instance: "a.b", op: subjects.HandleSend, wantErr: subjects.ErrInvalidToken},
		{name: "wildcard instance", instance: "*", op: subjects.HandleSend, wantErr: subjects.ErrInvalidToken},
		{name: "tail wildcard", instance: ">", op: subjects.HandleReceive, wantErr: subjects.ErrInvalidToken},
		{name: "space", instance: "a b", op: subjects.HandleReceive, wantErr: subjects.ErrInvalidToken},
		{name: "too long", instance: string(make([]byte, 65)), op: subjects.HandleReceive, wantErr: subjects.ErrInvalidToken},
		{name: "unknown op", instance: "N1", op: "exec", wantErr: subjects.ErrInvalidToken},
		{name: "op with dot", instance: "N1", op: "send.x", wantErr: subjects.ErrInvalidToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := subjects.JormungandrHandle(tc.instance, tc.op)
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Fatalf("got %q, %v, want %q, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}

func TestHandleOpsAreValidTokens(t *testing.T) {
	for _, op := range subjects.HandleOps {
		if err := subjects.ValidToken(string(op)); err != nil || !op.Valid() {
			t.Fatalf("op %q: got %v, valid %v, want a valid token", op, err, op.Valid())
		}
	}
}
