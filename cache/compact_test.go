package cache

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend"
	cfs "github.com/cairnbuild/cairn/backend/fs"
	"github.com/opencontainers/go-digest"
)

// compactNow compacts every pack pushed before the run began (touches are
// whole seconds: a run starting in the same second as the push still
// counts it as older than a nanosecond) with no grace periods.
var compactNow = GCOptions{Grace: -1, PackGrace: -1, CompactAge: time.Nanosecond}

// compactAll compacts every pack and deletes the old ones.
func compactAll(t *testing.T, c *Cache) {
	t.Helper()
	for _, opts := range []GCOptions{compactNow, now} {
		if _, err := c.GC(t.Context(), opts); err != nil {
			t.Fatal(err)
		}
	}
}

// compactedLayer pushes layer, compacts it, and returns a chunk that is
// not the first of its frame, with its entry.
func compactedLayer(t *testing.T, c *Cache, layer []byte) (chunkID, chunkInfo) {
	t.Helper()
	push(t, c, layer)
	compactAll(t, c)
	var id chunkID
	var ci chunkInfo
	err := c.idx.ForEachChunk(func(i chunkID, info chunkInfo) error {
		if info.InFrame > 0 && id == (chunkID{}) {
			id, ci = i, info
		}
		return nil
	})
	if err != nil || id == (chunkID{}) {
		t.Fatalf("no chunk inside a frame: %v", err)
	}
	return id, ci
}

// versionsData returns n bytes made of one 48 KiB block of random bytes
// repeated with a few bytes changed in each copy: like the files of
// successive releases, every chunk differs (no deduplication), while a
// frame of several chunks holds the same bytes many times over and
// compresses far better than each chunk alone.
func versionsData(seed uint64, n int) []byte {
	var s [32]byte
	s[0], s[1], s[2] = byte(seed), byte(seed>>8), 17
	rng := rand.New(rand.NewChaCha8(s))
	base := randomData(seed+1000, 48<<10)
	out := make([]byte, 0, n)
	for len(out) < n {
		start := len(out)
		out = append(out, base...)
		for range 8 {
			out[start+rng.IntN(len(base))] = byte(rng.Uint32())
		}
	}
	return out[:n]
}

// Compaction rewrites cold packs into frames: the index moves to them,
// every layer reads back whole and in ranges (across frame boundaries), the
// stored bytes fall, the old packs go after the second grace period, and
// a verify and a reindex from the backend alone agree.
func TestCompactReadsBack(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	c.chunks.SetPackTarget(256 << 10)
	layers := [][]byte{versionsData(1, 3<<20), versionsData(2, 2<<20), genData(3, 1<<20)}
	for _, l := range layers {
		push(t, c, l)
	}
	before, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if before.CompactedChunks != 0 || before.IngestChunks != before.Chunks {
		t.Fatalf("before compaction: %+v", before)
	}
	packsBefore, bytesBefore := countPacks(t, store)

	// Hot packs stay as they are.
	rep, err := c.GC(ctx, GCOptions{Grace: -1, PackGrace: -1, CompactAge: time.Hour})
	if err != nil || len(rep.Compact) != 0 || rep.CompactedPacks != 0 {
		t.Fatalf("GC with a compact age of an hour: %d planned, %d compacted, %v", len(rep.Compact), rep.CompactedPacks, err)
	}

	rep, err = c.GC(ctx, compactNow)
	if err != nil {
		t.Fatal(err)
	}
	if rep.CompactedPacks != int64(packsBefore) || rep.MovedChunks != before.Chunks || rep.MarkedPacks != int64(packsBefore) {
		t.Fatalf("compaction: %d of %d packs, %d of %d chunks moved, %d marked; skipped %q",
			rep.CompactedPacks, packsBefore, rep.MovedChunks, before.Chunks, rep.MarkedPacks, rep.Skipped)
	}
	after, err := c.Stats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.CompactedChunks != before.Chunks || after.IngestChunks != 0 || after.IngestBytes != 0 {
		t.Fatalf("after compaction: %+v", after)
	}
	if after.StoredBytes*2 > before.StoredBytes {
		t.Errorf("compaction stores %d bytes of %d before: frames should hold at most half", after.StoredBytes, before.StoredBytes)
	}
	t.Logf("stored %d -> %d bytes (%.3f), packs %d (%d bytes) -> %d written bytes",
		before.StoredBytes, after.StoredBytes, float64(after.StoredBytes)/float64(before.StoredBytes), packsBefore, bytesBefore, rep.CompactWritten)
	checkCompacted(t, c, layers)

	// The old packs are marked: the next run deletes them.
	rep, err = c.GC(ctx, compactNow)
	if err != nil || rep.DeletedPacks != int64(packsBefore) || rep.CompactedPacks != 0 {
		t.Fatalf("second run: %d packs deleted (want %d), %d compacted, %v", rep.DeletedPacks, packsBefore, rep.CompactedPacks, err)
	}
	checkCompacted(t, c, layers)
	// Compacted packs whose chunks are all live have no dead bytes: a
	// frame counts once, whole, not as its chunks' rounded shares (with
	// those, every run rewrote them at a low ratio).
	dry := now
	dry.DryRun, dry.RewriteRatio = true, 1e-9
	if rep, err := c.GC(ctx, dry); err != nil || len(rep.Rewrite) != 0 {
		t.Fatalf("live compacted packs planned for a rewrite: %d, %v", len(rep.Rewrite), err)
	}
	vrep, err := c.Verify(ctx, VerifyOptions{})
	if err != nil || len(vrep.Problems) != 0 || vrep.Newly != 0 || vrep.Chunks != before.Chunks || vrep.Orphans != 0 {
		t.Fatalf("verify: %+v, %v", vrep, err)
	}
	if err := c.Reindex(ctx); err != nil {
		t.Fatal(err)
	}
	again, err := c.Stats(ctx)
	if err != nil || again.CompactedChunks != before.Chunks || again.StoredBytes != after.StoredBytes {
		t.Fatalf("after reindex: %+v (want %+v), %v", again, after, err)
	}
	checkCompacted(t, c, layers)
}

