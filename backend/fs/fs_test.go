package fs

import (
	"bytes"
	"context"
	"errors"
	iofs "io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/backendtest"
)

// newSandboxed returns a store rooted at <tmp>/root and, when the test
// ends, checks that nothing appeared next to root and that no temporary
// file was left inside it.
func newSandboxed(t testing.TB) *Store {
	t.Helper()
	sandbox := t.TempDir()
	dir := filepath.Join(sandbox, "root")
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		entries, err := os.ReadDir(sandbox)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].Name() != "root" {
			t.Errorf("files appeared outside the store: %v", entries)
		}
		if temps := findTemps(t, dir); len(temps) > 0 {
			t.Errorf("temporary files left behind: %v", temps)
		}
	})
	return s
}

func findTemps(t testing.TB, dir string) []string {
	t.Helper()
	var temps []string
	err := filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.Contains(d.Name(), tmpMark) {
			temps = append(temps, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return temps
}

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Store { return newSandboxed(t) })
}

func BenchmarkStore(b *testing.B) {
	backendtest.Bench(b, newSandboxed(b))
}

func TestNewCleansCrashLeftovers(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"kept":                         "object",
		"a+/b+/kept":                   "object",
		"a+/b+/kept~0123456789abcdef":  "half-written",
		"stray~fedcba9876543210":       "half-written",
		"empty+/only~00000000000000aa": "half-written",
		"notes~":                       "not ours: no random suffix",
		"x~0123456789abcdeg":           "not ours: not hex",
	}
	for name, data := range files {
		p := filepath.Join(dir, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(dir, "deep+", "empty+", "dirs+"), 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	var got []string
	filepath.WalkDir(dir, func(p string, d iofs.DirEntry, err error) error {
		if err == nil && p != dir {
			rel, _ := filepath.Rel(dir, p)
			got = append(got, filepath.ToSlash(rel))
		}
		return err
	})
	slices.Sort(got)
	want := []string{"a+", "a+/b+", "a+/b+/kept", "kept", "notes~", "x~0123456789abcdeg"}
	if !slices.Equal(got, want) {
		t.Errorf("after New, the directory holds\n%v\nwant\n%v", got, want)
	}
	ctx := context.Background()
	for _, key := range []string{"kept", "a/b/kept"} {
		if info, err := s.Stat(ctx, key); err != nil || info.Size != int64(len("object")) {
			t.Errorf("Stat(%q) = %+v, %v", key, info, err)
		}
	}
}

// TestPutSyncsDirectory checks the order that makes a Put durable: the
// directory is synced after the rename, and a new directory's parent is
// synced before anything is put in it.
func TestPutSyncsDirectory(t *testing.T) {
	s := newSandboxed(t)
	var mu sync.Mutex
	var synced []string
	s.syncDir = func(name string) error {
		mu.Lock()
		synced = append(synced, name)
		mu.Unlock()
		return s.fsyncDir(name)
	}
	ctx := context.Background()
	put := func(key string) {
		t.Helper()
		synced = nil
		if err := s.Put(ctx, key, strings.NewReader("data"), 4); err != nil {
			t.Fatal(err)
		}
	}

	put("top")
	if want := []string{"."}; !slices.Equal(synced, want) {
		t.Errorf("Put(top) synced %v, want %v", synced, want)
	}
	put("a/b/c")
	if want := []string{".", "a+", "a+/b+"}; !slices.Equal(synced, want) {
		t.Errorf("Put(a/b/c) synced %v, want %v (each new directory's parent, then the object's directory)", synced, want)
	}
	put("a/b/d")
	if want := []string{"a+/b+"}; !slices.Equal(synced, want) {
		t.Errorf("second Put into a/b synced %v, want only %v", synced, want)
	}

	// The directory sync must come after the rename: the object is in
	// place when it runs.
	s.syncDir = func(name string) error {
		if name == "a+/b+" {
			if _, err := s.root.Stat("a+/b+/e"); err != nil {
				t.Errorf("directory synced before the object was renamed into place: %v", err)
			}
		}
		return s.fsyncDir(name)
	}
	put("a/b/e")

	// A failing directory sync fails the Put.
	errSync := errors.New("sync failed")
	s.syncDir = func(string) error { return errSync }
	if err := s.Put(ctx, "a/b/f", strings.NewReader("x"), 1); !errors.Is(err, errSync) {
		t.Errorf("Put with a failing directory sync = %v, want the sync error", err)
	}
}

// TestFailedPutsLeaveNoTemps checks the fs side of "a failed Put leaves
// nothing": no temporary file, for every way a Put can fail.
func TestFailedPutsLeaveNoTemps(t *testing.T) {
	s := newSandboxed(t)
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	cases := []struct {
		name string
		ctx  context.Context
		r    func() *bytes.Reader
		size int64
	}{
		{"short", ctx, func() *bytes.Reader { return bytes.NewReader(make([]byte, 10)) }, 11},
		{"long", ctx, func() *bytes.Reader { return bytes.NewReader(make([]byte, 10)) }, 9},
		{"cancelled", cancelled, func() *bytes.Reader { return bytes.NewReader(make([]byte, 10)) }, 10},
	}
	for _, c := range cases {
		if err := s.Put(c.ctx, "dir/key", c.r(), c.size); err == nil {
			t.Errorf("%s: Put succeeded", c.name)
		}
	}
	// newSandboxed's cleanup checks for temporary files.
}

// TestSymlinkCannotEscape plants symbolic links inside the store that point
// outside it: the os.Root under every operation must refuse to follow them.
func TestSymlinkCannotEscape(t *testing.T) {
	sandbox := t.TempDir()
	outside := filepath.Join(sandbox, "outside")
	if err := os.Mkdir(outside, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "secret"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(sandbox, "root")
	s, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := os.Symlink(outside, filepath.Join(dir, "evil+")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "secret"), filepath.Join(dir, "leak")); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Put(ctx, "evil/x", strings.NewReader("x"), 1); err == nil {
		t.Errorf("Put through a symlink to outside the store succeeded")
	}
	if _, err := s.Open(ctx, "evil/secret", 0, -1); err == nil {
		t.Errorf("Open through a symlink to outside the store succeeded")
	}
	if _, err := s.Open(ctx, "leak", 0, -1); err == nil {
		t.Errorf("Open of a symlink to outside the store succeeded")
	}
	if err := s.Delete(ctx, "evil/secret"); err != nil {
		t.Logf("Delete through the symlink: %v", err)
	}
	entries, err := os.ReadDir(outside)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 || entries[0].Name() != "secret" {
		t.Errorf("the directory outside the store changed: %v", entries)
	}
}

func TestLongSegmentRejected(t *testing.T) {
	s := newSandboxed(t)
	key := strings.Repeat("s", MaxSegmentLen+1)
	err := s.Put(context.Background(), key, strings.NewReader(""), 0)
	if !errors.Is(err, backend.ErrInvalidKey) {
		t.Errorf("Put of a %d-byte segment = %v, want ErrInvalidKey", len(key), err)
	}
	ok := strings.Repeat("s", MaxSegmentLen)
	if err := s.Put(context.Background(), ok, strings.NewReader(""), 0); err != nil {
		t.Errorf("Put of a %d-byte segment: %v", len(ok), err)
	}
}

func TestPathMapping(t *testing.T) {
	tests := []struct{ key, path string }{
		{"a", "a"},
		{"a/b", "a+/b"},
		{"chunks/ab/cdef", "chunks+/ab+/cdef"},
		{".hidden/..x", ".hidden+/..x"},
	}
	for _, tc := range tests {
		got, err := objectPath(tc.key)
		if err != nil || got != tc.path {
			t.Errorf("objectPath(%q) = %q, %v; want %q", tc.key, got, err, tc.path)
		}
		if key, ok := keyFromPath(tc.path); !ok || key != tc.key {
			t.Errorf("keyFromPath(%q) = %q, %v; want %q", tc.path, key, ok, tc.key)
		}
	}
	for _, name := range []string{"a~0123456789abcdef", "a+", "a/b", "a+/b+", "../a", "a+/../b"} {
		if key, ok := keyFromPath(name); ok {
			t.Errorf("keyFromPath(%q) = %q, want no key", name, key)
		}
	}
	for _, key := range backendtest.BadKeys {
		if p, err := objectPath(key); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("objectPath(%q) = %q, %v; want ErrInvalidKey", key, p, err)
		}
	}
}
