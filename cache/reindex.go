package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"

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
// entry, then streams packs/, layers/ and steps/ back into it: chunk
// entries from the pack tables, then each layer whose manifest names only
// chunks that are there (with its references), then each step record
// whose layer was restored. A layer whose manifest names a chunk the
// backend lacks is not restored (it could not be served), and neither are
// steps that name a layer not restored. Hit counts and access times are
// not in the backend and restart from zero.
//
// It streams: what it holds at once is a window of pack tables and one
// manifest, whatever the size of the store (the index holds the rest).
// Reindex holds the cache exclusively: other calls wait until it is done,
// and open upload sessions are aborted first.
// If it fails or crashes part way, the index is incomplete but never names
// missing data, and the next Open (or Reindex) finishes the job.
func (c *Cache) Reindex(ctx context.Context) error {
	c.abortUploads(false) // their pushes hold the lock shared
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

// errPartialIndex is what every call gets after a Reindex failed part way,
// until one succeeds: the index may lack what the backend holds.
var errPartialIndex = fmt.Errorf("%w: the index is incomplete after a failed reindex: reindex again, or restart (opening the index finishes the reindex)", ErrUnavailable)

// packWindow is how many pack tables Reindex reads at once.
const packWindow = 64

func (c *Cache) reindex(ctx context.Context) (err error) {
	defer func() { c.partial = err != nil && c.idx.Interrupted() }()
	c.rebuilds.Add(1)
	c.steps.clear()
	// The quarantine outlives the rebuild: a chunk found bad is condemned
	// again if the rebuilt index names the same copy (from the same pack
	// table), once the layers are restored (a commit refuses a quarantined
	// chunk). A copy in another pack is a fresh one, unknown to be bad.
	condemned, err := c.idx.QuarantinedAt()
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			return
		}
		n := 0
		for id, at := range condemned {
			did, qerr := c.idx.Quarantine(id, at)
			if qerr != nil {
				err = qerr
				return
			}
			if did {
				n++
			}
		}
		if n > 0 {
			c.log.Warn("cache: reindex: chunks found bad before stay quarantined", "chunks", n)
		}
	}()
	if err := c.idx.BeginRebuild(); err != nil {
		return err
	}
	// 1. Packs: their tables say which chunks each holds, where, and how
	// large. A chunk in several packs (concurrent pushes, a push that
	// failed after writing some) is taken from the first pack listed.
	var window []backend.Info
	var nChunks int
	flush := func() error {
		n, err := c.indexPacks(ctx, window)
		nChunks += n
		window = window[:0]
		return err
	}
	err = c.store.List(ctx, pack.Prefix, func(info backend.Info) error {
		if _, ok := pack.IDFromKey(info.Key); !ok {
			c.log.Warn("cache: reindex: skipping stray object", "key", info.Key)
			return nil
		}
		if window = append(window, info); len(window) == packWindow {
			return flush()
		}
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return backendErr("index packs", err)
	}

	// 2. Layer manifests, one at a time: the recipe gives the references.
	var nLayers int
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
		var all []index.RecipeEntry
		lr.ChunkRefs(func(e index.RecipeEntry) { all = append(all, e) })
		ids := make([]chunkid.ID, len(all))
		for i, e := range all {
			ids[i] = e.ID
		}
		infos, found, err := c.idx.Chunks(ids)
		if err != nil {
			return err
		}
		for i, e := range all {
			if !found[i] || infos[i].Size != e.Size {
				c.log.Warn("cache: reindex: layer names a missing chunk; not restored", "layer", lr.Digest, "chunk", e.ID.String())
				return nil
			}
		}
		if _, err := c.idx.CommitLayer(lr, nil); err != nil {
			return err
		}
		nLayers++
		return nil
	})
	if err != nil {
		return backendErr("index layers", err)
	}

	// 3. Step records whose layer was restored.
	var nSteps int
	err = c.store.List(ctx, stepPrefix, func(info backend.Info) error {
		b, err := c.readMeta(ctx, info)
		if err != nil {
			return err
		}
		rec, err := unmarshalStep(b)
		if err != nil || stepObjectKey(rec.storeKey()) != info.Key {
			c.log.Warn("cache: reindex: skipping bad step record", "key", info.Key, "err", err)
			return nil
		}
		var layer digest.Digest
		if rec.Layer != nil {
			layer = rec.Layer.Digest
		}
		if _, err := c.idx.PutStep(rec.storeKey(), b, layer); errors.Is(err, ErrFailedPrecondition) {
			return nil // its layer was not restored
		} else if err != nil {
			return err
		}
		nSteps++
		return nil
	})
	if err != nil {
		return backendErr("index steps", err)
	}
	// 4. Repositories: blob links, then manifests (children before the
	// indexes naming them), then tags.
	nRepos, err := c.reindexRepos(ctx)
	if err != nil {
		return err
	}
	if err := c.idx.EndRebuild(); err != nil {
		return err
	}
	c.log.Info("cache: reindexed", "layers", nLayers, "chunks", nChunks, "steps", nSteps, "repository objects", nRepos)
	return nil
}

// indexPacks reads the tables of packs, in parallel, and adds their chunks
// to the index (in the order of packs) with no references. A pack whose
// table is damaged is skipped with a warning: its chunks are lost, and the
// layers that need them are not restored.
func (c *Cache) indexPacks(ctx context.Context, packs []backend.Info) (int, error) {
	tables := make([][]pack.Entry, len(packs))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(c.conc)
	for i, info := range packs {
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
		return 0, err
	}
	var n int
	for i, entries := range tables {
		if len(entries) == 0 {
			continue
		}
		id, _ := pack.IDFromKey(packs[i].Key)
		if err := c.idx.AddChunks(id, entries); err != nil {
			return n, err
		}
		n += len(entries)
	}
	return n, nil
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
