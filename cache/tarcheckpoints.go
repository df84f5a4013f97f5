package cache

import (
	"container/list"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/tarsplit"
	"github.com/opencontainers/go-digest"
)

// Checkpoints of split tars.
//
// A join reads the meta stream from where it starts to the offset it is
// asked for; from the stream's start, a range near the end of a tar of
// 20 000 small files would read, verify and decompress some 30 MB of
// headers before its first byte. A split tar's checkpoints (places where a
// join can start: tarsplit.Checkpoints) let a range read start near its
// offset instead. They are walked from the meta stream on the first range
// read that needs them and kept in memory, never stored: they derive from
// the meta stream alone, which is immutable under its chunk IDs, so they
// never go stale, and a layer pushed again with another split (another
// meta recipe under the same digest) gets a list of its own.

const (
	// checkpointWalk is the most meta a range read walks from the stream's
	// start rather than use checkpoints: a join from the start reads at
	// most min(offset, meta size) bytes of meta, and below this that costs
	// less than a few chunk reads.
	checkpointWalk = 1 << 20
	// checkpointEvery is the least meta between two checkpoints: about a
	// chunk's worth, so that a range read walks at most a chunk or so of
	// meta to its offset.
	checkpointEvery = 64 << 10
	// maxCheckpoints bounds a layer's list (24 bytes a checkpoint, so
	// about 100 KB): a bigger meta stream gets sparser checkpoints.
	maxCheckpoints = 4096
	// checkpointLayers is how many layers' lists are kept, the least
	// recently used dropped first: at most some 6 MB in all.
	checkpointLayers = 64
)

// checkpointCache is the in-memory cache of split tars' checkpoint lists,
// by layer digest, least recently used dropped first. The zero value is
// ready for use.
type checkpointCache struct {
	mu      sync.Mutex
	lru     list.List // of *checkpointList, most recently used first
	byLayer map[digest.Digest]*list.Element

	// metaRead counts the meta-stream bytes that split-tar reads and
	// checkpoint walks have read: tests check with it that a range read
	// near the end of a big tar does not walk the whole stream.
	metaRead atomic.Int64
	// walkLimit, if not 0, replaces checkpointWalk: tests set it to read
	// small tars through checkpoints, or big ones without.
	walkLimit int64
}

// useCheckpoints says whether a read from offset of a split tar with
// metaSize bytes of meta should start at a checkpoint.
func (tc *checkpointCache) useCheckpoints(offset, metaSize int64) bool {
	limit := int64(checkpointWalk)
	if tc.walkLimit != 0 {
		limit = tc.walkLimit
	}
	return min(offset, metaSize) > limit
}

// checkpointList is one layer's checkpoints, walked from the meta stream
// whose recipe hashes to recipe. ready is closed once points or err is
// set; a list that failed is dropped from the cache.
type checkpointList struct {
	layer  digest.Digest
	recipe [sha256.Size]byte
	ready  chan struct{}
	points []tarsplit.Checkpoint
	err    error
}

// metaRecipeHash names a meta stream by its chunks: the same hash is the
// same bytes.
func metaRecipeHash(meta []index.RecipeEntry) [sha256.Size]byte {
	h := sha256.New()
	var size [8]byte
	for _, e := range meta {
		h.Write(e.ID[:])
		binary.LittleEndian.PutUint64(size[:], uint64(e.Size))
		h.Write(size[:])
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// tarCheckpoints returns lr's checkpoints, walking its meta stream (of
// metaSize bytes) if no list is kept for it. Readers that come while
// another walks the same stream wait for its list; if that walk fails
// they get nil, and walk the meta stream from its start as a read without
// checkpoints does. The walker's own failure is its error: ErrFormat for a
// meta stream that does not parse.
func (c *Cache) tarCheckpoints(ctx context.Context, lr *index.LayerRecord, metaSize int64) ([]tarsplit.Checkpoint, error) {
	tc := &c.checkpoints
	recipe := metaRecipeHash(lr.Tar.Meta)
	tc.mu.Lock()
	if tc.byLayer == nil {
		tc.byLayer = make(map[digest.Digest]*list.Element)
	}
	if el, ok := tc.byLayer[lr.Digest]; ok && el.Value.(*checkpointList).recipe == recipe {
		tc.lru.MoveToFront(el)
		cl := el.Value.(*checkpointList)
		tc.mu.Unlock()
		select {
		case <-cl.ready:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		if cl.err != nil {
			return nil, nil
		}
		return cl.points, nil
	} else if ok {
		tc.lru.Remove(el) // another split of the layer: walk its own
	}
	cl := &checkpointList{layer: lr.Digest, recipe: recipe, ready: make(chan struct{})}
	el := tc.lru.PushFront(cl)
	tc.byLayer[lr.Digest] = el
	for tc.lru.Len() > checkpointLayers {
		old := tc.lru.Back()
		tc.lru.Remove(old)
		delete(tc.byLayer, old.Value.(*checkpointList).layer)
	}
	tc.mu.Unlock()

	meta := c.chunks.NewReader(ctx, lr.Tar.Meta, 0, metaSize)
	cl.points, cl.err = tarsplit.Checkpoints(&countingReader{r: meta, n: &tc.metaRead}, max(checkpointEvery, metaSize/maxCheckpoints))
	meta.Close()
	close(cl.ready)
	if cl.err != nil {
		tc.mu.Lock()
		if tc.byLayer[lr.Digest] == el {
			tc.lru.Remove(el)
			delete(tc.byLayer, lr.Digest)
		}
		tc.mu.Unlock()
		return nil, cl.err
	}
	return cl.points, nil
}

// joinSpan is where a join of [offset, offset+n) starts in a tar with
// checkpoints points (the last one the stream's end), and where it can
// stop: the first checkpoint at or past the range's end, whose Meta and
// Content bound the two streams' reads (beyond them the chunk readers
// would only read ahead, and have it thrown away). A read to the tar's end
// stops at the stream's end: it reads the whole of both streams' rests, to
// check that the join ends there.
func joinSpan(points []tarsplit.Checkpoint, offset, n int64, toEnd bool) (from, to tarsplit.Checkpoint) {
	i := sort.Search(len(points), func(i int) bool { return points[i].Tar > offset }) - 1
	from, to = points[i], points[len(points)-1]
	if !toEnd {
		if k := sort.Search(len(points), func(i int) bool { return points[i].Tar >= offset+n }); k < len(points) {
			to = points[k]
		}
	}
	return from, to
}

// countingReader adds the bytes read through it to n.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (cr *countingReader) Read(p []byte) (int, error) {
	k, err := cr.r.Read(p)
	cr.n.Add(int64(k))
	return k, err
}
