package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/opencontainers/go-digest"
)

// maxMetaObject bounds the manifests and step records Reindex reads: a
// manifest of MaxChunkList chunks is about 6 MiB.
const maxMetaObject = 16 << 20

// Reindex rebuilds the index from the backend alone: it drops every index
// entry, lists chunks/, layers/ and steps/, and writes the entries back,
// with reference counts recomputed from the layer manifests. A layer whose
// manifest names a chunk the backend lacks is not restored (it could not be
// served), and neither are steps that name a layer not restored. Hit counts
// and access times are not in the backend and restart from zero.
//
// Reindex holds the cache exclusively: other calls wait until it is done.
// If it fails part way, the index is incomplete but never names missing
// data; run it again.
func (c *Cache) Reindex(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("cache: reindex: %w", ErrClosed)
	}
	if err := c.reindex(ctx); err != nil {
		return fmt.Errorf("cache: reindex: %w", err)
	}
	return nil
}

func (c *Cache) reindex(ctx context.Context) error {
	// 1. Chunk objects: their stored sizes.
	chunks := make(map[chunkID]*chunkInfo)
	err := c.store.List(ctx, chunkPrefix, func(info backend.Info) error {
		id, ok := chunkIDFromKey(info.Key)
		if !ok {
			c.log.Warn("cache: reindex: skipping stray object", "key", info.Key)
			return nil
		}
		chunks[id] = &chunkInfo{size: -1, stored: info.Size}
		return nil
	})
	if err != nil {
		return backendErr("list chunks", err)
	}

	// 2. Layer manifests: the recipes, which give the references and the
	// uncompressed sizes.
	var layers []*layerRecord
	err = c.store.List(ctx, layerPrefix, func(info backend.Info) error {
		b, err := c.readMeta(ctx, info)
		if err != nil {
			return err
		}
		lr, err := parseManifest(b)
		if err != nil {
			c.log.Warn("cache: reindex: skipping bad manifest", "key", info.Key, "err", err)
			return nil
		}
		if layerKey(lr.digest) != info.Key {
			c.log.Warn("cache: reindex: manifest under the wrong key", "key", info.Key, "digest", lr.digest)
			return nil
		}
		layers = append(layers, lr)
		return nil
	})
	if err != nil {
		return backendErr("list layers", err)
	}
	restored := make(map[digest.Digest]bool, len(layers))
	kept := layers[:0]
	for _, lr := range layers {
		lr.stored = 0
		complete := true
		for _, e := range lr.recipe {
			ci, ok := chunks[e.id]
			if !ok {
				c.log.Warn("cache: reindex: layer names a missing chunk; not restored", "layer", lr.digest, "chunk", e.id.String())
				complete = false
				break
			}
			lr.stored += ci.stored
		}
		if !complete {
			continue
		}
		for _, e := range lr.recipe {
			ci := chunks[e.id]
			ci.size = e.size
			ci.refs++
		}
		restored[lr.digest] = true
		kept = append(kept, lr)
	}
	layers = kept

	// Unreferenced chunks: their size is in the object header.
	for id, ci := range chunks {
		if ci.size >= 0 {
			continue
		}
		size, err := c.chunkHeaderSize(ctx, id)
		if err != nil {
			if errors.Is(err, ErrDataLoss) {
				c.log.Warn("cache: reindex: skipping bad chunk object", "chunk", id.String(), "err", err)
				delete(chunks, id)
				continue
			}
			return err
		}
		ci.size = size
	}

	// 3. Step records.
	var steps []stepObject
	err = c.store.List(ctx, stepPrefix, func(info backend.Info) error {
		b, err := c.readMeta(ctx, info)
		if err != nil {
			return err
		}
		rec, err := unmarshalStep(b)
		if err != nil || stepObjectKey(rec.Key) != info.Key {
			c.log.Warn("cache: reindex: skipping bad step record", "key", info.Key, "err", err)
			return nil
		}
		if rec.Layer != nil && !restored[rec.Layer.Digest] {
			return nil
		}
		steps = append(steps, stepObject{rec.Key, b})
		return nil
	})
	if err != nil {
		return backendErr("list steps", err)
	}

	// 4. Write the new index.
	c.pendMu.Lock()
	c.pendHits, c.pendAccess = make(map[digest.Digest]hitDelta), make(map[digest.Digest]time.Time)
	c.pendMu.Unlock()
	if err := c.db.DropAll(); err != nil {
		return indexErr("drop index", err)
	}
	wb := c.db.NewWriteBatch()
	defer wb.Cancel()
	now := time.Now().Unix() // the objects' ages are unknown: a full grace period
	for id, ci := range chunks {
		ci.added = now
		if err := wb.Set(chunkIdxKey(id), ci.encode()); err != nil {
			return indexErr("write index", err)
		}
	}
	for _, lr := range layers {
		if err := wb.Set(layerIdxKey(lr.digest), lr.encode()); err != nil {
			return indexErr("write index", err)
		}
		if err := wb.Set(accessIdxKey(lr.digest), encodeTime(lr.created)); err != nil {
			return indexErr("write index", err)
		}
	}
	for _, s := range steps {
		if err := wb.Set(stepIdxKey(s.key), s.body); err != nil {
			return indexErr("write index", err)
		}
	}
	if err := wb.Flush(); err != nil {
		return indexErr("write index", err)
	}
	if err := c.db.Sync(); err != nil {
		return indexErr("sync index", err)
	}
	c.log.Info("cache: reindexed", "layers", len(layers), "chunks", len(chunks), "steps", len(steps))
	return nil
}

type stepObject struct {
	key  digest.Digest
	body []byte
}

// readMeta reads a small metadata object whole.
func (c *Cache) readMeta(ctx context.Context, info backend.Info) ([]byte, error) {
	if info.Size > maxMetaObject {
		return nil, fmt.Errorf("%w: %s: %d bytes", ErrResourceExhausted, info.Key, info.Size)
	}
	rc, err := c.store.Open(ctx, info.Key, 0, -1)
	if err != nil {
		return nil, backendErr("read "+info.Key, err)
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, io.LimitReader(rc, maxMetaObject+1)); err != nil {
		return nil, backendErr("read "+info.Key, err)
	}
	return buf.Bytes(), nil
}

// chunkHeaderSize reads the uncompressed size from a chunk object's header.
func (c *Cache) chunkHeaderSize(ctx context.Context, id chunkID) (int64, error) {
	rc, err := c.store.Open(ctx, chunkKey(id), 0, chunkHeaderSize)
	if err != nil {
		return 0, backendErr("read chunk header "+id.String(), err)
	}
	defer rc.Close()
	var hdr [chunkHeaderSize]byte
	if _, err := io.ReadFull(rc, hdr[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return 0, fmt.Errorf("%w: chunk %s: short header", ErrDataLoss, id)
		}
		return 0, backendErr("read chunk header "+id.String(), err)
	}
	size, _, err := parseChunkHeader(hdr[:])
	if err != nil {
		return 0, fmt.Errorf("%w: chunk %s: %w", ErrDataLoss, id, err)
	}
	return size, nil
}
