// Package sizeflag reads the byte sizes given to the cairn commands' flags
// (--max-recv-msg-size 8MiB), with one set of spellings and one form of
// error for every size flag.
package sizeflag

import (
	"fmt"
	"strings"

	"github.com/dustin/go-humanize"
)

// Spellings says which sizes Parse takes, for help texts and errors.
const Spellings = "a number of bytes, or a number with a unit: KiB, MiB, GiB, TiB (powers of 1024; Ki, Mi, ... too) " +
	"or KB, MB, GB, TB (powers of 1000; K, M, ... too), in any case, with or without a space"

// Parse reads s, the value of the flag named flag ("--max-recv-msg-size",
// for messages), as a byte count from lo to hi. It takes what
// go-humanize's ParseBytes takes: 4194304, 4MiB, 4 MiB, 4mi, 4MB, 4M and
// 4m all parse, the last three as 4,000,000 bytes (see Spellings). A
// value that does not parse gets an error that shows example, which must
// parse; one out of range names the bound exactly (4100KiB, not 4.0 MiB).
func Parse(flag, s, example string, lo, hi int64) (int64, error) {
	u, err := humanize.ParseBytes(strings.TrimSpace(s))
	if err != nil {
		return 0, fmt.Errorf("%s %q is not a size: write e.g. %s (%s)", flag, s, example, Spellings)
	}
	if u > uint64(hi) {
		return 0, fmt.Errorf("%s %s is above its maximum, %s", flag, quote(s, u), Format(hi))
	}
	n := int64(u)
	if n < lo {
		return 0, fmt.Errorf("%s %s is below its minimum, %s", flag, quote(s, u), Format(lo))
	}
	return n, nil
}

// Format writes n bytes exactly, in the largest binary unit that divides
// it: 4100KiB, 8MiB, 1GiB, 4000000 (bytes). Parse reads it back.
func Format(n int64) string {
	units := []string{"TiB", "GiB", "MiB", "KiB"}
	for i, unit := range units {
		size := int64(1) << (10 * (len(units) - i))
		if n != 0 && n%size == 0 {
			return fmt.Sprintf("%d%s", n/size, unit)
		}
	}
	return fmt.Sprintf("%d", n)
}

// quote shows a value as given, with its byte count when the two differ:
// "4MB" (4000000 bytes).
func quote(s string, n uint64) string {
	if strings.TrimSpace(s) == fmt.Sprint(n) {
		return s
	}
	return fmt.Sprintf("%q (%d bytes)", s, n)
}
