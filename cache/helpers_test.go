package cache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os/exec"
	"strings"
	"testing"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/chunker"
	"github.com/opencontainers/go-digest"
)

// openCache opens a Cache over store with its index in dir and closes it
// when the test ends (closing twice is harmless).
func openCache(t testing.TB, dir string, store backend.Store) *Cache {
	t.Helper()
	return openCacheWith(t, dir, store, chunker.Params{})
}

// openCacheWith is openCache with other chunking parameters.
func openCacheWith(t testing.TB, dir string, store backend.Store, params chunker.Params) *Cache {
	t.Helper()
	c, err := Open(context.Background(), Options{Dir: dir, Backend: store, Chunking: params})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newCache(t testing.TB) (*Cache, *mem.Store) {
	store := mem.New()
	return openCache(t, t.TempDir(), store), store
}

// genData returns n bytes from seed: runs of random bytes (incompressible)
// alternating with runs of words (compressible about 3–4×), like a layer
// that holds binaries and text.
func genData(seed uint64, n int) []byte {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	rng := rand.New(rand.NewChaCha8(s))
	words := []string{"func ", "return ", "package ", "err ", "nil", " := ", "if ", "{\n", "}\n", "cairn", "layer", "chunk ", "\t"}
	out := make([]byte, 0, n)
	for len(out) < n {
		run := 1 + rng.IntN(128<<10)
		if rng.IntN(2) == 0 {
			for i := 0; i < run && len(out) < n; i++ {
				out = append(out, byte(rng.Uint32()))
			}
		} else {
			for i := 0; i < run && len(out) < n; {
				w := words[rng.IntN(len(words))]
				out = append(out, w...)
				i += len(w)
			}
		}
	}
	return out[:n]
}

func push(t testing.TB, c *Cache, data []byte) LayerInfo {
	t.Helper()
	info, err := c.Push(context.Background(), bytes.NewReader(data), PushOptions{Size: int64(len(data))})
	if err != nil {
		t.Fatalf("Push of %d bytes: %v", len(data), err)
	}
	if want := digest.FromBytes(data); info.Digest != want {
		t.Fatalf("Push: digest %s, want %s", info.Digest, want)
	}
	return info
}

// pull reads layer d from offset for length bytes.
func pull(t testing.TB, c *Cache, d digest.Digest, offset, length int64) []byte {
	t.Helper()
	rc, _, err := c.Open(context.Background(), d, offset, length)
	if err != nil {
		t.Fatalf("Open(%s, %d, %d): %v", d, offset, length, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("read %s: %v", d, err)
	}
	return b
}

// pullDigest streams layer d and returns the digest of what came back.
//
// It reports a failure with t.Errorf and returns "" (never a digest), so
// that it is safe in goroutines other than the test's.
func pullDigest(t testing.TB, c *Cache, d digest.Digest) digest.Digest {
	t.Helper()
	rc, _, err := c.Open(context.Background(), d, 0, -1)
	if err != nil {
		t.Errorf("Open(%s): %v", d, err)
		return ""
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Errorf("read %s: %v", d, err)
		return ""
	}
	return digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil))
}

// scale returns full, or small under -short or the race detector.
func scale(full, small int) int {
	if testing.Short() || raceEnabled {
		return small
	}
	return full
}

func isErr(err, target error) bool { return err != nil && errorsIs(err, target) }

var errorsIs = errors.Is

type backendInfo = backend.Info

// randomData returns n incompressible bytes from seed.
func randomData(seed uint64, n int) []byte {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	b := make([]byte, n)
	rand.NewChaCha8(s).Read(b)
	return b
}

// goroot is the Go installation whose sources make the tar test data.
func goroot() string {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// packTables reads the table of every pack in store, by pack key.
func packTables(t testing.TB, c *Cache, store backend.Store) map[string][]packEntry {
	t.Helper()
	out := map[string][]packEntry{}
	err := store.List(context.Background(), packPrefix, func(info backend.Info) error {
		entries, err := c.readPackTable(context.Background(), info.Key, info.Size)
		if err != nil {
			return fmt.Errorf("pack %s: %w", info.Key, err)
		}
		out[info.Key] = entries
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// chunkLocation returns where the index says chunk d is.
func chunkLocation(t testing.TB, c *Cache, id chunkID) (chunkID, chunkInfo) {
	t.Helper()
	ci, ok, err := c.lookupChunk(id)
	if err != nil || !ok {
		t.Fatalf("chunk %s not in the index: %v", id, err)
	}
	return id, ci
}

// rewritePack replaces the pack holding ci with what edit makes of its
// bytes; edit returning nil deletes the pack.
func rewritePack(t testing.TB, store backend.Store, ci chunkInfo, edit func(body []byte) []byte) {
	t.Helper()
	ctx := context.Background()
	key := packKey(ci.Pack)
	rc, err := store.Open(ctx, key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	body = edit(body)
	if body == nil {
		err = store.Delete(ctx, key)
	} else {
		err = store.Put(ctx, key, bytes.NewReader(body), int64(len(body)))
	}
	if err != nil {
		t.Fatal(err)
	}
}
