package reuse

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"sync"

	"github.com/cairnbuild/cairn/chunker"
	"github.com/cairnbuild/cairn/recompress"
	"github.com/cairnbuild/cairn/tarsplit"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// DefaultAverages are the average chunk sizes of the what-if table; each
// runs with min = avg/4 and max = avg*4, as chunker.V1 does at 256 KiB.
var DefaultAverages = []int{16 << 10, 64 << 10, 256 << 10, 1 << 20}

// Options tune an [Analyzer]. The zero value is ready to use.
type Options struct {
	// Averages are the average chunk sizes to try, powers of two of at least
	// 256 bytes. Default: DefaultAverages.
	Averages []int
	// Level is the zstd level each new chunk is compressed at, as cairn
	// stores it. Default: zstd.SpeedDefault.
	Level zstd.EncoderLevel
	// GzipLevel is the level a registry client compresses plain layers at
	// before pushing them. Default: gzip.DefaultCompression (what docker
	// and BuildKit use).
	GzipLevel int
	// Progress, if set, gets one line per layer as it is analysed.
	Progress io.Writer
}

// Analyzer accumulates the reuse figures of the layers added to it, in
// order. It is not safe for concurrent use. After an Add method fails, the
// layer it was reading is not in the report but may have left chunks and
// files marked as seen: start a new Analyzer rather than going on.
type Analyzer struct {
	opt    Options
	chunks []*chunkSet
	// tarContent and tarMeta: chunkers at the plot's average for the two
	// streams of the tar split as cairn stores it (package tarsplit).
	tarContent, tarMeta *chunkSet
	blobs               map[string]int // registry key or blob digest → index of the first layer with it
	files               fileSet
	report              Report
	readBuf             []byte
}

// New returns an Analyzer with opt.
func New(opt Options) (*Analyzer, error) {
	if len(opt.Averages) == 0 {
		opt.Averages = DefaultAverages
	}
	if opt.Level == 0 {
		opt.Level = zstd.SpeedDefault
	}
	if opt.GzipLevel == 0 {
		opt.GzipLevel = gzip.DefaultCompression
	}
	a := &Analyzer{
		opt:     opt,
		blobs:   map[string]int{},
		files:   fileSet{},
		readBuf: make([]byte, 1<<20),
	}
	for _, avg := range opt.Averages {
		p := chunker.Params{Min: avg / 4, Avg: avg, Max: avg * 4}
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("reuse: average chunk size %d: %w", avg, err)
		}
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(opt.Level), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		a.chunks = append(a.chunks, &chunkSet{
			p:    p,
			seen: map[[32]byte]struct{}{},
			enc:  enc,
			buf:  make([]byte, 2*p.Max),
		})
		a.report.Averages = append(a.report.Averages, avg)
	}
	plot := a.report.PlotAverage()
	for _, cs := range []**chunkSet{&a.tarContent, &a.tarMeta} {
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(opt.Level), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return nil, err
		}
		p := chunker.Params{Min: plot / 4, Avg: plot, Max: plot * 4}
		*cs = &chunkSet{p: p, seen: map[[32]byte]struct{}{}, enc: enc, buf: make([]byte, 2*p.Max)}
	}
	return a, nil
}

// AddPath analyses every layer that p holds (see [DetectKind]).
func (a *Analyzer) AddPath(ctx context.Context, p string) error {
	bs, err := blobs(p)
	if err != nil {
		return fmt.Errorf("reuse: %w", err)
	}
	for _, b := range bs {
		if err := a.add(ctx, b); err != nil {
			return fmt.Errorf("reuse: %s: %w", b.source, err)
		}
	}
	return nil
}

// AddLayer analyses one layer read from r (plain, gzip or zstd), named
// source in the report.
func (a *Analyzer) AddLayer(ctx context.Context, source string, r io.Reader) error {
	b := blob{source: source, open: func() (io.ReadCloser, error) { return io.NopCloser(r), nil }}
	if err := a.add(ctx, b); err != nil {
		return fmt.Errorf("reuse: %s: %w", source, err)
	}
	return nil
}

