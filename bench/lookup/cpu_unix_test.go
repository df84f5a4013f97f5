//go:build unix

package lookup

import (
	"syscall"
	"time"
)

// cpuTime returns the user and system CPU time this process has used so
// far: client, server and background work (Badger, GC) together.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
