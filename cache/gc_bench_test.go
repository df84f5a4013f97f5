package cache

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cfs "github.com/cairnbuild/cairn/backend/fs"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// The shape of the store the collection benchmarks mark: issue 15 asks for
// 1 000 000 chunks and 10 000 layers.
const (
	gcBenchPerPack  = 62  // chunks per pack: 4 MiB packs (PackTarget) of 64 KiB records
	gcBenchPerLayer = 100 // chunk entries per layer: 10 000 layers for 1M chunks
	gcBenchShared   = 8   // of them taken from a pool every layer shares (a base image)
)

// gcBenchChunks is the number of chunk entries of the benchmarks' store:
// CAIRN_BENCH_GC_CHUNKS if set (1000000 is issue 15's size), else 100 000,
// or 20 000 under -short.
func gcBenchChunks(b *testing.B) int {
	if s := os.Getenv("CAIRN_BENCH_GC_CHUNKS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 10*gcBenchPerPack {
			b.Fatalf("CAIRN_BENCH_GC_CHUNKS=%q: want a number of at least %d", s, 10*gcBenchPerPack)
		}
		return n
	}
	if testing.Short() {
		return 20_000
	}
	return 100_000
}

// gcBenchStore is what buildGCStore made, and what a plan over it must
// find.
type gcBenchStore struct {
	chunks, packs, layers int
	live, dead            int // chunk entries
	deletePacks           int // wholly dead packs
	rewritePacks          int // packs three quarters dead
	bytes                 int64
}