// Report returns the figures so far. The Analyzer keeps ownership of
// nothing in it: later calls do not change a returned Report.
func (a *Analyzer) Report() *Report {
	r := a.report
	r.Layers = append([]Layer(nil), a.report.Layers...)
	r.Total = Total{Layers: len(r.Layers)}
	r.Total.Chunks = make([]ChunkFigures, len(a.chunks))
	for i, cs := range a.chunks {
		r.Total.Chunks[i].AvgBytes = cs.p.Avg
	}
	for _, l := range r.Layers {
		if !l.Duplicate {
			// What cairn stores of a tar: its contents and meta apart.
			chunkStored := l.TarChunks.StoredBytes
			switch {
			case l.Compression == "none":
				r.Total.StoredWithRecompress += chunkStored
				r.Total.StoredWithout += chunkStored
			case l.Reproduced != "" && l.Reproduced != "none":
				r.Total.Compressed++
				if r.Total.Reproduced == nil {
					r.Total.Reproduced = map[string]int{}
				}
				r.Total.Reproduced[l.Reproduced]++
				r.Total.StoredWithRecompress += chunkStored
				r.Total.StoredWithout += l.RegistryBytes
			default:
				r.Total.Compressed++
				r.Total.StoredWithRecompress += l.RegistryBytes
				r.Total.StoredWithout += l.RegistryBytes
			}
		}
		r.Total.RawBytes += l.RawBytes
		r.Total.BlobBytes += l.BlobBytes
		r.Total.RegistryBytes += l.RegistryBytes
		r.Total.FileBytes += l.FileBytes
		r.Total.FileUniqueBytes += l.FileUniqueBytes
		r.Total.Files += l.Files
		r.Total.UniqueFiles += l.UniqueFiles
		r.Total.TarChunks.AvgBytes = l.TarChunks.AvgBytes
		r.Total.TarChunks.Chunks += l.TarChunks.Chunks
		r.Total.TarChunks.NewChunks += l.TarChunks.NewChunks
		r.Total.TarChunks.UniqueBytes += l.TarChunks.UniqueBytes
		r.Total.TarChunks.StoredBytes += l.TarChunks.StoredBytes
		for i, c := range l.Chunks {
			t := &r.Total.Chunks[i]
			t.Chunks += c.Chunks
			t.NewChunks += c.NewChunks
			t.UniqueBytes += c.UniqueBytes
			t.StoredBytes += c.StoredBytes
		}
	}
	return &r
}

