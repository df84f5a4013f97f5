package fs

import (
	"context"
	"errors"
	"fmt"
	"io"
	iofs "io/fs"
	"math/rand/v2"
	"os"
	"path"
	"strings"
	"sync"
	"syscall"

	"github.com/cairnbuild/cairn/backend"
)

const (
	fileMode = 0o600 // cached layers can hold build secrets
	dirMode  = 0o700

	// copyBufSize is the Put copy buffer: large enough that a 256 KiB chunk
	// is one write, small enough to pool per concurrent Put.
	copyBufSize = 256 << 10

	// listBatch bounds the directory entries held at once while listing.
	listBatch = 1024
)

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// Store is a backend.Store in a local directory. It is safe for concurrent
// use. Close it to release the directory.
type Store struct {
	root *os.Root

	// durableDirs holds the directories (slash-separated, relative) whose
	// entry in their parent is known to be on disk, so that Put fsyncs a
	// parent once per directory, not once per object.
	durableDirs sync.Map

	// syncDir fsyncs a directory; a field so that tests can watch it.
	syncDir func(name string) error
}

var _ backend.Store = (*Store)(nil)

// New opens the store in dir, creating the directory if needed, and removes
// what a crash may have left: temporary files and empty directories.
func New(dir string) (*Store, error) {
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("fs: create %s: %w", dir, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("fs: open %s: %w", dir, err)
	}
	s := &Store{root: root}
	s.syncDir = s.fsyncDir
	s.durableDirs.Store(".", struct{}{})
	if _, err := s.clean("."); err != nil {
		root.Close()
		return nil, fmt.Errorf("fs: clean %s: %w", dir, err)
	}
	return s, nil
}

// Close releases the store's directory. The Store must not be used after.
func (s *Store) Close() error { return s.root.Close() }

// clean removes temporary files under dir and dir itself if it ends up
// empty (the root excepted). It reports whether dir was removed.
func (s *Store) clean(dir string) (removed bool, err error) {
	entries, err := readDirAll(s.root, dir)
	if err != nil {
		return false, err
	}
	left := len(entries)
	for _, e := range entries {
		name := path.Join(dir, e.Name())
		switch {
		case e.IsDir() && strings.HasSuffix(e.Name(), dirSuffix):
			gone, err := s.clean(name)
			if err != nil {
				return false, err
			}
			if gone {
				left--
			}
		case e.Type().IsRegular() && isTemp(e.Name()):
			if err := s.root.Remove(name); err != nil && !errors.Is(err, iofs.ErrNotExist) {
				return false, err
			}
			left--
		}
	}
	if left > 0 || dir == "." {
		return false, nil
	}
	if err := s.root.Remove(dir); err != nil {
		return false, err
	}
	return true, nil
}

func readDirAll(root *os.Root, dir string) ([]os.DirEntry, error) {
	f, err := root.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return f.ReadDir(-1)
}

// Put implements backend.Store: write a temporary file, fsync, rename,
// fsync the directory.
func (s *Store) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	name, err := objectPath(key)
	if err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("fs: put %s: negative size %d", key, size)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fs: put %s: %w", key, err)
	}
	dir, base := path.Split(name)
	dir = path.Clean(dir) // "" -> "."
	if err := s.ensureDir(dir); err != nil {
		return fmt.Errorf("fs: put %s: %w", key, err)
	}
	f, tmp, err := s.createTemp(dir, base)
	if err != nil {
		return fmt.Errorf("fs: put %s: %w", key, err)
	}
	committed := false
	defer func() {
		if !committed {
			f.Close()
			s.root.Remove(tmp)
		}
	}()
	if err := copyExactly(ctx, f, r, size); err != nil {
		return fmt.Errorf("fs: put %s: %w", key, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("fs: put %s: sync: %w", key, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("fs: put %s: close: %w", key, err)
	}
	if err := ctx.Err(); err != nil {
		// Last chance to honour a cancellation before the object appears.
		return fmt.Errorf("fs: put %s: %w", key, err)
	}
	if err := s.root.Rename(tmp, name); err != nil {
		return fmt.Errorf("fs: put %s: rename: %w", key, err)
	}
	committed = true
	if err := s.syncDir(dir); err != nil {
		return fmt.Errorf("fs: put %s: sync directory: %w", key, err)
	}
	return nil
}

// createTemp creates a new temporary file for base in dir.
func (s *Store) createTemp(dir, base string) (*os.File, string, error) {
	for range 100 {
		name := path.Join(dir, fmt.Sprintf("%s%s%016x", base, tmpMark, rand.Uint64()))
		f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fileMode)
		if errors.Is(err, iofs.ErrExist) {
			continue
		}
		return f, name, err
	}
	return nil, "", fmt.Errorf("no free temporary name in %s", dir)
}

// ensureDir creates dir and its parents and makes sure each one's entry is
// durable before an object is put in it.
func (s *Store) ensureDir(dir string) error {
	if _, ok := s.durableDirs.Load(dir); ok {
		return nil
	}
	parent := path.Dir(dir)
	if err := s.ensureDir(parent); err != nil {
		return err
	}
	if err := s.root.Mkdir(dir, dirMode); err != nil && !errors.Is(err, iofs.ErrExist) {
		return err
	}
	// Whether we made dir or found it (perhaps just made by a concurrent
	// Put that has not synced yet), sync the parent before relying on it.
	if err := s.syncDir(parent); err != nil {
		return fmt.Errorf("sync directory: %w", err)
	}
	s.durableDirs.Store(dir, struct{}{})
	return nil
}

