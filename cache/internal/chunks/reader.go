package chunks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
)

// Reader streams a byte range of a recipe. A feeder goroutine looks the
// chunks up in order, a window at a time in one index transaction, groups
// neighbours in one pack into runs, and starts one ranged read per run;
// each chunk of a run is then decompressed and verified in its own
// goroutine. At most Concurrency chunks are ahead of Read (results), plus
// the rest of the run being read. A chunk that is missing or fails
// verification ends the read with ErrDataLoss, never with wrong bytes.
type Reader struct {
	s        *Store
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
	id     chunkid.ID
	ci     index.ChunkInfo
	lo, hi int64 // the bytes of the chunk that Read delivers
	err    error // the lookup failed: delivered instead of data
	res    chan fetched
}

// NewReader reads n bytes from offset of the stream recipe describes.
// Close it to stop the read-ahead.
func (s *Store) NewReader(ctx context.Context, recipe []index.RecipeEntry, offset, n int64) *Reader {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(s.readersCtx, cancel) // Close stops the read-ahead
	rr := &Reader{s: s, ctx: ctx, cancel: func() { stop(); cancel() }, results: make(chan chan fetched, s.conc)}
	// Find the first chunk: offsets are the running sums of the sizes.
	ends := make([]int64, len(recipe))
	var sum int64
	for i, e := range recipe {
		sum += e.Size
		ends[i] = sum
	}
	first := sort.Search(len(ends), func(i int) bool { return ends[i] > offset })
	frames := newFrameCache(s, s.frameCache)
	s.readers.Add(1)
	go func() {
		defer s.readers.Done()
		defer close(rr.results)
		remaining := n
		skip := offset
		if first > 0 {
			skip -= ends[first-1]
		}
		i := first
		// locate looks up the chunks that fill the queue to maxRunChunks,
		// in one index transaction, each taking its share of the range.
		locate := func(k int) []*runChunk {
			var out []*runChunk
			var ids []chunkid.ID
			for ; len(out) < k && i < len(recipe) && remaining > 0; i++ {
				e := recipe[i]
				rc := &runChunk{id: e.ID, lo: skip, hi: e.Size, res: make(chan fetched, 1)}
				if rc.hi-rc.lo > remaining {
					rc.hi = rc.lo + remaining
				}
				remaining -= rc.hi - rc.lo
				skip = 0
				out = append(out, rc)
				ids = append(ids, e.ID)
			}
			if len(out) == 0 {
				return nil
			}
			infos, found, err := s.idx.Chunks(ids)
			for j, rc := range out {
				e := recipe[i-len(out)+j]
				switch {
				case err != nil:
					rc.err = err
				case !found[j] && s.idx.Quarantined(e.ID):
					rc.err = fmt.Errorf("%w: chunk %s is damaged (quarantined) until a push supplies it again", cerr.ErrDataLoss, e.ID)
				case !found[j]:
					rc.err = fmt.Errorf("%w: chunk %s is missing from the index", cerr.ErrDataLoss, e.ID)
				case infos[j].Size != e.Size:
					rc.err = fmt.Errorf("%w: chunk %s: index says %d bytes, recipe %d", cerr.ErrDataLoss, e.ID, infos[j].Size, e.Size)
				default:
					rc.ci = infos[j]
				}
			}
			return out
		}
		// Chunks are appended to packs as workers finish them, so
		// neighbours in a recipe are near each other in a pack but not in
		// order: look at the next maxRunChunks chunks and take the longest
		// prefix in one pack whose span meets the limits.
		var queue []*runChunk // located, not yet in a run
		for {
			if len(queue) < maxRunChunks {
				queue = append(queue, locate(maxRunChunks-len(queue))...)
			}
			if len(queue) == 0 {
				rr.complete = true
				break
			}
			k := 1
			if head := queue[0]; head.err == nil {
				m := 1
				for m < len(queue) && queue[m].err == nil && queue[m].ci.Pack == head.ci.Pack {
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
			s.readers.Add(1)
			go s.fetchRun(ctx, run, frames)
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
func (s *Store) fetchRun(ctx context.Context, run []*runChunk, frames *frameCache) {
	defer s.readers.Done()
	deliver := func(rc *runChunk, bp *[]byte, data []byte, err error) {
		if err == nil {
			data = data[rc.lo:rc.hi]
		} else if s.readersCtx.Err() != nil {
			err = fmt.Errorf("%w: %w", cerr.ErrClosed, err)
		}
		rc.res <- fetched{buf: bp, data: data, err: err}
	}
	if s.readersCtx.Err() != nil {
		for _, rc := range run {
			rc.res <- fetched{err: cerr.ErrClosed}
		}
		return
	}
	if run[0].err != nil { // a run of one chunk that was not found
		deliver(run[0], nil, nil, run[0].err)
		return
	}
	p := run[0].ci.Pack
	lo, hi, _ := runSpan(run)
	bp := getBuf(&s.runPool, int(hi-lo), maxRunBytes)
	defer s.runPool.Put(bp)
	got, err := pack.ReadRange(ctx, s.store, p, lo, (*bp)[:hi-lo])
	var wg sync.WaitGroup
	for k := 0; k < len(run); {
		rc := run[k]
		n := 1 // the chunks of rc's record: one, or the run's part of a frame
		for rc.ci.Frame != 0 && k+n < len(run) && sameRecord(run[k+n], rc) {
			n++
		}
		group := run[k : k+n]
		k += n
		start, end := rc.ci.Off-lo, rc.ci.Off-lo+rc.ci.Stored
		switch {
		case err != nil && end > int64(got):
			rerr := err
			if errors.Is(err, pack.ErrShort) {
				rerr = fmt.Errorf("%w: chunk %s: pack %s ends %d bytes into the record of %d", cerr.ErrDataLoss, rc.id, p, max(int64(got)-start, 0), rc.ci.Stored)
			}
			for _, rc := range group {
				deliver(rc, nil, nil, s.condemn(rc.id, rc.ci, rerr))
			}
		case k == len(run): // the last one here: the others run meanwhile
			s.decodeGroup(group, (*bp)[start:end], frames, deliver)
		default:
			wg.Go(func() { s.decodeGroup(group, (*bp)[start:end], frames, deliver) })
		}
	}
	wg.Wait() // the records live in bp
}

// decodeGroup decodes the chunks of group, which share the record rec (one
// chunk, or chunks of one frame, decoded once, or taken from frames if
// an earlier run of the reader decoded it), and delivers each.
func (s *Store) decodeGroup(group []*runChunk, rec []byte, frames *frameCache, deliver func(*runChunk, *[]byte, []byte, error)) {
	if group[0].ci.Frame == 0 {
		rc := group[0]
		out, data, err := s.decodeRecord(rc.id, rc.ci, rec)
		deliver(rc, out, data, s.condemn(rc.id, rc.ci, err))
		return
	}
	frame, release, err := frames.get(group[0].ci, func() (*[]byte, []byte, error) {
		return s.decodeFrame(group[0].id, group[0].ci, rec)
	})
	if err != nil {
		for _, rc := range group {
			deliver(rc, nil, nil, s.condemn(rc.id, rc.ci, err))
		}
		return
	}
	defer release()
	for _, rc := range group {
		var out *[]byte
		var data []byte
		if rc.ci.Frame != group[0].ci.Frame {
			err = fmt.Errorf("%w: chunk %s: the index says a frame of %d, its neighbour %d", cerr.ErrDataLoss, rc.id, rc.ci.Frame, group[0].ci.Frame)
		} else {
			out, data, err = s.sliceChunk(rc.id, rc.ci, frame)
		}
		deliver(rc, out, data, s.condemn(rc.id, rc.ci, err))
	}
}

// frameCacheSize is how many decoded frames a reader keeps (32 MiB at
// most): compaction puts resembling chunks of several layers in one frame,
// so a layer's chunks come back to a frame a few chunks later. On the
// bench corpus a pull decoded 7.2× the layer's bytes with no cache, 4.0×
// keeping 4 frames and 3.3× keeping 8 (bench/RESULTS.md "Issue 17").
const frameCacheSize = 8

// singleFrames is how many decoded frames the store keeps for reads of
// single chunks (ReadRecord), shared by all of them: GetChunks reading a
// layer chunk by chunk decoded every frame once per chunk without it
// (13.7× the layer's bytes, a review found).
const singleFrames = 4

// SetFrameCacheSize changes how many decoded frames a reader keeps; tests
// lower it to make evictions race the fetches. Call it before any read.
func (s *Store) SetFrameCacheSize(n int) { s.frameCache = max(n, 1) }

// frameCache holds the frames a reader decoded last, by record, and
// decodes each once for the reader's concurrent fetches.
type frameCache struct {
	s    *Store
	size int // frames kept
	mu   sync.Mutex
	m    map[frameKey]*cachedFrame
	// order lists the keys of m, least recently used first.
	order []frameKey
}

type frameKey struct {
	pack pack.ID
	off  int64
}

type cachedFrame struct {
	ready   chan struct{} // closed once decoded (or failed)
	buf     *[]byte
	data    []byte
	err     error
	refs    int
	evicted bool
}

func newFrameCache(s *Store, size int) *frameCache {
	return &frameCache{s: s, size: size, m: make(map[frameKey]*cachedFrame)}
}

// get returns the frame ci's record holds, decoding it with decode unless
// the cache has it or another fetch is decoding it; release gives it back.
func (fc *frameCache) get(ci index.ChunkInfo, decode func() (*[]byte, []byte, error)) (data []byte, release func(), err error) {
	k := frameKey{ci.Pack, ci.Off}
	fc.mu.Lock()
	f := fc.m[k]
	if f != nil {
		f.refs++
		fc.touch(k)
		fc.mu.Unlock()
		<-f.ready
	} else {
		f = &cachedFrame{ready: make(chan struct{}), refs: 1}
		fc.m[k] = f
		fc.order = append(fc.order, k)
		fc.evict()
		fc.mu.Unlock()
		f.buf, f.data, f.err = decode()
		close(f.ready)
		if f.err != nil {
			fc.mu.Lock()
			if fc.m[k] == f {
				fc.drop(k)
			}
			fc.mu.Unlock()
		}
	}
	release = func() {
		fc.mu.Lock()
		f.refs--
		if f.evicted && f.refs == 0 && f.buf != nil {
			fc.s.framePool.Put(f.buf)
			f.buf = nil
		}
		fc.mu.Unlock()
	}
	if f.err != nil {
		release()
		return nil, nil, f.err
	}
	return f.data, release, nil
}

// touch moves k to the end of the order.
func (fc *frameCache) touch(k frameKey) {
	for i, o := range fc.order {
		if o == k {
			copy(fc.order[i:], fc.order[i+1:])
			fc.order[len(fc.order)-1] = k
			return
		}
	}
}

// evict drops the least recently used frames no fetch holds while the
// cache holds more than frameCacheSize.
func (fc *frameCache) evict() {
	for i := 0; len(fc.order) > fc.size && i < len(fc.order); {
		if f := fc.m[fc.order[i]]; f.refs > 0 {
			i++
			continue
		}
		fc.drop(fc.order[i])
	}
}

// drop removes k; its buffer goes back to the pool once no fetch holds it.
func (fc *frameCache) drop(k frameKey) {
	f := fc.m[k]
	delete(fc.m, k)
	for i, o := range fc.order {
		if o == k {
			fc.order = append(fc.order[:i], fc.order[i+1:]...)
			break
		}
	}
	f.evicted = true
	if f.refs == 0 && f.buf != nil {
		fc.s.framePool.Put(f.buf)
		f.buf = nil
	}
}

// sameRecord reports whether a and b were found in the same record: a
// frame that holds both.
func sameRecord(a, b *runChunk) bool {
	return a.err == nil && b.err == nil && a.ci.Pack == b.ci.Pack && a.ci.Off == b.ci.Off && a.ci.Stored == b.ci.Stored
}

// runSpan returns the range of the pack that run's records cover and the
// bytes of those records (a frame's once).
func runSpan(run []*runChunk) (lo, hi, used int64) {
	lo, hi = run[0].ci.Off, run[0].ci.Off
	for i, rc := range run {
		lo, hi = min(lo, rc.ci.Off), max(hi, rc.ci.Off+rc.ci.Stored)
		if i == 0 || !sameRecord(rc, run[i-1]) {
			used += rc.ci.Stored
		}
	}
	return lo, hi, used
}

// next makes the next chunk current, waiting for its fetch.
func (rr *Reader) next() error {
	if rr.err != nil {
		return rr.err
	}
	if rr.cur.buf != nil {
		rr.s.dataPool.Put(rr.cur.buf)
		rr.cur = fetched{}
	}
	res, ok := <-rr.results
	if !ok {
		rr.err = io.EOF
		if !rr.complete { // the feeder stopped early: never a short read that looks whole
			rr.err = cerr.ErrClosed
			if rr.s.readersCtx.Err() == nil {
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

func (rr *Reader) Read(p []byte) (int, error) {
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
func (rr *Reader) WriteTo(w io.Writer) (int64, error) {
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
func (rr *Reader) Close() error {
	rr.cancel()
	if rr.cur.buf != nil {
		rr.s.dataPool.Put(rr.cur.buf)
		rr.cur = fetched{}
	}
	rr.pos = nil
	go func() { // drain fetches already started so their buffers return
		for res := range rr.results {
			if f := <-res; f.buf != nil {
				rr.s.dataPool.Put(f.buf)
			}
		}
	}()
	if rr.err == nil {
		rr.err = errors.New("cache: read after close")
	}
	return nil
}
