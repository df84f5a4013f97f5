package cache

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend/backendtest"
	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
)

// The same layer pushed by 8 goroutines at once is stored once: each chunk
// is in one pack, each object is written once, there is one layer record, and the references
// count it once.
func TestConcurrentSamePush(t *testing.T) {
	inner := mem.New()
	var mu sync.Mutex
	puts := map[string]int{}
	store := &backendtest.Faulty{Store: inner, Fail: func(op backendtest.Op, key string, _ int) error {
		if op == backendtest.OpPut {
			mu.Lock()
			puts[key]++
			mu.Unlock()
		}
		return nil
	}}
	c := openCache(t, t.TempDir(), store)
	data := genData(80, scale(32<<20, 8<<20))
	var wg sync.WaitGroup
	infos := make([]LayerInfo, 8)
	errs := make([]error, 8)
	for i := range 8 {
		wg.Go(func() {
			infos[i], errs[i] = c.Push(t.Context(), bytes.NewReader(data), PushOptions{Size: int64(len(data))})
		})
	}
	wg.Wait()
	for i := range 8 {
		if errs[i] != nil {
			t.Fatalf("push %d: %v", i, errs[i])
		}
		if infos[i].Digest != digest.FromBytes(data) || infos[i].Created != infos[0].Created {
			t.Errorf("push %d: %+v, want the one record %+v", i, infos[i], infos[0])
		}
	}
	written := map[chunkID]int{}
	for _, entries := range packTables(t, c, inner) {
		for _, e := range entries {
			written[e.ID]++
		}
	}
	for id, n := range written {
		if n != 1 {
			t.Errorf("chunk %s written %d times", id, n)
		}
	}
	for k, n := range puts {
		if strings.HasPrefix(k, packPrefix) && n != 1 {
			t.Errorf("pack %s written %d times", k, n)
		}
	}
	chunkPuts := len(written)
	st, err := c.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if st.Layers != 1 || st.Chunks != int64(chunkPuts) || st.StoredBytes != infos[0].StoredSize {
		t.Errorf("Stats %+v: want 1 layer of %d chunks, %d stored bytes", st, chunkPuts, infos[0].StoredSize)
	}
	checkRefcounts(t, c)
	if got := pullDigest(t, c, infos[0].Digest); got != infos[0].Digest {
		t.Errorf("pulled %s", got)
	}
}

// Two layers sharing 90 % of their content, pushed at the same time, store
// about 10 % more than one of them.
func TestConcurrentSharedContent(t *testing.T) {
	c, _ := newCache(t)
	n := scale(32<<20, 8<<20)
	a := randomData(81, n) // incompressible, so stored bytes track logical ones
	b := bytes.Clone(a)
	copy(b[n/2:], randomData(82, n/10)) // replace 10 %, in the middle
	var wg sync.WaitGroup
	var ia, ib LayerInfo
	var ea, eb error
	wg.Go(func() { ia, ea = c.Push(t.Context(), bytes.NewReader(a), PushOptions{Size: -1}) })
	wg.Go(func() { ib, eb = c.Push(t.Context(), bytes.NewReader(b), PushOptions{Size: -1}) })
	wg.Wait()
	if ea != nil || eb != nil {
		t.Fatal(ea, eb)
	}
	st, err := c.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	extra := float64(st.StoredBytes)/float64(ia.StoredSize) - 1
	t.Logf("one layer stores %d bytes, both %d: %.1f %% extra", ia.StoredSize, st.StoredBytes, 100*extra)
	// Chunk boundaries resynchronise within one maximum chunk on each side
	// of the change.
	limit := 0.10 + 2*float64(c.params.Max)/float64(n)
	if extra > limit || extra < 0.09 {
		t.Errorf("the second layer adds %.1f %% stored bytes, want 10 %% to %.1f %%", 100*extra, 100*limit)
	}
	if st.LogicalBytes != 2*int64(n) {
		t.Errorf("logical bytes %d, want %d", st.LogicalBytes, 2*n)
	}
	for _, l := range []LayerInfo{ia, ib} {
		if got := pullDigest(t, c, l.Digest); got != l.Digest {
			t.Errorf("pulled %s, want %s", got, l.Digest)
		}
	}
	checkRefcounts(t, c)
}

