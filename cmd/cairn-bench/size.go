package main

import (
	"fmt"
	"strconv"
	"strings"
)

// parseSizes reads a comma-separated list of sizes with optional binary
// suffixes: "16K,64K,1M" or "65536".
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := parseSize(f)
		if err != nil {
			return nil, err
		}
		out = append(out, int(n))
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no sizes in %q", s)
	}
	return out, nil
}

// parseSize reads a size like 4096, 64K, 256KiB, 4 MiB, 1M, 4G. Units are binary
// whether or not the i is there (unlike humanize.ParseBytes, for which 1M
// is 10^6): the sizes here are chunk averages and layer sizes, powers of
// two in practice.
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	mult := int64(1)
	if t != "" {
		switch t[len(t)-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			t = strings.TrimSpace(t[:len(t)-1]) // "4 MiB" as well as "4MiB"
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a size (want e.g. 4096, 64K, 1M, 4G)", s)
	}
	return n * mult, nil
}
