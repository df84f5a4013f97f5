package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
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

// recipeReader streams a byte range of a recipe. A feeder goroutine starts
// chunk fetches in order, at most Concurrency at a time; Read consumes the
// results in order.
type recipeReader struct {
	c       *Cache
	cancel  context.CancelFunc
	results chan chan fetched // in recipe order
	cur     fetched
	pos     []byte // unread bytes of cur
	err     error
}

type fetched struct {
	buf  *[]byte
	data []byte
	err  error
}

// newRecipeReader reads n bytes from offset of the stream recipe describes.
func (c *Cache) newRecipeReader(ctx context.Context, recipe []recipeEntry, offset, n int64) *recipeReader {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.readersCtx, cancel) // Close stops the read-ahead
	rr := &recipeReader{c: c, cancel: func() { stop(); cancel() }, results: make(chan chan fetched, c.conc)}
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
		for i := first; i < len(recipe) && remaining > 0; i++ {
			e := recipe[i]
			lo, hi := skip, e.size
			if hi-lo > remaining {
				hi = lo + remaining
			}
			remaining -= hi - lo
			skip = 0
			res := make(chan fetched, 1)
			select {
			case rr.results <- res: // blocks while Concurrency fetches are unread
			case <-ctx.Done():
				return
			}
			c.readers.Add(1)
			go func() {
				defer c.readers.Done()
				if c.readersCtx.Err() != nil {
					res <- fetched{err: ErrClosed}
					return
				}
				buf, data, err := c.readChunk(ctx, e.id, e.size)
				if err == nil {
					data = data[lo:hi]
				} else if c.readersCtx.Err() != nil {
					err = fmt.Errorf("%w: %w", ErrClosed, err)
				}
				res <- fetched{buf: buf, data: data, err: err}
			}()
		}
	}()
	return rr
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
		return io.EOF
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

// readChunk looks chunk id up in the index and reads it (readRecord).
// size is what the recipe says it holds. A chunk the index has lost is
// ErrDataLoss.
func (c *Cache) readChunk(ctx context.Context, id chunkID, size int64) (*[]byte, []byte, error) {
	ci, ok, err := c.lookupChunk(id)
	if err != nil {
		return nil, nil, err
	}
	if !ok {
		return nil, nil, fmt.Errorf("%w: chunk %s is missing from the index", ErrDataLoss, id)
	}
	if ci.size != size {
		return nil, nil, fmt.Errorf("%w: chunk %s: index says %d bytes, recipe %d", ErrDataLoss, id, ci.size, size)
	}
	return c.readRecord(ctx, id, ci)
}

// readRecord reads chunk id's record from its pack, checks its header,
// decompresses it into a pooled buffer and verifies its hash. Anything wrong
// with the stored record is ErrDataLoss; a backend that cannot be reached
// is ErrUnavailable.
func (c *Cache) readRecord(ctx context.Context, id chunkID, ci chunkInfo) (*[]byte, []byte, error) {
	key := packKey(ci.pack)
	if ci.stored > chunkHeaderSize+int64(c.enc.MaxEncodedSize(int(ci.size))) {
		return nil, nil, fmt.Errorf("%w: chunk %s: index entry claims %d bytes stored for %d", ErrDataLoss, id, ci.stored, ci.size)
	}
	rc, err := c.store.Open(ctx, key, ci.off, ci.stored)
	if err != nil {
		if errors.Is(err, backend.ErrNotFound) || errors.Is(err, backend.ErrInvalidRange) {
			return nil, nil, fmt.Errorf("%w: chunk %s: pack %s: %w", ErrDataLoss, id, ci.pack, err)
		}
		return nil, nil, backendErr("read chunk "+id.String(), err)
	}
	defer rc.Close()
	cp := c.getComp(int(ci.size))
	defer c.compPool.Put(cp)
	rec := (*cp)[:ci.stored]
	if n, err := io.ReadFull(rc, rec); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, nil, fmt.Errorf("%w: chunk %s: pack %s ends %d bytes into the record of %d", ErrDataLoss, id, ci.pack, n, ci.stored)
		}
		return nil, nil, backendErr("read chunk "+id.String(), err)
	}
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
