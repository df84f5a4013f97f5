package cache

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// layer reads layer d's record and its last access time.
func (c *Cache) layer(d digest.Digest) (*layerRecord, time.Time, error) {
	var (
		lr       *layerRecord
		accessed time.Time
	)
	err := c.db.View(func(txn *badger.Txn) (err error) {
		if lr, err = getLayer(txn, d); err != nil {
			return err
		}
		accessed, err = getAccess(txn, d)
		return err
	})
	if err != nil {
		return nil, time.Time{}, indexErr("layer "+string(d), err)
	}
	c.pendMu.Lock()
	if t, ok := c.pendAccess[d]; ok && t.After(accessed) {
		accessed = t
	}
	c.pendMu.Unlock()
	return lr, accessed, nil
}

func (c *Cache) stat(d digest.Digest) (LayerInfo, error) {
	lr, accessed, err := c.layer(d)
	if err != nil {
		return LayerInfo{}, err
	}
	return lr.info(accessed), nil
}

// Stat returns layer d's record; ErrNotFound if it is not committed.
func (c *Cache) Stat(ctx context.Context, d digest.Digest) (LayerInfo, error) {
	if err := c.begin(ctx); err != nil {
		return LayerInfo{}, fmt.Errorf("cache: stat %s: %w", d, err)
	}
	defer c.end()
	if err := parseLayerDigest(d); err != nil {
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
	if err := parseLayerDigest(d); err != nil {
		return nil, fmt.Errorf("cache: chunks: %w", err)
	}
	lr, _, err := c.layer(d)
	if err != nil {
		return nil, fmt.Errorf("cache: chunks: %w", err)
	}
	refs := make([]ChunkRef, len(lr.recipe))
	for i, e := range lr.recipe {
		refs[i] = ChunkRef{Digest: e.id.Digest(), Size: e.size}
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
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	pageSize = min(pageSize, MaxPageSize)
	start := idxLayer
	if pageToken != "" {
		after, err := base64.RawURLEncoding.DecodeString(pageToken)
		if err != nil || digest.Digest(after).Validate() != nil {
			return nil, "", fmt.Errorf("cache: list: %w: bad page token", ErrInvalidArgument)
		}
		start = append(layerIdxKey(digest.Digest(after)), 0) // just after it
	}
	var (
		out  []LayerInfo
		next string
	)
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: idxLayer, PrefetchValues: false})
		defer it.Close()
		for it.Seek(start); it.ValidForPrefix(idxLayer); it.Next() {
			if len(out) == pageSize {
				last := out[len(out)-1].Digest
				next = base64.RawURLEncoding.EncodeToString([]byte(last))
				return nil
			}
			d := digest.Digest(bytes.TrimPrefix(it.Item().Key(), idxLayer))
			var lr *layerRecord
			if err := it.Item().Value(func(v []byte) (err error) {
				lr, err = decodeLayerRecord(d, v)
				return err
			}); err != nil {
				return err
			}
			acc, err := getAccess(txn, d)
			if err != nil {
				return err
			}
			out = append(out, lr.info(acc))
		}
		return nil
	})
	if err != nil {
		return nil, "", indexErr("cache: list", err)
	}
	return out, next, nil
}

// Delete removes layer d from the index and drops its chunk references;
// its manifest leaves the backend after that. Chunk records (in their
// packs) stay for the garbage collector, which trusts the reference
// counts. Steps that produced d become misses. A missing layer is
// ErrNotFound.
func (c *Cache) Delete(ctx context.Context, d digest.Digest) error {
	if err := c.begin(ctx); err != nil {
		return fmt.Errorf("cache: delete %s: %w", d, err)
	}
	defer c.end()
	if err := parseLayerDigest(d); err != nil {
		return fmt.Errorf("cache: delete: %w", err)
	}
	var big map[chunkID]int64
	err := c.update("cache: delete "+string(d), func(txn *badger.Txn) error {
		big = nil
		lr, err := getLayer(txn, d)
		if err != nil {
			return err
		}
		counts := make(map[chunkID]int64, len(lr.recipe))
		for _, e := range lr.recipe {
			counts[e.id]++
		}
		if len(counts) > maxTxnChunks {
			// Too many for one transaction: the layer goes first, the
			// references after it, so that a crash in between leaves
			// counts too high (safe), never too low.
			big = counts
		} else {
			for id, n := range counts {
				if err := dropRef(txn, id, n); err != nil {
					return fmt.Errorf("layer %s: %w", d, err)
				}
			}
		}
		if err := txn.Delete(accessIdxKey(d)); err != nil {
			return err
		}
		return txn.Delete(layerIdxKey(d))
	})
	if err != nil {
		return err
	}
	if big != nil {
		ids := make([]chunkID, 0, len(big))
		for id := range big {
			ids = append(ids, id)
		}
		if err := c.dropRefs(ids, big); err != nil {
			return fmt.Errorf("cache: delete %s: %w", d, indexErr("drop references", err))
		}
	}
	c.pendMu.Lock()
	delete(c.pendAccess, d)
	c.pendMu.Unlock()
	// Index first, backend second: a crash in between leaves a manifest
	// that Reindex would restore, with all its chunks still there.
	if err := c.store.Delete(ctx, layerKey(d)); err != nil {
		return fmt.Errorf("cache: delete %s: %w", d, backendErr("delete manifest", err))
	}
	return nil
}

// Stats summarise the cache.
type Stats struct {
	Layers, Chunks, Steps int64
	LogicalBytes          int64 // sum of the sizes of all layers
	StoredBytes           int64 // bytes of all chunk records the index knows
}

// Stats counts what the index holds. It walks the index: call it for
// metrics every so often, not per request.
func (c *Cache) Stats(ctx context.Context) (Stats, error) {
	if err := c.begin(ctx); err != nil {
		return Stats{}, fmt.Errorf("cache: stats: %w", err)
	}
	defer c.end()
	var s Stats
	err := c.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			k := it.Item().Key()
			switch {
			case bytes.HasPrefix(k, idxChunk):
				s.Chunks++
				if err := it.Item().Value(func(v []byte) error {
					ci, err := decodeChunkInfo(v)
					s.StoredBytes += ci.stored
					return err
				}); err != nil {
					return err
				}
			case bytes.HasPrefix(k, idxLayer):
				s.Layers++
				d := digest.Digest(bytes.TrimPrefix(k, idxLayer))
				if err := it.Item().Value(func(v []byte) error {
					lr, err := decodeLayerRecord(d, v)
					if err == nil {
						s.LogicalBytes += lr.size
					}
					return err
				}); err != nil {
					return err
				}
			case bytes.HasPrefix(k, idxStep):
				s.Steps++
			}
		}
		return nil
	})
	if err != nil {
		return Stats{}, indexErr("cache: stats", err)
	}
	return s, nil
}