// buildGCStore fills c's index with n chunk entries in packs of
// gcBenchPerPack and with layers referencing most of them, through the
// index's own transactions, and puts a placeholder for every pack in the
// fs backend at storeDir, extended (sparse) to the size the pack would
// have: a dry-run plan lists the packs' sizes and never reads them.
//
// Which chunks are dead (referenced by no layer, and as old as the rest:
// with no grace period they are dead to the plan): every chunk of one pack
// in 20 (deleted), three in four of another pack in 20 (rewritten), and one
// chunk in 50 of the other packs (left). That is about 10 % of the entries.
// Chunk IDs are hashes, so a pack's chunks are scattered over the index's
// key order, as in a real store.
func buildGCStore(b *testing.B, c *Cache, storeDir string, n int) gcBenchStore {
	b.Helper()
	ctx := context.Background()
	st := gcBenchStore{chunks: n, packs: (n + gcBenchPerPack - 1) / gcBenchPerPack}
	ids := make([]chunkid.ID, n)
	sizes := make([]int64, n)
	live := make([]int, 0, n)
	for i := range ids {
		var seed [16]byte
		binary.LittleEndian.PutUint64(seed[:], uint64(i))
		copy(seed[8:], "gc-bench")
		ids[i] = chunkid.Sum(seed[:])
		// 64 KiB to 1 MiB, the chunker's bounds.
		sizes[i] = 64<<10 + int64(binary.LittleEndian.Uint32(ids[i][:]))%(960<<10)
		p, j := i/gcBenchPerPack, i%gcBenchPerPack
		var dead bool
		switch p % 20 {
		case 0:
			dead = true
		case 1:
			dead = j%4 != 0
		default:
			dead = i%50 == 7
		}
		if dead {
			st.dead++
		} else {
			live = append(live, i)
		}
	}
	st.live = len(live)
	for p := 0; p < st.packs; p += 20 {
		st.deletePacks++
		if p+1 < st.packs {
			st.rewritePacks++
		}
	}

	// The entries, one transaction per pack as a push writes them, and
	// the packs' placeholders.
	packIDs := make([]pack.ID, st.packs)
	packSizes := make([]int64, st.packs)
	for p := range packIDs {
		binary.LittleEndian.PutUint64(packIDs[p][:], uint64(p))
		copy(packIDs[p][8:], "gcbench!")
	}
	var g errgroup.Group
	g.SetLimit(16) // concurrent commits share Badger's fsyncs
	for p := range st.packs {
		g.Go(func() error {
			lo, hi := p*gcBenchPerPack, min((p+1)*gcBenchPerPack, n)
			entries := make([]pack.Entry, 0, hi-lo)
			var off int64
			for i := lo; i < hi; i++ {
				stored := int64(pack.HeaderSize) + sizes[i]/4 // 4× compressible
				entries = append(entries, pack.Entry{ID: ids[i], Off: off, Stored: stored, Size: sizes[i]})
				off += stored
			}
			if err := c.idx.AddChunks(packIDs[p], entries); err != nil {
				return err
			}
			size := off + int64(len(entries)*pack.EntrySize+pack.FooterSize)
			packSizes[p] = size
			key := pack.Key(packIDs[p])
			placeholder := []byte("cairn gc benchmark placeholder\n")
			if err := c.store.Put(ctx, key, bytes.NewReader(placeholder), int64(len(placeholder))); err != nil {
				return err
			}
			// The fs backend's layout (backend/fs/path.go): every
			// directory segment of the key ends in "+".
			h := packIDs[p].String()
			return os.Truncate(filepath.Join(storeDir, strings.TrimSuffix(pack.Prefix, "/")+"+", h[:2]+"+", h), size)
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatalf("build the packs: %v", err)
	}
	for p := range packIDs {
		st.bytes += packSizes[p]
	}
	if info, err := c.store.Stat(ctx, pack.Key(packIDs[0])); err != nil || info.Size != packSizes[0] {
		b.Fatalf("placeholder pack: %+v, %v; want %d bytes", info, err, packSizes[0])
	}

	// The layers: consecutive runs of the live chunks (a layer's chunks
	// were written together, into the same packs), and a few chunks of a
	// pool all layers share.
	st.layers = max(1, n/gcBenchPerLayer)
	own := len(live) / st.layers
	pool := live[:min(len(live), 2000)]
	created := time.Now()
	for l := range st.layers {
		g.Go(func() error {
			rng := rand.New(rand.NewPCG(uint64(l), 15))
			run := live[l*own : (l+1)*own]
			if l == st.layers-1 {
				run = live[l*own:]
			}
			lr := &index.LayerRecord{
				Digest:    gcBenchLayer(l),
				MediaType: "application/vnd.oci.image.layer.v1.tar",
				Created:   created,
				Recipe:    make([]index.RecipeEntry, 0, len(run)+gcBenchShared),
				// Half the layers came through the registry.
				Unrooted: l%2 == 0,
			}
			add := func(i int) {
				lr.Recipe = append(lr.Recipe, index.RecipeEntry{ID: ids[i], Size: sizes[i]})
				lr.Size += sizes[i]
			}
			for k := 0; k < gcBenchShared; k++ {
				add(pool[rng.IntN(len(pool))])
			}
			for _, i := range run {
				add(i)
			}
			_, err := c.idx.CommitLayer(lr, nil)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatalf("commit the layers: %v", err)
	}
	buildGCRegistry(b, c, st.layers)
	return st
}

func gcBenchLayer(l int) digest.Digest { return digest.FromString(fmt.Sprintf("gc bench layer %d", l)) }

// gcBenchRepos is the number of repositories of the benchmarks' store.
const gcBenchRepos = 100

// buildGCRegistry gives the registry's layers (the even ones) to
// gcBenchRepos repositories: linked, and referenced by image manifests of
// five layers each, one tag a manifest, one manifest in ten untagged (and
// young, so the plan keeps it: every chunk stays as the plan expects).
// The manifests' own bytes are layers with no chunks.
func buildGCRegistry(b *testing.B, c *Cache, layers int) {
	b.Helper()
	now := time.Now()
	var g errgroup.Group
	g.SetLimit(16)
	for r := range gcBenchRepos {
		g.Go(func() error {
			repo := fmt.Sprintf("bench/app%d", r)
			var refs []index.Ref
			m := 0
			flush := func() error {
				md := digest.FromString(fmt.Sprintf("gc bench manifest %s %d", repo, m))
				if _, err := c.idx.CommitLayer(&index.LayerRecord{Digest: md, MediaType: ociManifestType, Created: now, Unrooted: true}, nil); err != nil {
					return err
				}
				var tags []string
				if m%10 != 9 {
					tags = []string{fmt.Sprintf("t%d", m)}
				}
				mr := index.ManifestRecord{MediaType: ociManifestType, Refs: refs}
				if err := c.idx.PutManifest(repo, md, mr, tags, func(index.Ref) bool { return true }, now); err != nil {
					return err
				}
				refs, m = nil, m+1
				return nil
			}
			for l := 2 * r; l < layers; l += 2 * gcBenchRepos {
				d := gcBenchLayer(l)
				if err := c.idx.LinkBlob(repo, d, now); err != nil {
					return err
				}
				refs = append(refs, index.Ref{Digest: d, Size: 1})
				if len(refs) == 5 {
					if err := flush(); err != nil {
						return err
					}
				}
			}
			if len(refs) > 0 {
				return flush()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatalf("build the repositories: %v", err)
	}
}

// openGCBench opens a cache on the fs backend in a temporary directory
// with n chunk entries (buildGCStore), closes it and opens it again, so
// that what the build left in memory is gone, and returns it with the
// backend's directory.
func openGCBench(b *testing.B, n int) (*Cache, string, gcBenchStore) {
	b.Helper()
	dir, storeDir := b.TempDir(), b.TempDir()
	store, err := cfs.New(storeDir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { store.Close() })
	start := time.Now()
	c := openCache(b, dir, store)
	st := buildGCStore(b, c, storeDir, n)
	if err := c.Close(); err != nil {
		b.Fatal(err)
	}
	c = openCache(b, dir, store)
	b.Logf("built %d chunk entries (%d live) in %d packs of %.1f GiB (sparse) and %d layers in %v",
		st.chunks, st.live, st.packs, float64(st.bytes)/(1<<30), st.layers, time.Since(start).Round(time.Second))
	return c, storeDir, st
}

// gcBenchPlan is the benchmarks' collection: the plan alone (the mark),
// with no grace periods, so that it classifies every entry.
var gcBenchPlan = GCOptions{DryRun: true, Grace: -1, PackGrace: -1}

// BenchmarkGCPlan times a collection's plan (its mark: list the packs,
// walk every chunk entry of the index, read the marked packs) over a store
// of CAIRN_BENCH_GC_CHUNKS chunk entries (default 100 000, 20 000 under
// -short; issue 15's goal is for 1000000) in packs of 62 and layers of 100
// (10 000 layers for 1M), on the fs backend. The store is built once,
// outside the timer, through the index's transactions (see buildGCStore):
// at 1M that takes about a minute.
//
// Besides the time per plan it reports chunks/s; cpu-s per plan (CPU of
// all threads: on a shared machine the wall clock also measures the
// neighbours); the Go heap in use before the plans (base-heap-MiB) and its
// peak while they run (peak-heap-MiB), sampled every 2 ms through
// runtime/metrics; the peaks of the process's anonymous and file-backed
// resident memory sampled every 10 ms from /proc/self/status
// (peak-anon-MiB, peak-file-MiB: Badger maps its tables, so the walk's
// file pages count as resident, though the kernel may drop them); and
// the process's peak RSS (VmHWM) while they run, reset before the first
// plan through /proc/self/clear_refs (peak-rss-MiB; if the reset fails,
// as in a container that forbids it, it includes the build and the
// benchmark logs so).
func BenchmarkGCPlan(b *testing.B) {
	n := gcBenchChunks(b)
	c, _, st := openGCBench(b, n)
	ctx := context.Background()

	// One plan outside the timer checks the store's shape.
	rep, err := c.GC(ctx, gcBenchPlan)
	if err != nil {
		b.Fatal(err)
	}
	if rep.UnreachedLayers != 0 {
		b.Fatalf("plan: %d registry layers unreached, want none", rep.UnreachedLayers)
	}
	if rep.Chunks != int64(st.chunks) || rep.LiveChunks != int64(st.live) || rep.DeadChunks != int64(st.dead) ||
		rep.Packs != int64(st.packs) || len(rep.Delete) != st.deletePacks || len(rep.Rewrite) != st.rewritePacks {
		b.Fatalf("plan: %d chunks (%d live, %d dead, %d young), %d packs, delete %d, rewrite %d; want %d chunks (%d live, %d dead), %d packs, delete %d, rewrite %d",
			rep.Chunks, rep.LiveChunks, rep.DeadChunks, rep.YoungChunks, rep.Packs, len(rep.Delete), len(rep.Rewrite),
			st.chunks, st.live, st.dead, st.packs, st.deletePacks, st.rewritePacks)
	}
	rep = GCReport{}

	runtime.GC()
	debug.FreeOSMemory()
	base := heapInUse()
	hwmReset := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) == nil
	if !hwmReset {
		b.Log("cannot reset VmHWM: peak-rss-MiB includes the build")
	}
	sampler := sampleMemory()
	cpu := cpuTime()
	plans := 0
	for b.Loop() {
		if rep, err = c.GC(ctx, gcBenchPlan); err != nil {
			b.Fatal(err)
		}
		plans++
	}
	cpu = cpuTime() - cpu
	peak := sampler.stop()
	sec := b.Elapsed().Seconds() / float64(plans)
	b.ReportMetric(sec, "s/plan")
	b.ReportMetric(float64(rep.Chunks)/sec, "chunks/s")
	b.ReportMetric(cpu.Seconds()/float64(plans), "cpu-s/plan")
	b.ReportMetric(mib(base), "base-heap-MiB")
	b.ReportMetric(mib(peak.heap), "peak-heap-MiB")
	b.ReportMetric(mib(peak.anon), "peak-anon-MiB")
	b.ReportMetric(mib(peak.file), "peak-file-MiB")
	if hwm, ok := procStatus()["VmHWM"]; ok {
		b.ReportMetric(mib(hwm), "peak-rss-MiB")
	}
}

func mib(n uint64) float64 { return float64(n) / (1 << 20) }

// heapInUse is the Go heap in spans in use (MemStats.HeapInuse), read
// without stopping the world.
func heapInUse() uint64 {
	s := []metrics.Sample{
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
	}
	metrics.Read(s)
	return s[0].Value.Uint64() + s[1].Value.Uint64()
}

// procStatus returns the memory lines of /proc/self/status in bytes, by
// name (VmHWM, VmRSS, RssAnon, RssFile...); nothing where there is no
// /proc.
func procStatus() map[string]uint64 {
	out := map[string]uint64{}
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return out
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		kb, unit, _ := strings.Cut(strings.TrimSpace(rest), " ")
		if !ok || unit != "kB" {
			continue
		}
		if v, err := strconv.ParseUint(kb, 10, 64); err == nil {
			out[name] = v << 10
		}
	}
	return out
}

type memPeaks struct{ heap, anon, file uint64 }

type memSampler struct {
	done  chan struct{}
	peaks chan memPeaks
}

// sampleMemory records the peaks of the Go heap in use (every 2 ms) and
// of the process's resident memory (every 10 ms) until stop.
func sampleMemory() *memSampler {
	s := &memSampler{done: make(chan struct{}), peaks: make(chan memPeaks)}
	go func() {
		var p memPeaks
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for i := 0; ; i++ {
			p.heap = max(p.heap, heapInUse())
			if i%5 == 0 {
				st := procStatus()
				p.anon, p.file = max(p.anon, st["RssAnon"]), max(p.file, st["RssFile"])
			}
			select {
			case <-t.C:
			case <-s.done:
				s.peaks <- p
				return
			}
		}
	}()
	return s
}

func (s *memSampler) stop() memPeaks {
	close(s.done)
	return <-s.peaks
}

// BenchmarkPullDuringGC pulls and pushes the 64 MiB benchmark layer on
// the fs backend, in a cache that also holds BenchmarkGCPlan's store of
// CAIRN_BENCH_GC_CHUNKS entries, with no collection running ("idle"),
// with plans (GC dry runs, the mark) back to back in another goroutine
// ("gc"), and with plans paced as the background collection's are
// (DefaultBackgroundPace) back to back ("paced"). Issue 15 asks for at least 0.8× the idle throughput while a
// collection runs; on two cores the mark competes for CPU with the
// transfer, and this measures what that costs, and what pacing the mark
// saves. The gc and paced runs report their throughput as a share of
// the idle run's just before (x-idle; run with -count 1, several times,
// so that each ratio compares neighbours in time on a shared machine) and
// the wall time of the marks that completed meanwhile (s/mark; absent if
// none did: run long enough, -benchtime 10s at 1M).
func BenchmarkPullDuringGC(b *testing.B) {
	c, _, _ := openGCBench(b, gcBenchChunks(b))
	data := bytes.Clone(benchLayer(b))
	info := push(b, c, data)
	ctx := context.Background()

	marks := map[string]func() error{
		"idle": nil,
		"gc":   func() error { _, err := c.GC(ctx, gcBenchPlan); return err },
		"paced": func() error {
			opts := gcBenchPlan
			opts.Pace = DefaultBackgroundPace
			_, err := c.GC(ctx, opts)
			return err
		},
	}
	// during runs fn's loop while mark runs back to back, and reports its
	// throughput against the last idle run of the same transfer.
	idle := map[string]float64{}
	during := func(b *testing.B, transfer, mode string, fn func()) {
		var (
			stop    atomic.Bool
			wg      sync.WaitGroup
			n       atomic.Int64 // marks completed while fn looped
			marking atomic.Int64 // their nanoseconds
			mark    = marks[mode]
		)
		if mark != nil {
			wg.Go(func() {
				for !stop.Load() {
					start := time.Now()
					if err := mark(); err != nil {
						b.Error(err)
						return
					}
					if !stop.Load() {
						marking.Add(int64(time.Since(start)))
						n.Add(1)
					}
				}
			})
			time.Sleep(50 * time.Millisecond) // the mark under way
		}
		b.SetBytes(int64(len(data)))
		for b.Loop() {
			fn()
		}
		stop.Store(true)
		wg.Wait()
		mbs := float64(len(data)) * float64(b.N) / b.Elapsed().Seconds() / 1e6
		if mark == nil {
			idle[transfer] = mbs
			return
		}
		if n := n.Load(); n > 0 {
			b.ReportMetric(time.Duration(marking.Load()).Seconds()/float64(n), "s/mark")
		}
		if idle[transfer] > 0 {
			b.ReportMetric(mbs/idle[transfer], "x-idle")
		}
	}
	modes := []string{"idle", "gc", "paced"}
	for _, mode := range modes {
		b.Run("pull/"+mode, func(b *testing.B) {
			during(b, "pull", mode, func() {
				rc, _, err := c.Open(ctx, info.Digest, 0, -1)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, rc); err != nil {
					b.Fatal(err)
				}
				rc.Close()
			})
		})
	}
	round := 1
	for _, mode := range modes {
		b.Run("push/"+mode, func(b *testing.B) {
			during(b, "push", mode, func() {
				b.StopTimer()
				mutate(data, round) // new content every round, in every mode
				round++
				b.StartTimer()
				if _, err := c.Push(ctx, bytes.NewReader(data), PushOptions{Size: int64(len(data))}); err != nil {
					b.Fatal(err)
				}
			})
		})
	}
}
