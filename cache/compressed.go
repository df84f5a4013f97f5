package cache

import (
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/blobcache"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/recompress"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
)

// Compressed blobs.
//
// A gzip or zstd blob is stored, where cairn can rebuild it exactly, as two
// layers sharing one set of chunks: its uncompressed content (named by its
// diffID) and the blob itself, whose record holds the same recipe plus the
// encoder spec that turns the content back into the blob's bytes. Chunks
// are then cut from the tar, where near-identical layers share them.
//
// The push decompresses the blob as it streams in, stores the content, and
// meanwhile runs a recompress.Matcher: candidate encoders compress the
// content again and are dropped at their first byte that differs from the
// blob. The first probeBytes of content decide cheaply: if no candidate is
// left by then, the blob is stored as it came, from a spool copy of what was
// read so far and then the rest of the stream, and nothing else is stored.
// A candidate that lasts to the end, with the blob's digest checked,
// becomes the recipe. One that fails late (a second gzip member, trailing
// bytes) leaves the content committed and the blob stored as it came, from
// the spool file, which holds the whole compressed stream on local disk for
// that case; memory stays bounded whatever the blob's size.

// probeBytes is how much uncompressed content a push holds while the
// candidate encoders have their first look.
const probeBytes = 4 << 20

// maxZstdWindow bounds the window of a zstd blob a push decompresses (the
// decoder's memory); one with a larger window is stored as it came.
const maxZstdWindow = 32 << 20

// ErrExpansion is a compressed blob that expands past MaxExpandedSize.
var ErrExpansion = fmt.Errorf("%w: the blob expands past the uncompressed size limit", ErrInvalidArgument)

// errDecode marks a failure to decompress: the blob is then stored as it
// came, not refused (it may be anything that starts with gzip's magic).
var errDecode = errors.New("not decompressible")

// ingestSource is the compressed stream as the decoder reads it: every byte
// is hashed, spooled and handed to the matcher.
type ingestSource struct {
	r        io.Reader
	h        hash.Hash
	spool    *os.File
	spoolErr error
	n        int64
	readErr  error // a failure of r itself (the client's stream), not EOF
	m        *recompress.Matcher
	before   []byte // read before the matcher started: the gzip header
}

func (s *ingestSource) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if n > 0 {
		s.h.Write(p[:n])
		s.n += int64(n)
		if s.spoolErr == nil {
			_, s.spoolErr = s.spool.Write(p[:n])
		}
		if s.m != nil {
			s.m.AddCompressed(p[:n])
		} else {
			s.before = append(s.before, p[:n]...)
		}
	}
	if err != nil && err != io.EOF && s.readErr == nil {
		s.readErr = err
	}
	return n, err
}

func (s *ingestSource) startMatcher(m *recompress.Matcher) {
	s.m = m
	m.AddCompressed(s.before)
	s.before = nil
}

// spooled is what the source read so far, from the spool file.
func (s *ingestSource) spooled() (io.Reader, error) {
	if s.spoolErr != nil {
		return nil, fmt.Errorf("spool the compressed blob: %w", s.spoolErr)
	}
	return io.NewSectionReader(s.spool, 0, s.n), nil
}

// expandReader is the decompressed stream: it feeds the matcher, bounds the
// size, and tells decoding failures from failures of the stream below.
type expandReader struct {
	r     io.Reader
	m     *recompress.Matcher
	feed  *asyncFeed
	src   *ingestSource
	n     int64
	limit int64
}

func (e *expandReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if n > 0 {
		e.n += int64(n)
		if e.n > e.limit {
			return 0, fmt.Errorf("%w (%d bytes)", ErrExpansion, e.limit)
		}
		if e.m.Live() > 0 {
			e.feed.send(p[:n])
		}
	}
	if err != nil && err != io.EOF {
		if e.src.readErr != nil {
			return n, e.src.readErr
		}
		return n, fmt.Errorf("%w: %w", errDecode, err)
	}
	return n, err
}

// asyncFeed runs the candidate encoders on their own goroutine, so that
// re-encoding (the slowest part of a push: gzip level 6 runs at tens of
// MB/s) overlaps decompressing and storing the content. At most
// feedDepth pieces wait, which bounds how far the compressed stream runs
// ahead of the encoders' output: within the matcher's window.
type asyncFeed struct {
	ch   chan []byte
	done chan struct{}
	pool chan []byte
}

