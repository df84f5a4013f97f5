package client

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"

	"github.com/cairnbuild/cairn/chunkid"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// pullWindowChunks is how many chunks Pull with a chunk cache directory
// handles per round: fetch the missing ones of the window, then write the
// window out. 64 chunks is about 16 MiB at V1's average: one round trip
// per window, and output starts before the whole layer is fetched.
const pullWindowChunks = 64

// PullOptions are the optional parameters of Pull.
type PullOptions struct {
	// Offset is the first byte to read.
	Offset int64
	// Length is the number of bytes to read; 0 or less means to the end.
	Length int64
	// ChunkCacheDir, if set, is a local directory of chunks: chunks in it
	// are read from it (verified), the others fetched from the server and
	// added to it. The directory is created if needed and may be shared by
	// concurrent pulls, also from other processes.
	ChunkCacheDir string
	// Progress, if set, is called with the number of bytes written so far.
	Progress func(done int64)
	// Idle watches the pull while it waits for the server (see
	// IdleOptions); zero watches nothing.
	Idle IdleOptions
}

// Pull writes the layer d, or the range opts asks for, to w. A whole layer
// is checked against d as it is written; if it does not match, Pull fails
// with ErrDataLoss after writing, so w must treat its content as
// unverified until Pull returns nil. A missing layer is ErrNotFound; an
// offset past the end is ErrOutOfRange; a wait for the server longer than
// opts.Idle allows is ErrIdle.
func (c *Client) Pull(ctx context.Context, d digest.Digest, w io.Writer, opts PullOptions) (PullResult, error) {
	if err := checkDigest("pull", d); err != nil {
		return PullResult{}, err
	}
	if opts.Offset < 0 {
		return PullResult{}, &Error{Op: "pull", Message: fmt.Sprintf("offset %d is negative", opts.Offset), kind: ErrInvalidArgument}
	}
	whole := opts.Offset == 0 && opts.Length <= 0
	res := PullResult{Digest: d}
	out := &pullWriter{w: w, progress: opts.Progress}
	var verify digest.Verifier
	if whole {
		verify = d.Verifier()
		out.verify = verify
	}
	ctx, wd := watch(ctx, opts.Idle)
	defer wd.stop()
	p := puller{c: c, wd: wd, what: "pulling " + d.String()}
	var err error
	if opts.ChunkCacheDir != "" {
		err = p.pullChunks(ctx, d, out, opts, &res)
	} else {
		err = p.pullStream(ctx, d, out, opts, &res)
	}
	err = wd.explain(ctx, err)
	res.BytesWritten = out.n
	if err != nil {
		return res, err
	}
	if whole && !verify.Verified() {
		return res, &Error{Op: "pull " + d.String(), Message: "the bytes received do not hash to the layer digest", kind: ErrDataLoss}
	}
	return res, nil
}

// puller is one Pull: the client, and the watchdog over its waits for the
// server.
type puller struct {
	c    *Client
	wd   *watchdog
	what string // what the pull waits for, for the watchdog
}

// pullStream reads the range with PullLayer.
func (p puller) pullStream(ctx context.Context, d digest.Digest, out *pullWriter, opts PullOptions, res *PullResult) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	op := "pull " + d.String()
	endWait := p.wd.begin(p.what)
	stream, err := p.c.layers.PullLayer(ctx, &cairnv1.PullLayerRequest{
		Digest: d.String(),
		Offset: opts.Offset,
		Length: max(opts.Length, 0),
	})
	endWait()
	if err != nil {
		return wrapErr(op, err)
	}
	for {
		endWait := p.wd.begin(p.what)
		msg, err := stream.Recv()
		endWait()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return wrapErr(op, err)
		}
		res.BytesFetched += int64(len(msg.GetData()))
		if _, err := out.Write(msg.GetData()); err != nil {
			return fmt.Errorf("%s: write: %w", op, err)
		}
	}
}

