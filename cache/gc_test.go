package cache

import (
	"bytes"
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/backendtest"
	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

// now collects with no grace periods: what is dead goes at once.
var now = GCOptions{Grace: -1, PackGrace: -1}

func countPacks(t testing.TB, store backend.Store) (n int, bytes int64) {
	t.Helper()
	if err := store.List(context.Background(), packPrefix, func(i backend.Info) error {
		n++
		bytes += i.Size
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n, bytes
}

// checkLive pulls every layer back whole against its digest.
func checkLive(t testing.TB, c *Cache, layers ...[]byte) {
	t.Helper()
	for _, l := range layers {
		if got := pull(t, c, digest.FromBytes(l), 0, -1); !bytes.Equal(got, l) {
			t.Fatalf("layer %s reads back other bytes", digest.FromBytes(l))
		}
	}
}

// A deleted layer's chunks, once unreferenced and past the grace period,
// go with their packs; a dry run plans the same and changes nothing;
// nothing live is touched.
func TestGCDeletesDeadPacks(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	c.chunks.SetPackTarget(256 << 10)
	keep, drop := genData(70, 2<<20), genData(71, 2<<20)
	push(t, c, keep)
	info := push(t, c, drop)
	nBefore, bytesBefore := countPacks(t, store)
	if err := c.Delete(ctx, info.Digest); err != nil {
		t.Fatal(err)
	}
	// Within the grace period nothing is dead.
	rep, err := c.GC(ctx, GCOptions{DryRun: true})
	if err != nil || len(rep.Delete) != 0 || rep.YoungChunks == 0 {
		t.Fatalf("dry run within the grace period: %+v, %v", rep, err)
	}
	dry, err := c.GC(ctx, GCOptions{Grace: -1, PackGrace: -1, DryRun: true})
	if err != nil || len(dry.Delete) == 0 || dry.PlannedBytes == 0 || dry.DeletedPacks != 0 {
		t.Fatalf("dry run: %+v, %v", dry, err)
	}
	// The walk in pages of 3 entries, resting between them, plans the same.
	defer func(n int) { gcPage = n }(gcPage)
	gcPage = 3
	paged, err := c.GC(ctx, GCOptions{Grace: -1, PackGrace: -1, DryRun: true, Pace: 0.5})
	st, _ := c.Stats(ctx)
	if err != nil || paged.Chunks != st.Chunks || paged.DeadChunks != dry.DeadChunks || len(paged.Delete) != len(dry.Delete) || paged.PlannedBytes != dry.PlannedBytes {
		t.Fatalf("paged, paced dry run: %+v, %v; want the plan of %+v over %d chunks", paged, err, dry, st.Chunks)
	}
	if n, _ := countPacks(t, store); n != nBefore {
		t.Fatalf("the dry run deleted packs: %d of %d left", n, nBefore)
	}
	rep, err = c.GC(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	n, b := countPacks(t, store)
	if rep.DeletedPacks != int64(len(dry.Delete)) || int64(nBefore-n) != rep.DeletedPacks || bytesBefore-b != rep.FreedBytes {
		t.Errorf("collection: %+v; packs %d → %d, bytes %d → %d", rep, nBefore, n, bytesBefore, b)
	}
	if len(rep.Skipped) != 0 {
		t.Errorf("skipped: %q", rep.Skipped)
	}
	checkLive(t, c, keep)
	checkRefcounts(t, c)
	checkIndexBacked(t, c, store)
	// The same bytes pushed again are stored again.
	push(t, c, drop)
	checkLive(t, c, keep, drop)
}

// A pack with more dead bytes than the ratio is rewritten: its live
// records move to a new pack, and the old one is marked, then deleted by a
// later collection once its second grace period is over.
func TestGCRewritesMostlyDeadPacks(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	shared := genData(72, 512<<10)
	whole := append(bytes.Clone(shared), genData(73, 3<<20)...)
	big := push(t, c, whole) // one pack of 4 MiB: shared's chunks, and the rest
	push(t, c, shared)       // all its chunks in big's pack
	if err := c.Delete(ctx, big.Digest); err != nil {
		t.Fatal(err)
	}
	rep, err := c.GC(ctx, GCOptions{Grace: -1})
	if err != nil || rep.RewrittenPacks == 0 || rep.MovedChunks == 0 || rep.MarkedPacks == 0 {
		t.Fatalf("collection: %+v, %v; want a rewrite", rep, err)
	}
	checkLive(t, c, shared)
	checkRefcounts(t, c)
	// The old pack waits for its second grace period...
	nMarked, _ := countPacks(t, store)
	rep, err = c.GC(ctx, GCOptions{Grace: -1})
	if err != nil || rep.Waiting == 0 || rep.DeletedPacks != 0 {
		t.Fatalf("within the second grace period: %+v, %v", rep, err)
	}
	// ...then goes.
	rep, err = c.GC(ctx, now)
	if err != nil || len(rep.Due) == 0 || rep.DeletedPacks != int64(len(rep.Due)) {
		t.Fatalf("after the second grace period: %+v, %v", rep, err)
	}
	if n, _ := countPacks(t, store); n >= nMarked {
		t.Errorf("packs: %d after the rewrite, %d after the deletion", nMarked, n)
	}
	checkLive(t, c, shared)
	checkRefcounts(t, c)
	checkIndexBacked(t, c, store)
}

// A push that takes up dead chunks between the plan and the deletion
// keeps them: the deletion re-checks each entry inside the fence.
func TestGCSparesChunksTakenUpAfterThePlan(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	c.chunks.SetPackTarget(256 << 10)
	data := genData(74, 2<<20)
	info := push(t, c, data)
	if err := c.Delete(ctx, info.Digest); err != nil {
		t.Fatal(err)
	}
	var planned int
	c.gcHooks.Planned = func(rep *GCReport) {
		planned = len(rep.Delete)
		push(t, c, data) // finds every chunk in the index: stores none
	}
	rep, err := c.GC(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if planned == 0 || rep.DeletedPacks != 0 || rep.DeletedChunks != 0 {
		t.Errorf("planned %d deletions; did %+v; want none done", planned, rep)
	}
	checkLive(t, c, data)
	checkRefcounts(t, c)
	checkIndexBacked(t, c, store)
}

// A pack that no entry names (a push that stored chunks and failed before
// its commit) is marked, and deleted a grace period later, unless a
// session still holds it.
func TestGCOrphanPacks(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	data := genData(75, 1<<20)
	sess := c.chunks.NewSession(ctx, false) // a push: indexes at its commit
	id := chunkid.Sum(data)
	if err := sess.Ensure(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if err := sess.Flush(); err != nil {
		t.Fatal(err)
	}
	rep, err := c.GC(ctx, now)
	if err != nil || len(rep.Orphans) != 1 || rep.MarkedPacks != 1 {
		t.Fatalf("first collection: %+v, %v; want the push's pack marked", rep, err)
	}
	rep, err = c.GC(ctx, now)
	if err != nil || rep.DeletedPacks != 0 || len(rep.Skipped) != 1 {
		t.Fatalf("while the push holds its pack: %+v, %v; want it kept", rep, err)
	}
	sess.Close() // the push fails: nothing names the pack
	rep, err = c.GC(ctx, now)
	if err != nil || rep.DeletedPacks != 1 {
		t.Fatalf("after the push ended: %+v, %v; want the orphan deleted", rep, err)
	}
	if n, _ := countPacks(t, store); n != 0 {
		t.Errorf("%d packs left", n)
	}
}

// A collection that crashes at any backend call, or any index
// transaction, leaves everything live readable, and the next one finishes
// the job (invariants 2 and 3).
//
// With compaction on (CompactAge 1ns: every pack is cold), the crash may
// also land between a compacted pack's write and the index's move to it,
// or between the move and the old pack's mark.
func TestGCCrashAtEveryStep(t *testing.T) {
	for _, where := range []string{"backend", "index"} {
		t.Run(where, func(t *testing.T) { testGCCrash(t, where, 0) })
		t.Run(where+"+compaction", func(t *testing.T) { testGCCrash(t, where, time.Nanosecond) })
	}
}

func testGCCrash(t *testing.T, where string, compactAge time.Duration) {
	opts := GCOptions{Grace: -1, PackGrace: -1, RewriteRatio: 0.1, CompactAge: compactAge}
	shared := genData(76, 512<<10)
	whole := append(bytes.Clone(shared), genData(77, 2<<20)...)
	other := genData(78, 1<<20)
	for n := 1; ; n++ {
		inner := mem.New()
		dir := t.TempDir()
		c := openCache(t, dir, inner)
		big := push(t, c, whole)
		push(t, c, shared)
		dead := push(t, c, other)
		for _, d := range []digest.Digest{big.Digest, dead.Digest} {
			if err := c.Delete(t.Context(), d); err != nil {
				t.Fatal(err)
			}
		}
		var calls atomic.Int64
		if where == "backend" {
			c.setBackend(&backendtest.Faulty{Store: inner, Fail: func(backendtest.Op, string, int) error {
				if calls.Add(1) >= int64(n) {
					return errInjected
				}
				return nil
			}})
		} else {
			c.idx.FailAfter(int64(n))
		}
		_, err := c.GC(t.Context(), opts)
		if err != nil && !errors.Is(err, errInjected) && !errors.Is(err, index.ErrInjected) {
			t.Fatalf("n=%d: %v", n, err)
		}
		c.idx.FailAfter(0)
		c.Close()
		c = openCache(t, dir, inner)
		checkIndexBacked(t, c, inner)
		checkLive(t, c, shared)
		for range 2 { // the rewrite's old pack goes on the second run
			if _, err := c.GC(t.Context(), opts); err != nil {
				t.Fatalf("n=%d: the collection after the crash: %v", n, err)
			}
		}
		checkLive(t, c, shared)
		checkRefcounts(t, c)
		checkIndexBacked(t, c, inner)
		dry := opts
		dry.DryRun = true
		if rep, err := c.GC(t.Context(), dry); err != nil ||
			len(rep.Delete)+len(rep.Rewrite)+len(rep.Compact)+len(rep.Orphans)+len(rep.Due) != 0 {
			t.Fatalf("n=%d: after two more collections, still to do: %+v, %v", n, rep, err)
		}
		c.Close()
		if err == nil {
			t.Logf("a collection makes %d %s calls; crashed at each", n-1, where)
			return
		}
	}
}

// A chunk leased by a push that has not committed yet (it found the chunk
// in the index between the plan and the deletion) is spared, and so is
// its pack.
func TestGCSparesLeasedChunks(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	data := genData(79, 1<<20)
	info := push(t, c, data)
	refs, _ := c.Chunks(ctx, info.Digest)
	if err := c.Delete(ctx, info.Digest); err != nil {
		t.Fatal(err)
	}
	var release func()
	c.gcHooks.Planned = func(rep *GCReport) {
		if len(rep.Delete) == 0 {
			t.Fatalf("nothing planned: %+v", rep)
		}
		release = c.chunks.Lease([]chunkid.ID{refs[0].ID})
	}
	rep, err := c.GC(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	c.gcHooks.Planned = nil
	release()
	if _, err := c.ReadChunk(ctx, refs[0].ID); err != nil {
		t.Fatalf("the leased chunk after the collection: %v (%+v)", err, rep)
	}
	if rep.DeletedPacks != 0 || rep.DeletedChunks != int64(len(refs)-1) {
		t.Errorf("collection: %+v; want every chunk but the leased one deleted, and no pack", rep)
	}
	// Once the lease is gone, the next collection takes the rest.
	if rep, err := c.GC(ctx, now); err != nil || rep.DeletedPacks == 0 {
		t.Errorf("the next collection: %+v, %v", rep, err)
	}
	if n, _ := countPacks(t, store); n != 0 {
		t.Errorf("%d packs left", n)
	}
}

// A pack that a push wrote, then left (its session closed without a
// commit), is kept while another push that learnt of it from the first's
// flight may still commit a layer naming it; that layer reads back after
// the collections.
func TestGCSparesPacksKnownFromAFlight(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	data := genData(80, 64<<10)
	id := chunkid.Sum(data)
	first := c.chunks.NewSession(ctx, false)
	if err := first.Ensure(ctx, id, data); err != nil {
		t.Fatal(err)
	}
	if err := first.Flush(); err != nil {
		t.Fatal(err)
	}
	second := c.chunks.NewSession(ctx, false)
	defer second.Close()
	if err := second.Ensure(ctx, id, data); err != nil { // joins the finished flight
		t.Fatal(err)
	}
	first.Close() // fails: nothing names its pack
	for range 2 { // mark, then (no pack grace) delete if it could
		if _, err := c.GC(ctx, now); err != nil {
			t.Fatal(err)
		}
	}
	if err := second.Flush(); err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(data)
	lr := &index.LayerRecord{Digest: d, MediaType: DefaultMediaType, Size: int64(len(data)),
		Recipe: []index.RecipeEntry{{ID: id, Size: int64(len(data))}}}
	if _, err := c.idx.CommitLayer(lr, second.Known()); err != nil {
		t.Fatal(err)
	}
	second.Committed()
	if got := pull(t, c, d, 0, -1); !bytes.Equal(got, data) {
		t.Fatal("the layer committed from the flight's pack reads back other bytes")
	}
}

// With StepMaxAge, a collection deletes the step records neither recorded
// nor hit within it; a record hit since stays, and a dry run only counts.
func TestGCDropsStaleSteps(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	if _, err := c.RecordStep(ctx, "", stepkey.Step{Instruction: "RUN old"}, nil, nil); err != nil {
		t.Fatal(err)
	}
	used, err := c.RecordStep(ctx, "", stepkey.Step{Instruction: "RUN used"}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	mid := time.Now()
	for !time.Now().After(mid.Add(2 * time.Millisecond)) { // the hit comes strictly after mid
	}
	if _, err := c.LookupStep(ctx, "", stepkey.Step{Instruction: "RUN used"}); err != nil {
		t.Fatal(err)
	}
	rep, err := c.GC(ctx, GCOptions{StepMaxAge: time.Since(mid), DryRun: true})
	if err != nil || rep.StaleSteps != 1 {
		t.Fatalf("dry run: %d stale, %v; want 1", rep.StaleSteps, err)
	}
	if recs, _, _ := c.ListSteps(ctx, "", 0, ""); len(recs) != 2 {
		t.Fatalf("the dry run deleted steps: %d left", len(recs))
	}
	if rep, err = c.GC(ctx, GCOptions{StepMaxAge: time.Since(mid)}); err != nil || rep.StaleSteps != 1 {
		t.Fatalf("collection: %d stale, %v; want 1", rep.StaleSteps, err)
	}
	recs, _, err := c.ListSteps(ctx, "", 0, "")
	if err != nil || len(recs) != 1 || recs[0].Key != used.Key {
		t.Errorf("steps left: %+v, %v; want only %s", recs, err, used.Key)
	}
	if _, err := c.LookupStep(ctx, "", stepkey.Step{Instruction: "RUN old"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("the stale step: %v, want a miss", err)
	}
}
