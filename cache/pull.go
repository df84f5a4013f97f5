package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// Open returns a reader over length bytes of layer d from offset (length <
// 0: to the end) and the layer's record. An offset beyond the layer's size
// is ErrOutOfRange; offset == size yields an empty reader. The reader
// fetches up to Concurrency chunks ahead in parallel, verifies each against
// its hash and decompresses it; a chunk that is missing or fails
// verification ends the read with ErrDataLoss, never with wrong bytes.
// Close the reader to stop the read-ahead.
func (c *Cache) Open(ctx context.Context, d digest.Digest, offset, length int64) (io.ReadCloser, LayerInfo, error) {
	if err := c.begin(ctx); err != nil {
		return nil, LayerInfo{}, fmt.Errorf("cache: open %s: %w", d, err)
	}
	defer c.end()
	if err := parseLayerDigest(d); err != nil {
		return nil, LayerInfo{}, fmt.Errorf("cache: open: %w", err)
	}
	lr, accessed, err := c.layer(d)
	if err != nil {
		return nil, LayerInfo{}, fmt.Errorf("cache: open: %w", err)
	}
	if offset < 0 || offset > lr.size {
		return nil, LayerInfo{}, fmt.Errorf("cache: open %s: %w: offset %d, size %d", d, ErrOutOfRange, offset, lr.size)
	}
	n := lr.size - offset
	if length >= 0 && length < n {
		n = length
	}
	now := time.Now().UTC()
	c.recordAccess(d, now)
	if now.After(accessed) {
		accessed = now
	}
	return c.newRecipeReader(ctx, lr.recipe, offset, n), lr.info(accessed), nil
}

// recipeReader streams a byte range of a recipe. A feeder goroutine looks
// the chunks up in order, groups neighbours in one pack into runs, and
// starts one ranged read per run; each chunk of a run is then decompressed
// and verified in its own goroutine. At most Concurrency chunks are ahead
// of Read (results), plus the rest of the run being read.
type recipeReader struct {
	c        *Cache
	ctx      context.Context
	cancel   context.CancelFunc
	results  chan chan fetched // in recipe order
	complete bool              // the feeder queued every chunk; set before results closes
	cur      fetched
	pos      []byte // unread bytes of cur
	err      error
}

type fetched struct {
	buf  *[]byte
	data []byte
	err  error
}

// Runs: consecutive chunks of a recipe whose records lie close together in
// one pack are read with one ranged read (one file open on fs, one GET on
// S3) instead of one each. A run spans at most maxRunBytes of the pack, at
// most half of it other records, and holds at most maxRunChunks chunks.
const (
	maxRunChunks = 8
	maxRunBytes  = 4 << 20
)

// runChunk is one chunk of a run: where it is, which of its bytes to
// deliver, and where to.
type runChunk struct {
	id     chunkID
	ci     chunkInfo
	lo, hi int64 // the bytes of the chunk that Read delivers
	err    error // the lookup failed: delivered instead of data
	res    chan fetched
}

// newRecipeReader reads n bytes from offset of the stream recipe describes.
func (c *Cache) newRecipeReader(ctx context.Context, recipe []recipeEntry, offset, n int64) *recipeReader {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.readersCtx, cancel) // Close stops the read-ahead
	rr := &recipeReader{c: c, ctx: ctx, cancel: func() { stop(); cancel() }, results: make(chan chan fetched, c.conc)}
	// Find the first chunk: offsets are the running sums of the sizes.
	ends := make([]int64, len(recipe))
	var sum int64
	for i, e := range recipe {
		sum += e.size
		ends[i] = sum
	}
	first := sort.Search(len(ends), func(i int) bool { return ends[i] > offset })
	c.readers.Add(1)
	go func() {
		defer c.readers.Done()
		defer close(rr.results)
		remaining := n
		skip := offset
		if first > 0 {
			skip -= ends[first-1]
		}
		i := first
		more := func() bool { return i < len(recipe) && remaining > 0 }
		// locate looks up chunk i and takes its share of the range.
		locate := func() *runChunk {
			e := recipe[i]
			i++
			rc := &runChunk{id: e.id, lo: skip, hi: e.size, res: make(chan fetched, 1)}
			if rc.hi-rc.lo > remaining {
				rc.hi = rc.lo + remaining
			}
			remaining -= rc.hi - rc.lo
			skip = 0
			ci, ok, err := c.lookupChunk(e.id)
			switch {
			case err != nil:
				rc.err = err
			case !ok:
				rc.err = fmt.Errorf("%w: chunk %s is missing from the index", ErrDataLoss, e.id)
			case ci.size != e.size:
				rc.err = fmt.Errorf("%w: chunk %s: index says %d bytes, recipe %d", ErrDataLoss, e.id, ci.size, e.size)
			}
			rc.ci = ci
			return rc
		}
		// Chunks are appended to packs as workers finish them, so
		// neighbours in a recipe are near each other in a pack but not in
		// order: look at the next maxRunChunks chunks and take the longest
		// prefix in one pack whose span meets the limits.
		var queue []*runChunk // located, not yet in a run
		for {
			for len(queue) < maxRunChunks && more() {
				queue = append(queue, locate())
			}
			if len(queue) == 0 {
				rr.complete = true
				break
			}
			k := 1
			if head := queue[0]; head.err == nil {
				m := 1
				for m < len(queue) && queue[m].err == nil && queue[m].ci.pack == head.ci.pack {
					m++
				}
				for k = m; k > 1; k-- {
					lo, hi, used := runSpan(queue[:k])
					if hi-lo <= maxRunBytes && hi-lo <= 2*used {
						break
					}
				}
			}
			run := append([]*runChunk(nil), queue[:k]...)
			queue = queue[k:]
			c.readers.Add(1)
			go c.fetchRun(ctx, run)
			for _, rc := range run {
				select {
				case rr.results <- rc.res: // blocks while Concurrency chunks are unread
				case <-ctx.Done():
					return
				}
			}
		}
	}()
	return rr
}

