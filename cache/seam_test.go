package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/chunker"
	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

// Invariant 2 at the index: every write transaction of a scenario fails
// in turn (index.DB.FailAfter), and after the fault the cache is abandoned
// as a crash would leave it (its directory copied while it is open, no
// Close, no cleanup) and the copy reopened. The copy must name no missing
// data, hold every layer committed before the fault, have reference counts
// too high at worst (exact after Reindex), and take the scenario again.
// Layers of more than 40 distinct chunks commit and delete in batches
// here, so the points between batches are covered; and Reindex between its
// drop and its rebuild, which the next Open finishes.
func TestCrashBetweenIndexTransactions(t *testing.T) {
	params := chunker.Params{Min: 64, Avg: 128, Max: 256}
	base := randomData(70, 4<<10)
	big := append(bytes.Clone(base), randomData(71, 12<<10)...) // about 130 chunks: 4 batches
	small := randomData(72, 2<<10)
	scenarios := []struct {
		name string
		run  func(c *Cache) error
	}{
		{"big commit", func(c *Cache) error { return pushErr(c, big) }},
		{"big delete", func(c *Cache) error {
			if err := pushErr(c, big); err != nil {
				return err
			}
			return c.Delete(t.Context(), digest.FromBytes(big))
		}},
		{"step and delete", func(c *Cache) error {
			if err := pushErr(c, small); err != nil {
				return err
			}
			l := &LayerRef{Digest: digest.FromBytes(small)}
			if _, err := c.RecordStep(t.Context(), "", stepkey.Step{Instruction: "RUN x"}, l, nil); err != nil {
				return err
			}
			return c.Delete(t.Context(), digest.FromBytes(small))
		}},
		{"reindex", func(c *Cache) error {
			if err := pushErr(c, big); err != nil {
				return err
			}
			return c.Reindex(t.Context())
		}},
	}
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			// -short fails every third transaction, to stay quick under -race.
			stride := int64(1)
			if testing.Short() {
				stride = 3
			}
			for n := int64(1); ; n += stride {
				store := mem.New()
				dir := t.TempDir()
				c := openCacheWith(t, dir, store, params)
				c.idx.SetMaxTxnChunks(40)
				push(t, c, base) // history the fault must not damage
				c.idx.FailAfter(n)
				err := sc.run(c)
				if err != nil && !errors.Is(err, index.ErrInjected) {
					t.Fatalf("n=%d: %v, want the injected fault", n, err)
				}
				// Abandon c: copy its directory as it is, as a crash leaves it.
				snap := t.TempDir()
				if err := copyDir(dir, snap); err != nil {
					t.Fatal(err)
				}
				r := openCacheWith(t, snap, store, params)
				r.idx.SetMaxTxnChunks(40)
				checkIndexBacked(t, r, store)
				checkRefcountsAtLeast(t, r)
				if got := pullDigest(t, r, digest.FromBytes(base)); got != digest.FromBytes(base) {
					t.Fatalf("n=%d: committed layer pulled as %s", n, got)
				}
				if err := r.Reindex(t.Context()); err != nil {
					t.Fatalf("n=%d: reindex after the crash: %v", n, err)
				}
				checkRefcounts(t, r)
				if err := sc.run(r); err != nil {
					t.Fatalf("n=%d: the scenario again after the crash: %v", n, err)
				}
				checkIndexBacked(t, r, store)
				checkRefcounts(t, r)
				if err == nil {
					t.Logf("%s: %d index transactions; failed at each", sc.name, n-1)
					return
				}
				if n > 100 {
					t.Fatal("the scenario never got through")
				}
			}
		})
	}
}

func pushErr(c *Cache, data []byte) error {
	_, err := c.Push(context.Background(), bytes.NewReader(data), PushOptions{Size: int64(len(data))})
	return err
}

// checkRefcountsAtLeast checks what a crash may leave of reference counts:
// every chunk a layer names holds at least as many references as layers
// name it (too many keeps chunks longer; too few would lose them).
func checkRefcountsAtLeast(t *testing.T, c *Cache) {
	t.Helper()
	want := map[chunkID]int64{}
	if err := c.idx.ForEachLayer(func(lr *index.LayerRecord) error {
		lr.ChunkRefs(func(e index.RecipeEntry) { want[e.ID]++ })
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	err := c.idx.ForEachChunk(func(id chunkID, ci chunkInfo) error {
		if ci.Refs < want[id] {
			return fmt.Errorf("chunk %s: %d references, layers name it %d times", id, ci.Refs, want[id])
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reference counts too low after a crash: %v", err)
	}
}
