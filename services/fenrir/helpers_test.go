package fenrir_test

import (
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/loki-iot/loki/hardware"
	"github.com/loki-iot/loki/internal/lokitest"
	"github.com/loki-iot/loki/internal/natsrv"
	"github.com/loki-iot/loki/internal/natstest"
	"github.com/loki-iot/loki/services/fenrir"
	"github.com/nats-io/nats.go"
	"periph.io/x/conn/v3/gpio"
	"periph.io/x/conn/v3/gpio/gpiotest"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// env is a server, one Fenrir instance serving the built-in sim board
// (without simulated motion, so tests drive the PIR pin themselves), and a
// client.
type env struct {
	srv *natsrv.Server
	nc  *nats.Conn
	c   *fenrir.Client
	sim *simBoards
}

// simBoards opens sim boards and keeps hold of them, so tests can look at
// and stimulate periph's fake pins under the service.
type simBoards struct {
	mu     sync.Mutex
	boards map[string]*hardware.SimBoard
}

func (s *simBoards) open(cfg hardware.BoardConfig) (hardware.Board, error) {
	b := hardware.NewSimBoard(cfg)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.boards[cfg.Name] = b
	return b, nil
}

// fake returns the gpiotest.Pin under the named pin of board "sim".
func (s *simBoards) fake(t testing.TB, name string) *gpiotest.Pin {
	t.Helper()
	s.mu.Lock()
	b := s.boards["sim"]
	s.mu.Unlock()
	for _, p := range hardware.SimBoardConfig().Pins {
		if p.Name == name {
			io, err := b.Pin(p)
			if err != nil {
				t.Fatal(err)
			}
			return io.(*gpiotest.Pin)
		}
	}
	t.Fatalf("no pin %q on the sim board", name)
	return nil
}

func (s *simBoards) setInput(t testing.TB, name string, l gpio.Level) {
	t.Helper()
	s.mu.Lock()
	b := s.boards["sim"]
	s.mu.Unlock()
	if err := b.SetInput(name, l); err != nil {
		t.Fatal(err)
	}
}

func simConfig() hardware.BoardConfig {
	b := hardware.SimBoardConfig()
	b.SimMotionEvery = 0
	return b
}

func testConfig(sim *simBoards, boards ...hardware.BoardConfig) fenrir.Config {
	cfg := fenrir.DefaultConfig()
	cfg.Boards = boards
	cfg.OpenBoard = sim.open
	cfg.DrainTimeout = 5 * time.Second
	return cfg
}

// setup starts a server and Fenrir with the sim board.
func setup(t testing.TB) *env {
	t.Helper()
	srv := natstest.Start(t)
	sim := &simBoards{boards: map[string]*hardware.SimBoard{}}
	startFenrir(t, srv, testConfig(sim, simConfig()))
	nc := natstest.Connect(t, srv)
	return &env{srv: srv, nc: nc, c: fenrir.NewClient(nc), sim: sim}
}

func startFenrir(t testing.TB, srv *natsrv.Server, cfg fenrir.Config) {
	t.Helper()
	svc, err := fenrir.New(cfg, natstest.Connect(t, srv), quietLog())
	if err != nil {
		t.Fatal(err)
	}
	natstest.RunService(t, svc)
}

// Shared with the other services' tests.
var (
	ctxT     = lokitest.Context
	wantCode = lokitest.WantCode
)
