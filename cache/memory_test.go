package cache

import (
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"runtime"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend/fs"
	"github.com/opencontainers/go-digest"
)

// genStream is an endless-looking layer of n bytes generated on the fly:
// 64 KiB blocks of half random bytes, half text, so that every chunk is new
// and compresses about 2×, as a real layer does, and nothing is ever held
// whole.
type genStream struct {
	rng   *rand.ChaCha8
	left  int64
	block [64 << 10]byte
	pos   int
	n     uint64
}

const genText = "func (c *Cache) Push(ctx context.Context, r io.Reader) error { return nil }\n\t// cairn layer chunk\n"

func newGenStream(seed uint64, n int64) *genStream {
	var s [32]byte
	s[0] = byte(seed)
	g := &genStream{rng: rand.NewChaCha8(s), left: n, pos: 64 << 10}
	for i := 32 << 10; i < len(g.block); i += len(genText) {
		copy(g.block[i:], genText)
	}
	return g
}

func (g *genStream) Read(p []byte) (int, error) {
	if g.left == 0 {
		return 0, io.EOF
	}
	if g.pos == len(g.block) {
		g.rng.Read(g.block[:32<<10])
		g.n++
		for i := 32 << 10; i < len(g.block); i += 4 << 10 { // keep text blocks distinct
			g.block[i] = byte(g.n)
			g.block[i+1] = byte(g.n >> 8)
		}
		g.pos = 0
	}
	n := copy(p, g.block[g.pos:])
	if int64(n) > g.left {
		n = int(g.left)
	}
	g.pos += n
	g.left -= int64(n)
	return n, nil
}

// heapPeaks samples the Go heap until stop is called and returns two
// peaks: live, the heap the last GC found reachable, and total, live plus
// garbage not yet collected. The bound belongs on live: it is what the
// store holds, and it would grow with the layer if anything buffered one.
// total follows the GC's pacing (with GOGC=100 it may reach about twice
// live before a collection ends, later on a loaded machine), so it is only
// reported.
func heapPeaks() (stop func() (live, total uint64)) {
	samples := []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
	}
	var peakLive, peakTotal atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(samples)
			if v := samples[0].Value.Uint64(); v > peakLive.Load() {
				peakLive.Store(v)
			}
			if v := samples[1].Value.Uint64(); v > peakTotal.Load() {
				peakTotal.Store(v)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() (uint64, uint64) {
		close(done)
		wg.Wait()
		runtime.GC() // so that the last stretch of the run is counted in live
		metrics.Read(samples)
		if v := samples[0].Value.Uint64(); v > peakLive.Load() {
			peakLive.Store(v)
		}
		return peakLive.Load(), peakTotal.Load()
	}
}

// liveHeap is the heap reachable after full collections: three, since what
// a sync.Pool holds survives the first in its victim cache, and buffers
// earlier tests pooled would count as ours.
func liveHeap() uint64 {
	for range 3 {
		runtime.GC()
	}
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// Invariant 5: memory is bounded by configuration, not by layer size.
// Generated layers of 256 MiB and 2 GiB are pushed to and pulled from the
// fs backend, each through a cache of its own. The live Go heap the cache
// adds, index included, stays under 128 MiB throughout, and the peaks of
// the 2 GiB layer are those of the 256 MiB one (plus a little: the recipe
// and Badger's tables grow with the chunk count): nothing grows with the
// layer.
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("2.25 GiB through the fs backend; skipped under -short")
	}
	if raceEnabled {
		t.Skip("too slow under the race detector")
	}
	const limit = 128 << 20
	const growth = 16 << 20 // what 2 GiB may add over 256 MiB
	small := measureMemory(t, 256<<20)
	big := measureMemory(t, 2<<30)
	mib := func(n uint64) float64 { return float64(n) / (1 << 20) }
	for _, p := range []struct {
		what       string
		small, big uint64
	}{{"push", small.push, big.push}, {"pull", small.pull, big.pull}} {
		if p.big > limit || p.small > limit {
			t.Errorf("%s: live heap peaks %.1f MiB (256 MiB layer) and %.1f MiB (2 GiB), limit %d MiB", p.what, mib(p.small), mib(p.big), limit>>20)
		}
		if p.big > p.small+growth {
			t.Errorf("%s: live heap peak grows with the layer: %.1f MiB for 256 MiB, %.1f MiB for 2 GiB", p.what, mib(p.small), mib(p.big))
		}
	}
}

type memoryPeaks struct{ push, pull uint64 }

// measureMemory pushes and pulls a generated layer of size bytes through a
// new cache on the fs backend and returns the live heap peaks over the
// heap that was reachable before the cache opened.
func measureMemory(t *testing.T, size int64) memoryPeaks {
	store, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	// The bound is on what this cache holds: the heap other tests of the
	// binary left reachable is measured first and taken off.
	base := liveHeap()
	c, err := Open(context.Background(), Options{Dir: t.TempDir(), Backend: store})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	runtime.GC()
	stop := heapPeaks()

	h := sha256.New()
	start := time.Now()
	info, err := c.Push(context.Background(), io.TeeReader(newGenStream(1, size), h), PushOptions{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	pushTime := time.Since(start)
	if want := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); info.Digest != want {
		t.Fatalf("pushed %s, stream was %s", info.Digest, want)
	}
	pushLive, pushTotal := stop()

	runtime.GC()
	stop = heapPeaks()
	start = time.Now()
	if got := pullDigest(t, c, info.Digest); got != info.Digest {
		t.Fatalf("pulled %s", got)
	}
	pullTime := time.Since(start)
	pullLive, pullTotal := stop()

	over := func(n uint64) uint64 { return max(n, base) - base }
	pushLive, pushTotal, pullLive, pullTotal = over(pushLive), over(pushTotal), over(pullLive), over(pullTotal)
	mib := func(n uint64) float64 { return float64(n) / (1 << 20) }
	t.Logf("%d MiB, %d chunks, %d MiB stored, over a baseline of %.1f MiB: push %v (live heap peak %.1f MiB, with garbage %.1f MiB), pull %v (live %.1f MiB, with garbage %.1f MiB)",
		size>>20, info.Chunks, info.StoredSize>>20, mib(base), pushTime.Round(time.Millisecond), mib(pushLive), mib(pushTotal),
		pullTime.Round(time.Millisecond), mib(pullLive), mib(pullTotal))
	return memoryPeaks{push: pushLive, pull: pullLive}
}
