//go:build !unix

package lookup

import "time"

// cpuTime is not measured here; run then reports no cpu-us/call.
func cpuTime() time.Duration { return 0 }
