package fs

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/backendtest"
)

// FuzzKeyPath cross-checks backend.ValidateKey, the key-to-path mapping and
// a real store: a key is accepted exactly when it maps to a local path, the
// mapping is one-to-one, and a Put of any key writes nothing outside the
// store's directory. Run with
//
//	go test ./backend/fs -run '^$' -fuzz FuzzKeyPath -fuzztime 30s
func FuzzKeyPath(f *testing.F) {
	for _, k := range backendtest.BadKeys {
		f.Add(k)
	}
	for _, k := range []string{"a", "a/b", "chunks/ab/0123abcd", ".x/..y/...", "a-b_c.d", "x+/y", "x~0123456789abcdef"} {
		f.Add(k)
	}
	sandbox := f.TempDir()
	dir := filepath.Join(sandbox, "root")
	s, err := New(dir)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	ctx := context.Background()

	f.Fuzz(func(t *testing.T, key string) {
		p, perr := objectPath(key)
		verr := backend.ValidateKey(key)
		if verr != nil && perr == nil {
			t.Fatalf("objectPath(%q) = %q for a key ValidateKey rejects (%v)", key, p, verr)
		}
		if perr == nil {
			if !filepath.IsLocal(filepath.FromSlash(p)) {
				t.Fatalf("objectPath(%q) = %q, not a local path", key, p)
			}
			segs := strings.Split(p, "/")
			for i, seg := range segs {
				last := i == len(segs)-1
				if seg == "" || seg == "." || seg == ".." || len(seg) > 255-tmpRandLen-len(tmpMark) ||
					last == strings.HasSuffix(seg, dirSuffix) || strings.Contains(seg, tmpMark) {
					t.Fatalf("objectPath(%q) = %q: bad component %q", key, p, seg)
				}
			}
			if back, ok := keyFromPath(p); !ok || back != key {
				t.Fatalf("keyFromPath(objectPath(%q) = %q) = %q, %v", key, p, back, ok)
			}
		}

		err := s.Put(ctx, key, strings.NewReader("x"), 1)
		switch {
		case perr != nil && !errors.Is(err, backend.ErrInvalidKey):
			t.Fatalf("Put(%q) = %v, want ErrInvalidKey", key, err)
		case perr == nil && err != nil:
			t.Fatalf("Put(%q): %v", key, err)
		case perr == nil:
			if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(p))); err != nil {
				t.Fatalf("Put(%q) did not write %q: %v", key, p, err)
			}
			if err := s.Delete(ctx, key); err != nil {
				t.Fatalf("Delete(%q): %v", key, err)
			}
		}
		entries, err := os.ReadDir(sandbox)
		if err != nil {
			t.Fatal(err)
		}
		if len(entries) != 1 || entries[0].Name() != "root" {
			t.Fatalf("after Put(%q), files outside the store: %v", key, entries)
		}
	})
}
