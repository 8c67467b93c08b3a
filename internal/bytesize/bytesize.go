// Package bytesize parses the sizes people write in Loki's configs and
// tool definitions ("64MiB", "1.5GiB", "10kB", "4096"), one way everywhere:
// KiB, MiB, GiB, TiB (and K, M, G, T) are powers of 1024; kB, MB, GB, TB
// are powers of 1000, as their SI names say.
package bytesize

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var units = []struct {
	suffix string
	mult   float64
}{
	{"kib", 1 << 10}, {"mib", 1 << 20}, {"gib", 1 << 30}, {"tib", 1 << 40},
	{"kb", 1e3}, {"mb", 1e6}, {"gb", 1e9}, {"tb", 1e12},
	{"k", 1 << 10}, {"m", 1 << 20}, {"g", 1 << 30}, {"t", 1 << 40}, {"b", 1},
}

// Parse returns the bytes s names: a number (fractions allowed) with an
// optional unit, spaces around it ignored. A negative, malformed or
// too-large size (2^62 bytes or more) is an error quoting s.
func Parse(s string) (uint64, error) {
	t := strings.ToLower(strings.TrimSpace(s))
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(t, 64)
	if err != nil || math.IsNaN(f) || f < 0 || f*mult >= 1<<62 {
		return 0, fmt.Errorf("size %q: want a number of bytes with an optional unit (B, KiB, MiB, GiB, TiB; kB, MB, GB, TB are powers of 1000)", trunc(s))
	}
	return uint64(f * mult), nil
}

func trunc(s string) string {
	if len(s) > 32 {
		return s[:32] + "…"
	}
	return s
}
