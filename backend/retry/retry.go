// Package retry is a backend.Store decorator that retries transient
// failures — errors wrapping backend.ErrUnavailable, such as a 5xx reply, a
// refused or reset connection or a timeout — with exponential backoff and
// jitter. Permanent errors (not found, bad key, size mismatch, anything
// else) are returned at once, and no attempt or wait outlives the caller's
// context.
//
// What can be retried safely:
//   - Stat, Delete (idempotent) and Open (the call, not the reads after
//     it: resuming a read midway could splice two versions of a key that
//     was overwritten in between, so a failed read is the caller's to
//     retry with a new Open).
//   - Put, only when the reader is an io.ReadSeeker that can rewind to
//     where it started; any other reader is consumed by the first attempt,
//     so that Put is made once.
//   - List, only while fn has not been called: a retry would otherwise
//     report objects twice.
//
// Implementations keep retrying out of their own code ("no goto retry
// loops"): they wrap transient failures in ErrUnavailable and let this
// decorator decide.
package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/cairnbuild/cairn/backend"
)

// Defaults for Options. Five attempts spaced 100 ms, 200 ms, 400 ms and
// 800 ms apart (before jitter) ride out a restarting MinIO or an S3 503
// SlowDown burst, and give up within about 1.5 s when the service is down.
const (
	DefaultAttempts  = 5
	DefaultBaseDelay = 100 * time.Millisecond
	DefaultMaxDelay  = 5 * time.Second
)

// Options configures a Store. Zero fields take the defaults.
type Options struct {
	// Attempts is the most calls made for one operation, the first one
	// included; 1 disables retrying. Default DefaultAttempts.
	Attempts int

	// BaseDelay is the nominal wait before the first retry; each further
	// retry doubles it. The actual wait is drawn uniformly from
	// [nominal/2, nominal] ("equal jitter"), so that callers that failed
	// together do not retry together, while waits still grow. Default
	// DefaultBaseDelay.
	BaseDelay time.Duration

	// MaxDelay caps the nominal wait. Default DefaultMaxDelay.
	MaxDelay time.Duration

	// OnRetry, if set, is called before each wait, for logs and metrics.
	// It must be fast and safe for concurrent use.
	OnRetry func(Event)
}

// Event describes a failed attempt that is about to be retried.
type Event struct {
	Op      string        // "put", "open", "stat", "delete" or "list"
	Key     string        // the key, or the prefix for "list"
	Attempt int           // 1-based number of the attempt that failed
	Err     error         // its error
	Delay   time.Duration // the wait before the next attempt
}

// Stats counts what a Store did since it was made.
type Stats struct {
	// Retries is the number of attempts made after a transient failure.
	Retries uint64
	// GaveUp is the number of operations that ended with a transient
	// failure: attempts exhausted, or the context ended (or would have
	// ended) before the next attempt.
	GaveUp uint64
	// NotRetried is the number of operations that failed transiently but
	// could not be retried safely: a Put whose reader cannot rewind, a
	// List that had already called fn.
	NotRetried uint64
}

// Store retries transient failures of the Store it wraps. It is safe for
// concurrent use if the wrapped Store is.
type Store struct {
	next backend.Store
	opts Options

	retries, gaveUp, notRetried atomic.Uint64
}

var _ backend.Store = (*Store)(nil)

// New wraps next.
func New(next backend.Store, opts Options) *Store {
	if opts.Attempts <= 0 {
		opts.Attempts = DefaultAttempts
	}
	if opts.BaseDelay <= 0 {
		opts.BaseDelay = DefaultBaseDelay
	}
	if opts.MaxDelay <= 0 {
		opts.MaxDelay = DefaultMaxDelay
	}
	opts.MaxDelay = max(opts.MaxDelay, opts.BaseDelay)
	return &Store{next: next, opts: opts}
}

// Stats returns the counters so far.
func (s *Store) Stats() Stats {
	return Stats{Retries: s.retries.Load(), GaveUp: s.gaveUp.Load(), NotRetried: s.notRetried.Load()}
}

// Unwrap returns the wrapped Store.
func (s *Store) Unwrap() backend.Store { return s.next }

// transient reports whether err is worth another attempt.
func transient(ctx context.Context, err error) bool {
	return errors.Is(err, backend.ErrUnavailable) && ctx.Err() == nil
}

