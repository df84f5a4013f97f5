package retry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/backendtest"
	"github.com/cairnbuild/cairn/backend/mem"
)

// fast keeps test waits short; the backoff shape is the same.
var fast = Options{BaseDelay: time.Millisecond, MaxDelay: 50 * time.Millisecond}

var errTransient = fmt.Errorf("503 slow down: %w", backend.ErrUnavailable)

func TestConformance(t *testing.T) {
	backendtest.RunWithOptions(t, func(*testing.T) backend.Store { return New(mem.New(), fast) },
		backendtest.Options{LargeObjectSize: -1})
}

// TestConformanceFlaky runs the suite through a store whose first two calls
// of every operation fail transiently: retrying must hide that completely.
func TestConformanceFlaky(t *testing.T) {
	backendtest.RunWithOptions(t, func(*testing.T) backend.Store {
		return New(&backendtest.Faulty{
			Store:      mem.New(),
			Fail:       backendtest.FailFirst(2, errTransient),
			PartialPut: true,
		}, Options{BaseDelay: 100 * time.Microsecond, MaxDelay: time.Millisecond})
	}, backendtest.Options{LargeObjectSize: -1})
}

// call runs op against s and returns its error.
func call(ctx context.Context, s backend.Store, op backendtest.Op) error {
	switch op {
	case backendtest.OpPut:
		return s.Put(ctx, "k", bytes.NewReader([]byte("data")), 4)
	case backendtest.OpOpen:
		rc, err := s.Open(ctx, "k", 0, -1)
		if err == nil {
			rc.Close()
		}
		return err
	case backendtest.OpStat:
		_, err := s.Stat(ctx, "k")
		return err
	case backendtest.OpDelete:
		return s.Delete(ctx, "k")
	case backendtest.OpList:
		return s.List(ctx, "", func(backend.Info) error { return nil })
	}
	panic("unknown op " + op)
}

var ops = []backendtest.Op{backendtest.OpPut, backendtest.OpOpen, backendtest.OpStat, backendtest.OpDelete, backendtest.OpList}

func TestRetries(t *testing.T) {
	errBoom := errors.New("boom")
	tests := []struct {
		name      string
		failFirst int
		err       error
		attempts  int
		wantCalls int
		wantErr   error // nil: success
		wantStats Stats
	}{
		{"transient failures are retried", 2, errTransient, 5, 3, nil, Stats{Retries: 2}},
		{"success at the last attempt", 4, errTransient, 5, 5, nil, Stats{Retries: 4}},
		{"budget exhausted", 10, errTransient, 3, 3, backend.ErrUnavailable, Stats{Retries: 2, GaveUp: 1}},
		{"one attempt means no retry", 10, errTransient, 1, 1, backend.ErrUnavailable, Stats{GaveUp: 1}},
		{"not found is permanent", 10, backend.ErrNotFound, 5, 1, backend.ErrNotFound, Stats{}},
		{"bad key is permanent", 10, backend.ErrInvalidKey, 5, 1, backend.ErrInvalidKey, Stats{}},
		{"size mismatch is permanent", 10, backend.ErrSizeMismatch, 5, 1, backend.ErrSizeMismatch, Stats{}},
		{"unknown errors are permanent", 10, errBoom, 5, 1, errBoom, Stats{}},
	}
	for _, tc := range tests {
		for _, op := range ops {
			t.Run(tc.name+"/"+string(op), func(t *testing.T) {
				inner := mem.New()
				inner.Put(context.Background(), "k", strings.NewReader("data"), 4)
				f := &backendtest.Faulty{Store: inner, Fail: backendtest.FailFirst(tc.failFirst, tc.err), PartialPut: true}
				opts := fast
				opts.Attempts = tc.attempts
				s := New(f, opts)
				err := call(context.Background(), s, op)
				if tc.wantErr == nil && err != nil || !errors.Is(err, tc.wantErr) {
					t.Errorf("%s = %v, want %v", op, err, tc.wantErr)
				}
				if got := f.Calls(op); got != tc.wantCalls {
					t.Errorf("%s made %d calls, want %d", op, got, tc.wantCalls)
				}
				if got := s.Stats(); got != tc.wantStats {
					t.Errorf("Stats() = %+v, want %+v", got, tc.wantStats)
				}
			})
		}
	}
}