// add analyses one blob and appends its Layer to the report.
func (a *Analyzer) add(ctx context.Context, b blob) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	// The same blob again (a base layer shared by two images): a registry
	// stores nothing more, and neither does any content-addressed store, so
	// there is no need to read it again.
	if i, ok := a.blobs[b.digest]; ok && b.digest != "" {
		prev := a.report.Layers[i]
		l := Layer{
			Source: b.source, Digest: prev.Digest, DiffID: prev.DiffID,
			Compression: prev.Compression, RawBytes: prev.RawBytes, BlobBytes: prev.BlobBytes,
			FileBytes: prev.FileBytes, Files: prev.Files, Duplicate: true,
		}
		for _, c := range prev.Chunks {
			l.Chunks = append(l.Chunks, ChunkFigures{AvgBytes: c.AvgBytes, Chunks: c.Chunks})
		}
		a.appendLayer(l)
		return nil
	}

	rc, err := b.open()
	if err != nil {
		return err
	}
	defer rc.Close()
	stored := &countingHash{h: sha256.New()}
	toMatcher := &matcherFeed{}
	br := bufio.NewReaderSize(io.TeeReader(rc, io.MultiWriter(stored, toMatcher)), 64<<10)
	head, _ := br.Peek(4)
	l := Layer{Source: b.source, Compression: "none"}
	var u io.Reader = br
	switch {
	case bytes.HasPrefix(head, gzipMagic):
		l.Compression = "gzip"
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("gzip: %w", err)
		}
		defer zr.Close()
		u = zr
		h := zr.Header
		gh := &recompress.GzipHeader{Name: h.Name, Comment: h.Comment, OS: h.OS, Extra: h.Extra}
		if !h.ModTime.IsZero() {
			gh.ModTime = uint32(h.ModTime.Unix())
		}
		if err := toMatcher.start(recompress.Candidates(recompress.Gzip, gh)); err != nil {
			return err
		}
	case bytes.HasPrefix(head, zstdMagic):
		l.Compression = "zstd"
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return fmt.Errorf("zstd: %w", err)
		}
		defer zr.Close()
		u = zr
		if err := toMatcher.start(recompress.Candidates(recompress.Zstd, nil)); err != nil {
			return err
		}
	}
	defer toMatcher.close()

	// One consumer per figure, each reading the uncompressed stream from a
	// pipe of its own, so that the layer is read and decompressed once.
	var (
		gzipSize  countingHash
		fileFig   fileFigures
		chunkFigs = make([]ChunkFigures, len(a.chunks))
	)
	consumers := []func(io.Reader) error{
		func(r io.Reader) error { return a.files.add(r, &fileFig) },
	}
	if l.Compression == "none" {
		// A registry stores a plain layer as the gzip a client pushes.
		consumers = append(consumers, func(r io.Reader) error {
			zw, err := gzip.NewWriterLevel(&gzipSize, a.opt.GzipLevel)
			if err != nil {
				return err
			}
			if _, err := io.Copy(zw, r); err != nil {
				return err
			}
			return zw.Close()
		})
	}
	for i, cs := range a.chunks {
		consumers = append(consumers, func(r io.Reader) error { return cs.add(r, &chunkFigs[i]) })
	}
	// The tar split as cairn stores it: its files' contents and its meta
	// stream chunked apart.
	var tarFig, tarMetaFig ChunkFigures
	consumers = append(consumers, func(r io.Reader) error {
		mr, mw := io.Pipe()
		metaDone := make(chan error, 1)
		go func() {
			err := a.tarMeta.add(mr, &tarMetaFig)
			if err == nil {
				_, err = io.Copy(io.Discard, mr)
			}
			mr.CloseWithError(err)
			metaDone <- err
		}()
		err := a.tarContent.add(tarsplit.NewSplitter(r, mw), &tarFig)
		mw.CloseWithError(err)
		if merr := <-metaDone; err == nil {
			err = merr
		}
		return err
	})
	if m := toMatcher.m; m != nil {
		// The candidate encoders, fed the tar as cairn's push feeds them.
		consumers = append(consumers, func(r io.Reader) error {
			buf := make([]byte, 256<<10)
			for {
				n, err := r.Read(buf)
				if n > 0 && m.Live() > 0 {
					m.Feed(buf[:n])
				}
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
			}
		})
	}
	diffID := &countingHash{h: sha256.New()}
	if err := fanOut(ctx, u, a.readBuf, diffID, consumers); err != nil {
		return err
	}
	// Drain what follows the compressed stream, so the stored digest covers
	// the whole blob.
	if _, err := io.Copy(io.Discard, br); err != nil {
		return err
	}

	if m := toMatcher.m; m != nil {
		l.Reproduced = "none"
		if spec, ok := m.Finish(); ok {
			l.Reproduced = spec.Key()
		}
	}
	l.Digest = "sha256:" + hex.EncodeToString(stored.h.Sum(nil))
	l.DiffID = "sha256:" + hex.EncodeToString(diffID.h.Sum(nil))
	if b.digest != "" && b.digest != l.Digest {
		return fmt.Errorf("content is %s, but the image names it %s", l.Digest, b.digest)
	}
	l.BlobBytes = stored.n
	l.RawBytes = diffID.n
	l.FileBytes, l.FileUniqueBytes = fileFig.bytes, fileFig.uniqueBytes
	l.Files, l.UniqueFiles = fileFig.files, fileFig.uniqueFiles
	l.FileError = fileFig.err
	l.Chunks = chunkFigs
	tarFig.Chunks += tarMetaFig.Chunks
	tarFig.NewChunks += tarMetaFig.NewChunks
	tarFig.UniqueBytes += tarMetaFig.UniqueBytes
	tarFig.StoredBytes += tarMetaFig.StoredBytes
	l.TarChunks = tarFig

	// What a registry stores: each distinct blob once. A plain layer would be
	// pushed gzip'd, and gzip is deterministic, so its diff ID names the blob.
	key, size := l.Digest, l.BlobBytes
	if l.Compression == "none" {
		key, size = "gzip-of:"+l.DiffID, gzipSize.n
	}
	if _, seen := a.blobs[key]; !seen {
		l.RegistryBytes = size
	}
	a.appendLayer(l)
	last := len(a.report.Layers) - 1
	for _, k := range []string{key, l.Digest} {
		if _, seen := a.blobs[k]; !seen {
			a.blobs[k] = last
		}
	}
	return nil
}

func (a *Analyzer) appendLayer(l Layer) {
	a.report.Layers = append(a.report.Layers, l)
	if a.opt.Progress != nil {
		cs := ""
		if n := len(l.Chunks); n > 0 {
			c := l.Chunks[n-1]
			for _, x := range l.Chunks {
				if x.AvgBytes == 256<<10 {
					c = x
				}
			}
			cs = fmt.Sprintf(" chunk%s stored %s", sizeLabel(c.AvgBytes), humanBytes(c.StoredBytes))
		}
		fmt.Fprintf(a.opt.Progress, "layer %d %s: raw %s registry +%s%s\n",
			len(a.report.Layers), l.Source, humanBytes(l.RawBytes), humanBytes(l.RegistryBytes), cs)
	}
}