// pullChunks reads the range chunk by chunk, from the chunk cache
// directory where it can and from the server where it must.
func (p puller) pullChunks(ctx context.Context, d digest.Digest, out *pullWriter, opts PullOptions, res *PullResult) error {
	op := "pull " + d.String()
	dir := chunkDir{root: opts.ChunkCacheDir}
	endWait := p.wd.begin(p.what)
	resp, err := p.c.layers.GetLayerChunks(ctx, &cairnv1.GetLayerChunksRequest{Digest: d.String()})
	endWait()
	if err != nil {
		werr := wrapErr(op, err)
		if errors.Is(werr, ErrFailedPrecondition) {
			// A layer the server stores as parts (a compressed blob as its
			// tar, a tar as its contents and headers apart) has no chunk
			// list of its own bytes: stream it.
			return p.pullStream(ctx, d, out, opts, res)
		}
		return werr
	}
	size := resp.GetLayer().GetSizeBytes()
	if opts.Offset > size {
		return &Error{Op: op, Message: fmt.Sprintf("offset %d is past the end of the layer (%d bytes)", opts.Offset, size), kind: ErrOutOfRange}
	}
	end := size
	if opts.Length > 0 {
		end = min(size, opts.Offset+opts.Length)
	}

	// Select the chunks that overlap [Offset, end), with each one's slice.
	type part struct {
		id       digest.Digest
		from, to int // the bytes of the chunk to write
		size     int64
	}
	var parts []part
	var pos int64
	for _, ch := range resp.GetChunks() {
		id, err := chunkid.Parse(ch.GetDigest())
		if err != nil {
			return &Error{Op: op, Message: fmt.Sprintf("server sent a bad chunk digest %q", ch.GetDigest()), kind: ErrServer}
		}
		n := ch.GetSizeBytes()
		if pos+n > opts.Offset && pos < end {
			parts = append(parts, part{
				id: id.Digest(), size: n,
				from: int(max(opts.Offset-pos, 0)),
				to:   int(min(end-pos, n)),
			})
		}
		pos += n
	}
	if pos != size {
		return &Error{Op: op, Message: fmt.Sprintf("chunk sizes add up to %d, the layer has %d bytes", pos, size), kind: ErrServer}
	}

	for len(parts) > 0 {
		win := parts[:min(pullWindowChunks, len(parts))]
		parts = parts[len(win):]
		var missing []digest.Digest
		seen := make(map[digest.Digest]bool)
		for _, p := range win {
			if seen[p.id] {
				continue
			}
			seen[p.id] = true
			if dir.has(p.id) {
				continue
			}
			missing = append(missing, p.id)
		}
		if err := p.fetchChunks(ctx, op, dir, missing, res); err != nil {
			return err
		}
		for _, pt := range win {
			data, ok, err := dir.get(pt.id)
			if err != nil {
				return fmt.Errorf("%s: %w", op, err)
			}
			if !ok {
				// Damaged, or removed by someone else since: fetch it
				// again, once.
				if err := p.fetchChunks(ctx, op, dir, []digest.Digest{pt.id}, res); err != nil {
					return err
				}
				if data, ok, err = dir.get(pt.id); err != nil || !ok {
					return fmt.Errorf("%s: chunk %s: %w", op, pt.id, errors.Join(err, errors.New("not kept in the chunk cache directory")))
				}
			} else if !contains(missing, pt.id) {
				res.ChunksCached++
			}
			if int64(len(data)) != pt.size {
				return &Error{Op: op, Message: fmt.Sprintf("chunk %s has %d bytes, the recipe says %d", pt.id, len(data), pt.size), kind: ErrDataLoss}
			}
			if _, err := out.Write(data[pt.from:pt.to]); err != nil {
				return fmt.Errorf("%s: write: %w", op, err)
			}
		}
	}
	return nil
}

// fetchChunks downloads ids with GetChunks, verifies each and stores it in
// dir.
func (p puller) fetchChunks(ctx context.Context, op string, dir chunkDir, ids []digest.Digest, res *PullResult) error {
	if len(ids) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req := &cairnv1.GetChunksRequest{Digests: make([]string, len(ids))}
	for i, id := range ids {
		req.Digests[i] = id.String()
	}
	endWait := p.wd.begin(p.what)
	stream, err := p.c.layers.GetChunks(ctx, req, grpc.MaxCallRecvMsgSize(maxRecvMsgBytes))
	endWait()
	if err != nil {
		return wrapErr(op, err)
	}
	for i := 0; ; i++ {
		endWait := p.wd.begin(p.what)
		msg, err := stream.Recv()
		endWait()
		if err == io.EOF {
			if i != len(ids) {
				return &Error{Op: op, Message: fmt.Sprintf("server sent %d of %d chunks", i, len(ids)), kind: ErrServer}
			}
			return nil
		}
		if err != nil {
			return wrapErr(op, err)
		}
		if i >= len(ids) || msg.GetDigest() != ids[i].String() {
			return &Error{Op: op, Message: fmt.Sprintf("server sent chunk %q out of order", msg.GetDigest()), kind: ErrServer}
		}
		if err := verifyChunk(ids[i], msg.GetData()); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		if err := dir.put(ids[i], msg.GetData()); err != nil {
			return fmt.Errorf("%s: %w", op, err)
		}
		res.ChunksFetched++
		res.BytesFetched += int64(len(msg.GetData()))
	}
}

func contains(ids []digest.Digest, id digest.Digest) bool {
	for _, x := range ids {
		if x == id {
			return true
		}
	}
	return false
}

// pullWriter counts, verifies and reports what Pull writes.
type pullWriter struct {
	w        io.Writer
	verify   digest.Verifier // nil for a range
	n        int64
	progress func(int64)
}

func (p *pullWriter) Write(b []byte) (int, error) {
	n, err := p.w.Write(b)
	if n > 0 {
		if p.verify != nil {
			p.verify.Write(b[:n])
		}
		p.n += int64(n)
		if p.progress != nil {
			p.progress(p.n)
		}
	}
	return n, err
}
