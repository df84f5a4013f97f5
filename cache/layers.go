package cache

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"

	"github.com/cairnbuild/cairn/backend"

	"github.com/opencontainers/go-digest"
)

// stat returns layer d's record, without the shared lock.
func (c *Cache) stat(d digest.Digest) (LayerInfo, error) {
	lr, accessed, err := c.idx.Layer(d)
	if err != nil {
		return LayerInfo{}, err
	}
	return c.info(lr, accessed), nil
}

// Stat returns layer d's record; ErrNotFound if it is not committed.
func (c *Cache) Stat(ctx context.Context, d digest.Digest) (LayerInfo, error) {
	if err := c.begin(ctx); err != nil {
		return LayerInfo{}, fmt.Errorf("cache: stat %s: %w", d, err)
	}
	defer c.end()
	if err := ParseLayerDigest(d); err != nil {
		return LayerInfo{}, fmt.Errorf("cache: stat: %w", err)
	}
	info, err := c.stat(d)
	if err != nil {
		return LayerInfo{}, fmt.Errorf("cache: stat: %w", err)
	}
	return info, nil
}

// Chunks returns layer d's recipe: its chunks in stream order.
func (c *Cache) Chunks(ctx context.Context, d digest.Digest) ([]ChunkRef, error) {
	if err := c.begin(ctx); err != nil {
		return nil, fmt.Errorf("cache: chunks of %s: %w", d, err)
	}
	defer c.end()
	if err := ParseLayerDigest(d); err != nil {
		return nil, fmt.Errorf("cache: chunks: %w", err)
	}
	lr, _, err := c.idx.Layer(d)
	if err != nil {
		return nil, fmt.Errorf("cache: chunks: %w", err)
	}
	if lr.Rebuild != nil {
		return nil, fmt.Errorf("cache: chunks of %s: %w: a compressed blob stored as its content; its chunks are those of layer content, not of the blob: read it whole", d, ErrFailedPrecondition)
	}
	if lr.Tar != nil {
		return nil, fmt.Errorf("cache: chunks of %s: %w: a tar stored as its files' contents and metadata apart: read it whole", d, ErrFailedPrecondition)
	}
	refs := make([]ChunkRef, len(lr.Recipe))
	for i, e := range lr.Recipe {
		refs[i] = ChunkRef{ID: e.ID, Size: e.Size}
	}
	return refs, nil
}

// Page sizes of List (AIP-158).
const (
	DefaultPageSize = 100
	MaxPageSize     = 1000
)

// List returns up to pageSize layers in digest order, starting after the
// position pageToken names ("" for the first page), and the token of the
// next page ("" after the last page). pageSize <= 0 means DefaultPageSize;
// larger than MaxPageSize means MaxPageSize. A token is opaque and stays
// valid while layers come and go.
func (c *Cache) List(ctx context.Context, pageToken string, pageSize int) ([]LayerInfo, string, error) {
	if err := c.begin(ctx); err != nil {
		return nil, "", fmt.Errorf("cache: list: %w", err)
	}
	defer c.end()
	after, pageSize, err := digestPage(pageToken, pageSize)
	if err != nil {
		return nil, "", fmt.Errorf("cache: list: %w", err)
	}
	entries, more, err := c.idx.ListLayers(after, pageSize)
	if err != nil {
		return nil, "", fmt.Errorf("cache: list: %w", err)
	}
	out := make([]LayerInfo, len(entries))
	for i, e := range entries {
		out[i] = c.info(e.Record, e.Accessed)
	}
	var next string
	if more {
		next = nextPageToken(out[len(out)-1].Digest)
	}
	return out, next, nil
}

// digestPage reads a page token of a listing in digest order (the digest
// the previous page ended with) and bounds its size: pageSize <= 0 means
// DefaultPageSize, above MaxPageSize means MaxPageSize.
func digestPage(token string, pageSize int) (after digest.Digest, n int, err error) {
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	if token != "" {
		b, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil || ParseLayerDigest(digest.Digest(b)) != nil {
			return "", 0, fmt.Errorf("%w: bad page token", ErrInvalidArgument)
		}
		after = digest.Digest(b)
	}
	return after, min(pageSize, MaxPageSize), nil
}

