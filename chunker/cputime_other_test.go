//go:build !linux

package chunker

import "time"

var epoch = time.Now()

// threadCPU falls back to wall time where there is no per-thread clock.
func threadCPU() time.Duration { return time.Since(epoch) }