// TestLastError checks that an exhausted budget returns the last attempt's
// error, not the first one's.
func TestLastError(t *testing.T) {
	errs := make([]error, 4)
	for i := range errs {
		errs[i] = fmt.Errorf("attempt %d: %w", i+1, backend.ErrUnavailable)
	}
	f := &backendtest.Faulty{Store: mem.New(), Fail: func(_ backendtest.Op, _ string, n int) error { return errs[n-1] }}
	opts := fast
	opts.Attempts = len(errs)
	_, err := New(f, opts).Stat(context.Background(), "k")
	if !errors.Is(err, errs[len(errs)-1]) {
		t.Errorf("Stat = %v, want the last attempt's error %v", err, errs[len(errs)-1])
	}
	if errors.Is(err, errs[0]) {
		t.Errorf("Stat = %v, carries the first attempt's error too", err)
	}
}

func TestDelaysGrow(t *testing.T) {
	var mu sync.Mutex
	var events []Event
	opts := Options{
		Attempts:  6,
		BaseDelay: time.Millisecond,
		MaxDelay:  time.Second, // not reached: only growth is under test
		OnRetry: func(e Event) {
			mu.Lock()
			events = append(events, e)
			mu.Unlock()
		},
	}
	f := &backendtest.Faulty{Store: mem.New(), Fail: backendtest.FailFirst(100, errTransient)}
	start := time.Now()
	err := New(f, opts).Delete(context.Background(), "k")
	elapsed := time.Since(start)
	if !errors.Is(err, backend.ErrUnavailable) {
		t.Fatalf("Delete = %v, want ErrUnavailable", err)
	}
	if len(events) != opts.Attempts-1 {
		t.Fatalf("OnRetry called %d times, want %d", len(events), opts.Attempts-1)
	}
	var total time.Duration
	for i, e := range events {
		nominal := opts.BaseDelay << i
		if e.Attempt != i+1 || e.Op != "delete" || e.Key != "k" || !errors.Is(e.Err, backend.ErrUnavailable) {
			t.Errorf("event %d = %+v", i, e)
		}
		if e.Delay < nominal/2 || e.Delay > nominal {
			t.Errorf("delay %d = %v, want within [%v, %v]", i, e.Delay, nominal/2, nominal)
		}
		if i > 0 && e.Delay < events[i-1].Delay {
			t.Errorf("delay %d = %v, shorter than the one before (%v)", i, e.Delay, events[i-1].Delay)
		}
		total += e.Delay
	}
	if elapsed < total {
		t.Errorf("took %v, less than the %v of waits announced", elapsed, total)
	}
}

func TestDelayCapped(t *testing.T) {
	s := New(mem.New(), Options{BaseDelay: time.Second, MaxDelay: 3 * time.Second})
	for attempt := 1; attempt <= 200; attempt++ {
		d := s.delay(attempt)
		nominal := min(time.Second<<min(attempt-1, 10), 3*time.Second)
		if d < nominal/2 || d > nominal {
			t.Fatalf("delay(%d) = %v, want within [%v, %v]", attempt, d, nominal/2, nominal)
		}
	}
}

func TestContextDeadline(t *testing.T) {
	t.Run("deadline before the next attempt fails at once", func(t *testing.T) {
		f := &backendtest.Faulty{Store: mem.New(), Fail: backendtest.FailFirst(100, errTransient)}
		s := New(f, Options{BaseDelay: time.Second})
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := s.Stat(ctx, "k")
		if elapsed := time.Since(start); elapsed > 100*time.Millisecond {
			t.Errorf("Stat took %v, want no wait: the deadline comes before the next attempt", elapsed)
		}
		if !errors.Is(err, backend.ErrUnavailable) {
			t.Errorf("Stat = %v, want the last error", err)
		}
		if f.Calls(backendtest.OpStat) != 1 || s.Stats().GaveUp != 1 {
			t.Errorf("%d calls, stats %+v; want 1 call, 1 gave up", f.Calls(backendtest.OpStat), s.Stats())
		}
	})
	t.Run("cancel during the wait", func(t *testing.T) {
		f := &backendtest.Faulty{Store: mem.New(), Fail: backendtest.FailFirst(100, errTransient)}
		s := New(f, Options{BaseDelay: 10 * time.Second})
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(20*time.Millisecond, cancel)
		start := time.Now()
		err := s.Delete(ctx, "k")
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("Delete took %v after its context was cancelled at 20ms", elapsed)
		}
		if !errors.Is(err, context.Canceled) || !errors.Is(err, backend.ErrUnavailable) {
			t.Errorf("Delete = %v, want the last error and context.Canceled", err)
		}
	})
	t.Run("deadline passes during an attempt", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
		defer cancel()
		f := &backendtest.Faulty{Store: mem.New(), Fail: func(backendtest.Op, string, int) error {
			<-ctx.Done() // a request that hangs until the caller gives up
			return fmt.Errorf("read tcp: i/o timeout: %w", backend.ErrUnavailable)
		}}
		s := New(f, fast)
		_, err := s.Stat(ctx, "k")
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("Stat = %v, want it to carry context.DeadlineExceeded", err)
		}
		if f.Calls(backendtest.OpStat) != 1 {
			t.Errorf("%d calls after the deadline passed, want 1", f.Calls(backendtest.OpStat))
		}
	})
}

