package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/chunks"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/chunker"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/cairnbuild/cairn/recompress"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// LayerInfo describes a committed layer.
type LayerInfo struct {
	Digest     digest.Digest
	Size       int64  // bytes of the blob as pushed (logical)
	StoredSize int64  // sum of the stored sizes of its chunks (shared chunks counted in full)
	MediaType  string // as pushed
	Chunks     int    // entries in its recipe
	Created    time.Time
	Accessed   time.Time // last read, recorded lazily (within a few seconds)
	// Rebuilt, on a compressed blob stored as its uncompressed content,
	// names the encoder that rebuilds it; Chunks and StoredSize are then
	// those of the content.
	Rebuilt string
	// SplitTar says the content is a tar stored as its files' contents and
	// its metadata apart (package tarsplit).
	SplitTar bool
	// DamagedChunks counts the layer's chunks that are quarantined: a read
	// found their stored copy bad (see index.DB.Quarantine). A damaged
	// layer cannot be read whole; every existence check answers "absent"
	// for it, so that the next push of it (or of any layer holding those
	// chunks) stores good copies, and it is whole again.
	DamagedChunks int
}

// Damaged reports whether some of the layer's chunks are quarantined.
func (i LayerInfo) Damaged() bool { return i.DamagedChunks > 0 }

// PushOptions qualify a Push.
type PushOptions struct {
	// Expected is the digest the stream must hash to; "" accepts any. On a
	// mismatch nothing is committed and Push returns ErrDigestMismatch.
	Expected digest.Digest
	// Size is the stream's declared length, or -1 if unknown. A stream that
	// ends early or runs long fails with ErrInvalidArgument. Zero means an
	// empty layer: pass -1 when the size is unknown.
	Size int64
	// MediaType is recorded with the layer; "" means DefaultMediaType.
	MediaType string

	// unrooted marks a new layer as held by the registry front only: the
	// collector takes it once nothing reaches it (gc_roots.go). Pushes
	// through the gRPC API leave it false, and root the layer if it was
	// there already.
	unrooted bool

	// noDigest skips hashing the stream: the streams of a split tar, whose
	// digest is the tar's, computed as it is read. The record's Digest is
	// then meaningless.
	noDigest bool

	// finish, if set, is called with what the stream hashed to and its
	// length after the whole stream was read, before anything is
	// committed; an error from it aborts the push. Uploads use it to learn
	// the digest a client declares only once its last byte was sent.
	finish func(got digest.Digest, size int64) error
}

// Push stores the layer read from r, chunked, deduplicated and compressed,
// and returns its record. It reads r to the end (or the declared size) in
// one pass, hashing the whole stream while it cuts chunks; chunks the index
// lacks are compressed, up to Concurrency at a time, and written to the
// backend in packs (see packTarget), so a slow backend slows the reading of
// r. The layer becomes visible only after every chunk and its manifest are
// durable. Pushing a layer that is already committed returns the committed
// record.
func (c *Cache) Push(ctx context.Context, r io.Reader, opts PushOptions) (LayerInfo, error) {
	if err := c.begin(ctx); err != nil {
		return LayerInfo{}, fmt.Errorf("cache: push: %w", err)
	}
	defer c.end()
	info, err := c.push(ctx, r, opts)
	if err != nil {
		return LayerInfo{}, fmt.Errorf("cache: push: %w", err)
	}
	return info, nil
}

// pushChunk is one chunk on its way through a push: filled by the reader,
// hashed into the layer digest by the hasher, and hashed, looked up and
// compressed into a pack by a worker. Its buffer returns to the pool when
// both are done.
type pushChunk struct {
	buf  *[]byte
	data []byte
	refs atomic.Int32
	idx  int
}

func (c *Cache) releaseChunk(pc *pushChunk) {
	if pc.refs.Add(-1) == 0 {
		c.chunks.PutData(pc.buf)
	}
}