// final marks an error from an attempt that must not be retried whatever
// it wraps. unsafe says why: the failure may be transient, but another
// attempt could do harm (counted in Stats.NotRetried).
type final struct {
	err    error
	unsafe bool
}

func (f final) Error() string { return f.err.Error() }

// delay returns the wait after the given failed attempt (1-based).
func (s *Store) delay(attempt int) time.Duration {
	d := s.opts.MaxDelay
	if shift := attempt - 1; shift < 62 && s.opts.BaseDelay <= s.opts.MaxDelay>>shift {
		d = s.opts.BaseDelay << shift
	}
	return d/2 + rand.N(d/2+1)
}

// do runs attempt until it succeeds, fails permanently, the attempts run
// out or ctx ends, and returns the last error.
func (s *Store) do(ctx context.Context, op, key string, attempt func() error) error {
	for n := 1; ; n++ {
		err := attempt()
		if f, ok := err.(final); ok {
			if f.unsafe && transient(ctx, f.err) {
				s.notRetried.Add(1)
			}
			return f.err
		}
		if err == nil || !errors.Is(err, backend.ErrUnavailable) {
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			// The caller's context ended during the attempt, likely its
			// cause: say so, so that callers see a deadline, not an outage.
			if n > 1 {
				s.gaveUp.Add(1)
			}
			if errors.Is(err, cerr) {
				return err
			}
			return fmt.Errorf("%w (%w)", err, context.Cause(ctx))
		}
		if n >= s.opts.Attempts {
			s.gaveUp.Add(1)
			return fmt.Errorf("%w (gave up after %d attempts)", err, n)
		}
		d := s.delay(n)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) < d {
			// Waiting would outlive the caller: fail now, not at the deadline.
			s.gaveUp.Add(1)
			return fmt.Errorf("%w (gave up after %d attempts: deadline before the next)", err, n)
		}
		if s.opts.OnRetry != nil {
			s.opts.OnRetry(Event{Op: op, Key: key, Attempt: n, Err: err, Delay: d})
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			s.gaveUp.Add(1)
			return fmt.Errorf("%w (retry stopped: %w)", err, context.Cause(ctx))
		case <-t.C:
		}
		s.retries.Add(1)
	}
}

// Put implements backend.Store. It retries only if r is an io.ReadSeeker,
// rewinding it to its position at the call before each new attempt.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	rs, ok := r.(io.ReadSeeker)
	var start int64
	if ok {
		var err error
		start, err = rs.Seek(0, io.SeekCurrent)
		ok = err == nil // a pipe or socket behind an *os.File cannot seek
	}
	if !ok {
		err := s.next.Put(ctx, key, r, size)
		if transient(ctx, err) {
			s.notRetried.Add(1)
		}
		return err
	}
	first := true
	return s.do(ctx, "put", key, func() error {
		if !first {
			if _, err := rs.Seek(start, io.SeekStart); err != nil {
				return final{err: fmt.Errorf("retry: put %s: rewind reader: %w", key, err)}
			}
		}
		first = false
		return s.next.Put(ctx, key, rs, size)
	})
}

// Open implements backend.Store. Only the Open call is retried; see the
// package documentation for why reads are not.
func (s *Store) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	var rc io.ReadCloser
	err := s.do(ctx, "open", key, func() error {
		var err error
		rc, err = s.next.Open(ctx, key, offset, length)
		return err
	})
	if err != nil {
		return nil, err
	}
	return rc, nil
}

// Stat implements backend.Store.
func (s *Store) Stat(ctx context.Context, key string) (backend.Info, error) {
	var info backend.Info
	err := s.do(ctx, "stat", key, func() error {
		var err error
		info, err = s.next.Stat(ctx, key)
		return err
	})
	return info, err
}

// Delete implements backend.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	return s.do(ctx, "delete", key, func() error { return s.next.Delete(ctx, key) })
}

// List implements backend.Store. A failure before fn was first called is
// retried; after, it is returned, so that no object is reported twice.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	var called bool
	var fnErr error
	return s.do(ctx, "list", prefix, func() error {
		err := s.next.List(ctx, prefix, func(info backend.Info) error {
			called = true
			fnErr = fn(info)
			return fnErr
		})
		switch {
		case err == nil:
			return nil
		case fnErr != nil:
			return final{err: err} // fn's own error: the caller's business
		case called:
			return final{err: err, unsafe: true}
		}
		return err
	})
}
