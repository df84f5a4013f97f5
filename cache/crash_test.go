package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/backendtest"
	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

var errInjected = errors.New("injected fault")

// crashScenario is everything a build does against the cache: a
// server-side push, a step record for it, and a client-side chunked upload
// with its commit. It returns the first error.
func crashScenario(ctx context.Context, c *Cache, layer, layer2 []byte) error {
	info, err := c.Push(ctx, bytes.NewReader(layer), PushOptions{Size: int64(len(layer)), Expected: digest.FromBytes(layer)})
	if err != nil {
		return err
	}
	if _, err := c.RecordStep(ctx, "", stepkey.Step{Instruction: "RUN make"}, &LayerRef{Digest: info.Digest}, nil); err != nil {
		return err
	}
	refs, parts := clientChunksNoT(layer2)
	ids := make([]chunkID, len(refs))
	for i, r := range refs {
		ids[i] = r.ID
	}
	missing, err := c.MissingChunks(ctx, ids)
	if err != nil {
		return err
	}
	want := map[chunkID]bool{}
	for _, m := range missing {
		want[m] = true
	}
	for i, r := range refs {
		if want[r.ID] {
			if err := c.PutChunk(ctx, r.ID, parts[i]); err != nil {
				return err
			}
			want[r.ID] = false
		}
	}
	_, err = c.Commit(ctx, digest.FromBytes(layer2), "", refs)
	return err
}

// Invariant 2: a crash at any point leaves no index entry pointing at
// missing data, and the next attempt succeeds. The backend fails at its
// N-th call, for every N until the scenario gets through: either that call
// alone ("fail") or that call and every later one ("stop", the process is
// gone). After each failure the cache is closed and reopened.
func TestCrashAtEveryStep(t *testing.T) {
	base := genData(60, 1<<20)
	layer := append(bytes.Clone(base), genData(61, scale(2<<20, 1<<20))...)
	layer2 := append(genData(62, 1<<20), base[:512<<10]...)
	for _, mode := range []string{"fail", "stop"} {
		t.Run(mode, func(t *testing.T) {
			// The full run crashes at every call; -short at every second
			// ("stop") or fifth ("fail") call, to stay quick under -race.
			stride := 1
			if testing.Short() {
				stride = map[string]int{"stop": 2, "fail": 5}[mode]
			}
			for n := 1; ; n += stride {
				inner := mem.New()
				dir := t.TempDir()
				c := openCache(t, dir, inner)
				push(t, c, base) // earlier history the crash must not damage
				var calls atomic.Int64
				faulty := &backendtest.Faulty{Store: inner, PartialPut: true, Fail: func(op backendtest.Op, key string, _ int) error {
					k := calls.Add(1)
					if k == int64(n) || (mode == "stop" && k > int64(n)) {
						return errInjected
					}
					return nil
				}}
				c.setBackend(faulty)
				err := crashScenario(t.Context(), c, layer, layer2)
				if err != nil && !errors.Is(err, errInjected) {
					t.Fatalf("n=%d: unexpected error %v", n, err)
				}
				if err := c.Close(); err != nil {
					t.Fatalf("n=%d: Close: %v", n, err)
				}
				c = openCache(t, dir, inner)
				checkIndexBacked(t, c, inner)
				if err := crashScenario(t.Context(), c, layer, layer2); err != nil {
					t.Fatalf("n=%d: retry after the crash: %v", n, err)
				}
				for _, l := range [][]byte{base, layer, layer2} {
					if got := pullDigest(t, c, digest.FromBytes(l)); got != digest.FromBytes(l) {
						t.Fatalf("n=%d: pulled %s", n, got)
					}
				}
				checkIndexBacked(t, c, inner)
				checkRefcounts(t, c)
				c.Close()
				if err == nil {
					t.Logf("%s: scenario needs %d backend calls; crashed at each (stride %d)", mode, n-1, stride)
					return
				}
			}
		})
	}
}

// checkIndexBacked checks invariant 2 on a closed-and-reopened index: every
// chunk entry's record is in its pack and verifies, every layer's manifest
// and chunks exist, every step's record exists in the backend.
func checkIndexBacked(t *testing.T, c *Cache, store backend.Store) {
	t.Helper()
	ctx := t.Context()
	saved := c.setBackend(store)
	defer c.setBackend(saved)
	err := c.idx.ForEachChunk(func(id chunkID, ci chunkInfo) error {
		// The record must be there and be this chunk.
		bp, _, err := c.chunks.ReadRecord(ctx, id, ci)
		if err != nil {
			return fmt.Errorf("index has chunk %s (pack %s at %d, %d bytes stored): %w", id, ci.Pack, ci.Off, ci.Stored, err)
		}
		c.chunks.PutData(bp)
		return nil
	})
	if err == nil {
		err = c.idx.ForEachLayer(func(lr *index.LayerRecord) error {
			if _, err := store.Stat(ctx, layerKey(lr.Digest)); err != nil {
				return fmt.Errorf("index has layer %s, manifest: %v", lr.Digest, err)
			}
			ids := make([]chunkID, len(lr.Recipe))
			for i, e := range lr.Recipe {
				ids[i] = e.ID
			}
			_, found, err := c.idx.Chunks(ids)
			for i, ok := range found {
				if !ok || err != nil {
					return fmt.Errorf("layer %s names chunk %s, not indexed (%v)", lr.Digest, ids[i], err)
				}
			}
			return nil
		})
	}
	if err == nil {
		err = c.idx.ForEachStep(func(d digest.Digest) error {
			if _, err := store.Stat(ctx, stepObjectKey(d)); err != nil {
				return fmt.Errorf("index has step %s, backend: %v", d, err)
			}
			return nil
		})
	}
	if err != nil {
		t.Fatalf("index not backed by the backend: %v", err)
	}
}

func clientChunksNoT(data []byte) ([]ChunkRef, [][]byte) {
	var t testing.T
	return clientChunks(&t, data)
}

// A crash of the process itself: the index directory is copied while the
// cache runs (what a power cut leaves on disk), and the copy opens without
// manual steps and holds every layer committed before the copy.
func TestCrashIndexSnapshot(t *testing.T) {
	c, store := newCache(t)
	var done []digest.Digest
	for i := range 4 {
		done = append(done, push(t, c, genData(uint64(70+i), 1<<20)).Digest)
	}
	// Writes go on while we copy.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			data := genData(uint64(100+i), 300<<10)
			if _, err := c.Push(context.Background(), bytes.NewReader(data), PushOptions{Size: -1}); err != nil {
				return
			}
		}
	})
	snap := t.TempDir()
	if err := copyDir(c.idx.Dir(), snap); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()

	c2 := openCache(t, snap, store)
	for _, d := range done {
		if got := pullDigest(t, c2, d); got != d {
			t.Errorf("after the crash: %s pulled as %s", d, got)
		}
	}
	checkIndexBacked(t, c2, store)
}

func copyDir(src, dst string) error {
	entries, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() || e.Name() == "LOCK" {
			continue
		}
		in, err := os.Open(filepath.Join(src, e.Name()))
		if err != nil {
			if os.IsNotExist(err) {
				continue // compacted away meanwhile
			}
			return err
		}
		out, err := os.Create(filepath.Join(dst, e.Name()))
		if err != nil {
			in.Close()
			return err
		}
		_, err = io.Copy(out, in)
		in.Close()
		if cerr := out.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
	}
	return nil
}
