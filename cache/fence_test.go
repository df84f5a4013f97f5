package cache

import (
	"bytes"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/opencontainers/go-digest"
)

// fakeCollector deletes, as fast as it can, the index entry of every chunk
// that no layer references, sparing only what the GC fence (leases) says
// is in use, with no grace period: the harshest collector the fence must
// stand up to. It deletes index entries only; packs stay, so a layer that
// lost a chunk to it shows up as a failed commit or an unreadable layer.
func fakeCollector(t *testing.T, c *Cache, stop <-chan struct{}) (deleted *atomic.Int64, done <-chan struct{}) {
	deleted = new(atomic.Int64)
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		for {
			select {
			case <-stop:
				return
			default:
			}
			n, err := collect(c)
			deleted.Add(int64(n))
			if err != nil {
				t.Errorf("collector: %v", err)
				return
			}
		}
	}()
	return deleted, ch
}

// collectOnce deletes the index entry of every chunk that no layer
// references and no lease holds, and returns how many it deleted.
func collectOnce(t *testing.T, c *Cache) int {
	n, err := collect(c)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// collect is one pass of the fake collector: the entries of unreferenced
// chunks, deleted inside the fence unless leased.
func collect(c *Cache) (int, error) {
	var dead []chunkID
	if err := c.idx.ForEachChunk(func(id chunkID, ci index.ChunkInfo) error {
		if ci.Refs == 0 {
			dead = append(dead, id)
		}
		return nil
	}); err != nil {
		return 0, err
	}
	var n int
	err := c.chunks.Fence(func(leased func(chunkID) bool) error {
		gone, err := c.idx.DeleteChunks(dead, func(id chunkID, _ index.ChunkInfo) bool { return leased(id) })
		n = len(gone)
		return err
	})
	return n, err
}

// The GC fence at the worst moment: a push and a client-side commit found
// chunks that no layer references, and a collector runs just before their
// index commits. The leases keep those chunks; without them both commits
// fail ("neither indexed nor uploaded", "has not been uploaded").
func TestLeasesSpareChunksOfACommit(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	base := genData(950, 2<<20)
	info := push(t, c, base)
	if err := c.Delete(ctx, info.Digest); err != nil {
		t.Fatal(err)
	}
	var collected int
	c.beforeCommit = func() { collected += collectOnce(t, c) }

	data := append(bytes.Clone(base), genData(951, 100<<10)...)
	pushed, err := c.Push(ctx, bytes.NewReader(data), PushOptions{Size: -1})
	if err != nil {
		t.Fatalf("push reusing unreferenced chunks, collector before its commit: %v", err)
	}
	if got := pullDigest(t, c, pushed.Digest); got != digest.FromBytes(data) {
		t.Fatalf("pulled %s", got)
	}

	// The client-side path: chunks uploaded, then a collector between the
	// commit's check of the chunks and its index commit.
	if err := c.Delete(ctx, pushed.Digest); err != nil {
		t.Fatal(err)
	}
	refs, _ := clientChunks(t, data)
	committed, err := c.Commit(ctx, digest.FromBytes(data), "", refs)
	if err != nil {
		t.Fatalf("commit of unreferenced chunks, collector before its index commit: %v", err)
	}
	if got := pullDigest(t, c, committed.Digest); got != digest.FromBytes(data) {
		t.Fatalf("pulled %s", got)
	}
	c.beforeCommit = nil
	checkIndexBacked(t, c, store)
	checkRefcounts(t, c)
	// The fence spared what was in use, not everything: with no session
	// open, the collector takes what no layer references.
	if err := c.Delete(ctx, committed.Digest); err != nil {
		t.Fatal(err)
	}
	if n := collectOnce(t, c); n == 0 {
		t.Errorf("nothing collected once no lease held the chunks")
	}
	t.Logf("collector deleted %d entries at the commits, sparing the leased chunks", collected)
}

// Invariant 3: a chunk is deleted only when no committed layer references
// it and no upload in flight can still reference it. Pushes and
// client-side commits race a collector over chunks that a deleted layer
// left without references: every push and commit must succeed and read
// back. (Without the leases in package chunks, pushes here fail with
// "neither indexed nor uploaded", or commit layers that no longer read.)
func TestLeasesFenceCollector(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	base := genData(900, scale(4<<20, 2<<20))
	rounds := scale(6, 3)

	stop := make(chan struct{})
	deleted, done := fakeCollector(t, c, stop)
	for r := range rounds {
		// The base's chunks lose their references...
		info := push(t, c, base)
		if err := c.Delete(ctx, info.Digest); err != nil {
			t.Fatal(err)
		}
		// ...and pushes and client-side commits that reuse them race the
		// collector.
		var wg sync.WaitGroup
		for i := range 3 {
			data := append(bytes.Clone(base), genData(uint64(1000+10*r+i), 300<<10)...)
			wg.Go(func() {
				info, err := c.Push(ctx, bytes.NewReader(data), PushOptions{Size: -1})
				if err != nil {
					t.Errorf("round %d: push %d: %v", r, i, err)
					return
				}
				if got := pullDigest(t, c, info.Digest); got != digest.FromBytes(data) {
					t.Errorf("round %d: push %d pulled as %s", r, i, got)
				}
			})
		}
		wg.Go(func() {
			data := append(genData(uint64(2000+r), 200<<10), base...)
			refs, parts := clientChunksNoT(data)
			u := c.NewChunkUpload(ctx)
			for i, ref := range refs {
				if err := u.Put(ctx, ref.ID, parts[i]); err != nil {
					t.Errorf("round %d: upload: %v", r, err)
				}
			}
			if err := u.Close(); err != nil {
				t.Errorf("round %d: upload: %v", r, err)
				return
			}
			// Between the upload and the commit nothing fences the chunks
			// but the grace period, which this collector does not give:
			// the commit may find some gone, and must then say so.
			info, err := c.Commit(ctx, digest.FromBytes(data), "", refs)
			if errors.Is(err, ErrFailedPrecondition) {
				return
			}
			if err != nil {
				t.Errorf("round %d: commit: %v", r, err)
				return
			}
			if got := pullDigest(t, c, info.Digest); got != digest.FromBytes(data) {
				t.Errorf("round %d: committed layer pulled as %s", r, got)
			}
		})
		wg.Wait()
	}
	close(stop)
	<-done
	if deleted.Load() == 0 {
		t.Fatal("the collector deleted nothing: the test raced nothing")
	}
	t.Logf("collector deleted %d chunk entries over %d rounds", deleted.Load(), rounds)
	checkIndexBacked(t, c, store)
	checkRefcounts(t, c)
	if n := c.chunks.Leased(); n != 0 {
		t.Errorf("%d chunks still leased after every session ended", n)
	}
}

// An existence answer is a use: chunks that FindMissingChunks (here
// MissingChunks) or a session finds in the index have their entry
// touched, so that the collector's grace period runs from then.
func TestFoundChunksAreTouched(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	data := genData(960, 1<<20)
	info := push(t, c, data)
	refs, err := c.Chunks(ctx, info.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Delete(ctx, info.Digest); err != nil {
		t.Fatal(err)
	}
	age := func(id chunkID) {
		_, ci := chunkLocation(t, c, id)
		ci.Added = 1000 // long ago
		if err := c.idx.SetChunkValue(id, ci.Encode()); err != nil {
			t.Fatal(err)
		}
	}
	touched := func(id chunkID) bool {
		_, ci := chunkLocation(t, c, id)
		return time.Now().Unix()-ci.Added < 60
	}
	age(refs[0].ID)
	if missing, err := c.MissingChunks(ctx, []chunkID{refs[0].ID}); err != nil || len(missing) != 0 {
		t.Fatalf("MissingChunks: %v, %v", missing, err)
	}
	if !touched(refs[0].ID) {
		t.Errorf("a chunk MissingChunks found was not touched")
	}
	// A chunk upload that finds a chunk stored leases it, and touches it
	// when it ends.
	age(refs[1].ID)
	_, parts := clientChunks(t, data)
	if err := c.PutChunk(ctx, refs[1].ID, parts[1]); err != nil {
		t.Fatal(err)
	}
	if !touched(refs[1].ID) {
		t.Errorf("a chunk an upload found was not touched")
	}
}

// A Reindex that fails after dropping the index leaves the cache refusing
// calls (ErrUnavailable) rather than answering from a partial index, until
// a Reindex succeeds.
func TestFailedReindexRefusesCalls(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	info := push(t, c, genData(970, 1<<20))
	c.idx.FailAfter(3) // the drop goes through, a write after it fails
	if err := c.Reindex(ctx); err == nil {
		t.Fatal("Reindex with a failing index succeeded")
	}
	if _, err := c.Stat(ctx, info.Digest); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Stat after a failed reindex: %v, want ErrUnavailable", err)
	}
	c.idx.FailAfter(0)
	if err := c.Reindex(ctx); err != nil {
		t.Fatal(err)
	}
	if got := pullDigest(t, c, info.Digest); got != info.Digest {
		t.Fatalf("after a good reindex: pulled %s", got)
	}
}