func (c *Cache) push(ctx context.Context, r io.Reader, opts PushOptions) (LayerInfo, error) {
	if opts.Expected != "" {
		if err := ParseLayerDigest(opts.Expected); err != nil {
			return LayerInfo{}, err
		}
	}
	if opts.Size < -1 {
		return LayerInfo{}, fmt.Errorf("%w: size %d", ErrInvalidArgument, opts.Size)
	}
	if opts.MediaType == "" {
		opts.MediaType = DefaultMediaType
	}
	if opts.Size >= 0 {
		// Read one byte more than declared to notice a long stream.
		r = io.LimitReader(r, opts.Size+1)
	}
	if opts.Expected != "" {
		if info, err := c.stat(opts.Expected); err == nil && !info.Damaged() {
			// Touched first, so that a collection keeps it while the
			// stream is read; rooted only once the stream checks.
			if found, err := c.hold(ctx, opts.Expected, false); err != nil {
				return LayerInfo{}, err
			} else if found {
				if info, err = c.verifyStored(ctx, r, opts, info); err == nil && !opts.unrooted {
					_, err = c.hold(ctx, opts.Expected, true)
				}
				return info, err
			}
		}
	}
	if !c.keepCompressed {
		// A gzip or zstd blob is stored as its content plus the encoder
		// that rebuilds it, where one does (compressed.go).
		head := make([]byte, 4)
		k, err := io.ReadFull(r, head)
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return LayerInfo{}, fmt.Errorf("read layer: %w", err)
		}
		r = io.MultiReader(bytes.NewReader(head[:k]), r)
		if f := recompress.Detect(head[:k]); f != recompress.None {
			return c.pushCompressed(ctx, r, f, opts)
		}
	}
	return c.pushPlain(ctx, r, opts)
}

// pushPlain stores r's bytes as they are.
func (c *Cache) pushPlain(ctx context.Context, r io.Reader, opts PushOptions) (LayerInfo, error) {
	lr, sess, err := c.pushChunks(ctx, r, opts)
	if err != nil {
		return LayerInfo{}, err
	}
	defer sess.Close()
	return c.commit(ctx, lr, sess)
}

// pushChunks cuts, hashes and stores r's chunks and returns the layer's
// record, not yet committed, and the session that wrote them: the caller
// commits and closes it. A tar is stored split (splitTar), unless the
// cache keeps tars plain.
func (c *Cache) pushChunks(ctx context.Context, r io.Reader, opts PushOptions) (*index.LayerRecord, *chunks.Session, error) {
	// The session outlives this call: the commit (flush) comes after.
	sess := c.chunks.NewSession(ctx, false)
	var lr *index.LayerRecord
	var err error
	if c.plainTars {
		lr, err = c.chunkInto(ctx, sess, r, opts)
	} else {
		lr, err = c.splitTar(ctx, sess, r, opts)
	}
	if err != nil {
		sess.Close()
		return nil, nil, err
	}
	return lr, sess, nil
}