// checkCompacted reads every layer whole and in ranges that start and end
// inside chunks and frames.
func checkCompacted(t *testing.T, c *Cache, layers [][]byte) {
	t.Helper()
	checkLive(t, c, layers...)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, l := range layers {
		d := digest.FromBytes(l)
		for range 20 {
			off := rng.Int64N(int64(len(l)))
			n := rng.Int64N(int64(len(l))-off) + 1
			if got := pull(t, c, d, off, n); !bytes.Equal(got, l[off:off+n]) {
				t.Fatalf("layer %s, %d bytes at %d read back wrong", d, n, off)
			}
		}
	}
}

// A collection after compaction that finds most of a compacted pack dead
// rewrites it by compacting its live chunks again, out of their frames.
func TestCompactRewritesFrames(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	keep, drop := versionsData(5, 1<<20), versionsData(6, 3<<20)
	push(t, c, keep)
	info := push(t, c, drop)
	compactAll(t, c)
	if err := c.Delete(ctx, info.Digest); err != nil {
		t.Fatal(err)
	}
	_, bytesBefore := countPacks(t, store)
	rep, err := c.GC(ctx, now)
	if err != nil || rep.DeletedChunks == 0 {
		t.Fatalf("GC after delete: %+v, %v", rep, err)
	}
	if len(rep.Rewrite) == 0 || rep.CompactedPacks == 0 {
		t.Fatalf("a compacted pack mostly dead was not rewritten: %d rewrites, %d compacted; %q", len(rep.Rewrite), rep.CompactedPacks, rep.Skipped)
	}
	checkLive(t, c, keep)
	if _, err := c.GC(ctx, now); err != nil {
		t.Fatal(err)
	}
	_, bytesAfter := countPacks(t, store)
	if bytesAfter >= bytesBefore {
		t.Errorf("packs hold %d bytes after the rewrite, %d before", bytesAfter, bytesBefore)
	}
	checkLive(t, c, keep)
	if vrep, err := c.Verify(ctx, VerifyOptions{}); err != nil || len(vrep.Problems) != 0 || vrep.Newly != 0 {
		t.Fatalf("verify: %+v, %v", vrep, err)
	}
}

