package cache

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cairnbuild/cairn/chunkid"
	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// ChunkRef names one chunk of a recipe: its digest (see ChunkDigest) and
// its uncompressed size.
type ChunkRef struct {
	Digest digest.Digest
	Size   int64
}

// MaxChunkList bounds the ids of one MissingChunks call and the chunks of
// one Commit: 64 Ki chunks of 256 KiB average is a 16 GiB layer.
const MaxChunkList = 64 << 10

// MissingChunks returns those of ids the cache does not hold, in the order
// given, each once. A malformed digest fails the whole call.
func (c *Cache) MissingChunks(ctx context.Context, ids []digest.Digest) ([]digest.Digest, error) {
	if err := c.begin(ctx); err != nil {
		return nil, fmt.Errorf("cache: missing chunks: %w", err)
	}
	defer c.end()
	if len(ids) > MaxChunkList {
		return nil, fmt.Errorf("cache: missing chunks: %w: %d ids, at most %d", ErrInvalidArgument, len(ids), MaxChunkList)
	}
	parsed := make([]chunkID, len(ids))
	for i, d := range ids {
		id, err := parseChunkID(d)
		if err != nil {
			return nil, fmt.Errorf("cache: missing chunks: id %d: %w", i, err)
		}
		parsed[i] = id
	}
	var missing []digest.Digest
	seen := make(map[chunkID]bool, len(ids))
	err := c.db.View(func(txn *badger.Txn) error {
		for i, id := range parsed {
			if seen[id] {
				continue
			}
			seen[id] = true
			_, ok, err := getChunk(txn, id)
			if err != nil {
				return err
			}
			if !ok {
				missing = append(missing, ids[i])
			}
		}
		return nil
	})
	if err != nil {
		return nil, indexErr("cache: missing chunks", err)
	}
	return missing, nil
}

// PutChunk stores one chunk of a client-side chunked layer. data must hash
// to id (else ErrDigestMismatch) and hold 1 to MaxChunkSize bytes. The chunk
// is durable in the backend and known to the index when PutChunk returns,
// with no references until a Commit names it. Storing a chunk the cache
// already holds is a no-op. Uploading many chunks, use a ChunkUpload: it
// stores them together in packs.
func (c *Cache) PutChunk(ctx context.Context, id digest.Digest, data []byte) error {
	u := c.NewChunkUpload(ctx)
	if err := u.Put(ctx, id, data); err != nil {
		u.Close()
		return err
	}
	return u.Close()
}

// A ChunkUpload stores the chunks of one client-side chunked upload
// together, in packs: a chunk is durable and known to the index once its
// pack is written, when the pack is full or at Close. Put is safe for
// concurrent use; Close must come after the last Put returns.
type ChunkUpload struct {
	c    *Cache
	s    *chunkSession
	once sync.Once
	err  error
}

// NewChunkUpload starts an upload whose packs are written under ctx.
func (c *Cache) NewChunkUpload(ctx context.Context) *ChunkUpload {
	return &ChunkUpload{c: c, s: c.newSession(ctx, true)}
}

// Put accepts one chunk: data must hash to id (else ErrDigestMismatch) and
// hold 1 to MaxChunkSize bytes. A chunk the cache already holds, or that an
// upload or push in progress is storing, is not stored again.
func (u *ChunkUpload) Put(ctx context.Context, id digest.Digest, data []byte) error {
	c := u.c
	if err := c.begin(ctx); err != nil {
		return fmt.Errorf("cache: put chunk: %w", err)
	}
	defer c.end()
	cid, err := parseChunkID(id)
	if err != nil {
		return fmt.Errorf("cache: put chunk: %w", err)
	}
	if len(data) == 0 || len(data) > MaxChunkSize {
		return fmt.Errorf("cache: put chunk %s: %w: %d bytes, want 1 to %d", id, ErrInvalidArgument, len(data), MaxChunkSize)
	}
	if got := chunkid.Sum(data); got != cid {
		return fmt.Errorf("cache: put chunk: %w: data hashes to %s, not %s", ErrDigestMismatch, got, id)
	}
	if err := u.s.ensure(ctx, cid, data); err != nil {
		return fmt.Errorf("cache: put chunk %s: %w", id, err)
	}
	return nil
}

