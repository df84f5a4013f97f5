package cache

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/chunks"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/tarsplit"
	"github.com/opencontainers/go-digest"
)

// Split tars.
//
// A layer that is a tar (the content of a compressed blob included) is
// stored as two chunked streams (package tarsplit): its files' contents
// back to back, and everything else (headers, padding, the end marker)
// with the lengths that interleave them. The same files tarred by another
// build, with other timestamps, then give the same content chunks; only
// the small meta stream differs. The record's Recipe is the content
// stream, Tar.Meta the meta stream; both are referenced, counted and
// reindexed like any recipe. A stream that does not start with a tar
// header is stored as it is; one that stops parsing part way keeps the
// rest in its meta stream, so every byte comes back.

// splitTar stores r through sess, split if it starts with a tar header.
func (c *Cache) splitTar(ctx context.Context, sess *chunks.Session, r io.Reader, opts PushOptions) (*index.LayerRecord, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, _ := br.Peek(512)
	if !tarsplit.LooksLikeTar(head) {
		return c.chunkInto(ctx, sess, br, opts)
	}
	alg := digest.SHA256
	if opts.Expected != "" {
		alg = opts.Expected.Algorithm()
	}
	hc := &hashCounter{h: alg.Hash()}
	spool, err := os.CreateTemp(c.spoolDir, "cairn-tarmeta-")
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	os.Remove(spool.Name()) // gone with the file, whatever happens
	defer spool.Close()
	sp := tarsplit.NewSplitter(io.TeeReader(br, hc), spool)
	// Files of 4 MiB and more are chunked alone: their chunks do not
	// depend on what precedes them. Smaller files are cut content-defined
	// together (a segment per file would drain the push pipeline once per
	// file: at 1 MiB that cost a tenth of the push's speed).
	segs := &segments{sp: sp, min: 4 * int64(c.params.Max)}
	sp.OnEntry = segs.entry
	var recipe []index.RecipeEntry
	for !segs.done {
		part, err := c.chunkInto(ctx, sess, segs, PushOptions{Size: -1, MediaType: opts.MediaType, noDigest: true})
		if err != nil {
			return nil, err
		}
		recipe = append(recipe, part.Recipe...)
		segs.next()
	}
	content := &index.LayerRecord{Recipe: recipe}
	// Every byte read is in exactly one of the two streams; anything else
	// is a bug, and nothing is committed.
	var contentBytes int64
	for _, e := range content.Recipe {
		contentBytes += e.Size
	}
	if sp.MetaBytes+sp.ContentBytes != hc.n || sp.ContentBytes != contentBytes {
		return nil, fmt.Errorf("cache: splitting a tar: %d bytes read, %d of meta and %d of content split, %d of content stored",
			hc.n, sp.MetaBytes, sp.ContentBytes, contentBytes)
	}
	if opts.Size >= 0 && hc.n != opts.Size {
		if hc.n > opts.Size {
			return nil, fmt.Errorf("%w: stream longer than its declared size %d", ErrSizeMismatch, opts.Size)
		}
		return nil, fmt.Errorf("%w: truncated stream: got %d bytes, declared %d", ErrSizeMismatch, hc.n, opts.Size)
	}
	got := digest.NewDigestFromBytes(alg, hc.h.Sum(nil))
	if opts.Expected != "" && got != opts.Expected {
		return nil, fmt.Errorf("%w: stream hashes to %s, expected %s", ErrDigestMismatch, got, opts.Expected)
	}
	if opts.finish != nil {
		if err := opts.finish(got, hc.n); err != nil {
			return nil, err
		}
	}
	metaSize, err := spool.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	meta, err := c.chunkInto(ctx, sess, io.NewSectionReader(spool, 0, metaSize), PushOptions{Size: metaSize, noDigest: true})
	if err != nil {
		return nil, err
	}
	return &index.LayerRecord{Digest: got, Size: hc.n, MediaType: opts.MediaType, Created: time.Now().UTC(), Unrooted: opts.unrooted,
		Recipe: content.Recipe, Tar: &index.TarLayout{Size: hc.n, Meta: meta.Recipe}}, nil
}