const feedDepth = 16

func newAsyncFeed(m *recompress.Matcher) *asyncFeed {
	a := &asyncFeed{ch: make(chan []byte, feedDepth), done: make(chan struct{}), pool: make(chan []byte, feedDepth+2)}
	go func() {
		defer close(a.done)
		for b := range a.ch {
			m.Feed(b)
			select {
			case a.pool <- b[:0]:
			default:
			}
		}
	}()
	return a
}

func (a *asyncFeed) send(p []byte) {
	var b []byte
	select {
	case b = <-a.pool:
	default:
	}
	a.ch <- append(b, p...)
}

// wait ends the feed and waits until the encoders have had every piece.
func (a *asyncFeed) wait() {
	close(a.ch)
	<-a.done
}

// uncompressedMediaType is the media type of the content of a blob of type
// mt: the tar type of the same family.
func uncompressedMediaType(mt string) string {
	for _, suf := range []string{"+gzip", "+zstd", ".gzip", ".zstd"} {
		if t, ok := strings.CutSuffix(mt, suf); ok && strings.HasSuffix(t, "tar") {
			return t
		}
	}
	return DefaultMediaType
}

func (c *Cache) pushCompressed(ctx context.Context, r io.Reader, f recompress.Format, opts PushOptions) (LayerInfo, error) {
	// The spool: in the rebuilt-blob cache's tmp/ if there is one, so that
	// a blob stored rebuilt starts there as a cached copy (a layer just
	// pushed is the likeliest to be pulled next, and rebuilding it costs
	// its encoder's time); else unlinked at once, gone with the file
	// whatever happens.
	var spool *os.File
	var err error
	toCache := c.blobs != nil && (opts.Size < 0 || c.blobs.Fits(opts.Size))
	if toCache {
		spool, err = c.blobs.Temp()
	} else if spool, err = os.CreateTemp(c.spoolDir, "cairn-spool-"); err == nil {
		os.Remove(spool.Name())
	}
	if err != nil {
		return LayerInfo{}, fmt.Errorf("spool: %w", err)
	}
	cached := false
	defer func() {
		if cached {
			return
		}
		if toCache {
			blobcache.Discard(spool)
		} else {
			spool.Close()
		}
	}()
	alg := digest.SHA256
	if opts.Expected != "" {
		alg = opts.Expected.Algorithm()
	}
	src := &ingestSource{r: r, h: alg.Hash(), spool: spool}

	// The decoder reads the header (gzip) or frame header (zstd) now.
	var (
		dec   io.Reader
		hdr   *recompress.GzipHeader
		close = func() {}
	)
	switch f {
	case recompress.Gzip:
		zr, err := stdgzip.NewReader(src)
		if err == nil {
			dec, hdr = zr, recompress.HeaderOf(zr.Header)
		}
	case recompress.Zstd:
		zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxZstdWindow),
			zstd.WithDecoderLowmem(true))
		if err == nil {
			dec, close = zr, zr.Close
		}
	}
	defer close()
	if src.readErr != nil {
		return LayerInfo{}, fmt.Errorf("read layer: %w", src.readErr)
	}
	if dec == nil {
		return c.pushFallback(ctx, src, opts, f, "its header does not decode")
	}
	// The probe: the first probeBytes of content, fed to the candidates,
	// the likely ones first; if none of those is left, the others start
	// over from the beginning (the compressed bytes so far from the spool,
	// the content from the probe buffer).
	stages := recompress.Stages(f, hdr)
	m, err := recompress.NewMatcher(stages[0], 0)
	if err != nil {
		return LayerInfo{}, err
	}
	defer func() { m.Close() }()
	src.startMatcher(m)
	probe := make([]byte, probeBytes)
	var k int
	var decErr error
	for stage := 0; ; {
		for k < len(probe) && m.Live() > 0 && decErr == nil {
			var n int
			n, decErr = dec.Read(probe[k:min(k+64<<10, len(probe))])
			m.Feed(probe[k : k+n])
			k += n
		}
		if m.Live() > 0 || stage+1 == len(stages) || src.readErr != nil || (decErr != nil && decErr != io.EOF) {
			break
		}
		stage++
		m.Close()
		next, err := c.replayMatcher(src, stages[stage], probe[:k])
		if err != nil {
			return LayerInfo{}, err // m is closed; closing it again is harmless
		}
		m = next
	}
	probe = probe[:k]
	if src.readErr != nil {
		return LayerInfo{}, fmt.Errorf("read layer: %w", src.readErr)
	}
	if int64(k) > c.maxExpanded {
		return LayerInfo{}, fmt.Errorf("%w (%d bytes)", ErrExpansion, c.maxExpanded)
	}
	if m.Live() == 0 || (decErr != nil && decErr != io.EOF) {
		m.Close()
		why := "no encoder reproduces its start"
		if decErr != nil && decErr != io.EOF {
			why = "it does not decompress: " + decErr.Error()
		}
		return c.pushFallback(ctx, src, opts, f, why)
	}

	feed := newAsyncFeed(m)
	fed := false
	defer func() {
		if !fed {
			feed.wait()
		}
	}()
	content := io.MultiReader(bytes.NewReader(probe), &expandReader{r: dec, m: m, feed: feed, src: src, n: int64(k), limit: c.maxExpanded})
	if decErr == io.EOF {
		content = bytes.NewReader(probe)
	}
	raw, sess, err := c.pushChunks(ctx, content, PushOptions{Size: -1, MediaType: uncompressedMediaType(opts.MediaType), unrooted: opts.unrooted})
	feed.wait()
	fed = true
	if errors.Is(err, errDecode) {
		return c.pushFallback(ctx, src, opts, f, err.Error())
	}
	if err != nil {
		return LayerInfo{}, err
	}
	defer sess.Close()
	// Trailing bytes after the last gzip member or zstd frame: the
	// decoders stop at them or fail on them; either way the stream is
	// read to its end, and no candidate matches them.
	if _, err := io.Copy(io.Discard, src); err != nil {
		return LayerInfo{}, fmt.Errorf("read layer: %w", err)
	}
	if err := c.checkCompressed(src, opts); err != nil {
		return LayerInfo{}, err
	}
	got := digest.NewDigestFromBytes(alg, src.h.Sum(nil))
	if opts.finish != nil {
		// An upload's declared digest: checked before anything is
		// committed, once.
		if err := opts.finish(got, src.n); err != nil {
			return LayerInfo{}, err
		}
		opts.finish = nil
	}
	spec, ok := m.Finish()
	why := "no encoder reproduces it to the end"
	var specBytes []byte
	if ok {
		if specBytes = spec.Marshal(); len(specBytes) > index.MaxRebuildSpec {
			ok, why = false, fmt.Sprintf("its encoder spec (gzip header fields) takes %d bytes, over %d", len(specBytes), index.MaxRebuildSpec)
		}
	}
	if !ok {
		// Keep the content (its chunks are written) and store the blob as
		// it came, from the spool.
		if _, err := c.commit(ctx, raw, sess); err != nil {
			return LayerInfo{}, err
		}
		return c.pushFallback(ctx, src, opts, f, why)
	}
	blob := &index.LayerRecord{Digest: got, Size: src.n, MediaType: opts.MediaType, Created: time.Now().UTC(),
		Recipe: raw.Recipe, Tar: raw.Tar, Rebuild: specBytes, Unrooted: opts.unrooted}
	info, err := c.commit(ctx, blob, sess)
	if err != nil {
		return LayerInfo{}, err
	}
	c.rebuilt.ingestRebuilt.Add(1)
	if toCache && src.spoolErr == nil {
		c.blobs.Add(spool, got, src.n) // takes the file, or drops it if too large
		cached = true
	}
	// The content under its own digest, sharing the chunks the blob's
	// record now references. Failing here loses nothing the caller asked
	// for.
	if _, err := c.commit(ctx, raw, nil); err != nil {
		c.log.Warn("cache: commit the content of a compressed blob", "blob", got, "content", raw.Digest, "err", err)
	}
	return info, nil
}

