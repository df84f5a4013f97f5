package cache

import (
	"bytes"
	"context"
	"fmt"

	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/recompress"
	"github.com/opencontainers/go-digest"
)

// RebuiltBlob is a compressed blob stored as its content plus an encoder.
type RebuiltBlob struct {
	Digest  digest.Digest
	Size    int64
	Encoder string // the spec: encoder/level (version)
	// Usable is whether this build of cairn still reproduces the encoder's
	// vector; a blob whose encoder it does not can be read only from the
	// rebuilt-blob cache, until it is materialized by a build that does.
	Usable bool
	Err    string // why not, when not
}

// RebuiltBlobs lists every blob stored as content plus an encoder. It
// walks the index.
func (c *Cache) RebuiltBlobs(ctx context.Context) ([]RebuiltBlob, error) {
	if err := c.begin(ctx); err != nil {
		return nil, fmt.Errorf("cache: rebuilt blobs: %w", err)
	}
	defer c.end()
	var out []RebuiltBlob
	err := c.idx.ForEachLayer(func(lr *index.LayerRecord) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		if lr.Rebuild == nil {
			return nil
		}
		b := RebuiltBlob{Digest: lr.Digest, Size: lr.Size}
		spec, err := recompress.Unmarshal(lr.Rebuild)
		if err == nil {
			b.Encoder = spec.String()
			err = recompress.Check(spec)
		}
		b.Usable = err == nil
		if err != nil {
			b.Err = err.Error()
		}
		out = append(out, b)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cache: rebuilt blobs: %w", err)
	}
	return out, nil
}

// Materialize stores the compressed bytes of blob d, stored as its content
// plus an encoder, as chunks of their own and makes them its record: a
// build of cairn whose encoder no longer reproduces that one (a new Go
// release) can then still read it. The bytes come from the rebuild (or
// the rebuilt-blob cache) and are verified against d before anything
// changes; the content stays a layer of its own. A blob stored plainly is
// left as it is.
func (c *Cache) Materialize(ctx context.Context, d digest.Digest) (LayerInfo, error) {
	if err := c.begin(ctx); err != nil {
		return LayerInfo{}, fmt.Errorf("cache: materialize %s: %w", d, err)
	}
	defer c.end()
	info, err := c.materialize(ctx, d)
	if err != nil {
		return LayerInfo{}, fmt.Errorf("cache: materialize %s: %w", d, err)
	}
	return info, nil
}

func (c *Cache) materialize(ctx context.Context, d digest.Digest) (LayerInfo, error) {
	if err := ParseLayerDigest(d); err != nil {
		return LayerInfo{}, err
	}
	old, accessed, err := c.idx.Layer(d)
	if err != nil {
		return LayerInfo{}, err
	}
	if old.Rebuild == nil {
		return c.info(old, accessed), nil
	}
	rc, err := c.openRebuilt(ctx, old, 0, old.Size)
	if err != nil {
		return LayerInfo{}, err
	}
	defer rc.Close()
	sess := c.chunks.NewSession(ctx, false)
	defer sess.Close()
	lr, err := c.chunkInto(ctx, sess, rc, PushOptions{Expected: d, Size: old.Size, MediaType: old.MediaType})
	if err != nil {
		return LayerInfo{}, err
	}
	lr.Created = old.Created
	m, err := marshalManifest(lr)
	if err != nil {
		return LayerInfo{}, err
	}
	// The chunks must be durable before the manifest that names them
	// replaces the one naming the content: Reindex drops a layer whose
	// manifest names a missing chunk.
	if err := sess.Flush(); err != nil {
		return LayerInfo{}, err
	}
	if err := c.store.Put(ctx, layerKey(d), bytes.NewReader(m), int64(len(m))); err != nil {
		return LayerInfo{}, backendErr("write manifest", err)
	}
	if err := c.idx.ReplaceLayer(old, lr, sess.Known()); err != nil {
		// The backend names the new recipe, the index the old: both read
		// back as the same bytes, and Reindex takes the backend's.
		return LayerInfo{}, err
	}
	sess.Committed()
	c.log.Info("cache: materialized a compressed blob", "blob", d, "size", lr.Size)
	return c.info(lr, accessed), nil
}
