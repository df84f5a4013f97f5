package client

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/cairnbuild/cairn/chunker"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// Defaults for PushOptions.
const (
	// DefaultWindowBytes bounds the chunk bytes a push holds at once: a
	// batch being filled, batches queued, the batch being uploaded.
	DefaultWindowBytes = 32 << 20
	// batchBytes is the chunk bytes asked about in one FindMissingChunks
	// call: 32 chunks at V1's 256 KiB average, so a round trip per 8 MiB.
	batchBytes = 8 << 20
)

// PushOptions are the optional parameters of Push.
type PushOptions struct {
	// ExpectedDigest, if set, is the digest the layer must have. If the
	// bytes read hash to something else, Push fails with ErrDigestMismatch
	// and commits nothing.
	ExpectedDigest digest.Digest
	// Size, if positive, is the number of bytes r yields; another count
	// fails the push with ErrInvalidArgument (a truncated stream).
	Size int64
	// MediaType is stored with the layer; "" means
	// "application/vnd.oci.image.layer.v1.tar".
	MediaType string
	// Progress, if set, is called with the number of bytes read from r so
	// far, from one goroutine at a time. A push from a seekable r that
	// probes for a stored layer (see Push) and finds none reports the
	// probe's reading first, then starts again from 0.
	Progress func(done int64)
	// WindowBytes bounds the memory for chunk data in flight; 0 means
	// DefaultWindowBytes. It is raised to at least two batches.
	WindowBytes int
	// Idle watches the push while it waits for the server (see
	// IdleOptions); zero watches nothing. Reading r does not count.
	Idle IdleOptions
}

// batch is a run of consecutive chunks whose bytes sit in one buffer.
type batch struct {
	buf  []byte // the chunks' bytes, back to back
	refs []chunkRef
}

type chunkRef struct {
	id     digest.Digest
	offset int // in batch.buf
	size   int
}

func (b *batch) data(r chunkRef) []byte { return b.buf[r.offset : r.offset+r.size] }

// Push uploads the layer read from r and commits it. A gzip or zstd layer
// is streamed whole, and the server stores its uncompressed content (see
// pushStream). Any other layer it chunks here with
// chunker.V1, asks the server which chunks it lacks, uploads only those and
// then commits the ordered chunk list; the server verifies the layer digest
// before the layer becomes visible. If r can seek (a file) and the server
// has the whole layer already, Push finds out with one SHA-256 pass and
// sends nothing (see pushStored). Reading, asking and uploading overlap,
// and at most opts.WindowBytes of chunk data are held at a time.
//
// If the push fails, no layer is committed (chunks already uploaded stay on
// the server unreferenced until its garbage collection, or until a retry
// uses them). A failure ends the push as soon as the Read in progress on r
// returns: Push never returns while it may still read r. A wait for the
// server longer than opts.Idle allows is ErrIdle.
func (c *Client) Push(ctx context.Context, r io.Reader, opts PushOptions) (PushResult, error) {
	ctx, wd := watch(ctx, opts.Idle)
	defer wd.stop()
	res, err := c.push(ctx, wd, r, opts)
	return res, wd.explain(ctx, err)
}

// push is Push under the watchdog wd.
func (c *Client) push(ctx context.Context, wd *watchdog, r io.Reader, opts PushOptions) (PushResult, error) {
	if opts.ExpectedDigest != "" {
		if err := opts.ExpectedDigest.Validate(); err != nil {
			return PushResult{}, fmt.Errorf("push: expected digest %q: %w: %v", opts.ExpectedDigest, ErrInvalidArgument, err)
		}
	}
	if rs, ok := r.(io.ReadSeeker); ok {
		if res, stored, err := c.pushStored(ctx, wd, rs, opts); err != nil || stored {
			return res, err
		}
	}
	// A gzip or zstd layer goes whole: the server looks inside it
	// (pushstream.go).
	r, isCompressed := peekCompressed(r)
	if isCompressed {
		return c.pushStream(ctx, wd, r, opts)
	}
	window := opts.WindowBytes
	if window <= 0 {
		window = DefaultWindowBytes
	}
	// A batch buffer holds batchBytes plus one chunk, so that a batch is
	// flushed when full, never split.
	bufSize := batchBytes + chunker.V1.Max
	nbuf := max(window/bufSize, 2)

	g, gctx := errgroup.WithContext(ctx)
	free := make(chan *batch, nbuf)
	for range nbuf {
		free <- &batch{buf: make([]byte, 0, bufSize)}
	}
	full := make(chan *batch, nbuf)

	var (
		res    PushResult
		recipe []*cairnv1.ChunkRef
		layer  digest.Digest
		total  int64
	)
	// The reader: chunk, hash, fill batches.
	g.Go(func() error {
		defer close(full)
		h := sha256.New()
		cr := &countingReader{r: r, h: h, progress: opts.Progress}
		ch, err := chunker.New(cr, chunker.V1, nil)
		if err != nil {
			return err
		}
		var b *batch
		for {
			chunk, err := ch.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("push: read: %w", err)
			}
			if b != nil && len(b.buf)+len(chunk.Data) > cap(b.buf) {
				if err := send(gctx, full, b); err != nil {
					return err
				}
				b = nil
			}
			if b == nil {
				if b, err = recv(gctx, free); err != nil {
					return err
				}
				b.buf, b.refs = b.buf[:0], b.refs[:0]
			}
			id := ChunkDigest(chunk.Data)
			b.refs = append(b.refs, chunkRef{id: id, offset: len(b.buf), size: len(chunk.Data)})
			b.buf = append(b.buf, chunk.Data...)
			recipe = append(recipe, &cairnv1.ChunkRef{Digest: id.String(), SizeBytes: int64(len(chunk.Data))})
			if len(recipe) > cairnv1.MaxChunksPerRequest {
				return fmt.Errorf("push: %w: the layer has more than %d chunks, the most one commit takes",
					ErrResourceExhausted, cairnv1.MaxChunksPerRequest)
			}
		}
		if b != nil {
			if err := send(gctx, full, b); err != nil {
				return err
			}
		}
		layer, total = digest.NewDigest(digest.SHA256, h), cr.n
		return nil
	})
	// The uploader: ask which chunks are missing, send those.
	g.Go(func() error {
		up := uploader{c: c, ctx: gctx, wd: wd, sent: make(map[digest.Digest]struct{})}
		for b := range full {
			if err := up.batch(b); err != nil {
				return err
			}
			res.ChunksTotal += len(b.refs)
			free <- b
		}
		if err := up.close(); err != nil {
			return err
		}
		res.ChunksSent, res.BytesSent = up.chunks, up.bytes
		return nil
	})
	if err := g.Wait(); err != nil {
		return PushResult{}, err
	}

	if opts.ExpectedDigest != "" && layer != opts.ExpectedDigest {
		return PushResult{}, &Error{Op: "push", Message: fmt.Sprintf("digest mismatch: expected %s, the bytes read hash to %s; nothing committed",
			opts.ExpectedDigest, layer), kind: ErrDigestMismatch}
	}
	if opts.Size > 0 && total != opts.Size {
		return PushResult{}, &Error{Op: "push", Message: fmt.Sprintf("read %d bytes, expected %d (truncated input?); nothing committed",
			total, opts.Size), kind: ErrInvalidArgument}
	}
	endWait := wd.begin("committing " + layer.String())
	resp, err := c.layers.CommitLayer(ctx, &cairnv1.CommitLayerRequest{
		Digest:    layer.String(),
		MediaType: opts.MediaType,
		Chunks:    recipe,
	})
	endWait()
	if err != nil {
		return PushResult{}, wrapErr("push: commit", err)
	}
	res.LayerInfo = layerInfo(resp.GetLayer())
	return res, nil
}