// replayMatcher starts a matcher of cands over what src and the probe have
// seen so far: the compressed bytes from the spool, the content from the
// probe buffer. src hands it the bytes that follow.
func (c *Cache) replayMatcher(src *ingestSource, cands []recompress.Spec, content []byte) (*recompress.Matcher, error) {
	m, err := recompress.NewMatcher(cands, 0)
	if err != nil {
		return nil, err
	}
	sr, err := src.spooled()
	if err != nil {
		m.Close()
		return nil, err
	}
	buf := make([]byte, 256<<10)
	for {
		n, err := sr.Read(buf)
		m.AddCompressed(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			m.Close()
			return nil, fmt.Errorf("spool: %w", err)
		}
	}
	for len(content) > 0 && m.Live() > 0 {
		n := min(len(content), 64<<10)
		m.Feed(content[:n])
		content = content[n:]
	}
	src.m = m
	return m, nil
}

// checkCompressed checks the compressed stream's length against the one
// declared and its digest against the one expected.
func (c *Cache) checkCompressed(src *ingestSource, opts PushOptions) error {
	if opts.Size >= 0 && src.n != opts.Size {
		if src.n > opts.Size {
			return fmt.Errorf("%w: stream longer than its declared size %d", ErrSizeMismatch, opts.Size)
		}
		return fmt.Errorf("%w: truncated stream: got %d bytes, declared %d", ErrSizeMismatch, src.n, opts.Size)
	}
	if opts.Expected != "" {
		if got := digest.NewDigestFromBytes(opts.Expected.Algorithm(), src.h.Sum(nil)); got != opts.Expected {
			return fmt.Errorf("%w: stream hashes to %s, expected %s", ErrDigestMismatch, got, opts.Expected)
		}
	}
	return nil
}

