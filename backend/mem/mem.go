// Package mem is an in-memory backend.Store: the fake other packages test
// against. It honours the whole backend contract but keeps every object in
// memory, so it is for tests and small tools only.
package mem

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/cairnbuild/cairn/backend"
)

// Store is an in-memory backend.Store. The zero value is not usable; call New.
type Store struct {
	mu      sync.RWMutex
	objects map[string][]byte
}

var _ backend.Store = (*Store)(nil)

// New returns an empty store.
func New() *Store { return &Store{objects: make(map[string][]byte)} }

// Put implements backend.Store.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if err := backend.ValidateKey(key); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("mem: put %s: negative size %d", key, size)
	}
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(r, size+1))
	if err != nil {
		return fmt.Errorf("mem: put %s: %w", key, err)
	}
	if n != size {
		return fmt.Errorf("mem: put %s: %w: got %d bytes or more, want %d", key, backend.ErrSizeMismatch, n, size)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	s.objects[key] = buf.Bytes()
	s.mu.Unlock()
	return nil
}

// Open implements backend.Store.
func (s *Store) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	if err := backend.ValidateKey(key); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	data, ok := s.objects[key]
	s.mu.RUnlock()
	if !ok {
		return nil, fmt.Errorf("mem: open %s: %w", key, backend.ErrNotFound)
	}
	n, err := backend.ClampRange(key, int64(len(data)), offset, length)
	if err != nil {
		return nil, err
	}
	return io.NopCloser(bytes.NewReader(data[offset : offset+n])), nil
}

// Stat implements backend.Store.
func (s *Store) Stat(ctx context.Context, key string) (backend.Info, error) {
	if err := backend.ValidateKey(key); err != nil {
		return backend.Info{}, err
	}
	s.mu.RLock()
	data, ok := s.objects[key]
	s.mu.RUnlock()
	if !ok {
		return backend.Info{}, fmt.Errorf("mem: stat %s: %w", key, backend.ErrNotFound)
	}
	return backend.Info{Key: key, Size: int64(len(data))}, nil
}

// Delete implements backend.Store.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := backend.ValidateKey(key); err != nil {
		return err
	}
	s.mu.Lock()
	delete(s.objects, key)
	s.mu.Unlock()
	return nil
}

// List implements backend.Store. It calls fn on a snapshot, so fn may call
// back into the store.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if err := backend.ValidatePrefix(prefix); err != nil {
		return err
	}
	s.mu.RLock()
	var infos []backend.Info
	for k, v := range s.objects {
		if strings.HasPrefix(k, prefix) {
			infos = append(infos, backend.Info{Key: k, Size: int64(len(v))})
		}
	}
	s.mu.RUnlock()
	for _, info := range infos {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(info); err != nil {
			return err
		}
	}
	return nil
}