// segments reads the content stream in segments: a file of at least min
// bytes is a segment of its own, the files between such files one more, so
// that each is chunked apart and a large file's chunks do not depend on
// what precedes it in the tar. Read returns io.EOF at the end of each
// segment; next starts the following one; done is set at the stream's end.
type segments struct {
	sp    *tarsplit.Splitter
	min   int64
	pos   int64 // content bytes returned
	from  int64 // where the current segment starts
	held  []byte
	eof   bool  // the current segment is over
	done  bool  // the content stream is over
	start bool  // a large file starts with the bytes just read
	end   int64 // where the large file being read ends (0: none)
}

// entry is the splitter's OnEntry: a file's data comes next.
func (s *segments) entry(offset, size int64) {
	if size >= s.min {
		s.start, s.end = true, offset+size
	}
}

func (s *segments) Read(p []byte) (int, error) {
	if s.eof || s.done {
		return 0, io.EOF
	}
	if len(s.held) > 0 {
		n := copy(p, s.held)
		s.held = s.held[n:]
		s.pos += int64(n)
		s.checkEnd()
		return n, nil
	}
	if s.end > s.pos {
		p = p[:min(int64(len(p)), s.end-s.pos)]
	}
	n, err := s.sp.Read(p)
	if s.start {
		// A large file begins with these bytes: end the segment before
		// them (unless it is empty), and give them to the next.
		s.start = false
		if s.pos > s.from {
			s.held = append(s.held[:0], p[:n]...)
			s.eof = true
			return 0, io.EOF
		}
	}
	s.pos += int64(n)
	s.checkEnd()
	if err == io.EOF {
		s.done = true
	}
	return n, err
}

// checkEnd ends the segment at the end of a large file.
func (s *segments) checkEnd() {
	if s.end > 0 && s.pos == s.end {
		s.end = 0
		s.eof = true
	}
}

// next starts the following segment.
func (s *segments) next() {
	s.eof = false
	s.from = s.pos
}

type hashCounter struct {
	h hash.Hash
	n int64
}

func (hc *hashCounter) Write(p []byte) (int, error) {
	hc.h.Write(p)
	hc.n += int64(len(p))
	return len(p), nil
}

// rawReader reads n bytes from offset of the bytes lr's chunks make: its
// recipe, or a split tar joined back (from a checkpoint near offset, for a
// range far into a big one: tarcheckpoints.go). Chunks are verified one by
// one; a whole layer is checked against its digest by openLocked's caller.
func (c *Cache) rawReader(ctx context.Context, lr *index.LayerRecord, offset, n int64) (io.ReadCloser, error) {
	if lr.Tar == nil {
		return c.chunks.NewReader(ctx, lr.Recipe, offset, n), nil
	}
	var metaSize, contentSize int64
	for _, e := range lr.Tar.Meta {
		metaSize += e.Size
	}
	for _, e := range lr.Recipe {
		contentSize += e.Size
	}
	toEnd := offset+n == lr.Tar.Size
	// A range read that would walk more than a megabyte of meta to its
	// offset starts at the last checkpoint before it instead, and reads
	// either stream no further than the range needs; a whole read (offset
	// 0) walks the streams from their start to their end, as it must.
	from, to := tarsplit.Checkpoint{}, tarsplit.Checkpoint{Meta: metaSize, Content: contentSize}
	if c.checkpoints.useCheckpoints(offset, metaSize) {
		points, err := c.tarCheckpoints(ctx, lr, metaSize)
		if err != nil {
			return nil, joinErr(lr.Digest, err)
		}
		if points != nil {
			from, to = joinSpan(points, offset, n, toEnd)
			to.Content = min(to.Content, contentSize)
		}
	}
	tr := &joinedReader{}
	open := func(off int64) (io.Reader, error) {
		if off > contentSize {
			return nil, fmt.Errorf("%w: layer %s: its meta stream runs past its content", ErrDataLoss, lr.Digest)
		}
		tr.content = c.chunks.NewReader(ctx, lr.Recipe, off, max(to.Content-off, 0))
		return tr.content, nil
	}
	tr.meta = c.chunks.NewReader(ctx, lr.Tar.Meta, from.Meta, to.Meta-from.Meta)
	meta := &countingReader{r: tr.meta, n: &c.checkpoints.metaRead}
	var j *tarsplit.Joiner
	var err error
	if from.Meta == 0 {
		j, err = tarsplit.NewJoinerAt(meta, open, offset)
	} else {
		j, err = tarsplit.NewJoinerFrom(meta, open, from, offset)
	}
	if err != nil {
		tr.meta.Close()
		return nil, joinErr(lr.Digest, err)
	}
	tr.r = &exactJoin{j: j, d: lr.Digest, want: n, toEnd: toEnd, content: contentSize}
	return tr, nil
}