// A frame whose bytes are damaged quarantines the chunks read from it, and
// a read says so rather than return wrong bytes; a push of the layer heals
// them.
func TestCompactDamagedFrame(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	layer := versionsData(7, 2<<20)
	_, ci := compactedLayer(t, c, layer)
	// Damage the frame of a chunk, inside its payload.
	rewritePack(t, store, ci, func(body []byte) []byte {
		body[ci.Off+ci.Stored/2] ^= 0xff
		return body
	})
	inFrame := 0
	for _, e := range packTables(t, c, store)[packKey(ci.Pack)] {
		if e.Off == ci.Off {
			inFrame++
		}
	}
	rr, _, err := c.Open(ctx, digest.FromBytes(layer), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	_, err = got.ReadFrom(rr)
	rr.Close()
	if !isErr(err, ErrDataLoss) {
		t.Fatalf("read of a damaged frame: %v, want ErrDataLoss", err)
	}
	if !bytes.HasPrefix(layer, got.Bytes()) {
		t.Fatal("the read returned wrong bytes before failing")
	}
	// The read quarantined the chunks of the frame it wanted (from its
	// fetch goroutines, which may still run); a verify quarantines every
	// chunk the frame holds, and a late quarantine by the read is then a
	// no-op.
	rep, err := c.Verify(ctx, VerifyOptions{})
	if err != nil || len(rep.Quarantine) != inFrame {
		t.Fatalf("verify quarantined %d chunks, the frame holds %d: %v", len(rep.Quarantine), inFrame, err)
	}
	push(t, c, layer)
	checkLive(t, c, layer)
}

// A store written in pack format 1 (cache/testdata/store-v1: a split tar
// and a blob, pushed by the version before frames) is still read: reindexed
// from the backend alone, its layers pull back against their digests, and
// a compaction moves them into format 2 packs of frames.
func TestCompactReadsFormat1(t *testing.T) {
	ctx := t.Context()
	dir := t.TempDir()
	if err := os.CopyFS(dir, os.DirFS("testdata/store-v1")); err != nil {
		t.Fatal(err)
	}
	store, err := cfs.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	versions := packVersions(t, store)
	if !slices.Equal(versions, []byte{1, 1}) {
		t.Fatalf("the fixture's packs have versions %v, want two of version 1", versions)
	}
	c := openCache(t, t.TempDir(), store)
	if err := c.Reindex(ctx); err != nil {
		t.Fatal(err)
	}
	layers := map[digest.Digest]int64{
		"sha256:88a17753f98eae234e65185fe9cfd824f44ab43f9e2ca7fc812c9988d2c82eb0": 599552, // a tar, stored split
		"sha256:2868b67476be20645662df26ec745df66650496dcc5cc101950c8ce364590e53": 282000,
	}
	check := func() {
		t.Helper()
		for d, size := range layers {
			if got := pullDigest(t, c, d); got != d {
				t.Fatalf("layer %s pulls back as %s", d, got)
			}
			if got := pull(t, c, d, size/3, size/3); int64(len(got)) != size/3 {
				t.Fatalf("layer %s: a range of %d bytes reads %d", d, size/3, len(got))
			}
		}
	}
	check()
	compactAll(t, c)
	check()
	if versions := packVersions(t, store); len(versions) == 0 || slices.Contains(versions, 1) {
		t.Fatalf("after compaction the packs have versions %v, want only 2", versions)
	}
	st, err := c.Stats(ctx)
	if err != nil || st.IngestChunks != 0 || st.CompactedChunks == 0 {
		t.Fatalf("after compaction: %+v, %v", st, err)
	}
}

// packVersions returns the format version of every pack in store, from
// its footer.
func packVersions(t *testing.T, store backend.Store) []byte {
	t.Helper()
	var out []byte
	err := store.List(t.Context(), packPrefix, func(i backend.Info) error {
		rc, err := store.Open(t.Context(), i.Key, i.Size-16, 16)
		if err != nil {
			return err
		}
		defer rc.Close()
		footer, err := io.ReadAll(rc)
		if err != nil || len(footer) != 16 {
			return fmt.Errorf("footer of %s: %d bytes, %v", i.Key, len(footer), err)
		}
		out = append(out, footer[4])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}

// Concurrent reads of the compacted tier, each with its reader's frame
// cache evicting as it goes, return the right bytes and condemn nothing
// (a frame buffer handed back while a fetch still sliced it would fail
// verification and quarantine a good chunk).
func TestCompactConcurrentReads(t *testing.T) {
	c, _ := newCache(t)
	c.chunks.SetPackTarget(512 << 10)
	c.chunks.SetFrameCacheSize(1) // every new frame evicts one
	layers := [][]byte{versionsData(11, 6<<20), versionsData(12, 5<<20), genData(13, 3<<20)}
	for _, l := range layers {
		push(t, c, l)
	}
	compactAll(t, c)
	frames0, _ := c.FrameStats()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 3 {
				l := layers[(g+i)%len(layers)]
				if d := digest.FromBytes(l); pullDigest(t, c, d) != d {
					t.Errorf("layer %s reads back wrong", d)
				}
			}
		})
	}
	wg.Wait()
	if n := c.chunks.Quarantines(); n != 0 {
		t.Fatalf("%d chunks quarantined by concurrent reads", n)
	}
	if frames, _ := c.FrameStats(); frames == frames0 {
		t.Fatal("the reads decoded no frame: nothing compacted?")
	}
}

