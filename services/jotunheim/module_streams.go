package jotunheim

import (
	"bytes"
	"context"
	"errors"
	"time"

	"github.com/loki-iot/loki/devices/streams"
	"github.com/loki-iot/loki/services/loki/engine"
	lua "github.com/yuin/gopher-lua"
)

// Limits of jotunheim.stream_read.
const (
	// MaxStreamReadBytes caps what one stream_read returns.
	MaxStreamReadBytes = 1 << 20
	// defaultStreamReadBytes is stream_read's max_bytes when none is given.
	defaultStreamReadBytes = 64 << 10
	// defaultStreamReadTimeout is stream_read's timeout when none is given.
	defaultStreamReadTimeout = 5 * time.Second
)

// stream_read(device, source [, {max_bytes=N, timeout=seconds|"2s"}])
// → data, {eof=bool, dropped=n, chunks=n}
//
// Reads device's stream source until max_bytes (default 64 KiB, at most
// MaxStreamReadBytes), the stream's end, or the timeout (default 5 s, and
// never past the script's deadline), and returns what it read: at most
// max_bytes bytes. A device that does not answer raises UNAVAILABLE, an
// unknown source NOT_FOUND.
func (m *module) streamRead(L *lua.LState, c *engine.Call) int {
	const fn = "stream_read"
	device := deviceArg(L, fn, 1)
	s, ok := L.Get(2).(lua.LString)
	if !ok {
		return badArg(L, fn, 2, "source must be a string, got %s", L.Get(2).Type())
	}
	source := string(s)
	if err := streams.ValidName(source); err != nil {
		return badArg(L, fn, 2, "source %q must match [a-z][a-z0-9_]{0,31}", trunc(source))
	}
	maxBytes, timeout := defaultStreamReadBytes, defaultStreamReadTimeout
	switch opts := L.Get(3).(type) {
	case *lua.LNilType:
	case *lua.LTable:
		switch v := opts.RawGetString("max_bytes").(type) {
		case *lua.LNilType:
		case lua.LNumber:
			if v < 1 || v > MaxStreamReadBytes || v != lua.LNumber(int(v)) {
				return badArg(L, fn, 3, "max_bytes must be an integer from 1 to %d, got %v", MaxStreamReadBytes, v)
			}
			maxBytes = int(v)
		default:
			return badArg(L, fn, 3, "max_bytes must be a number, got %s", v.Type())
		}
		switch v := opts.RawGetString("timeout").(type) {
		case *lua.LNilType:
		case lua.LNumber:
			timeout = time.Duration(float64(v) * float64(time.Second))
		case lua.LString:
			d, err := time.ParseDuration(string(v))
			if err != nil {
				return badArg(L, fn, 3, "timeout %q: %v", trunc(string(v)), err)
			}
			timeout = d
		default:
			return badArg(L, fn, 3, "timeout must be seconds or a duration string, got %s", v.Type())
		}
		if timeout <= 0 {
			return badArg(L, fn, 3, "timeout must be positive")
		}
	default:
		return badArg(L, fn, 3, "options must be a table or nil, got %s", opts.Type())
	}
	if err := c.Grants.Check(grantModule, "", device); err != nil {
		return engine.RaiseError(L, err)
	}
	ctx, cancel := context.WithTimeout(c.Ctx, timeout)
	defer cancel()
	// Opening is bounded by its own timeout, so that a device that does not
	// answer is UNAVAILABLE rather than a timeout.
	r, err := OpenStream(c.Ctx, m.c.nc, device, source, uint64(maxBytes), StreamOptions{OpenTimeout: min(timeout, DefaultStreamOpenTimeout)})
	if err != nil {
		return engine.RaiseError(L, err)
	}
	defer r.Close()
	var buf bytes.Buffer
	eof := false
	for buf.Len() < maxBytes {
		ch, err := r.Next(ctx)
		if err != nil {
			// The read's own timeout ends it with what came; the script's
			// deadline and the device's errors are raised.
			if c.Ctx.Err() == nil && ctx.Err() != nil && errors.Is(err, context.DeadlineExceeded) {
				break
			}
			return engine.RaiseError(L, err)
		}
		d := ch.GetData()
		buf.Write(d[:min(len(d), maxBytes-buf.Len())])
		if ch.GetEof() {
			eof = true
			break
		}
	}
	st := r.Stats()
	info := L.NewTable()
	info.RawSetString("eof", lua.LBool(eof))
	info.RawSetString("dropped", lua.LNumber(st.Dropped))
	info.RawSetString("chunks", lua.LNumber(st.Chunks))
	L.Push(lua.LString(buf.String()))
	L.Push(info)
	return 2
}