// matcherFeed hands the compressed bytes of a layer to a
// recompress.Matcher, holding those read before it starts (the header the
// decoder reads first).
type matcherFeed struct {
	m      *recompress.Matcher
	before []byte
}

func (f *matcherFeed) Write(p []byte) (int, error) {
	if f.m != nil {
		f.m.AddCompressed(p)
	} else if len(f.before) < 1<<20 {
		f.before = append(f.before, p...)
	}
	return len(p), nil
}

func (f *matcherFeed) start(cands []recompress.Spec) error {
	m, err := recompress.NewMatcher(cands, 0)
	if err != nil {
		return err
	}
	f.m = m
	m.AddCompressed(f.before)
	f.before = nil
	return nil
}

func (f *matcherFeed) close() {
	if f.m != nil {
		f.m.Close()
	}
}

// fanOut copies r to every consumer, each on a goroutine of its own reading
// from a pipe, and hashes it into h on the way. A consumer that returns
// before the end has the rest drained for it. The first error (reading r,
// ctx, or a consumer's) stops all and is returned.
func fanOut(ctx context.Context, r io.Reader, buf []byte, h io.Writer, consumers []func(io.Reader) error) error {
	pws := make([]*io.PipeWriter, len(consumers))
	errs := make([]error, len(consumers))
	var wg sync.WaitGroup
	for i, c := range consumers {
		pr, pw := io.Pipe()
		pws[i] = pw
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c(pr)
			if err == nil {
				_, err = io.Copy(io.Discard, pr)
			}
			errs[i] = err
			pr.CloseWithError(err) // the writer's next Write returns err
		}()
	}
	var rerr error
	for rerr == nil {
		if rerr = ctx.Err(); rerr != nil {
			break
		}
		n, err := r.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			for _, pw := range pws {
				if _, werr := pw.Write(buf[:n]); werr != nil {
					rerr = werr
					break
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil && rerr == nil {
			rerr = err
		}
	}
	for _, pw := range pws {
		pw.CloseWithError(rerr) // nil: the readers see io.EOF
	}
	wg.Wait()
	if rerr != nil {
		return rerr
	}
	return errors.Join(errs...)
}

// chunkSet is the state of one chunk size across layers: the chunks seen so
// far and the buffers reused for every chunk.
type chunkSet struct {
	p    chunker.Params
	seen map[[32]byte]struct{}
	enc  *zstd.Encoder
	buf  []byte
	dst  []byte
}

func (cs *chunkSet) add(r io.Reader, f *ChunkFigures) error {
	f.AvgBytes = cs.p.Avg
	c, err := chunker.New(r, cs.p, cs.buf)
	if err != nil {
		return err
	}
	for {
		ch, err := c.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		f.Chunks++
		sum := sha256.Sum256(ch.Data)
		if _, ok := cs.seen[sum]; ok {
			continue
		}
		cs.seen[sum] = struct{}{}
		f.NewChunks++
		f.UniqueBytes += int64(len(ch.Data))
		cs.dst = cs.enc.EncodeAll(ch.Data, cs.dst[:0])
		f.StoredBytes += int64(len(cs.dst))
	}
}

// fileSet is the set of regular-file contents seen so far, by SHA-256.
type fileSet map[[32]byte]struct{}

type fileFigures struct {
	files, uniqueFiles int64
	bytes, uniqueBytes int64
	err                string
}

// add hashes every regular file of the tar stream r. A stream that is not a
// tar is not an error of the analysis: the figure is left out and says why.
func (fs fileSet) add(r io.Reader, f *fileFigures) error {
	tr := tar.NewReader(r)
	h := sha256.New()
	var sum [32]byte
	for {
		hd, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			f.err = "not a tar: " + err.Error()
			return nil
		}
		if hd.Typeflag != tar.TypeReg {
			continue
		}
		h.Reset()
		n, err := io.Copy(h, tr)
		if err != nil {
			f.err = "truncated tar: " + err.Error()
			return nil
		}
		h.Sum(sum[:0])
		f.files++
		f.bytes += n
		if _, ok := fs[sum]; ok {
			continue
		}
		fs[sum] = struct{}{}
		f.uniqueFiles++
		f.uniqueBytes += n
	}
}

// countingHash counts the bytes written to it and hashes them if h is set.
type countingHash struct {
	h hash.Hash
	n int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.n += int64(len(p))
	if c.h != nil {
		c.h.Write(p)
	}
	return len(p), nil
}