// Pushes, pulls, steps, deletes and stats at the same time, for the race
// detector.
func TestConcurrentMixed(t *testing.T) {
	c, _ := newCache(t)
	common := genData(90, 1<<20)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 3 {
				data := append(bytes.Clone(common), genData(uint64(91+g*10+i), 300<<10)...)
				info, err := c.Push(t.Context(), bytes.NewReader(data), PushOptions{Size: -1})
				if err != nil {
					t.Error(err)
					return
				}
				if got := pullDigest(t, c, info.Digest); got != info.Digest {
					t.Errorf("pulled %s", got)
				}
				if _, err := c.Stats(t.Context()); err != nil {
					t.Error(err)
				}
				if i == 1 {
					if err := c.Delete(t.Context(), info.Digest); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
	checkRefcounts(t, c)
}

// Pushes and chunk uploads of overlapping content at the same time, with
// small packs (so that many are sealed for waiting sessions), a backend
// that is slow and fails one Put in 20, and pushes that hit their
// deadlines: nothing hangs, every committed layer reads back, every index
// entry is backed and the reference counts are exact.
func TestConcurrentFaultyMix(t *testing.T) {
	store := mem.New()
	var mu sync.Mutex
	rng := rand.New(rand.NewPCG(1, 2))
	f := &backendtest.Faulty{Store: store, Fail: func(op backendtest.Op, key string, call int) error {
		if op != backendtest.OpPut {
			return nil
		}
		mu.Lock()
		r := rng.IntN(20)
		d := time.Duration(rng.IntN(3)) * time.Millisecond
		mu.Unlock()
		time.Sleep(d)
		if r == 0 {
			return errInjected
		}
		return nil
	}}
	c := openCache(t, t.TempDir(), f)
	c.chunks.SetPackTarget(200 << 10)
	base := genData(500, scale(6<<20, 4<<20))
	var wg sync.WaitGroup
	done := make(chan struct{})
	go func() {
		select {
		case <-done:
		case <-time.After(90 * time.Second):
			panic("pushes and uploads still running after 90 s") // with every goroutine's stack
		}
	}()
	var committed sync.Map
	for i := 0; i < 6; i++ {
		data := append(append([]byte(nil), base[:(i%3+1)<<20]...), genData(uint64(600+i), 1<<20)...)
		data = append(data, base[3<<20:]...) // shared tail
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), time.Duration(50+i*100)*time.Millisecond)
			if i%2 == 0 {
				cancel()
				ctx = t.Context()
			} else {
				defer cancel()
			}
			info, err := c.Push(ctx, bytes.NewReader(data), PushOptions{Size: -1})
			switch {
			case err == nil:
				committed.Store(info.Digest, digest.FromBytes(data))
			case errors.Is(err, errInjected):
				t.Logf("push %d met an injected fault: %v", i, err)
			case i%2 == 1 && errors.Is(err, context.DeadlineExceeded):
				t.Logf("push %d hit its deadline: %v", i, err)
			default:
				t.Errorf("push %d met no injected fault and no deadline, but failed: %v", i, err)
			}
		})
		wg.Go(func() {
			u := c.NewChunkUpload(t.Context())
			var pg sync.WaitGroup
			for off := 0; off < len(data); off += 300 << 10 {
				ch := data[off:min(off+300<<10, len(data))]
				pg.Go(func() {
					if err := u.Put(t.Context(), chunkid.Sum(ch), ch); err != nil && !errors.Is(err, errInjected) {
						t.Errorf("upload %d: put met no injected fault, but failed: %v", i, err)
					}
				})
			}
			pg.Wait()
			if err := u.Close(); err != nil && !errors.Is(err, errInjected) {
				t.Errorf("upload %d: close met no injected fault, but failed: %v", i, err)
			}
		})
	}
	wg.Wait()
	close(done)
	f.Fail = nil
	committed.Range(func(k, v any) bool {
		if got := pullDigest(t, c, k.(digest.Digest)); got != v.(digest.Digest) {
			t.Errorf("layer %s pulled as %s", k, got)
		}
		return true
	})
	checkIndexBacked(t, c, store)
	checkRefcounts(t, c)
}
