package client

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/cairnbuild/cairn/chunker"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// probeBytes is how much of a seekable layer Push chunks first to guess
// whether the server has the whole layer already: one FindMissingChunks
// batch.
const probeBytes = batchBytes

// hashBuffer is the read size of the hash-only pass: large reads let
// SHA-256 run at its own speed rather than the syscalls'.
const hashBuffer = 1 << 20

// pushStored handles the push of a layer the server already holds, at
// about the speed of sha256sum. A re-push through the chunking pipeline
// cuts and BLAKE3-hashes every byte and learns that the layer exists only
// at the commit; a layer digest needs only one SHA-256 pass. But hashing
// first would cost new layers an extra pass, so pushStored first chunks
// the first probeBytes and asks the server about those chunks: only if it
// has them all (a re-push, or a layer that starts like a stored one) does
// it hash the rest and ask for the layer by digest. ok is true if the
// server has the layer, and res is then the push's result. Otherwise rs is
// back where it started and the caller pushes as usual; so it is when rs
// cannot seek (a pipe), or anything goes wrong here (the usual push meets
// the same error and reports it).
func (c *Client) pushStored(ctx context.Context, wd *watchdog, rs io.ReadSeeker, opts PushOptions) (res PushResult, ok bool, err error) {
	start, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return PushResult{}, false, nil // not seekable
	}
	rewind := func() (PushResult, bool, error) {
		if _, err := rs.Seek(start, io.SeekStart); err != nil {
			return PushResult{}, false, fmt.Errorf("push: rewind the input: %w", err)
		}
		return PushResult{}, false, nil
	}
	head := make([]byte, probeBytes)
	n, rerr := io.ReadFull(rs, head)
	head = head[:n]
	whole := errors.Is(rerr, io.EOF) || errors.Is(rerr, io.ErrUnexpectedEOF)
	if rerr != nil && !whole {
		return rewind()
	}
	ids := probeChunks(head, whole)
	if len(ids) == 0 {
		return rewind()
	}
	const checking = "checking whether the server has the layer"
	endWait := wd.begin(checking)
	resp, err := c.layers.FindMissingChunks(ctx, &cairnv1.FindMissingChunksRequest{Digests: ids})
	endWait()
	if err != nil || len(resp.GetMissingDigests()) > 0 {
		return rewind()
	}
	// The server has the start: hash the rest, and ask for the layer.
	h := sha256.New()
	h.Write(head)
	total := int64(n)
	if opts.Progress != nil {
		opts.Progress(total)
	}
	if !whole {
		// Reads of hashBuffer bytes, by hand: io.Copy to io.Discard or into
		// the hash would read 8 or 32 KiB at a time, a quarter slower.
		buf := make([]byte, hashBuffer)
		for {
			if ctx.Err() != nil {
				return rewind()
			}
			k, err := rs.Read(buf)
			h.Write(buf[:k])
			total += int64(k)
			if opts.Progress != nil && k > 0 {
				opts.Progress(total)
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return rewind()
			}
		}
	}
	layer := digest.NewDigest(digest.SHA256, h)
	if (opts.ExpectedDigest != "" && layer != opts.ExpectedDigest) || (opts.Size > 0 && total != opts.Size) {
		return rewind() // the usual push reports it, with the same checks
	}
	endWait = wd.begin(checking)
	info, err := c.Stat(ctx, layer)
	endWait()
	if err != nil || info.Size != total || info.DamagedChunks > 0 { // damaged: push it again, to heal it
		return rewind()
	}
	return PushResult{LayerInfo: info, ChunksTotal: info.Chunks}, true, nil
}

// probeChunks returns the digests of the whole chunks of head, the first
// bytes of a layer: all of them if head is the whole layer, else all but
// the last, which the end of head may have cut short.
func probeChunks(head []byte, whole bool) []string {
	ch, err := chunker.New(bytes.NewReader(head), chunker.V1, nil)
	if err != nil {
		return nil
	}
	var ids []string
	for {
		chunk, err := ch.Next()
		if err != nil {
			break
		}
		ids = append(ids, ChunkDigest(chunk.Data).String())
	}
	if !whole && len(ids) > 0 {
		ids = ids[:len(ids)-1]
	}
	return ids
}
