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

// heapPeak samples the Go heap (bytes in live and not yet collected
// objects) until stop is called, and returns the peak.
func heapPeak() (stop func() uint64) {
	samples := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	var peak atomic.Uint64
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(2 * time.Millisecond)
		defer t.Stop()
		for {
			metrics.Read(samples)
			if v := samples[0].Value.Uint64(); v > peak.Load() {
				peak.Store(v)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() uint64 {
		close(done)
		wg.Wait()
		return peak.Load()
	}
}

// Invariant 5: memory is bounded by configuration, not by layer size. A
// generated 2 GiB layer is pushed to and pulled from the fs backend; the Go
// heap stays under 128 MiB.
func TestMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("2 GiB through the fs backend; skipped under -short")
	}
	if raceEnabled {
		t.Skip("too slow under the race detector")
	}
	const size = 2 << 30
	const limit = 128 << 20
	store, err := fs.New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	c := openCache(t, t.TempDir(), store)
	runtime.GC()
	stop := heapPeak()

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
	pushPeak := stop()

	runtime.GC()
	stop = heapPeak()
	start = time.Now()
	if got := pullDigest(t, c, info.Digest); got != info.Digest {
		t.Fatalf("pulled %s", got)
	}
	pullTime := time.Since(start)
	pullPeak := stop()

	t.Logf("2 GiB, %d chunks, %d MiB stored: push %v (heap peak %.1f MiB), pull %v (heap peak %.1f MiB)",
		info.Chunks, info.StoredSize>>20, pushTime.Round(time.Millisecond), float64(pushPeak)/(1<<20),
		pullTime.Round(time.Millisecond), float64(pullPeak)/(1<<20))
	for _, p := range []uint64{pushPeak, pullPeak} {
		if p > limit {
			t.Errorf("heap peak %.1f MiB, limit %d MiB", float64(p)/(1<<20), limit>>20)
		}
	}
}