func (s *Store) fsyncDir(name string) error {
	d, err := s.root.Open(name)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// copyExactly copies size bytes from r to w, checking ctx between reads,
// and fails with ErrSizeMismatch if r holds fewer or more.
func copyExactly(ctx context.Context, w io.Writer, r io.Reader, size int64) error {
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	// Read one byte past size to catch a reader that is too long.
	lr := &io.LimitedReader{R: r, N: size + 1}
	var written int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		n, rerr := lr.Read(buf)
		if n > 0 {
			if written+int64(n) > size {
				return fmt.Errorf("%w: reader holds more than %d bytes", backend.ErrSizeMismatch, size)
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
			written += int64(n)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	if written != size {
		return fmt.Errorf("%w: reader held %d bytes, want %d", backend.ErrSizeMismatch, written, size)
	}
	return nil
}

// missing reports whether err means that no object is at a name. ENOTDIR
// covers a foreign file where one of our directories would be.
func missing(err error) bool {
	return errors.Is(err, iofs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

// Open implements backend.Store. The reader stops with ctx's error once
// ctx is done, so a download ends with the request that asked for it.
func (s *Store) Open(ctx context.Context, key string, offset, length int64) (io.ReadCloser, error) {
	name, err := objectPath(key)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fs: open %s: %w", key, err)
	}
	f, err := s.root.Open(name)
	if missing(err) {
		return nil, fmt.Errorf("fs: open %s: %w", key, backend.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("fs: open %s: %w", key, err)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("fs: open %s: %w", key, err)
	}
	if !fi.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("fs: open %s: %w", key, backend.ErrNotFound)
	}
	n, err := backend.ClampRange(key, fi.Size(), offset, length)
	if err != nil {
		f.Close()
		return nil, err
	}
	return &reader{ctx: ctx, f: f, r: io.NewSectionReader(f, offset, n)}, nil
}

// reader reads a range of an object file until its context is done.
type reader struct {
	ctx context.Context
	f   *os.File
	r   *io.SectionReader
}

func (r *reader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}

func (r *reader) Close() error { return r.f.Close() }

// Stat implements backend.Store.
func (s *Store) Stat(ctx context.Context, key string) (backend.Info, error) {
	name, err := objectPath(key)
	if err != nil {
		return backend.Info{}, err
	}
	if err := ctx.Err(); err != nil {
		return backend.Info{}, fmt.Errorf("fs: stat %s: %w", key, err)
	}
	fi, err := s.root.Stat(name)
	if missing(err) || err == nil && !fi.Mode().IsRegular() {
		return backend.Info{}, fmt.Errorf("fs: stat %s: %w", key, backend.ErrNotFound)
	}
	if err != nil {
		return backend.Info{}, fmt.Errorf("fs: stat %s: %w", key, err)
	}
	return backend.Info{Key: key, Size: fi.Size()}, nil
}

// Delete implements backend.Store. It leaves the directory in place (a
// concurrent Put may be about to use it); New removes empty ones.
func (s *Store) Delete(ctx context.Context, key string) error {
	name, err := objectPath(key)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fs: delete %s: %w", key, err)
	}
	if err := s.root.Remove(name); err != nil && !missing(err) {
		return fmt.Errorf("fs: delete %s: %w", key, err)
	}
	return nil
}

// List implements backend.Store. It walks only the directories that can
// hold keys with the prefix.
func (s *Store) List(ctx context.Context, prefix string, fn func(backend.Info) error) error {
	if err := backend.ValidatePrefix(prefix); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fs: list %s: %w", prefix, err)
	}
	dirKey := prefix[:strings.LastIndex(prefix, "/")+1]
	for _, seg := range strings.Split(dirKey, "/") {
		if len(seg) > MaxSegmentLen {
			return nil // no directory can have that name
		}
	}
	err := s.walk(ctx, dirPath(dirKey), dirKey, prefix, fn)
	var stop errStopped
	if errors.As(err, &stop) {
		return stop.err // fn's own error, as fn returned it
	}
	if err != nil {
		return fmt.Errorf("fs: list %s: %w", prefix, err)
	}
	return nil
}

// errStopped carries fn's error out of a walk, to be returned unwrapped.
type errStopped struct{ err error }

func (e errStopped) Error() string { return e.err.Error() }

// walk lists the objects in dir (whose keys start with dirKey) and below
// that start with prefix.
func (s *Store) walk(ctx context.Context, dir, dirKey, prefix string, fn func(backend.Info) error) error {
	d, err := s.root.Open(dir)
	if missing(err) {
		return nil
	}
	if err != nil {
		return err
	}
	defer d.Close()
	for {
		entries, err := d.ReadDir(listBatch)
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}
			name := e.Name()
			if e.IsDir() {
				seg, ok := strings.CutSuffix(name, dirSuffix)
				if !ok {
					continue
				}
				sub := dirKey + seg + "/"
				if strings.HasPrefix(sub, prefix) || strings.HasPrefix(prefix, sub) {
					if err := s.walk(ctx, path.Join(dir, name), sub, prefix, fn); err != nil {
						return err
					}
				}
				continue
			}
			key := dirKey + name
			if !e.Type().IsRegular() || !strings.HasPrefix(key, prefix) || isTemp(name) ||
				backend.ValidateKey(key) != nil || strings.Contains(name, dirSuffix) {
				continue
			}
			fi, err := e.Info()
			if missing(err) {
				continue // deleted since ReadDir
			}
			if err != nil {
				return err
			}
			if err := fn(backend.Info{Key: key, Size: fi.Size()}); err != nil {
				return errStopped{err}
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}