// chunkInto cuts, hashes and stores r's chunks through sess and returns
// the record of r's bytes: a recipe, the digest, the size.
func (c *Cache) chunkInto(ctx context.Context, sess *chunks.Session, r io.Reader, opts PushOptions) (*index.LayerRecord, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var (
		recipe   []index.RecipeEntry
		recipeMu sync.Mutex // workers fill recipe[idx]; the reader appends
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.conc)

	// The layer hasher: SHA-256 over the chunks in stream order, on its own
	// goroutine so that the reader only cuts and copies.
	toHash := make(chan *pushChunk, c.conc)
	hashDone := make(chan []byte, 1)
	alg := digest.SHA256
	if opts.Expected != "" {
		alg = opts.Expected.Algorithm()
	}
	go func() {
		h := alg.Hash()
		if opts.noDigest {
			h = nopHash{h}
		}
		for pc := range toHash {
			h.Write(pc.data)
			c.releaseChunk(pc)
		}
		hashDone <- h.Sum(nil)
	}()

	bufp := getBuf(&c.cutPool, 2*c.params.Max)
	ch, err := chunker.New(r, c.params, (*bufp)[:2*c.params.Max])
	if err != nil {
		close(toHash)
		<-hashDone
		return nil, err
	}
	var (
		total   int64
		readErr error
	)
	for idx := 0; ; idx++ {
		chunk, err := ch.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			readErr = fmt.Errorf("read layer: %w", err)
			if errors.Is(err, io.ErrUnexpectedEOF) {
				readErr = fmt.Errorf("%w: truncated stream: %w", ErrSizeMismatch, err)
			}
			break
		}
		total += int64(len(chunk.Data))
		if opts.Size >= 0 && total > opts.Size {
			readErr = fmt.Errorf("%w: stream longer than its declared size %d", ErrSizeMismatch, opts.Size)
			break
		}
		if gctx.Err() != nil {
			break
		}
		pc := &pushChunk{buf: c.chunks.GetData(c.params.Max), idx: idx}
		pc.data = append((*pc.buf)[:0], chunk.Data...)
		pc.refs.Store(2)
		recipeMu.Lock()
		recipe = append(recipe, index.RecipeEntry{Size: int64(len(pc.data))})
		recipeMu.Unlock()
		select {
		case toHash <- pc:
		case <-gctx.Done():
			c.releaseChunk(pc)
			c.releaseChunk(pc)
		}
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error {
			defer c.releaseChunk(pc)
			id := chunkid.Sum(pc.data)
			recipeMu.Lock()
			recipe[pc.idx].ID = id
			recipeMu.Unlock()
			return sess.Ensure(gctx, id, pc.data)
		})
	}
	close(toHash)
	sum := <-hashDone
	c.cutPool.Put(bufp)
	if readErr != nil {
		cancel()
		_ = g.Wait()
		return nil, readErr
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if opts.Size >= 0 && total != opts.Size {
		return nil, fmt.Errorf("%w: truncated stream: got %d bytes, declared %d", ErrSizeMismatch, total, opts.Size)
	}
	got := digest.NewDigestFromBytes(alg, sum)
	if opts.Expected != "" && got != opts.Expected {
		return nil, fmt.Errorf("%w: stream hashes to %s, expected %s", ErrDigestMismatch, got, opts.Expected)
	}
	if opts.finish != nil {
		if err := opts.finish(got, total); err != nil {
			return nil, err
		}
	}
	return &index.LayerRecord{Digest: got, Size: total, MediaType: opts.MediaType, Created: time.Now().UTC(), Recipe: recipe,
		Unrooted: opts.unrooted}, nil
}

// nopHash is a hash that hashes nothing (PushOptions.noDigest).
type nopHash struct{ hash.Hash }

func (nopHash) Write(p []byte) (int, error) { return len(p), nil }

// verifyStored consumes the push of a layer that is already committed: the
// stream must still be the declared one, but nothing needs cutting or
// storing.
func (c *Cache) verifyStored(ctx context.Context, r io.Reader, opts PushOptions, info LayerInfo) (LayerInfo, error) {
	h := opts.Expected.Algorithm().Hash()
	bp := c.chunks.GetData(c.params.Max)
	defer c.chunks.PutData(bp)
	buf := (*bp)[:cap(*bp)]
	var n int64
	for {
		if err := ctx.Err(); err != nil {
			return LayerInfo{}, err
		}
		k, err := r.Read(buf)
		h.Write(buf[:k])
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return LayerInfo{}, fmt.Errorf("%w: truncated stream: %w", ErrSizeMismatch, err)
			}
			return LayerInfo{}, fmt.Errorf("read layer: %w", err)
		}
	}
	if opts.Size >= 0 && n != opts.Size {
		return LayerInfo{}, fmt.Errorf("%w: got %d bytes, declared %d", ErrSizeMismatch, n, opts.Size)
	}
	if got := digest.NewDigestFromBytes(opts.Expected.Algorithm(), h.Sum(nil)); got != opts.Expected {
		return LayerInfo{}, fmt.Errorf("%w: stream hashes to %s, expected %s", ErrDigestMismatch, got, opts.Expected)
	}
	return info, nil
}

