package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// IdleOptions make a Pull or a Push watch itself while it waits for the
// server, so that a call without a deadline never waits silently forever
// on a server that sends (or takes) nothing: one busy with other
// transfers, one whose network went away, one that hangs.
//
// The watch counts only the time the call is blocked on the server (a
// message to receive, a message flow control holds back, an answer); time
// spent reading the caller's reader or writing to its writer does not
// count, so a slow consumer of a pull is never mistaken for a stalled
// server. A message that moves ends the wait.
type IdleOptions struct {
	// Timeout fails the call once one wait has lasted this long: it is
	// cancelled, and returns an error wrapping ErrIdle that says what it
	// waited for. Zero means no limit.
	Timeout time.Duration
	// NoticeEvery is how often Notice hears about a wait in progress: after
	// NoticeEvery, 2×NoticeEvery, ... (zero: never).
	NoticeEvery time.Duration
	// Notice, if set, is told what the call waits for (such as "pulling
	// sha256:…" or "sending chunks") and for how long it has waited. It is
	// called on a goroutine of its own, never after Pull or Push returned,
	// and must not block for long (the call's return waits for it).
	Notice func(what string, waited time.Duration)
}

// watchdog applies IdleOptions to one call. A nil *watchdog watches
// nothing, so the calls need no checks. Safe for concurrent use.
type watchdog struct {
	opts   IdleOptions
	cancel context.CancelCauseFunc

	mu    sync.Mutex
	wait  uint64 // counts the waits; a timer of an earlier wait does nothing
	timer *time.Timer
	// noticing counts the Notice calls in progress: stop waits for them,
	// so that none runs after the call returned.
	noticing sync.WaitGroup
}

// watch returns ctx under a watchdog for opts, and the watchdog (nil, and
// ctx itself, when opts ask for nothing). The caller calls stop when the
// call is done.
func watch(ctx context.Context, opts IdleOptions) (context.Context, *watchdog) {
	if opts.Timeout <= 0 && (opts.Notice == nil || opts.NoticeEvery <= 0) {
		return ctx, nil
	}
	ctx, cancel := context.WithCancelCause(ctx)
	return ctx, &watchdog{opts: opts, cancel: cancel}
}

// stop ends the watch and releases its context. When it returns, no
// Notice runs and none will.
func (w *watchdog) stop() {
	if w == nil {
		return
	}
	w.mu.Lock()
	w.wait++
	if w.timer != nil {
		w.timer.Stop()
	}
	w.mu.Unlock()
	w.noticing.Wait()
	w.cancel(nil)
}

// begin marks the start of a wait for the server, for what; the returned
// function marks its end (a message moved, or the call returned).
func (w *watchdog) begin(what string) (end func()) {
	if w == nil {
		return func() {}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.wait++
	n, start := w.wait, time.Now()
	w.arm(n, what, start, 0)
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.wait == n {
			w.wait++
			w.timer.Stop()
		}
	}
}

// arm schedules the watchdog's next act on wait n after the point at
// (time since start): the next notice or the timeout, whichever is first.
// w.mu is held.
func (w *watchdog) arm(n uint64, what string, start time.Time, at time.Duration) {
	var next time.Duration
	if w.opts.Notice != nil && w.opts.NoticeEvery > 0 {
		next = (at/w.opts.NoticeEvery + 1) * w.opts.NoticeEvery
	}
	if t := w.opts.Timeout; t > at && (next == 0 || t <= next) {
		next = t
	}
	w.timer = time.AfterFunc(time.Until(start.Add(next)), func() { w.fire(n, what, start, next) })
}

// fire acts on wait n having lasted at: a timeout cancels the call, a
// notice is given and the next act scheduled.
func (w *watchdog) fire(n uint64, what string, start time.Time, at time.Duration) {
	w.mu.Lock()
	if w.wait != n {
		w.mu.Unlock()
		return // the wait ended meanwhile
	}
	if w.opts.Timeout > 0 && at >= w.opts.Timeout {
		w.wait++
		w.mu.Unlock()
		w.cancel(fmt.Errorf("%w for %v while %s", ErrIdle, at, what))
		return
	}
	w.arm(n, what, start, at)
	w.noticing.Add(1)
	w.mu.Unlock()
	defer w.noticing.Done()
	w.opts.Notice(what, at)
}

// explain returns the watchdog's verdict instead of err when the call
// failed because the watchdog cancelled it (the error of the call itself
// is then only a cancellation).
func (w *watchdog) explain(ctx context.Context, err error) error {
	if err == nil || w == nil {
		return err
	}
	if cause := context.Cause(ctx); errors.Is(cause, ErrIdle) {
		return cause
	}
	return err
}