// A collection compacts at most CompactMax bytes of packs, oldest first;
// the next ones take the rest.
func TestCompactBudget(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	c.chunks.SetPackTarget(256 << 10)
	layers := [][]byte{versionsData(21, 1<<20), versionsData(22, 1<<20)}
	for _, l := range layers {
		push(t, c, l)
	}
	packs, _ := countPacks(t, store)
	opts := compactNow
	opts.CompactMax = 1 // one pack a run
	for i := range packs {
		rep, err := c.GC(ctx, opts)
		if err != nil || len(rep.Compact) != 1 || rep.CompactedPacks != 1 {
			t.Fatalf("run %d: %d planned, %d compacted (want 1), %v", i, len(rep.Compact), rep.CompactedPacks, err)
		}
	}
	rep, err := c.GC(ctx, opts)
	if err != nil || len(rep.Compact) != 0 {
		t.Fatalf("after %d runs: %d still planned, %v", packs, len(rep.Compact), err)
	}
	checkCompacted(t, c, layers)
}

// Verify checks each chunk of a frame where the index says it is: an
// entry naming the right record but the wrong place in its frame is a
// problem (and the read that trusts it fails, never returning wrong
// bytes).
func TestCompactVerifyPlaceInFrame(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	layer := versionsData(31, 2<<20)
	victim, ci := compactedLayer(t, c, layer)
	ci.InFrame = 0
	if err := c.idx.SetChunkValue(victim, ci.Encode()); err != nil {
		t.Fatal(err)
	}
	rep, err := c.Verify(ctx, VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) == 0 && rep.Newly == 0 {
		t.Fatalf("verify found nothing wrong with an entry at the wrong place in its frame: %+v", rep)
	}
	rr, _, err := c.Open(ctx, digest.FromBytes(layer), 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	_, err = got.ReadFrom(rr)
	rr.Close()
	if err == nil && !bytes.Equal(got.Bytes(), layer) {
		t.Fatal("the layer read back wrong bytes")
	}
}

// editsOf returns base with a few bytes changed in every 48 KiB: another
// version of the same content (no chunk in common with base, every chunk
// resembling one of base's).
func editsOf(base []byte, seed uint64) []byte {
	out := bytes.Clone(base)
	rng := rand.New(rand.NewPCG(seed, 99))
	for off := 0; off < len(out); off += 48 << 10 {
		for range 4 {
			out[off+rng.IntN(min(48<<10, len(out)-off))] ^= 0xff
		}
	}
	return out
}

// A layer compacted in a later run than an earlier version of it joins
// the earlier version's frames (hints name the compacted packs holding
// resembling chunks, and those are compacted again with the new chunks):
// compacting after each version stores about what compacting both at once
// does, not the two versions' sum.
func TestCompactJoinsEarlierFrames(t *testing.T) {
	v1 := append(randomData(41, 1<<20), genData(42, 1<<20)...)
	v2 := editsOf(v1, 1)
	once, _ := newCache(t)
	push(t, once, v1)
	push(t, once, v2)
	compactAll(t, once)
	oneShot, err := once.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}

	c, _ := newCache(t)
	push(t, c, v1)
	compactAll(t, c)
	alone, err := c.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	push(t, c, v2)
	rep, err := c.GC(t.Context(), compactNow)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GC(t.Context(), now); err != nil {
		t.Fatal(err)
	}
	if rep.RecompactedPacks == 0 {
		t.Errorf("the second compaction took no compacted pack again: %+v", rep)
	}
	later, err := c.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("v1 alone %d bytes; both, compacted at once %d, one after the other %d", alone.StoredBytes, oneShot.StoredBytes, later.StoredBytes)
	if later.StoredBytes > oneShot.StoredBytes*11/10 {
		t.Errorf("compacted one after the other: %d bytes; at once: %d", later.StoredBytes, oneShot.StoredBytes)
	}
	checkCompacted(t, c, [][]byte{v1, v2})
	if vrep, err := c.Verify(t.Context(), VerifyOptions{}); err != nil || len(vrep.Problems) != 0 || vrep.Newly != 0 {
		t.Fatalf("verify: %+v, %v", vrep, err)
	}

	// The hinted packs share CompactMax with the cold ones: with no room
	// left, none is taken again.
	tight, _ := newCache(t)
	push(t, tight, v1)
	compactAll(t, tight)
	push(t, tight, v2)
	opts := compactNow
	opts.CompactMax = 1 // the first cold pack takes it all
	rep, err = tight.GC(t.Context(), opts)
	if err != nil || rep.RecompactedPacks != 0 || rep.CompactedPacks != 1 {
		t.Fatalf("with no budget left: %d compacted, %d again, %v", rep.CompactedPacks, rep.RecompactedPacks, err)
	}
}
