package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairnbuild/cairn/backend"
)

// sizedReader hands minio-go exactly size bytes of r and makes the upload
// fail if r has fewer or more. The check for extra bytes happens in the
// Read that returns the last byte, so a long stream fails the request
// before the server has the whole body and can commit it.
type sizedReader struct {
	r         io.Reader
	size      int64
	remaining int64
	atEOF     bool // r ended exactly at size

	mu  sync.Mutex
	err error // sticky: the caller's read error or a size mismatch

	// reading is held for the whole of each Read, so that close can wait
	// for a read the HTTP transport still has in flight.
	reading sync.Mutex
	closed  atomic.Bool
}

// errPutEnded is what a Read after close returns.
var errPutEnded = errors.New("s3: put already ended")

// closeWait bounds how long close waits for an in-flight Read.
const closeWait = time.Second

// close stops all further reads of r and waits (up to closeWait) for one in
// flight to return. net/http may go on reading a request body after the
// round trip has failed; without this, a caller that rewinds r and tries
// again (backend/retry does) would share r with that stale reader.
func (b *sizedReader) close() {
	b.closed.Store(true)
	deadline := time.Now().Add(closeWait)
	for !b.reading.TryLock() {
		if time.Now().After(deadline) {
			return
		}
		time.Sleep(time.Millisecond)
	}
	b.reading.Unlock()
}

// maxEmptyReads bounds the (0, nil) reads tolerated while probing for EOF.
const maxEmptyReads = 100

func (b *sizedReader) Read(p []byte) (int, error) {
	b.reading.Lock()
	defer b.reading.Unlock()
	if b.closed.Load() {
		return 0, errPutEnded
	}
	if err := b.failure(); err != nil {
		return 0, err
	}
	if b.remaining == 0 {
		if b.atEOF {
			return 0, io.EOF
		}
		if err := b.probe(); err != nil {
			return 0, err
		}
		return 0, io.EOF
	}
	if len(p) == 0 {
		return 0, nil
	}
	if int64(len(p)) > b.remaining {
		p = p[:b.remaining]
	}
	n, err := b.r.Read(p)
	b.remaining -= int64(n)
	switch {
	case err == io.EOF && b.remaining > 0:
		return 0, b.fail(fmt.Errorf("%w: reader ended after %d bytes, want %d",
			backend.ErrSizeMismatch, b.size-b.remaining, b.size))
	case err != nil && err != io.EOF:
		return 0, b.fail(fmt.Errorf("reading the data: %w", err))
	}
	if b.remaining == 0 {
		if err := b.probe(); err != nil {
			// Withhold the last bytes too: the body stays short.
			return 0, err
		}
	}
	return n, nil
}

// probe reads one more byte: there must be none.
func (b *sizedReader) probe() error {
	var one [1]byte
	for range maxEmptyReads {
		n, err := b.r.Read(one[:])
		switch {
		case n > 0:
			return b.fail(fmt.Errorf("%w: reader has more than %d bytes", backend.ErrSizeMismatch, b.size))
		case err == io.EOF:
			b.atEOF = true
			return nil
		case err != nil:
			return b.fail(fmt.Errorf("reading the data: %w", err))
		}
	}
	return b.fail(fmt.Errorf("reading the data: %w", io.ErrNoProgress))
}

func (b *sizedReader) fail(err error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.err == nil {
		b.err = err
	}
	return b.err
}

// failure returns the reader's sticky error, if any. It is safe to call
// while the HTTP transport may still be reading.
func (b *sizedReader) failure() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.err
}

// bodyReader is the reader Open returns: a GET response body whose errors
// are translated (a body cut short is backend.ErrUnavailable).
type bodyReader struct {
	ctx  context.Context
	key  string
	body io.ReadCloser
}

func (r *bodyReader) Read(p []byte) (int, error) {
	n, err := r.body.Read(p)
	if err != nil && err != io.EOF {
		err = translate(r.ctx, "read", r.key, err)
	}
	return n, err
}

func (r *bodyReader) Close() error { return r.body.Close() }
