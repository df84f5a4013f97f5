package cache

import (
	"bytes"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend/backendtest"
	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/opencontainers/go-digest"
)

// Invariant 1: what a pull returns hashes to the digest that was pushed.
func TestRoundTrip(t *testing.T) {
	c, _ := newCache(t)
	sizes := []struct {
		n      int
		reason string
	}{
		{0, "empty layer: no chunks"},
		{1, "one byte"},
		{64<<10 - 1, "below the chunker's minimum"},
		{64 << 10, "exactly the minimum"},
		{1 << 20, "exactly the maximum chunk"},
		{1<<20 + 1, "one byte over the maximum"},
		{3<<20 + 17, "several chunks, ragged end"},
		{scale(64<<20, 8<<20), "large layer"},
	}
	for i, tc := range sizes {
		data := genData(uint64(i+1), tc.n)
		info := push(t, c, data)
		if info.Size != int64(tc.n) {
			t.Errorf("%s: Size %d, want %d", tc.reason, info.Size, tc.n)
		}
		if got := pullDigest(t, c, info.Digest); got != info.Digest {
			t.Errorf("%s: pulled %s, pushed %s", tc.reason, got, info.Digest)
		}
		st, err := c.Stat(t.Context(), info.Digest)
		if err != nil || st.Size != info.Size || st.Chunks != info.Chunks || st.MediaType != DefaultMediaType {
			t.Errorf("%s: Stat = %+v, %v; want %+v", tc.reason, st, err, info)
		}
		refs, err := c.Chunks(t.Context(), info.Digest)
		if err != nil {
			t.Fatal(err)
		}
		var sum int64
		for _, r := range refs {
			sum += r.Size
		}
		if sum != info.Size || len(refs) != info.Chunks {
			t.Errorf("%s: recipe of %d chunks adds up to %d, want %d chunks, %d bytes", tc.reason, len(refs), sum, info.Chunks, info.Size)
		}
	}
}

// Range reads at and around every chunk boundary, and at the ends.
func TestRangeReads(t *testing.T) {
	c, _ := newCache(t)
	data := genData(7, 5<<20+333)
	info := push(t, c, data)
	refs, err := c.Chunks(t.Context(), info.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) < 3 {
		t.Fatalf("want several chunks, got %d", len(refs))
	}
	size := int64(len(data))
	edges := []int64{0, size}
	var off int64
	for _, r := range refs {
		off += r.Size
		edges = append(edges, off)
	}
	for _, e := range edges {
		for _, o := range []int64{e - 1, e, e + 1} {
			if o < 0 || o > size {
				continue
			}
			for _, l := range []int64{0, 1, 2, 300 << 10, -1} {
				got := pull(t, c, info.Digest, o, l)
				end := size
				if l >= 0 && o+l < size {
					end = o + l
				}
				if !bytes.Equal(got, data[o:end]) {
					t.Fatalf("range (%d, %d): got %d bytes, want %d (data differs)", o, l, len(got), end-o)
				}
			}
		}
	}
	if _, _, err := c.Open(t.Context(), info.Digest, size+1, -1); !isErr(err, ErrOutOfRange) {
		t.Errorf("Open past the end: %v, want ErrOutOfRange", err)
	}
	if _, _, err := c.Open(t.Context(), info.Digest, -1, -1); !isErr(err, ErrOutOfRange) {
		t.Errorf("Open at -1: %v, want ErrOutOfRange", err)
	}
}

// Real tar files: the Go distribution's sources, written as a layer tar.
func TestRealTar(t *testing.T) {
	c, _ := newCache(t)
	data := sourceTar(t, "", scale(48<<20, 6<<20), time.Unix(1700000000, 0))
	if len(data) < 1<<20 {
		t.Skipf("GOROOT/src gave only %d bytes", len(data))
	}
	info := push(t, c, data)
	if got := pullDigest(t, c, info.Digest); got != digest.FromBytes(data) {
		t.Fatalf("tar: pulled %s, want %s", got, info.Digest)
	}
	ratio := float64(info.Size) / float64(info.StoredSize)
	t.Logf("tar of %d bytes: %d chunks, stored %d bytes (%.2f×)", info.Size, info.Chunks, info.StoredSize, ratio)
	if ratio < 2 {
		t.Errorf("a source tar compresses only %.2f×", ratio)
	}
}

// A pull reads neighbouring chunks of a pack with one ranged read, and
// what comes back is still byte-exact, whatever the range.
func TestPullReadsRuns(t *testing.T) {
	inner := mem.New()
	var opens atomic.Int64
	store := &backendtest.Faulty{Store: inner, Fail: func(op backendtest.Op, key string, _ int) error {
		if op == backendtest.OpOpen && strings.HasPrefix(key, packPrefix) {
			opens.Add(1)
		}
		return nil
	}}
	// One worker: the push stores chunks in recipe order, so the runs, and
	// the count of ranged reads, do not depend on the scheduler.
	c, err := Open(t.Context(), Options{Dir: t.TempDir(), Backend: store, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := genData(140, 8<<20)
	info := push(t, c, data)
	refs, err := c.Chunks(t.Context(), info.Digest)
	if err != nil {
		t.Fatal(err)
	}
	// Runs: up to 8 consecutive chunks of one pack, spanning at most 4 MiB.
	want := 0
	for i := 0; i < len(refs); want++ {
		_, first := chunkLocation(t, c, refs[i].ID)
		span := first.Stored
		k := 1
		for ; k < 8 && i+k < len(refs); k++ {
			_, ci := chunkLocation(t, c, refs[i+k].ID)
			if ci.Pack != first.Pack || ci.Off != first.Off+span || span+ci.Stored > 4<<20 {
				break
			}
			span += ci.Stored
		}
		i += k
	}
	opens.Store(0)
	if got := pullDigest(t, c, info.Digest); got != info.Digest {
		t.Fatalf("pulled %s", got)
	}
	if n := opens.Load(); n != int64(want) {
		t.Errorf("%d chunks read with %d ranged reads, want %d", info.Chunks, n, want)
	}
	edge := refs[0].Size + refs[1].Size // the end of the second chunk
	for _, r := range [][2]int64{{0, 1}, {edge - 1, 2}, {edge, refs[2].Size}, {3, int64(len(data)) - 6}, {edge + 5, 3 << 20}} {
		if got := pull(t, c, info.Digest, r[0], r[1]); !bytes.Equal(got, data[r[0]:r[0]+r[1]]) {
			t.Errorf("range %d+%d: wrong bytes", r[0], r[1])
		}
	}
}