// pushFallback stores the blob as it came: what src read so far, from the
// spool, then the rest of the stream.
func (c *Cache) pushFallback(ctx context.Context, src *ingestSource, opts PushOptions, f recompress.Format, why string) (LayerInfo, error) {
	head, err := src.spooled()
	if err != nil {
		return LayerInfo{}, err
	}
	info, err := c.pushPlain(ctx, io.MultiReader(head, src.r), opts)
	if err == nil {
		c.rebuilt.ingestKept.Add(1)
		c.log.Info("cache: a compressed blob is stored as it came", "blob", info.Digest, "size", info.Size, "format", f, "why", why)
	}
	return info, err
}

// openRebuilt reads n bytes from offset of a blob stored as its content
// plus an encoder: from the rebuilt-blob cache if it holds a copy, else by
// running the encoder over the whole content (and keeping the result in
// the cache). Either way the bytes are hashed as they stream, and the last
// ones of the range are held back until the whole blob matched its digest
// and size, so a reader never gets a whole range of wrong bytes: a mismatch
// ends the read with ErrDataLoss before its end.
func (c *Cache) openRebuilt(ctx context.Context, lr *index.LayerRecord, offset, n int64) (io.ReadCloser, error) {
	if c.blobs != nil {
		if f, ok := c.blobs.Open(lr.Digest, lr.Size); ok {
			return &verifiedReader{c: c, src: f, closeSrc: f.Close, d: lr.Digest, h: lr.Digest.Algorithm().Hash(), size: lr.Size,
				off: offset, end: offset + n, hold: min(n, holdBack), served: &c.rebuilt.fromCache,
				onBad: func() { c.blobs.Remove(lr.Digest) }, from: "cached copy"}, nil
		}
	}
	spec, err := recompress.Unmarshal(lr.Rebuild)
	if err != nil {
		return nil, fmt.Errorf("%w: blob %s: %w", ErrDataLoss, lr.Digest, err)
	}
	if err := recompress.Check(spec); err != nil {
		return nil, fmt.Errorf("%w: blob %s is stored as its content plus %s, which this build of cairn no longer reproduces (%w); "+
			"read it with the cairn release that stored it, after `cairn materialize`", ErrFailedPrecondition, lr.Digest, spec, err)
	}
	var keep *os.File
	if c.blobs != nil && c.blobs.Fits(lr.Size) {
		keep, _ = c.blobs.Temp() // no copy kept if this fails
	}
	produce := func(w io.Writer) error {
		content, err := c.rawReader(ctx, lr, 0, lr.RawSize())
		if err != nil {
			return err
		}
		defer content.Close()
		return recompress.Rebuild(spec, content, w)
	}
	return c.streamVerified(ctx, lr, offset, n, produce, &c.rebuilt.rebuilt, keep, spec.String()), nil
}