// commit writes the layer's manifest to the backend, then the index record;
// the backend always comes first. sess, if not nil, is the push's chunk
// session: its last pack is written while the manifest is (a manifest whose
// chunks never landed is harmless: nothing indexes it, and Reindex restores
// a layer only if every chunk it names is there), and the commit uses the
// chunks it wrote. A layer that is already committed is returned as it is.
func (c *Cache) commit(ctx context.Context, lr *index.LayerRecord, sess *chunks.Session) (LayerInfo, error) {
	if old, err := c.stat(lr.Digest); err == nil && !old.Damaged() {
		if found, err := c.hold(ctx, lr.Digest, !lr.Unrooted); err != nil {
			return LayerInfo{}, err
		} else if found {
			if sess != nil {
				sess.Committed() // the layer references its chunks: no touch needed
			}
			return old, nil
		}
		// A collection took it just now: stored anew below.
	} else if err == nil && lr.Unrooted {
		// A damaged layer pushed again: it keeps its root if it had one.
		if un, err := c.idx.Unrooted(lr.Digest); err != nil {
			return LayerInfo{}, err
		} else if !un {
			lr.Unrooted = false
		}
	} else if err != nil && !errors.Is(err, ErrNotFound) {
		return LayerInfo{}, err
	}
	m, err := marshalManifest(lr)
	if err != nil {
		return LayerInfo{}, err
	}
	var flushErr error
	var wg sync.WaitGroup
	if sess != nil {
		wg.Go(func() { flushErr = sess.Flush() })
	}
	err = c.store.Put(ctx, layerKey(lr.Digest), bytes.NewReader(m), int64(len(m)))
	wg.Wait()
	if flushErr != nil {
		return LayerInfo{}, flushErr
	}
	if err != nil {
		return LayerInfo{}, backendErr("write manifest", err)
	}
	var known map[chunkid.ID]index.ChunkInfo
	if sess != nil {
		known = sess.Known()
	}
	if c.beforeCommit != nil {
		c.beforeCommit()
	}
	res, err := c.idx.CommitLayer(lr, known)
	if err != nil {
		return LayerInfo{}, err
	}
	if res != lr && !lr.Unrooted {
		// Another push committed it meanwhile, maybe the registry's.
		if _, err := c.hold(ctx, lr.Digest, true); err != nil {
			return LayerInfo{}, err
		}
	}
	if res != lr && len(c.idx.DamagedChunks(res)) > 0 && len(c.idx.DamagedChunks(lr)) == 0 {
		// The stored record of these bytes is damaged and this push's
		// chunks did not heal it (another recipe: pushed by a client
		// that chunks, or before tar splitting): the whole new recipe
		// replaces it. Its manifest is already in the backend.
		if err := c.idx.ReplaceLayer(res, lr, known); err != nil {
			return LayerInfo{}, err
		}
		res = lr
	}
	if sess != nil {
		sess.Committed()
	}
	return c.info(res, res.Created), nil
}

// hold answers a push that committed layer d is there: it touches d in a
// transaction that sees it, so that a running collection keeps it (see
// index.DB.DeleteUnreached), and with root (a push through the gRPC API)
// roots it: the layer's manifest is written without the unrooted mark
// first, then the index's mark goes. found is false if d is not committed
// (a collection took it just now): the caller stores it anew.
func (c *Cache) hold(ctx context.Context, d digest.Digest, root bool) (found bool, err error) {
	now := time.Now()
	if root {
		un, err := c.idx.Unrooted(d)
		if err != nil {
			return false, err
		} else if !un {
			return c.idx.HoldLayer(d, false, now)
		}
		if found, err := c.idx.HoldLayer(d, false, now); err != nil || !found {
			return found, err
		}
		lr, _, err := c.idx.Layer(d)
		if errors.Is(err, ErrNotFound) {
			return false, nil
		} else if err != nil {
			return false, err
		}
		lr.Unrooted = false
		m, err := marshalManifest(lr)
		if err != nil {
			return false, err
		}
		if err := c.store.Put(ctx, layerKey(d), bytes.NewReader(m), int64(len(m))); err != nil {
			return false, backendErr("write manifest", err)
		}
	}
	return c.idx.HoldLayer(d, root, now)
}