func TestPutRewinds(t *testing.T) {
	inner := mem.New()
	f := &backendtest.Faulty{Store: inner, Fail: backendtest.FailFirst(2, errTransient), PartialPut: true}
	s := New(f, fast)
	data := backendtest.Pattern{Seed: 1}.Bytes(100 << 10)
	r := bytes.NewReader(data)
	r.Seek(10, io.SeekStart) // the object is what follows the reader's position
	if err := s.Put(context.Background(), "k", r, int64(len(data)-10)); err != nil {
		t.Fatalf("Put: %v", err)
	}
	rc, err := inner.Open(context.Background(), "k", 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	if !bytes.Equal(got, data[10:]) {
		t.Errorf("stored %d bytes, want the %d after the reader's starting position", len(got), len(data)-10)
	}
	if n := f.Calls(backendtest.OpPut); n != 3 {
		t.Errorf("%d Put calls, want 3", n)
	}
}

func TestPutNotSeekableNotRetried(t *testing.T) {
	f := &backendtest.Faulty{Store: mem.New(), Fail: backendtest.FailFirst(1, errTransient), PartialPut: true}
	s := New(f, fast)
	r := io.LimitReader(strings.NewReader("data"), 4) // hides Seek
	if err := s.Put(context.Background(), "k", r, 4); !errors.Is(err, backend.ErrUnavailable) {
		t.Errorf("Put = %v, want the transient error", err)
	}
	if n := f.Calls(backendtest.OpPut); n != 1 {
		t.Errorf("%d Put calls with a reader that cannot rewind, want 1", n)
	}
	if st := s.Stats(); st != (Stats{NotRetried: 1}) {
		t.Errorf("Stats() = %+v, want NotRetried 1", st)
	}
}

// listFailsMidway reports one object and then fails transiently.
type listFailsMidway struct {
	backend.Store
	calls int
}

func (l *listFailsMidway) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	l.calls++
	if err := fn(backend.Info{Key: "a", Size: 1}); err != nil {
		return err
	}
	return fmt.Errorf("connection reset: %w", backend.ErrUnavailable)
}

func TestList(t *testing.T) {
	t.Run("failure after fn ran is not retried", func(t *testing.T) {
		l := &listFailsMidway{Store: mem.New()}
		s := New(l, fast)
		seen := 0
		err := s.List(context.Background(), "", func(backend.Info) error { seen++; return nil })
		if !errors.Is(err, backend.ErrUnavailable) || l.calls != 1 || seen != 1 {
			t.Errorf("List = %v after %d calls, fn saw %d objects; want ErrUnavailable, 1 call, 1 object", err, l.calls, seen)
		}
		if st := s.Stats(); st != (Stats{NotRetried: 1}) {
			t.Errorf("Stats() = %+v, want NotRetried 1", st)
		}
	})
	t.Run("fn's own transient error is not retried", func(t *testing.T) {
		inner := mem.New()
		inner.Put(context.Background(), "a", strings.NewReader("x"), 1)
		f := &backendtest.Faulty{Store: inner}
		s := New(f, fast)
		errFn := fmt.Errorf("copying to the other store: %w", backend.ErrUnavailable)
		err := s.List(context.Background(), "", func(backend.Info) error { return errFn })
		if !errors.Is(err, errFn) || f.Calls(backendtest.OpList) != 1 {
			t.Errorf("List = %v after %d calls; want fn's error after 1", err, f.Calls(backendtest.OpList))
		}
		if st := s.Stats(); st != (Stats{}) {
			t.Errorf("Stats() = %+v, want zero", st)
		}
	})
}
