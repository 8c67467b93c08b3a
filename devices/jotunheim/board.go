package jotunheim

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/loki-iot/loki/hardware"
)

// hw is the agent's board, replaceable at run time (UpdateBoard).
type hw struct {
	mu  sync.RWMutex
	dev *hardware.Device

	// maxAge is how long a sensor's reading answers reads (see
	// TelemetryConfig.SampleMaxAge); samples holds the last ones, and is
	// emptied when the board is replaced.
	maxAge  time.Duration
	smu     sync.Mutex
	samples map[string]hardware.Reading
}

// readSensor returns sensor name's reading: the last one while it is
// younger than maxAge, else a new measurement. Motion sensors, a pin read,
// are always read.
func (h *hw) readSensor(name string) (hardware.Reading, error) {
	h.smu.Lock()
	r, ok := h.samples[name]
	h.smu.Unlock()
	if ok && time.Since(time.Unix(0, int64(r.At*1e9))) < h.maxAge {
		return r, nil
	}
	r, err := h.device().ReadSensor(name)
	if err != nil || r.Kind == hardware.KindMotion {
		return r, err
	}
	h.smu.Lock()
	h.samples[name] = r
	h.smu.Unlock()
	return r, nil
}

// boardConfig returns the board cfg names: the simulated one, or the
// first board of its board file.
func boardConfig(cfg Config) (hardware.BoardConfig, error) {
	if cfg.Board.Sim {
		return hardware.SimBoardConfig(), nil
	}
	boards, err := hardware.LoadBoards(cfg.Board.File)
	if err != nil {
		return hardware.BoardConfig{}, fmt.Errorf("%w: %s: board.file: %w", ErrConfig, cfg.at("board.file"), err)
	}
	if len(boards) > 1 {
		return hardware.BoardConfig{}, fmt.Errorf("%w: %s: board.file: %s defines %d boards; a device has one",
			ErrConfig, cfg.at("board.file"), cfg.Board.File, len(boards))
	}
	return boards[0], nil
}

// openDevice opens the board of bc and the device on it.
func openDevice(bc hardware.BoardConfig) (*hardware.Device, error) {
	board, err := hardware.OpenBoard(bc)
	if err != nil {
		return nil, err
	}
	dev, err := hardware.NewDevice(bc, board)
	if err != nil {
		return nil, errors.Join(err, board.Close())
	}
	return dev, nil
}

func openHW(bc hardware.BoardConfig, maxAge time.Duration) (*hw, error) {
	dev, err := openDevice(bc)
	if err != nil {
		return nil, err
	}
	return &hw{dev: dev, maxAge: maxAge, samples: map[string]hardware.Reading{}}, nil
}

// device returns the current device; callers use it without holding the
// lock (a Device is safe for concurrent use; a replaced one answers
// UNAVAILABLE-class errors from its closed board).
func (h *hw) device() *hardware.Device {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.dev
}

// replace closes the current device and opens bc in its place; if bc
// cannot be opened, the old board is opened again.
func (h *hw) replace(bc hardware.BoardConfig) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.smu.Lock()
	clear(h.samples)
	h.smu.Unlock()
	old := h.dev.Config()
	// Close first: real pins can be held by one owner only.
	if err := h.dev.Close(); err != nil {
		return fmt.Errorf("close the board: %w", err)
	}
	dev, err := openDevice(bc)
	if err != nil {
		prev, perr := openDevice(old)
		if perr != nil {
			return errors.Join(err, fmt.Errorf("reopen the previous board: %w", perr))
		}
		h.dev = prev
		return err
	}
	h.dev = dev
	return nil
}

func (h *hw) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	_ = h.dev.Close()
}
