package jotunheim

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/loki-iot/loki/internal/atomicfile"
)

// Settings are the runtime settings a config.set command changes. They
// start from the config, are overridden by the state file, and every
// change is persisted there before it is applied.
type Settings struct {
	TelemetrySeconds uint32 `json:"telemetry_seconds"`
	HeartbeatSeconds uint32 `json:"heartbeat_seconds"`
	// LogLevel is debug, info, warn or error.
	LogLevel string `json:"log_level"`
}

func (s Settings) telemetry() time.Duration {
	return time.Duration(s.TelemetrySeconds) * time.Second
}

func (s Settings) heartbeat() time.Duration {
	return time.Duration(s.HeartbeatSeconds) * time.Second
}

// asMap is the settings as config.get reports them.
func (s Settings) asMap() map[string]any {
	return map[string]any{"telemetry_seconds": s.TelemetrySeconds, "heartbeat_seconds": s.HeartbeatSeconds, "log_level": s.LogLevel}
}

var logLevels = map[string]slog.Level{"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError}

// ParseLogLevel parses debug, info, warn or error.
func ParseLogLevel(s string) (slog.Level, error) {
	l, ok := logLevels[strings.ToLower(s)]
	if !ok {
		return 0, fmt.Errorf("log level %q must be debug, info, warn or error", s)
	}
	return l, nil
}

// apply returns s with the changes of args, or an error naming the first
// bad key; nothing is half-applied.
func (s Settings) apply(args map[string]any) (Settings, error) {
	if len(args) == 0 {
		return s, errors.New("no settings given: telemetry_seconds, heartbeat_seconds or log_level")
	}
	seconds := func(k string, v any) (uint32, error) {
		f, ok := v.(float64)
		max := maxPeriod.Seconds()
		if !ok || math.IsNaN(f) || f != math.Trunc(f) || f < 1 || f > max {
			return 0, fmt.Errorf("%s: want whole seconds from 1 to %.0f, got %v", k, max, v)
		}
		return uint32(f), nil
	}
	var err error
	for k, v := range args {
		switch k {
		case "telemetry_seconds":
			s.TelemetrySeconds, err = seconds(k, v)
		case "heartbeat_seconds":
			s.HeartbeatSeconds, err = seconds(k, v)
		case "log_level":
			str, _ := v.(string)
			if _, err = ParseLogLevel(str); err == nil {
				s.LogLevel = strings.ToLower(str)
			}
		default:
			err = fmt.Errorf("unknown setting %q (settings: telemetry_seconds, heartbeat_seconds, log_level)", trunc(k))
		}
		if err != nil {
			return s, err
		}
	}
	return s, nil
}

// loadSettings overlays the state file at path (if any) on s.
func loadSettings(path string, s Settings) (Settings, error) {
	if path == "" {
		return s, nil
	}
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("state file: %w", err)
	}
	var m map[string]any
	if err := json.Unmarshal(data, &m); err != nil {
		return s, fmt.Errorf("state file %s: %w", path, err)
	}
	if len(m) == 0 {
		return s, nil
	}
	next, err := s.apply(m)
	if err != nil {
		return s, fmt.Errorf("state file %s: %w", path, err)
	}
	return next, nil
}

// saveSettings writes s to path atomically: a temporary file in the same
// directory, fsynced, renamed over the old one.
func saveSettings(path string, s Settings) error {
	if path == "" {
		return nil
	}
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return err
	}
	return atomicfile.Write(path, append(data, '\n'), 0o600)
}

// trunc shortens s for messages.
func trunc(s string) string {
	if len(s) <= 64 {
		return s
	}
	return s[:64] + "..."
}
