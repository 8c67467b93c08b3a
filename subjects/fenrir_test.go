package subjects_test

import (
	"errors"
	"testing"

	"github.com/loki-iot/loki/subjects"
)

func TestFenrirOp(t *testing.T) {
	tests := []struct {
		name, board, op, want string
		wantErr               error
	}{
		{name: "read", board: "sim", op: subjects.FenrirGPIORead, want: "fenrir.sim.gpio.read"},
		{name: "dashes", board: "pi-4_b", op: subjects.FenrirBoardList, want: "fenrir.pi-4_b.board.list"},
		{name: "dot in board", board: "a.b", op: subjects.FenrirGPIORead, wantErr: subjects.ErrInvalidToken},
		{name: "wildcard board", board: "*", op: subjects.FenrirGPIORead, wantErr: subjects.ErrInvalidToken},
		{name: "empty board", board: "", op: subjects.FenrirGPIORead, wantErr: subjects.ErrInvalidToken},
		{name: "unknown op", board: "sim", op: "gpio.explode", wantErr: subjects.ErrInvalidToken},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := subjects.FenrirOp(tc.board, tc.op)
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Fatalf("got %q, %v; want %q, %v", got, err, tc.want, tc.wantErr)
			}
		})
	}
}