// joinErr is the error of a split tar's join that failed to start: a meta
// stream that does not parse is data loss (its chunks were verified, so
// the stored layer itself is wrong), anything else (a backend that fails)
// is passed on.
func joinErr(d digest.Digest, err error) error {
	if errors.Is(err, tarsplit.ErrFormat) {
		return fmt.Errorf("%w: layer %s: %w", ErrDataLoss, d, err)
	}
	return fmt.Errorf("layer %s: %w", d, err)
}

// exactJoin is the join, checked: it must yield exactly want bytes, and a
// read to the tar's end must pass the whole content stream; a malformed
// meta stream is data loss (its chunks were verified, so the stored layer
// itself is wrong).
type exactJoin struct {
	j       *tarsplit.Joiner
	d       digest.Digest
	want    int64
	got     int64
	toEnd   bool
	content int64
}

func (e *exactJoin) Read(p []byte) (int, error) {
	if e.got == e.want {
		if !e.toEnd {
			return 0, io.EOF
		}
		// The tar's end: the join must end here too, having used every
		// byte of content.
		var one [1]byte
		k, err := e.j.Read(one[:])
		switch {
		case k > 0:
			return 0, fmt.Errorf("%w: layer %s: the join runs past the layer's %d bytes", ErrDataLoss, e.d, e.want)
		case err != io.EOF:
			return 0, e.wrap(err)
		case e.j.ContentRead() != e.content:
			return 0, fmt.Errorf("%w: layer %s: the join uses %d bytes of content, %d stored", ErrDataLoss, e.d, e.j.ContentRead(), e.content)
		}
		e.toEnd = false
		return 0, io.EOF
	}
	if int64(len(p)) > e.want-e.got {
		p = p[:e.want-e.got]
	}
	n, err := e.j.Read(p)
	e.got += int64(n)
	if err == io.EOF && e.got < e.want {
		return n, fmt.Errorf("%w: layer %s: the join ends after %d bytes of %d", ErrDataLoss, e.d, e.got, e.want)
	}
	if err == io.EOF {
		err = nil // the check at the end comes with the next Read
	}
	return n, e.wrap(err)
}

func (e *exactJoin) wrap(err error) error {
	if err != nil && err != io.EOF && errors.Is(err, tarsplit.ErrFormat) {
		return fmt.Errorf("%w: layer %s: %w", ErrDataLoss, e.d, err)
	}
	return err
}

// joinedReader is a split tar joined back; Close stops both chunk readers.
type joinedReader struct {
	r             *exactJoin
	meta, content io.ReadCloser
}

func (t *joinedReader) Read(p []byte) (int, error) { return t.r.Read(p) }

func (t *joinedReader) Close() error {
	t.meta.Close()
	if t.content != nil {
		t.content.Close()
	}
	return nil
}

// WriteTo moves the tar in pieces of a megabyte: a join yields one file's
// header or contents per Read, and a write per piece (a syscall on a
// network connection) would cost more than the join for small files.
func (t *joinedReader) WriteTo(w io.Writer) (int64, error) {
	buf := make([]byte, 1<<20)
	var total int64
	for {
		n, err := io.ReadFull(t.r, buf)
		if n > 0 {
			k, werr := w.Write(buf[:n])
			total += int64(k)
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}

// openTar reads n bytes from offset of a split tar: the two streams
// joined. Every chunk of both is verified as it is read, and the join is
// exact (a meta stream that does not parse, or a content stream that ends
// early or runs long, is ErrDataLoss), as for a plain layer; the layer's
// SHA-256 is not computed again: that pass alone cost as much as the whole
// pull (BenchmarkTarSplit: 1597 MB/s plain, 787 MB/s with it).
func (c *Cache) openTar(ctx context.Context, lr *index.LayerRecord, offset, n int64) (io.ReadCloser, error) {
	return c.rawReader(ctx, lr, offset, n)
}
