package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"time"

	"github.com/cairnbuild/cairn/backend"
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
			if !ok || ci.size != e.size {
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
			chunks[e.id].refs++
		}
		restored[lr.digest] = true
		kept = append(kept, lr)
	}
	layers = kept

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
	if err := wb.Set(idxFormat, []byte(indexFormat)); err != nil {
		return indexErr("write index", err)
	}
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

// readPackTables lists packs/ and reads every pack's table, up to
// Concurrency packs at a time. A pack whose table is unreadable or
// inconsistent is skipped with a warning: its chunks are as good as lost.
func (c *Cache) readPackTables(ctx context.Context) (map[chunkID]*chunkInfo, error) {
	var packs []backend.Info
	err := c.store.List(ctx, packPrefix, func(info backend.Info) error {
		packs = append(packs, info)
		return nil
	})
	if err != nil {
		return nil, backendErr("list packs", err)
	}
	sort.Slice(packs, func(i, j int) bool { return packs[i].Key < packs[j].Key })
	tables := make([][]packEntry, len(packs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.conc)
	for i, info := range packs {
		if _, ok := packIDFromKey(info.Key); !ok {
			c.log.Warn("cache: reindex: skipping stray object", "key", info.Key)
			continue
		}
		g.Go(func() error {
			entries, err := c.readPackTable(gctx, info)
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
	chunks := make(map[chunkID]*chunkInfo)
	for i, entries := range tables {
		id, _ := packIDFromKey(packs[i].Key)
		for _, e := range entries {
			if _, ok := chunks[e.id]; !ok {
				chunks[e.id] = &chunkInfo{size: e.size, stored: e.stored, pack: id, off: e.off}
			}
		}
	}
	return chunks, nil
}

// readPackTable reads the footer, then the table, of one pack.
func (c *Cache) readPackTable(ctx context.Context, info backend.Info) ([]packEntry, error) {
	read := func(off, n int64) ([]byte, error) {
		rc, err := c.store.Open(ctx, info.Key, off, n)
		if err != nil {
			if errors.Is(err, backend.ErrNotFound) || errors.Is(err, backend.ErrInvalidRange) {
				return nil, fmt.Errorf("%w: %w", ErrDataLoss, err)
			}
			return nil, backendErr("read pack "+info.Key, err)
		}
		defer rc.Close()
		b := make([]byte, n)
		if _, err := io.ReadFull(rc, b); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("%w: short read", ErrDataLoss)
			}
			return nil, backendErr("read pack "+info.Key, err)
		}
		return b, nil
	}
	if info.Size < packFooterSize {
		return nil, fmt.Errorf("%w: %d bytes, too short for a pack", ErrDataLoss, info.Size)
	}
	footer, err := read(info.Size-packFooterSize, packFooterSize)
	if err != nil {
		return nil, err
	}
	n, err := parsePackFooter(footer, info.Size)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDataLoss, err)
	}
	tableLen := int64(n * packEntrySize)
	table, err := read(info.Size-packFooterSize-tableLen, tableLen)
	if err != nil {
		return nil, err
	}
	entries, err := parsePackTable(table, footer, info.Size)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrDataLoss, err)
	}
	return entries, nil
}
