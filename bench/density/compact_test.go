package density

import (
	"bufio"
	"compress/gzip"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/backend/fs"
	"github.com/cairnbuild/cairn/cache"
	"github.com/opencontainers/go-digest"
)

// TestCompaction measures issue 17's result on the bench corpus
// (bench/corpus.sh: five releases of a Go project, each a module-cache and
// a source layer) through the cache itself, on the fs backend:
//
//   - stored bytes after ingest (pushes of the tars, split and chunked as a
//     registry or API push stores them) and after compaction, against what a
//     plain registry stores (each tar gzipped at level 6, BuildKit's
//     default) and `zstd -3 --long=31` of the concatenated tars;
//   - push and pull throughput of the same layers, pull before and after
//     compaction (ingest tier against compacted tier) and random 64 KiB
//     range reads, in the same run;
//   - compaction throughput at full speed (MB of chunks per wall second and
//     per CPU second), then, on a second store, compaction at the background
//     pace while a pull loop serves, against the same pull loop alone.
//
// Skipped unless CAIRN_COMPACT=1 and CAIRN_CORPUS_DIR names a corpus:
//
//	CORPUS_DEBIAN=0 CORPUS_MODCACHE=full bench/corpus.sh /tmp/corpus
//	CAIRN_COMPACT=1 CAIRN_CORPUS_DIR=/tmp/corpus go test ./bench/density -run TestCompaction -v -timeout 60m
func TestCompaction(t *testing.T) {
	dir := os.Getenv("CAIRN_CORPUS_DIR")
	if testing.Short() || os.Getenv("CAIRN_COMPACT") != "1" || dir == "" {
		t.Skip("set CAIRN_COMPACT=1 and CAIRN_CORPUS_DIR (bench/corpus.sh) to run the issue 17 measurement")
	}
	ctx := t.Context()
	paths := corpusLayers(t, dir)
	var total int64
	for _, p := range paths {
		total += fileSize(t, p)
	}
	t.Logf("corpus: %d layers, %.1f MB", len(paths), mb(total))

	if os.Getenv("CAIRN_COMPACT_STEADY") == "1" {
		steadyState(t, paths)
		return
	}
	c, store, packs := openStore(t)
	pushMBs, firstMBs, digests := pushAll(t, c, paths)
	t.Logf("push, all layers: %.1f MB/s; the first (all of it new data): %.1f MB/s", pushMBs, firstMBs)
	last := digests[len(digests)-2] // the last release's module cache
	lastSize := fileSize(t, paths[len(paths)-2])

	ingest := stats(t, c)
	ingestDisk := du(t, store, packs)
	pullIngest := pullMBs(t, c, last, lastSize, 3)
	rangeIngest := rangeReads(t, c, last, lastSize, 200)

	cpu0, wall0 := cpuTime(), time.Now()
	rep, err := c.GC(ctx, cache.GCOptions{PackGrace: -1, CompactAge: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	cwall, ccpu := time.Since(wall0), cpuTime()-cpu0
	if _, err := c.GC(ctx, cache.GCOptions{PackGrace: -1}); err != nil { // the old packs go
		t.Fatal(err)
	}
	compacted := stats(t, c)
	compactedDisk := du(t, store, packs)
	f0, fb0 := c.FrameStats()
	pullCompacted := pullMBs(t, c, last, lastSize, 3)
	f1, fb1 := c.FrameStats()
	t.Logf("a pull of %.1f MB of the compacted tier decodes %d frames, %.1f MB (%.2fx the layer)",
		mb(lastSize), (f1-f0)/3, mb(fb1-fb0)/3, float64(fb1-fb0)/3/float64(lastSize))
	rangeCompacted := rangeReads(t, c, last, lastSize, 200)
	if got := pullDigest(t, c, last); got != last {
		t.Fatalf("after compaction layer %s reads back as %s", last, got)
	}

	if os.Getenv("CAIRN_COMPACT_QUICK") == "1" { // stored bytes only, for trying settings
		t.Logf("after ingest %.1f MB, after compaction %.1f MB (%.3f)", mb(ingest.StoredBytes), mb(compacted.StoredBytes),
			float64(compacted.StoredBytes)/float64(ingest.StoredBytes))
		return
	}
	registry := gzipBytes(t, paths)
	long := zstdBytes(t, paths, "-3", "--long=31", "-T1")
	zstdMBs := zstdSpeed(t, paths[0])

	t.Logf("| figure | bytes | vs ingest | vs registry | vs zstd --long=31 |")
	t.Logf("| --- | ---: | ---: | ---: | ---: |")
	row := func(name string, n int64) {
		t.Logf("| %s | %.1f MB | %.3f | %.3f | %.3f |", name, mb(n), float64(n)/float64(ingest.StoredBytes),
			float64(n)/float64(registry), float64(n)/float64(long))
	}
	row("tars", total)
	row("registry (gzip -6 of each tar)", registry)
	row("`zstd -3 --long=31` of the tars concatenated", long)
	row("cairn after ingest (index: stored bytes)", ingest.StoredBytes)
	row("cairn after ingest (packs on disk)", ingestDisk)
	row("cairn after compaction (index: stored bytes)", compacted.StoredBytes)
	row("cairn after compaction (packs on disk)", compactedDisk)
	t.Logf("tiers after ingest: ingest %d chunks %.1f MB, compacted %d chunks %.1f MB; after compaction: ingest %d %.1f MB, compacted %d %.1f MB",
		ingest.IngestChunks, mb(ingest.IngestBytes), ingest.CompactedChunks, mb(ingest.CompactedBytes),
		compacted.IngestChunks, mb(compacted.IngestBytes), compacted.CompactedChunks, mb(compacted.CompactedBytes))
	t.Logf("compaction at full speed: %d packs, %.1f MB of chunks in %.1f s wall, %.1f CPU-s: %.1f MB/s, %.1f MB per CPU-s; wrote %.1f MB",
		rep.CompactedPacks, mb(rep.CompactRead), cwall.Seconds(), ccpu.Seconds(), mb(rep.CompactRead)/cwall.Seconds(),
		mb(rep.CompactRead)/ccpu.Seconds(), mb(rep.CompactWritten))
	t.Logf("push of %s (new data) %.1f MB/s; C `zstd -T2 -3` of the same file %.1f MB/s (push %.2fx); push of all layers %.1f MB/s",
		filepath.Base(paths[0]), firstMBs, zstdMBs, firstMBs/zstdMBs, pushMBs)
	t.Logf("pull of %s (%.1f MB), median of 3: ingest tier %.0f MB/s, compacted %.0f MB/s (%.2fx)",
		filepath.Base(paths[len(paths)-2]), mb(lastSize), pullIngest, pullCompacted, pullCompacted/pullIngest)
	t.Logf("random 64 KiB range reads, mean of 200: ingest tier %v, compacted %v (%.2fx)",
		rangeIngest.Round(time.Microsecond), rangeCompacted.Round(time.Microsecond), float64(rangeCompacted)/float64(rangeIngest))

	// Compaction at the background pace on a second store while a pull
	// loop serves the first one (compacted already, so that the pulls'
	// own cost does not change while compaction runs).
	c2, _, _ := openStore(t)
	_, _, _ = pushAll(t, c2, paths)
	alone := pullLoop(t, c, last, lastSize, 20*time.Second, nil)
	var during float64
	cpu0, wall0 = cpuTime(), time.Now()
	var prep cache.GCReport
	var gcErr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		prep, gcErr = c2.GC(ctx, cache.GCOptions{PackGrace: -1, CompactAge: time.Nanosecond, CompactPace: cache.DefaultCompactPace})
	}()
	during = pullLoop(t, c, last, lastSize, 0, done)
	pwall, pcpu := time.Since(wall0), cpuTime()-cpu0
	if gcErr != nil {
		t.Fatal(gcErr)
	}
	t.Logf("compaction at pace %.2f while pulling: %d packs, %.1f MB in %.1f s (%.1f MB/s); its CPU at full speed over this wall time: %.2f of a core; process CPU meanwhile %.1f s",
		cache.DefaultCompactPace, prep.CompactedPacks, mb(prep.CompactRead), pwall.Seconds(), mb(prep.CompactRead)/pwall.Seconds(), ccpu.Seconds()/pwall.Seconds(), pcpu.Seconds())
	t.Logf("pull loop: alone %.0f MB/s, during paced compaction %.0f MB/s (%.2fx)", alone, during, during/alone)
}

// corpusLayers reads the layer paths bench/corpus.sh wrote.
func corpusLayers(t *testing.T, dir string) []string {
	b, err := os.ReadFile(filepath.Join(dir, "layers.txt"))
	if err != nil {
		t.Fatalf("%v (run bench/corpus.sh %s)", err, dir)
	}
	return strings.Fields(string(b))
}

func fileSize(t *testing.T, p string) int64 {
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

func openStore(t *testing.T) (*cache.Cache, backend.Store, string) {
	root := t.TempDir()
	store, err := fs.New(filepath.Join(root, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.Open(t.Context(), cache.Options{Dir: filepath.Join(root, "index"), Backend: store})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, store, filepath.Join(root, "blobs", "packs")
}

// pushAll pushes every layer, as a registry or API push of a tar does, and
// returns the push throughput (all bytes over all wall time), that of the
// first layer (all of it new data) and the digests.
func pushAll(t *testing.T, c *cache.Cache, paths []string) (all, first float64, _ []digest.Digest) {
	var ds []digest.Digest
	var total int64
	var wall time.Duration
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		size := fileSize(t, p)
		start := time.Now()
		info, err := c.Push(t.Context(), bufio.NewReaderSize(f, 1<<20), cache.PushOptions{Size: size, MediaType: "application/vnd.oci.image.layer.v1.tar"})
		wall += time.Since(start)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		if len(ds) == 0 {
			first = mb(size) / wall.Seconds()
		}
		total += size
		ds = append(ds, info.Digest)
	}
	return mb(total) / wall.Seconds(), first, ds
}

func stats(t *testing.T, c *cache.Cache) cache.Stats {
	st, err := c.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// du sums the sizes of the pack objects.
func du(t *testing.T, store backend.Store, _ string) int64 {
	var n int64
	if err := store.List(t.Context(), "packs/", func(i backend.Info) error { n += i.Size; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func pullOnce(t *testing.T, c *cache.Cache, d digest.Digest) (int64, time.Duration) {
	start := time.Now()
	rc, _, err := c.Open(context.Background(), d, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	return n, time.Since(start)
}

// pullMBs is the median throughput of n whole reads of layer d.
func pullMBs(t *testing.T, c *cache.Cache, d digest.Digest, size int64, n int) float64 {
	var speeds []float64
	for range n {
		got, took := pullOnce(t, c, d)
		if got != size {
			t.Fatalf("pull of %s: %d bytes of %d", d, got, size)
		}
		speeds = append(speeds, mb(got)/took.Seconds())
	}
	slices.Sort(speeds)
	return speeds[len(speeds)/2]
}

func pullDigest(t *testing.T, c *cache.Cache, d digest.Digest) digest.Digest {
	rc, _, err := c.Open(context.Background(), d, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	dg, err := digest.SHA256.FromReader(rc)
	if err != nil {
		t.Fatal(err)
	}
	return dg
}

// rangeReads is the mean time of n reads of 64 KiB at random offsets of
// layer d: what a client's ranged GET of a cold layer costs.
func rangeReads(t *testing.T, c *cache.Cache, d digest.Digest, size int64, n int) time.Duration {
	rng := rand.New(rand.NewPCG(7, 7))
	start := time.Now()
	for range n {
		off := rng.Int64N(size - 64<<10)
		rc, _, err := c.Open(context.Background(), d, off, 64<<10)
		if err != nil {
			t.Fatal(err)
		}
		if k, err := io.Copy(io.Discard, rc); err != nil || k != 64<<10 {
			t.Fatalf("range read: %d bytes, %v", k, err)
		}
		rc.Close()
	}
	return time.Since(start) / time.Duration(n)
}

// pullLoop pulls layer d over and over, for d (if positive) or until done
// closes, and returns the throughput.
func pullLoop(t *testing.T, c *cache.Cache, d digest.Digest, size int64, dur time.Duration, done chan struct{}) float64 {
	var total int64
	start := time.Now()
	for {
		n, _ := pullOnce(t, c, d)
		total += n
		if dur > 0 && time.Since(start) >= dur {
			break
		}
		if done != nil {
			select {
			case <-done:
				return mb(total) / time.Since(start).Seconds()
			default:
			}
		}
	}
	return mb(total) / time.Since(start).Seconds()
}

// gzipBytes is what a registry stores for the tars: each gzipped at level
// 6 (compress/gzip, BuildKit's default), two at a time.
func gzipBytes(t *testing.T, paths []string) int64 {
	var total atomic.Int64
	var wg sync.WaitGroup
	sem := make(chan struct{}, 2)
	for _, p := range paths {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			f, err := os.Open(p)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			var cw countWriter
			zw, _ := gzip.NewWriterLevel(&cw, 6)
			if _, err := io.Copy(zw, f); err != nil {
				t.Error(err)
			}
			zw.Close()
			total.Add(cw.n)
		})
	}
	wg.Wait()
	return total.Load()
}

// zstdBytes runs the zstd command with args over the tars concatenated and
// returns the size of its output.
func zstdBytes(t *testing.T, paths []string, args ...string) int64 {
	cmd := exec.Command("zstd", append([]string{"-c", "-q"}, args...)...)
	var cw countWriter
	cmd.Stdout = &cw
	pr, pw := io.Pipe()
	cmd.Stdin = pr
	go func() {
		for _, p := range paths {
			f, err := os.Open(p)
			if err != nil {
				pw.CloseWithError(err)
				return
			}
			_, err = io.Copy(pw, f)
			f.Close()
			if err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.Close()
	}()
	if err := cmd.Run(); err != nil {
		t.Fatalf("zstd %v: %v", args, err)
	}
	return cw.n
}

// zstdSpeed is the throughput of `zstd -T2 -3` over file p (read from the
// page cache: it was just pushed).
func zstdSpeed(t *testing.T, p string) float64 {
	start := time.Now()
	cmd := exec.Command("zstd", "-c", "-q", "-3", "-T2", p)
	cmd.Stdout = io.Discard
	if err := cmd.Run(); err != nil {
		t.Fatalf("zstd: %v", err)
	}
	return mb(fileSize(t, p)) / time.Since(start).Seconds()
}

// steadyState compacts after each release, as a fleet compacting every
// few hours does, rather than once after all five: a release's chunks
// share frames with earlier releases' only if compaction takes those
// compacted packs again (hints).
func steadyState(t *testing.T, paths []string) {
	c, _, _ := openStore(t)
	for i := 0; i+1 < len(paths); i += 2 {
		pushAll(t, c, paths[i:i+2])
		cpu0, wall0 := cpuTime(), time.Now()
		rep, err := c.GC(t.Context(), cache.GCOptions{PackGrace: -1, CompactAge: time.Nanosecond})
		if err != nil {
			t.Fatal(err)
		}
		cpu, wall := cpuTime()-cpu0, time.Since(wall0)
		if _, err := c.GC(t.Context(), cache.GCOptions{PackGrace: -1}); err != nil {
			t.Fatal(err)
		}
		st := stats(t, c)
		t.Logf("after release %d, compacted: %.1f MB stored (%d chunks, %.1f MB uncompressed); the run compacted %d packs, %d of them compacted before (hints), %.1f MB of chunks in %.1f s, %.1f CPU-s",
			i/2+1, mb(st.StoredBytes), st.Chunks, mb(st.UniqueBytes), rep.CompactedPacks, rep.RecompactedPacks, mb(rep.CompactRead), wall.Seconds(), cpu.Seconds())
	}
}