// streamVerified runs produce, which writes the whole blob lr, on its own
// goroutine, and returns a reader of bytes [offset, offset+n) of what it
// writes, verified as openRebuilt says. served counts the bytes delivered.
// keep, if not nil, receives a copy, added to the rebuilt-blob cache once
// verified.
func (c *Cache) streamVerified(ctx context.Context, lr *index.LayerRecord, offset, n int64, produce func(io.Writer) error,
	served *atomic.Int64, keep *os.File, source string) io.ReadCloser {
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	go func() {
		vw := &verifyWriter{w: countingWriter{pw, served}, h: lr.Digest.Algorithm().Hash(), off: offset, end: offset + n,
			size: lr.Size, hold: min(n, holdBack)}
		var out io.Writer = vw
		var copyTo *bestEffort
		if keep != nil {
			copyTo = &bestEffort{w: keep}
			out = io.MultiWriter(vw, copyTo)
		}
		err := produce(out)
		if err == nil {
			err = vw.finish(lr.Digest)
			if errors.Is(err, ErrDataLoss) {
				c.log.Error("cache: a compressed blob does not match its digest", "blob", lr.Digest, "from", source, "err", err)
			}
		}
		if keep != nil {
			if err == nil && copyTo.err == nil {
				c.blobs.Add(keep, lr.Digest, lr.Size)
			} else {
				blobcache.Discard(keep)
			}
		}
		if err != nil && ctx.Err() == nil && !errors.Is(err, io.ErrClosedPipe) && !errors.Is(err, ErrDataLoss) {
			c.log.Warn("cache: reading a compressed blob", "blob", lr.Digest, "from", source, "err", err)
		}
		pw.CloseWithError(err)
	}()
	return &rebuiltReader{PipeReader: pr, cancel: cancel}
}

// bestEffort writes to w until the first error, then drops the rest: the
// cache copy must not fail a read.
type bestEffort struct {
	w   io.Writer
	err error
}

func (b *bestEffort) Write(p []byte) (int, error) {
	if b.err == nil {
		_, b.err = b.w.Write(p)
	}
	return len(p), nil
}

type countingWriter struct {
	w io.Writer
	n *atomic.Int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n.Add(int64(n))
	return n, err
}

// RebuildStats count what the compressed-blob machinery did since Open.
type RebuildStats struct {
	// Compressed blobs pushed: stored as content plus an encoder, or as
	// they came (no encoder reproduced them, or they did not decompress).
	IngestRebuilt, IngestKept int64
	// Bytes of rebuilt blobs served: produced by an encoder, or read from
	// the rebuilt-blob cache.
	ServedRebuilt, ServedFromCache int64
	// The cache: bytes and blobs it holds, blobs evicted.
	CacheBytes, CacheEvictions int64
	CacheBlobs                 int
}

// Rebuilds returns the counters; it is cheap.
func (c *Cache) Rebuilds() RebuildStats {
	s := RebuildStats{IngestRebuilt: c.rebuilt.ingestRebuilt.Load(), IngestKept: c.rebuilt.ingestKept.Load(),
		ServedRebuilt: c.rebuilt.rebuilt.Load(), ServedFromCache: c.rebuilt.fromCache.Load()}
	if c.blobs != nil {
		s.CacheBytes, s.CacheBlobs, s.CacheEvictions = c.blobs.Size()
	}
	return s
}

type rebuildCounters struct {
	ingestRebuilt, ingestKept, rebuilt, fromCache atomic.Int64
}

// verifiedReader reads a range of a blob from a source of the whole blob
// (a copy in the rebuilt-blob cache, or a split tar joined back) on the
// caller's goroutine: the whole source is hashed (from its start, whatever
// the range), and the last hold bytes of the range are delivered only once
// the digest and size matched. onBad, if set, runs on a mismatch.
type verifiedReader struct {
	c        *Cache
	src      io.Reader
	closeSrc func() error
	onBad    func()
	from     string
	served   *atomic.Int64 // counts the bytes delivered, if set
	d        digest.Digest
	h        hash.Hash
	size     int64
	pos      int64 // bytes of the source read and hashed
	off, end int64
	hold     int64
	buf      []byte
	ready    []byte // range bytes that may go out
	held     []byte
	done     bool
	err      error
}