// fetchRun reads the records of run with one ranged read and decodes each
// in its own goroutine; every chunk of the run gets a result.
func (c *Cache) fetchRun(ctx context.Context, run []*runChunk) {
	defer c.readers.Done()
	deliver := func(rc *runChunk, bp *[]byte, data []byte, err error) {
		if err == nil {
			data = data[rc.lo:rc.hi]
		} else if c.readersCtx.Err() != nil {
			err = fmt.Errorf("%w: %w", ErrClosed, err)
		}
		rc.res <- fetched{buf: bp, data: data, err: err}
	}
	if c.readersCtx.Err() != nil {
		for _, rc := range run {
			rc.res <- fetched{err: ErrClosed}
		}
		return
	}
	if run[0].err != nil { // a run of one chunk that was not found
		deliver(run[0], nil, nil, run[0].err)
		return
	}
	pack := run[0].ci.pack
	lo, hi, _ := runSpan(run)
	bp := getBuf(&c.runPool, int(hi-lo), maxRunBytes)
	defer c.runPool.Put(bp)
	got, err := c.readRange(ctx, pack, lo, (*bp)[:hi-lo])
	var wg sync.WaitGroup
	for k, rc := range run {
		start, end := rc.ci.off-lo, rc.ci.off-lo+rc.ci.stored
		switch {
		case err != nil && end > int64(got):
			if errors.Is(err, errShortPack) {
				err = fmt.Errorf("%w: chunk %s: pack %s ends %d bytes into the record of %d", ErrDataLoss, rc.id, pack, max(int64(got)-start, 0), rc.ci.stored)
			}
			deliver(rc, nil, nil, err)
		case k == len(run)-1: // the last one here: the others run meanwhile
			out, data, derr := c.decodeRecord(rc.id, rc.ci, (*bp)[start:end])
			deliver(rc, out, data, derr)
		default:
			wg.Go(func() {
				out, data, derr := c.decodeRecord(rc.id, rc.ci, (*bp)[start:end])
				deliver(rc, out, data, derr)
			})
		}
	}
	wg.Wait() // the records live in bp
}

// runSpan returns the range of the pack that run's records cover and the
// bytes of those records.
func runSpan(run []*runChunk) (lo, hi, used int64) {
	lo, hi = run[0].ci.off, run[0].ci.off
	for _, rc := range run {
		lo, hi = min(lo, rc.ci.off), max(hi, rc.ci.off+rc.ci.stored)
		used += rc.ci.stored
	}
	return lo, hi, used
}

var errShortPack = errors.New("pack shorter than its index entries say")

// readRange reads len(buf) bytes of pack from off into buf and returns how
// many it got: all of them, or fewer and an error. A pack that is missing
// or ends early is ErrDataLoss (errShortPack for the latter); a backend
// that cannot be reached is ErrUnavailable.
func (c *Cache) readRange(ctx context.Context, pack packID, off int64, buf []byte) (int, error) {
	rc, err := c.store.Open(ctx, packKey(pack), off, int64(len(buf)))
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) || errors.Is(err, backend.ErrInvalidRange) {
			return 0, fmt.Errorf("%w: pack %s: %w", ErrDataLoss, pack, err)
		}
		return 0, backendErr("read pack "+pack.String(), err)
	}
	defer rc.Close()
	n, err := io.ReadFull(rc, buf)
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return n, errShortPack
	}
	if err != nil {
		return n, backendErr("read pack "+pack.String(), err)
	}
	return n, nil
}

// next makes the next chunk current, waiting for its fetch.
func (rr *recipeReader) next() error {
	if rr.err != nil {
		return rr.err
	}
	if rr.cur.buf != nil {
		rr.c.dataPool.Put(rr.cur.buf)
		rr.cur = fetched{}
	}
	res, ok := <-rr.results
	if !ok {
		rr.err = io.EOF
		if !rr.complete { // the feeder stopped early: never a short read that looks whole
			rr.err = ErrClosed
			if rr.c.readersCtx.Err() == nil {
				rr.err = fmt.Errorf("cache: read stopped: %w", context.Cause(rr.ctx))
			}
		}
		return rr.err
	}
	rr.cur = <-res
	if rr.cur.err != nil {
		rr.err = rr.cur.err
		rr.cur = fetched{}
		rr.cancel()
		return rr.err
	}
	rr.pos = rr.cur.data
	return nil
}

