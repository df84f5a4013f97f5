package cache

import (
	"bytes"
	"errors"
	"testing"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/fs"
	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

// Invariant (index): Reindex on a wiped index restores every layer and
// step from the backend alone, with exact reference counts.
func TestReindex(t *testing.T) {
	t.Run("mem", func(t *testing.T) { testReindex(t, mem.New()) })
	t.Run("fs", func(t *testing.T) {
		s, err := fs.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		testReindex(t, s)
	})
}

func testReindex(t *testing.T, store backend.Store) {
	c := openCache(t, t.TempDir(), store)
	ctx := t.Context()
	common := genData(110, 1<<20)
	var layers []LayerInfo
	for i := range 4 {
		data := append(bytes.Clone(common), genData(uint64(111+i), 400<<10)...)
		layers = append(layers, push(t, c, data))
	}
	var steps []StepRecord
	parent := digest.Digest("")
	for i, l := range layers {
		r, err := c.RecordStep(ctx, parent, stepkey.Step{Instruction: "RUN step " + string(rune('a'+i))}, &LayerRef{Digest: l.Digest}, []byte("cfg"))
		if err != nil {
			t.Fatal(err)
		}
		steps = append(steps, r)
		parent = r.Next
	}
	meta, err := c.RecordStep(ctx, parent, stepkey.Step{Instruction: "ENV X=1"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	steps = append(steps, meta)
	// A deleted layer stays deleted; a chunk uploaded ahead of a commit
	// that never came is restored with no references.
	if err := c.Delete(ctx, layers[3].Digest); err != nil {
		t.Fatal(err)
	}
	orphan := genData(120, 70<<10)
	if err := c.PutChunk(ctx, chunkid.Sum(orphan), orphan); err != nil {
		t.Fatal(err)
	}
	before, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}

	// Wipe the index: a new, empty directory over the same backend.
	c.Close()
	c = openCache(t, t.TempDir(), store)
	if st, _ := c.Stats(ctx); st.Layers != 0 {
		t.Fatalf("fresh index holds %d layers", st.Layers)
	}
	if err := c.Reindex(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The step of the deleted layer went with it (Delete), and stays gone.
	if before.Steps != 4 {
		t.Errorf("before Reindex: %d steps, want 4: the deleted layer's step should be gone", before.Steps)
	}
	if after != before {
		t.Errorf("after Reindex: %+v, want %+v", after, before)
	}
	for _, l := range layers[:3] {
		st, err := c.Stat(ctx, l.Digest)
		if err != nil || st.Size != l.Size || st.StoredSize != l.StoredSize || st.MediaType != l.MediaType || !st.Created.Equal(l.Created) {
			t.Errorf("layer %s: %+v, %v; want %+v", l.Digest, st, err, l)
		}
		if got := pullDigest(t, c, l.Digest); got != l.Digest {
			t.Errorf("pulled %s", got)
		}
	}
	if _, err := c.Stat(ctx, layers[3].Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted layer came back: %v", err)
	}
	chain, err := c.LookupChain(ctx, "", []stepkey.Step{{Instruction: "RUN step a"}, {Instruction: "RUN step b"}, {Instruction: "RUN step c"}})
	if err != nil || len(chain) != 3 {
		t.Fatalf("LookupChain after Reindex: %d hits, %v", len(chain), err)
	}
	if chain[2].Key != steps[2].Key || string(chain[2].Config) != "cfg" || chain[2].Next != steps[2].Next {
		t.Errorf("step record changed: %+v, want %+v", chain[2], steps[2])
	}
	if m, err := c.MissingChunks(ctx, []chunkID{chunkid.Sum(orphan)}); err != nil || len(m) != 0 {
		t.Errorf("orphan chunk not restored: %v %v", m, err)
	}
	checkRefcounts(t, c)
	checkIndexBacked(t, c, store)

	// Reindex over a live index gives the same result, and a layer whose
	// chunk is gone from the backend is not restored.
	refs, _ := c.Chunks(ctx, layers[2].Digest)
	_, ci := chunkLocation(t, c, refs[len(refs)-1].ID)
	rewritePack(t, store, ci, func(b []byte) []byte { return dropRecord(t, c, b, ci) })
	if err := c.Reindex(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Stat(ctx, layers[2].Digest); !errors.Is(err, ErrNotFound) {
		t.Errorf("a layer with a missing chunk was restored: %v", err)
	}
	if _, err := c.Stat(ctx, layers[1].Digest); err != nil {
		t.Errorf("layer 1 lost: %v", err)
	}
	checkRefcounts(t, c)
	checkIndexBacked(t, c, store)
}

// dropRecord returns pack body without the record at ci, its table
// rewritten to match.
func dropRecord(t *testing.T, c *Cache, body []byte, ci chunkInfo) []byte {
	t.Helper()
	entries, err := c.readPackTable(t.Context(), packKey(ci.Pack), int64(len(body)))
	if err != nil {
		t.Fatal(err)
	}
	var out []byte
	var kept []packEntry
	for _, e := range entries {
		if e.Off == ci.Off {
			continue
		}
		rec := body[e.Off : e.Off+e.Stored]
		e.Off = int64(len(out))
		out = append(out, rec...)
		kept = append(kept, e)
	}
	if len(kept) != len(entries)-1 {
		t.Fatalf("no record at %d in pack %s", ci.Off, ci.Pack)
	}
	return pack.AppendTable(out, kept)
}