const verifiedReadSize = 256 << 10

func (r *verifiedReader) Read(p []byte) (int, error) {
	for len(r.ready) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			return 0, io.EOF
		}
		r.fill()
	}
	n := copy(p, r.ready)
	r.ready = r.ready[n:]
	if r.served != nil {
		r.served.Add(int64(n))
	}
	return n, nil
}

// fill reads the next piece of the source, or at its end checks the digest.
func (r *verifiedReader) fill() {
	if r.buf == nil {
		r.buf = make([]byte, verifiedReadSize)
	}
	k, err := r.src.Read(r.buf)
	if k > 0 {
		start := r.pos
		r.pos += int64(k)
		if r.pos > r.size {
			r.fail(fmt.Errorf("%w: blob %s: the %s is longer than %d bytes", ErrDataLoss, r.d, r.from, r.size))
			return
		}
		r.h.Write(r.buf[:k])
		lo, hi := max(start, r.off), min(r.pos, r.end)
		if lo < hi {
			part := r.buf[lo-start : hi-start]
			if release := r.end - r.hold; lo < release {
				m := min(hi, release) - lo
				r.ready = part[:m]
				part = part[m:]
			}
			r.held = append(r.held, part...)
		}
	}
	switch {
	case err == io.EOF:
		if r.pos != r.size {
			r.fail(fmt.Errorf("%w: blob %s: the %s has %d bytes, not %d", ErrDataLoss, r.d, r.from, r.pos, r.size))
			return
		}
		if got := digest.NewDigestFromBytes(r.d.Algorithm(), r.h.Sum(nil)); got != r.d {
			r.fail(fmt.Errorf("%w: blob %s: the %s hashes to %s", ErrDataLoss, r.d, r.from, got))
			return
		}
		r.ready = append(r.ready, r.held...)
		r.held = nil
		r.done = true
	case err != nil:
		r.err = fmt.Errorf("cache: read the %s of %s: %w", r.from, r.d, err)
	}
}

func (r *verifiedReader) fail(err error) {
	r.c.log.Error("cache: a blob does not match its digest", "blob", r.d, "from", r.from, "err", err)
	if r.onBad != nil {
		r.onBad()
	}
	r.err = err
	r.ready = nil
}

func (r *verifiedReader) Close() error {
	r.done, r.err = true, errors.New("cache: read after close")
	return r.closeSrc()
}

// holdBack is how many bytes of a rebuilt range wait for the digest check.
const holdBack = 64 << 10

type rebuiltReader struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (r *rebuiltReader) Close() error {
	r.cancel()
	return r.PipeReader.Close()
}

// verifyWriter hashes a rebuilt blob and passes on the bytes of [off, end),
// except the last hold of them, which finish writes once the digest and
// size are right.
type verifyWriter struct {
	w        io.Writer
	h        hash.Hash
	pos      int64
	off, end int64
	size     int64
	hold     int64
	held     []byte
}

func (v *verifyWriter) Write(p []byte) (int, error) {
	start := v.pos
	v.pos += int64(len(p))
	if v.pos > v.size {
		return 0, fmt.Errorf("%w: the rebuild writes more than the blob's %d bytes", ErrDataLoss, v.size)
	}
	v.h.Write(p)
	// The part of p inside the range.
	lo, hi := max(start, v.off), min(v.pos, v.end)
	if lo >= hi {
		return len(p), nil
	}
	pass := p[lo-start : hi-start]
	release := v.end - v.hold // bytes before this go out now
	if lo < release {
		k := min(hi, release) - lo
		if _, err := v.w.Write(pass[:k]); err != nil {
			return 0, err
		}
		pass = pass[k:]
	}
	v.held = append(v.held, pass...)
	return len(p), nil
}

func (v *verifyWriter) finish(want digest.Digest) error {
	if v.pos != v.size {
		return fmt.Errorf("%w: blob %s: the rebuild writes %d bytes, not %d", ErrDataLoss, want, v.pos, v.size)
	}
	if got := digest.NewDigestFromBytes(want.Algorithm(), v.h.Sum(nil)); got != want {
		return fmt.Errorf("%w: blob %s: the rebuilt bytes hash to %s", ErrDataLoss, want, got)
	}
	_, err := v.w.Write(v.held)
	return err
}
