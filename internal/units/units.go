// Package units parses the sizes and budgets genfleet's flags and
// environment variables take: "65536", "64MiB", "4GiB", "1.5GB", "80%",
// and writes sizes for people to read.
package units

import (
	"fmt"
	"strconv"
	"strings"
)

// ParseSize parses a byte count with an optional unit: binary (KiB, MiB,
// GiB, TiB, and the short K, M, G), decimal (KB, MB, GB, TB) or B.
func ParseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   float64
	}{
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12},
		{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1},
	}
	mult := 1.0
	for _, u := range units {
		if strings.HasSuffix(t, u.suffix) {
			t, mult = strings.TrimSpace(strings.TrimSuffix(t, u.suffix)), u.mult
			break
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 || v*mult > 1<<50 {
		return 0, fmt.Errorf("invalid size %q (examples: 65536, 64MiB, 4GiB)", s)
	}
	return int64(v * mult), nil
}

// ParseBudget parses a budget: "" or "0" (none, or the caller's default),
// a size ("50GiB") or a percentage of some whole ("80%"). Exactly one of
// bytes and percent is non-zero unless both are zero.
func ParseBudget(s string) (bytes int64, percent float64, err error) {
	t := strings.TrimSpace(s)
	if t == "" || t == "0" {
		return 0, 0, nil
	}
	if p, ok := strings.CutSuffix(t, "%"); ok {
		v, err := strconv.ParseFloat(strings.TrimSpace(p), 64)
		if err != nil || v <= 0 || v > 100 {
			return 0, 0, fmt.Errorf("invalid budget %q: a percentage must be in (0, 100]", s)
		}
		return 0, v, nil
	}
	n, err := ParseSize(t)
	if err != nil {
		return 0, 0, fmt.Errorf("invalid budget %q (examples: 50GiB, 80%%)", s)
	}
	return n, 0, nil
}

// FormatSize writes a byte count for people: "512 B", "4.0 MiB", "1.5 GiB"
// (binary units, one decimal). ParseSize reads it back, to the decimal.
func FormatSize(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