// uploader sends the chunks of successive batches that the server lacks,
// on one PutChunks stream opened when the first chunk is missing.
type uploader struct {
	c      *Client
	ctx    context.Context
	wd     *watchdog
	stream cairnv1.LayerService_PutChunksClient
	// sent holds the chunks this push uploaded already: a chunk repeated
	// within a layer goes once even if the server cannot know it yet.
	sent   map[digest.Digest]struct{}
	chunks int
	bytes  int64
}

func (u *uploader) batch(b *batch) error {
	ids := make([]string, 0, len(b.refs))
	asked := make(map[digest.Digest]struct{}, len(b.refs))
	for _, r := range b.refs {
		if _, ok := u.sent[r.id]; ok {
			continue
		}
		if _, ok := asked[r.id]; ok {
			continue
		}
		asked[r.id] = struct{}{}
		ids = append(ids, r.id.String())
	}
	if len(ids) == 0 {
		return nil
	}
	endWait := u.wd.begin("asking which chunks the server lacks")
	resp, err := u.c.layers.FindMissingChunks(u.ctx, &cairnv1.FindMissingChunksRequest{Digests: ids})
	endWait()
	if err != nil {
		return wrapErr("push: find missing chunks", err)
	}
	missing := make(map[digest.Digest]struct{}, len(resp.GetMissingDigests()))
	for _, m := range resp.GetMissingDigests() {
		missing[digest.Digest(m)] = struct{}{}
	}
	for _, r := range b.refs {
		if _, ok := missing[r.id]; !ok {
			continue
		}
		if _, ok := u.sent[r.id]; ok {
			continue
		}
		if err := u.put(r.id, b.data(r)); err != nil {
			return err
		}
		u.sent[r.id] = struct{}{}
		u.chunks++
		u.bytes += int64(r.size)
	}
	return nil
}

func (u *uploader) put(id digest.Digest, data []byte) error {
	defer u.wd.begin("sending chunks")()
	if u.stream == nil {
		s, err := u.c.layers.PutChunks(u.ctx)
		if err != nil {
			return wrapErr("push: put chunks", err)
		}
		u.stream = s
	}
	err := u.stream.Send(&cairnv1.PutChunksRequest{Digest: id.String(), Data: data})
	if errors.Is(err, io.EOF) {
		// The server ended the stream; its status says why.
		_, err = u.stream.CloseAndRecv()
		if err == nil {
			err = errors.New("server closed the upload early")
		}
	}
	return wrapErr("push: put chunks", err)
}

// close ends the upload stream and waits until the server has stored every
// chunk sent.
func (u *uploader) close() error {
	if u.stream == nil {
		return nil
	}
	defer u.wd.begin("the server stores the chunks")()
	_, err := u.stream.CloseAndRecv()
	return wrapErr("push: put chunks", err)
}

// countingReader hashes and counts what passes through it and reports
// progress.
type countingReader struct {
	r        io.Reader
	h        hash.Hash
	n        int64
	progress func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.h.Write(p[:n])
		c.n += int64(n)
		if c.progress != nil {
			c.progress(c.n)
		}
	}
	return n, err
}

func send[T any](ctx context.Context, ch chan<- T, v T) error {
	select {
	case ch <- v:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func recv[T any](ctx context.Context, ch <-chan T) (T, error) {
	select {
	case v := <-ch:
		return v, nil
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}