func (rr *recipeReader) Read(p []byte) (int, error) {
	for len(rr.pos) == 0 {
		if err := rr.next(); err != nil {
			return 0, err
		}
	}
	n := copy(p, rr.pos)
	rr.pos = rr.pos[n:]
	return n, nil
}

// WriteTo streams the chunks to w without an intermediate copy.
func (rr *recipeReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		if len(rr.pos) > 0 {
			n, err := w.Write(rr.pos)
			total += int64(n)
			rr.pos = rr.pos[n:]
			if err != nil {
				return total, err
			}
		}
		if err := rr.next(); err != nil {
			if err == io.EOF {
				return total, nil
			}
			return total, err
		}
	}
}

// Close stops the read-ahead and returns the buffers. It is safe to call
// more than once.
func (rr *recipeReader) Close() error {
	rr.cancel()
	if rr.cur.buf != nil {
		rr.c.dataPool.Put(rr.cur.buf)
		rr.cur = fetched{}
	}
	rr.pos = nil
	go func() { // drain fetches already started so their buffers return
		for res := range rr.results {
			if f := <-res; f.buf != nil {
				rr.c.dataPool.Put(f.buf)
			}
		}
	}()
	if rr.err == nil {
		rr.err = errors.New("cache: read after close")
	}
	return nil
}

// readRecord reads chunk id's record from its pack and decodes it
// (decodeRecord).
func (c *Cache) readRecord(ctx context.Context, id chunkID, ci chunkInfo) (*[]byte, []byte, error) {
	// decodeChunkInfo bounds stored more loosely; the buffer below is
	// sized by what the encoder can produce.
	if ci.stored > chunkHeaderSize+int64(c.enc.MaxEncodedSize(int(ci.size))) {
		return nil, nil, fmt.Errorf("%w: chunk %s: index entry claims %d bytes stored for %d", ErrDataLoss, id, ci.stored, ci.size)
	}
	cp := c.getComp(int(ci.size))
	defer c.compPool.Put(cp)
	n, err := c.readRange(ctx, ci.pack, ci.off, (*cp)[:ci.stored])
	if errors.Is(err, errShortPack) {
		return nil, nil, fmt.Errorf("%w: chunk %s: pack %s ends %d bytes into the record of %d", ErrDataLoss, id, ci.pack, n, ci.stored)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("chunk %s: %w", id, err)
	}
	return c.decodeRecord(id, ci, (*cp)[:ci.stored])
}

// decodeRecord checks a chunk record's header, decompresses it into a
// pooled buffer and verifies its hash. Anything wrong is ErrDataLoss.
func (c *Cache) decodeRecord(id chunkID, ci chunkInfo, rec []byte) (*[]byte, []byte, error) {
	hdrSize, payload, err := parseChunkHeader(rec)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: chunk %s: %w", ErrDataLoss, id, err)
	}
	if hdrSize != ci.size {
		return nil, nil, fmt.Errorf("%w: chunk %s: header says %d bytes, index %d", ErrDataLoss, id, hdrSize, ci.size)
	}
	bp := c.getData(int(hdrSize))
	// The capacity bounds what DecodeAll may write (WithDecodeAllCapLimit):
	// a frame that decodes to more than the header says fails below.
	data, err := c.dec.DecodeAll(payload, (*bp)[:0:hdrSize+decodeSlack])
	if errors.Is(err, zstd.ErrDecoderClosed) {
		c.dataPool.Put(bp)
		return nil, nil, ErrClosed
	}
	if err != nil || int64(len(data)) != hdrSize {
		c.dataPool.Put(bp)
		return nil, nil, fmt.Errorf("%w: chunk %s: decompress: got %d bytes of %d: %v", ErrDataLoss, id, len(data), hdrSize, err)
	}
	if chunkid.Sum(data) != id {
		c.dataPool.Put(bp)
		return nil, nil, fmt.Errorf("%w: chunk %s fails verification", ErrDataLoss, id)
	}
	return bp, data, nil
}

// ReadChunk returns chunk d's bytes, verified and decompressed.
func (c *Cache) ReadChunk(ctx context.Context, d digest.Digest) ([]byte, error) {
	if err := c.begin(ctx); err != nil {
		return nil, fmt.Errorf("cache: read chunk: %w", err)
	}
	defer c.end()
	id, err := parseChunkID(d)
	if err != nil {
		return nil, fmt.Errorf("cache: read chunk: %w", err)
	}
	ci, ok, err := c.lookupChunk(id)
	if err != nil {
		return nil, fmt.Errorf("cache: read chunk: %w", err)
	}
	if !ok {
		return nil, fmt.Errorf("cache: read chunk %s: %w", d, ErrNotFound)
	}
	bp, data, err := c.readRecord(ctx, id, ci)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	out := append([]byte(nil), data...)
	c.dataPool.Put(bp)
	return out, nil
}