// Close writes the chunks accepted and not yet written, and ends the
// upload. nil means every chunk Put accepted is durable and indexed; after
// a failed Put the others are still written. Further calls return the
// first result.
func (u *ChunkUpload) Close() error {
	u.once.Do(func() {
		if err := u.c.begin(context.Background()); err != nil {
			u.s.close()
			u.err = fmt.Errorf("cache: put chunks: %w", err)
			return
		}
		defer u.c.end()
		if err := u.s.flush(); err != nil {
			u.err = fmt.Errorf("cache: put chunks: %w", err)
		}
		u.s.close()
	})
	return u.err
}

// Commit makes a client-side chunked layer visible: the chunks, in order,
// must all be in the cache (else ErrFailedPrecondition naming a missing
// one), and together hash to d (else ErrDigestMismatch). The check reads
// every chunk back, verified, before the layer is committed. Committing a
// layer that is already committed returns its record.
func (c *Cache) Commit(ctx context.Context, d digest.Digest, mediaType string, chunks []ChunkRef) (LayerInfo, error) {
	if err := c.begin(ctx); err != nil {
		return LayerInfo{}, fmt.Errorf("cache: commit: %w", err)
	}
	defer c.end()
	info, err := c.commitRecipe(ctx, d, mediaType, chunks)
	if err != nil {
		return LayerInfo{}, fmt.Errorf("cache: commit %s: %w", d, err)
	}
	return info, nil
}

func (c *Cache) commitRecipe(ctx context.Context, d digest.Digest, mediaType string, chunks []ChunkRef) (LayerInfo, error) {
	if err := parseLayerDigest(d); err != nil {
		return LayerInfo{}, err
	}
	if len(chunks) > MaxChunkList {
		return LayerInfo{}, fmt.Errorf("%w: %d chunks, at most %d", ErrInvalidArgument, len(chunks), MaxChunkList)
	}
	if mediaType == "" {
		mediaType = DefaultMediaType
	}
	lr := &layerRecord{digest: d, mediaType: mediaType, recipe: make([]recipeEntry, len(chunks))}
	for i, ch := range chunks {
		id, err := parseChunkID(ch.Digest)
		if err != nil {
			return LayerInfo{}, fmt.Errorf("chunk %d: %w", i, err)
		}
		if ch.Size <= 0 || ch.Size > MaxChunkSize {
			return LayerInfo{}, fmt.Errorf("%w: chunk %d (%s): size %d, want 1 to %d", ErrInvalidArgument, i, ch.Digest, ch.Size, MaxChunkSize)
		}
		lr.recipe[i] = recipeEntry{id: id, size: ch.Size}
		lr.size += ch.Size
	}
	if old, err := c.stat(d); err == nil {
		return old, nil
	}
	// Every chunk must be indexed, with the size the recipe claims.
	err := c.db.View(func(txn *badger.Txn) error {
		for i, e := range lr.recipe {
			ci, ok, err := getChunk(txn, e.id)
			if err != nil {
				return err
			}
			if !ok {
				return fmt.Errorf("%w: chunk %d (%s) has not been uploaded", ErrFailedPrecondition, i, e.id)
			}
			if ci.size != e.size {
				return fmt.Errorf("%w: chunk %d (%s) has %d bytes, the list says %d", ErrInvalidArgument, i, e.id, ci.size, e.size)
			}
		}
		return nil
	})
	if err != nil {
		return LayerInfo{}, indexErr("check chunks", err)
	}
	// Verify the layer digest over the stored chunks.
	h := sha256.New()
	rr := c.newRecipeReader(ctx, lr.recipe, 0, lr.size)
	_, err = io.Copy(h, rr)
	rr.Close()
	if err != nil {
		return LayerInfo{}, fmt.Errorf("verify: %w", err)
	}
	if got := digest.NewDigestFromBytes(digest.SHA256, h.Sum(nil)); got != d {
		return LayerInfo{}, fmt.Errorf("%w: chunks hash to %s", ErrDigestMismatch, got)
	}
	lr.created = time.Now().UTC()
	return c.commit(ctx, lr, nil)
}
