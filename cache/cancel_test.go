package cache

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// slowReader hands out data in small pieces and calls hook after the
// first piece past at.
type slowReader struct {
	data []byte
	at   int
	hook func()
	pos  int
}

func (s *slowReader) Read(p []byte) (int, error) {
	if s.pos == len(s.data) {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), 64<<10)], s.data[s.pos:])
	s.pos += n
	if s.hook != nil && s.pos > s.at {
		s.hook()
		s.hook = nil
	}
	return n, nil
}

// A push whose client goes away mid-stream fails with the context's error,
// commits nothing, and does not stop the next push of the same layer.
func TestPushCancelled(t *testing.T) {
	c, store := newCache(t)
	data := genData(130, 4<<20)
	ctx, cancel := context.WithCancel(t.Context())
	_, err := c.Push(ctx, &slowReader{data: data, at: 2 << 20, hook: cancel}, PushOptions{Size: -1})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled push: %v, want context.Canceled", err)
	}
	if _, err := c.Stat(t.Context(), digest.FromBytes(data)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("cancelled push is visible: %v", err)
	}
	checkIndexBacked(t, c, store)
	push(t, c, data)
	if got := pullDigest(t, c, digest.FromBytes(data)); got != digest.FromBytes(data) {
		t.Fatalf("pulled %s", got)
	}
}

// Close with a reader open: the reader fails (or finishes), never hangs or
// returns wrong bytes, and every call after Close is ErrClosed.
func TestCloseWithOpenReader(t *testing.T) {
	c, _ := newCache(t)
	data := genData(131, 6<<20)
	info := push(t, c, data)
	rc, _, err := c.Open(t.Context(), info.Digest, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	first := make([]byte, 1000)
	if _, err := io.ReadFull(rc, first); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(rc)
	rc.Close()
	got := append(first, rest...)
	if !bytes.Equal(got, data[:len(got)]) {
		t.Fatalf("wrong bytes after Close")
	}
	// Whole and no error, or short and ErrClosed: never short without one.
	if err == nil && len(got) != len(data) {
		t.Errorf("read after Close: %d of %d bytes and no error", len(got), len(data))
	}
	if err != nil && !errors.Is(err, ErrClosed) {
		t.Errorf("read after Close: %v, want ErrClosed", err)
	}
	if _, err := c.Stat(t.Context(), info.Digest); !errors.Is(err, ErrClosed) || !errors.Is(err, ErrUnavailable) {
		t.Errorf("Stat after Close: %v, want ErrClosed", err)
	}
	if _, err := c.Push(t.Context(), bytes.NewReader(data), PushOptions{Size: -1}); !errors.Is(err, ErrClosed) {
		t.Errorf("Push after Close: %v, want ErrClosed", err)
	}
	if err := c.Reindex(t.Context()); !errors.Is(err, ErrClosed) {
		t.Errorf("Reindex after Close: %v, want ErrClosed", err)
	}
}

// A read whose context is cancelled ends with the context's error, never
// with a short result that looks whole (the read-ahead stops early).
func TestReadCancelled(t *testing.T) {
	c, _ := newCache(t)
	data := genData(132, 12<<20)
	info := push(t, c, data)
	for range 3 {
		ctx, cancel := context.WithCancel(t.Context())
		rc, _, err := c.Open(ctx, info.Digest, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		first := make([]byte, 1000)
		if _, err := io.ReadFull(rc, first); err != nil {
			t.Fatal(err)
		}
		time.Sleep(20 * time.Millisecond) // let the read-ahead fill
		cancel()
		rest, err := io.ReadAll(rc)
		rc.Close()
		got := append(first, rest...)
		if !bytes.Equal(got, data[:len(got)]) {
			t.Fatalf("wrong bytes after cancel")
		}
		if len(got) < len(data) && !errors.Is(err, context.Canceled) {
			t.Fatalf("read cancelled after %d of %d bytes: err %v, want context.Canceled", len(got), len(data), err)
		}
	}
}