// nextPageToken is the token of the page after the one that ended with d.
func nextPageToken(d digest.Digest) string { return base64.RawURLEncoding.EncodeToString([]byte(d)) }

// Delete removes layer d from the index and drops its chunk references;
// its manifest leaves the backend after that. Chunk records (in their
// packs) stay for the garbage collector, which trusts the reference
// counts. The step records that name d are deleted with it. A missing
// layer is ErrNotFound.
func (c *Cache) Delete(ctx context.Context, d digest.Digest) error {
	if err := c.begin(ctx); err != nil {
		return fmt.Errorf("cache: delete %s: %w", d, err)
	}
	defer c.end()
	if err := ParseLayerDigest(d); err != nil {
		return fmt.Errorf("cache: delete: %w", err)
	}
	_, err := c.removeLayer(ctx, d, func() ([]digest.Digest, bool, error) {
		steps, err := c.idx.DeleteLayer(d)
		return steps, true, err
	})
	return err
}

// removeLayer deletes layer d from the index with del, then its manifest
// and the objects of the step records del deleted with it; deleted says
// whether del did.
func (c *Cache) removeLayer(ctx context.Context, d digest.Digest, del func() ([]digest.Digest, bool, error)) (deleted bool, err error) {
	c.deleting.Add(1) // the step memo checks layers in the index meanwhile
	c.layerSeq.Add(1)
	steps, deleted, err := del()
	c.layerSeq.Add(1)
	c.deleting.Add(-1)
	if err != nil {
		return false, fmt.Errorf("cache: %w", err)
	}
	if !deleted {
		return false, nil
	}
	for _, k := range steps {
		c.steps.forget(k)
	}
	if err := c.store.Delete(ctx, layerKey(d)); err != nil {
		return true, fmt.Errorf("cache: delete %s: %w", d, backendErr("delete manifest", err))
	}
	// The steps' objects after the index entries: a crash in between
	// leaves objects that Reindex skips, since their layer is gone.
	for _, k := range steps {
		if err := c.store.Delete(ctx, stepObjectKey(k)); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return true, fmt.Errorf("cache: delete %s: step %s: %w", d, k, backendErr("delete step record", err))
		}
	}
	return true, nil
}

// Stats summarise the cache.
type Stats struct {
	Layers, Chunks, Steps int64
	LogicalBytes          int64 // sum of the sizes of all layers
	StoredBytes           int64 // bytes of all chunk records the index knows (compressed)
	UniqueBytes           int64 // bytes of all chunks the index knows, uncompressed
	ReferencedBytes       int64 // of StoredBytes, those of chunks a layer references
	// The registry's: repositories, tags and manifests (a manifest linked
	// in two repositories counts twice).
	Repositories, Tags, Manifests int64
	// StoredBytes by tier (compact.go): records of one chunk each, as
	// pushes write them, and frames of several chunks, as compaction
	// writes them; and how many chunks each holds. A chunk in a frame
	// counts its share of the frame's bytes, in proportion to its size.
	IngestBytes, CompactedBytes   int64
	IngestChunks, CompactedChunks int64
	// Quarantined counts chunks a read or a verify found bad, until a
	// push supplies them again.
	Quarantined int64
}

// Stats counts what the index holds. It walks the index: call it for
// metrics every so often, not per request.
func (c *Cache) Stats(ctx context.Context) (Stats, error) {
	if err := c.begin(ctx); err != nil {
		return Stats{}, fmt.Errorf("cache: stats: %w", err)
	}
	defer c.end()
	s, err := c.idx.Stats(ctx)
	if err != nil {
		return Stats{}, fmt.Errorf("cache: stats: %w", err)
	}
	return Stats(s), nil
}
