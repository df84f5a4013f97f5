package backendtest

import (
	"context"
	"fmt"
	"io"
	"sync"

	"github.com/cairnbuild/cairn/backend"
)

// Op names a Store method in Faulty's hooks and counters.
type Op string

// The Store methods.
const (
	OpPut    Op = "put"
	OpOpen   Op = "open"
	OpStat   Op = "stat"
	OpDelete Op = "delete"
	OpList   Op = "list"
)

// Faulty is a backend.Store that fails calls on demand and counts them, for
// testing decorators (retry) and callers (cache) against a flaky service.
// Calls that are not failed go to Store. Safe for concurrent use if Store
// and Fail are.
type Faulty struct {
	// Store serves the calls that do not fail.
	Store backend.Store

	// Fail is asked before every call: op, the key (the prefix for List)
	// and the 1-based count of calls of op so far, this one included. A
	// non-nil error is returned instead of calling Store. Nil Fail fails
	// nothing.
	Fail func(op Op, key string, call int) error

	// PartialPut makes a failing Put first read half of its reader, as an
	// upload cut off midway does, so that whoever retries must rewind.
	PartialPut bool

	mu    sync.Mutex
	calls map[Op]int
}

var _ backend.Store = (*Faulty)(nil)

// FailFirst returns a Fail hook that fails the first n calls of each
// operation with err and lets the rest through.
func FailFirst(n int, err error) func(Op, string, int) error {
	return func(_ Op, _ string, call int) error {
		if call <= n {
			return err
		}
		return nil
	}
}

// Calls reports how many calls of op the store has seen, failed or not.
func (f *Faulty) Calls(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[op]
}

// inject counts the call and returns the error to fail it with, if any.
func (f *Faulty) inject(op Op, key string) error {
	f.mu.Lock()
	if f.calls == nil {
		f.calls = make(map[Op]int)
	}
	f.calls[op]++
	n := f.calls[op]
	f.mu.Unlock()
	if f.Fail == nil {
		return nil
	}
	if err := f.Fail(op, key, n); err != nil {
		return fmt.Errorf("faulty: %s %s (call %d): %w", op, key, n, err)
	}
	return nil
}

// Put implements backend.Store.
func (f *Faulty) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := f.inject(OpPut, key); err != nil {
		if f.PartialPut && size > 0 {
			io.CopyN(io.Discard, r, size/2)
		}
		return err
	}
	return f.Store.Put(ctx, key, r, size)
}

// Open implements backend.Store.
func (f *Faulty) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := f.inject(OpOpen, key); err != nil {
		return nil, err
	}
	return f.Store.Open(ctx, key, offset, length)
}

// Stat implements backend.Store.
func (f *Faulty) Stat(ctx context.Context, key string) (backend.Info, error) {
	if err := f.inject(OpStat, key); err != nil {
		return backend.Info{}, err
	}
	return f.Store.Stat(ctx, key)
}

// Delete implements backend.Store.
func (f *Faulty) Delete(ctx context.Context, key string) error {
	if err := f.inject(OpDelete, key); err != nil {
		return err
	}
	return f.Store.Delete(ctx, key)
}

// List implements backend.Store.
func (f *Faulty) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if err := f.inject(OpList, prefix); err != nil {
		return err
	}
	return f.Store.List(ctx, prefix, fn)
}
