package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// maxMetaObject bounds the manifests and step records Reindex reads: a
// manifest of MaxChunkList chunks is about 6 MiB.
const maxMetaObject = 16 << 20

// Reindex rebuilds the index from the backend alone: it drops every index
// entry, lists packs/, layers/ and steps/, and writes the entries back,
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
	// 1. Packs: their tables say which chunks each holds, where, and how
	// large. A chunk in several packs (concurrent pushes, a push that
	// failed after writing some) is taken from the first pack by key.
	chunks, err := c.readPackTables(ctx)
	if err != nil {
		return err
	}

	// 2. Layer manifests: the recipes, which give the references and the
	// uncompressed sizes.
	var layers []*index.LayerRecord
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
		if layerKey(lr.Digest) != info.Key {
			c.log.Warn("cache: reindex: manifest under the wrong key", "key", info.Key, "digest", lr.Digest)
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
		lr.Stored = 0
		complete := true
		for _, e := range lr.Recipe {
			ci, ok := chunks[e.ID]
			if !ok || ci.Size != e.Size {
				c.log.Warn("cache: reindex: layer names a missing chunk; not restored", "layer", lr.Digest, "chunk", e.ID.String())
				complete = false
				break
			}
			lr.Stored += ci.Stored
		}
		if !complete {
			continue
		}
		for _, e := range lr.Recipe {
			chunks[e.ID].Refs++
		}
		restored[lr.Digest] = true
		kept = append(kept, lr)
	}
	layers = kept

	// 3. Step records.
	var steps []index.StepEntry
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
		steps = append(steps, index.StepEntry{Key: rec.Key, Body: b})
		return nil
	})
	if err != nil {
		return backendErr("list steps", err)
	}

	// 4. Write the new index.
	c.steps.clear()
	if err := c.idx.Rebuild(chunks, layers, steps); err != nil {
		return err
	}
	c.log.Info("cache: reindexed", "layers", len(layers), "chunks", len(chunks), "steps", len(steps))
	return nil
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

// readPackTables lists packs/ and reads every pack's table, up to
// Concurrency packs at a time. A pack whose table is unreadable or
// inconsistent is skipped with a warning: its chunks are as good as lost.
func (c *Cache) readPackTables(ctx context.Context) (map[chunkid.ID]*index.ChunkInfo, error) {
	var packs []backend.Info
	err := c.store.List(ctx, pack.Prefix, func(info backend.Info) error {
		packs = append(packs, info)
		return nil
	})
	if err != nil {
		return nil, backendErr("list packs", err)
	}
	sort.Slice(packs, func(i, j int) bool { return packs[i].Key < packs[j].Key })
	tables := make([][]pack.Entry, len(packs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.conc)
	for i, info := range packs {
		if _, ok := pack.IDFromKey(info.Key); !ok {
			c.log.Warn("cache: reindex: skipping stray object", "key", info.Key)
			continue
		}
		g.Go(func() error {
			entries, err := pack.ReadTable(gctx, c.store, info.Key, info.Size)
			if errors.Is(err, ErrDataLoss) {
				c.log.Warn("cache: reindex: skipping bad pack", "key", info.Key, "err", err)
				return nil
			}
			tables[i] = entries
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	chunks := make(map[chunkid.ID]*index.ChunkInfo)
	for i, entries := range tables {
		id, _ := pack.IDFromKey(packs[i].Key)
		for _, e := range entries {
			if _, ok := chunks[e.ID]; !ok {
				chunks[e.ID] = &index.ChunkInfo{Size: e.Size, Stored: e.Stored, Pack: id, Off: e.Off}
			}
		}
	}
	return chunks, nil
}
