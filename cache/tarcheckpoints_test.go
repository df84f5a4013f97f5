package cache

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/opencontainers/go-digest"
)

// smallFilesTar is a tar of n files of 0 to 2 KiB (every 97th a long name,
// in a PAX record; every 500th 200 KiB, spanning content chunks), and the
// offsets where its headers, contents and paddings start: a meta stream
// about half the tar's length.
func smallFilesTar(t testing.TB, n int) (data []byte, boundaries []int64) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(n), 13))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for i := range n {
		name := fmt.Sprintf("pkg%d/file%d.go", i%61, i)
		if i%97 == 0 {
			name = strings.Repeat("a-long-directory/", 8) + name
		}
		size := rng.IntN(2 << 10)
		if i%500 == 250 {
			size = 200 << 10
		}
		if i%11 == 0 {
			size = 0
		}
		tw.Flush() // the previous file's padding
		boundaries = append(boundaries, int64(buf.Len()))
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(size), ModTime: time.Unix(1700000000+int64(i), 0)}); err != nil {
			t.Fatal(err)
		}
		boundaries = append(boundaries, int64(buf.Len()))
		if _, err := tw.Write(genData(uint64(i), size)); err != nil {
			t.Fatal(err)
		}
		boundaries = append(boundaries, int64(buf.Len()))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), append(boundaries, int64(buf.Len()))
}

