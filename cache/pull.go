package cache

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/chunkid"
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
	return c.openLocked(ctx, d, offset, length)
}

// openLocked is Open for callers that hold the shared lock.
func (c *Cache) openLocked(ctx context.Context, d digest.Digest, offset, length int64) (io.ReadCloser, LayerInfo, error) {
	if err := ParseLayerDigest(d); err != nil {
		return nil, LayerInfo{}, fmt.Errorf("cache: open: %w", err)
	}
	lr, accessed, err := c.idx.Layer(d)
	if err != nil {
		return nil, LayerInfo{}, fmt.Errorf("cache: open: %w", err)
	}
	if offset < 0 || offset > lr.Size {
		return nil, LayerInfo{}, fmt.Errorf("cache: open %s: %w: offset %d, size %d", d, ErrOutOfRange, offset, lr.Size)
	}
	n := lr.Size - offset
	if length >= 0 && length < n {
		n = length
	}
	now := time.Now().UTC()
	c.idx.RecordAccess(d, now)
	if now.After(accessed) {
		accessed = now
	}
	rc, err := c.blobReader(ctx, lr, offset, n)
	if err != nil {
		return nil, LayerInfo{}, fmt.Errorf("cache: open: %w", err)
	}
	return rc, c.info(lr, accessed), nil
}

// blobReader reads n bytes from offset of the blob lr describes: its
// chunks, or for a compressed blob stored as its content, the content
// compressed again (openRebuilt).
func (c *Cache) blobReader(ctx context.Context, lr *index.LayerRecord, offset, n int64) (io.ReadCloser, error) {
	switch {
	case lr.Rebuild != nil:
		return c.openRebuilt(ctx, lr, offset, n)
	case lr.Tar != nil:
		return c.openTar(ctx, lr, offset, n)
	}
	return c.chunks.NewReader(ctx, lr.Recipe, offset, n), nil
}

// ReadChunk returns chunk id's bytes, verified and decompressed.
func (c *Cache) ReadChunk(ctx context.Context, id chunkid.ID) ([]byte, error) {
	if err := c.begin(ctx); err != nil {
		return nil, fmt.Errorf("cache: read chunk: %w", err)
	}
	defer c.end()
	data, err := c.chunks.ReadChunk(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("cache: read chunk: %w", err)
	}
	return data, nil
}
