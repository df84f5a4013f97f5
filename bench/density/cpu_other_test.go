//go:build !unix

package density

import "time"

// cpuTime is not measured here; the per-CPU-second column is then empty.
func cpuTime() time.Duration { return 0 }