// readRange reads n bytes (-1: to the end) from offset of layer d.
func readRange(c *Cache, d digest.Digest, offset, n int64) ([]byte, error) {
	rc, _, err := c.Open(context.Background(), d, offset, n)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// metaBytes is the length of layer d's meta stream.
func metaBytes(t testing.TB, c *Cache, d digest.Digest) int64 {
	t.Helper()
	lr, _, err := c.idx.Layer(d)
	if err != nil || lr.Tar == nil {
		t.Fatalf("layer %s: %+v, %v", d, lr, err)
	}
	var n int64
	for _, e := range lr.Tar.Meta {
		n += e.Size
	}
	return n
}

// Range reads of a split tar of thousands of files, at every boundary
// between headers and contents and one byte either side, and at random
// offsets with random lengths (some to the end), are the tar's bytes:
// joined from the stream's start (no checkpoints), and from checkpoints.
func TestSplitTarRangesFromCheckpoints(t *testing.T) {
	data, boundaries := smallFilesTar(t, scale(4000, 1500))
	size := int64(len(data))
	for _, mode := range []struct {
		name      string
		walkLimit int64 // the meta a read walks rather than use checkpoints
		stride    int   // every stride-th boundary is read
	}{{"walk", math.MaxInt64, scale(17, 29)}, {"checkpoints", 1, scale(1, 5)}} {
		t.Run(mode.name, func(t *testing.T) {
			c := openCache(t, t.TempDir(), mem.New())
			c.checkpoints.walkLimit = mode.walkLimit
			info := push(t, c, data)
			if !info.SplitTar {
				t.Fatal("the tar is stored plain")
			}
			rng := rand.New(rand.NewPCG(1, 13))
			check := func(off, n int64) {
				t.Helper()
				end := size
				if n >= 0 {
					end = min(off+n, size)
				}
				got, err := readRange(c, info.Digest, off, n)
				if err != nil || !bytes.Equal(got, data[off:end]) {
					t.Fatalf("range %d+%d of %d: %d bytes, %v; not the tar's", off, n, size, len(got), err)
				}
			}
			reads := 0
			for i := 0; i < len(boundaries); i += mode.stride {
				for _, off := range []int64{boundaries[i] - 1, boundaries[i], boundaries[i] + 1} {
					if off < 0 || off > size {
						continue
					}
					check(off, rng.Int64N(3000))
					reads++
				}
			}
			for range 200 {
				off := rng.Int64N(size + 1)
				n := rng.Int64N(300 << 10)
				if rng.IntN(8) == 0 {
					n = -1
				}
				check(off, n)
				reads++
			}
			c.checkpoints.mu.Lock()
			_, listed := c.checkpoints.byLayer[info.Digest]
			c.checkpoints.mu.Unlock()
			if listed != (mode.name == "checkpoints") {
				t.Errorf("checkpoints kept for the layer: %v, in mode %s", listed, mode.name)
			}
			t.Logf("%d files, tar %d bytes, meta %d: %d range reads", len(boundaries)/3, size, metaBytes(t, c, info.Digest), reads)
		})
	}
}

// The point of checkpoints: once a big split tar has them, a 1 MiB range
// read near its end reads a little of its meta stream, not all of it.
func TestRangeReadNearEndUsesCheckpoints(t *testing.T) {
	data, _ := smallFilesTar(t, scale(12000, 6000))
	c := openCache(t, t.TempDir(), mem.New())
	info := push(t, c, data)
	meta := metaBytes(t, c, info.Digest)
	if meta < 3<<20 {
		t.Fatalf("a meta stream of %d bytes: too small to tell a walk from a checkpoint", meta)
	}
	const n = 1 << 20
	off := int64(len(data)) - n - 4096
	read := func() int64 {
		t.Helper()
		before := c.checkpoints.metaRead.Load()
		got, err := readRange(c, info.Digest, off, n)
		if err != nil || !bytes.Equal(got, data[off:off+n]) {
			t.Fatalf("range %d+%d: %d bytes, %v", off, n, len(got), err)
		}
		return c.checkpoints.metaRead.Load() - before
	}
	first, second := read(), read()
	t.Logf("tar %d bytes, meta %d; a 1 MiB range near the end read %d bytes of meta (walking it for checkpoints), then %d", len(data), meta, first, second)
	if first < meta {
		t.Errorf("the first range read read %d bytes of %d of meta: it did not walk the stream", first, meta)
	}
	if second >= 2<<20 {
		t.Errorf("a range read near the end read %d bytes of meta (of %d): the join did not start at a checkpoint", second, meta)
	}
}

// A meta stream that does not parse, or does not reach the range, is data
// loss through checkpoints as it is without; and a list of checkpoints is
// kept for the meta stream it came from: the same digest with another meta
// recipe (a layer pushed again, split otherwise) gets its own.
func TestCheckpointsOfBadMeta(t *testing.T) {
	data, _ := smallFilesTar(t, 3000)
	c := openCache(t, t.TempDir(), mem.New())
	info := push(t, c, data)
	lr, _, err := c.idx.Layer(info.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if len(lr.Tar.Meta) < 3 {
		t.Fatalf("a meta stream of %d chunks", len(lr.Tar.Meta))
	}
	off := lr.Tar.Size - 300<<10
	readRaw := func(lr *index.LayerRecord) error {
		rc, err := c.rawReader(context.Background(), lr, off, 100<<10)
		if err != nil {
			return err
		}
		defer rc.Close()
		got, err := io.ReadAll(rc)
		if err == nil && !bytes.Equal(got, data[off:off+100<<10]) {
			t.Fatal("wrong bytes, no error")
		}
		return err
	}
	if err := readRaw(lr); err != nil {
		t.Fatal(err) // and the good list is kept
	}
	for name, meta := range map[string][]index.RecipeEntry{
		"content as meta": lr.Recipe,
		"last chunk gone": lr.Tar.Meta[:len(lr.Tar.Meta)-1],
	} {
		bad := *lr
		tl := *lr.Tar
		tl.Meta = meta
		bad.Tar = &tl
		if err := readRaw(&bad); !isErr(err, ErrDataLoss) {
			t.Errorf("%s: %v, want ErrDataLoss", name, err)
		}
	}
	if err := readRaw(lr); err != nil {
		t.Fatalf("the good meta stream after the bad ones: %v", err)
	}
}

// Readers that come at once to a layer without checkpoints all read it
// right, whoever walks the meta stream; the cache keeps at most
// checkpointLayers lists.
func TestCheckpointsConcurrentAndBounded(t *testing.T) {
	data, _ := smallFilesTar(t, 3000)
	c := openCache(t, t.TempDir(), mem.New())
	info := push(t, c, data)
	size := int64(len(data))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			for range 10 {
				off := size/2 + rng.Int64N(size/2)
				got, err := readRange(c, info.Digest, off, 64<<10)
				if err != nil || !bytes.Equal(got, data[off:min(off+64<<10, size)]) {
					t.Errorf("range %d: %d bytes, %v", off, len(got), err)
					return
				}
			}
		})
	}
	wg.Wait()

	c.checkpoints.walkLimit = 1 // a list for each small tar below
	for i := range checkpointLayers + 6 {
		small, _ := smallFilesTar(t, 3+i)
		d := push(t, c, small).Digest
		if got, err := readRange(c, d, 700, -1); err != nil || !bytes.Equal(got, small[700:]) {
			t.Fatalf("small tar %d: %d bytes, %v", i, len(got), err)
		}
	}
	c.checkpoints.mu.Lock()
	kept, listed := c.checkpoints.lru.Len(), len(c.checkpoints.byLayer)
	c.checkpoints.mu.Unlock()
	if kept != checkpointLayers || listed != checkpointLayers {
		t.Errorf("%d lists kept, %d in the map; want %d", kept, listed, checkpointLayers)
	}
}
