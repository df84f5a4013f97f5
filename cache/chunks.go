package cache

import (
	"context"
	_ "crypto/sha512" // sha512 layer digests
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/chunks"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
)

// ChunkRef names one chunk of a recipe: its ID (see ChunkDigest) and its
// uncompressed size.
type ChunkRef struct {
	ID   chunkid.ID
	Size int64
}

// MaxChunkList bounds the ids of one MissingChunks call and the chunks of
// one Commit: 64 Ki chunks of 256 KiB average is a 16 GiB layer.
const MaxChunkList = 64 << 10

// MissingChunks returns those of ids the cache does not hold, in the order
// given, each once. It looks them up in one index transaction per 16 000
// ids, touching the entries it finds (see index.DB.Touch).
func (c *Cache) MissingChunks(ctx context.Context, ids []chunkid.ID) ([]chunkid.ID, error) {
	if err := c.begin(ctx); err != nil {
		return nil, fmt.Errorf("cache: missing chunks: %w", err)
	}
	defer c.end()
	if len(ids) > MaxChunkList {
		return nil, fmt.Errorf("cache: missing chunks: %w: %d ids, at most %d", ErrInvalidArgument, len(ids), MaxChunkList)
	}
	missing, err := c.chunks.Missing(ids)
	if err != nil {
		return nil, fmt.Errorf("cache: missing chunks: %w", err)
	}
	return missing, nil
}

// PutChunk stores one chunk of a client-side chunked layer. data must hash
// to id (else ErrDigestMismatch) and hold 1 to MaxChunkSize bytes. The chunk
// is durable in the backend and known to the index when PutChunk returns,
// with no references until a Commit names it. Storing a chunk the cache
// already holds is a no-op. Uploading many chunks, use a ChunkUpload: it
// stores them together in packs.
func (c *Cache) PutChunk(ctx context.Context, id chunkid.ID, data []byte) error {
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
	s    *chunks.Session
	once sync.Once
	err  error
}

// NewChunkUpload starts an upload whose packs are written under ctx.
func (c *Cache) NewChunkUpload(ctx context.Context) *ChunkUpload {
	return &ChunkUpload{c: c, s: c.chunks.NewSession(ctx, true)}
}

// Put accepts one chunk: data must hash to id (else ErrDigestMismatch) and
// hold 1 to MaxChunkSize bytes. A chunk the cache already holds, or that an
// upload or push in progress is storing, is not stored again.
func (u *ChunkUpload) Put(ctx context.Context, id chunkid.ID, data []byte) error {
	c := u.c
	if err := c.begin(ctx); err != nil {
		return fmt.Errorf("cache: put chunk: %w", err)
	}
	defer c.end()
	if len(data) == 0 || len(data) > MaxChunkSize {
		return fmt.Errorf("cache: put chunk %s: %w: %d bytes, want 1 to %d", id, ErrInvalidArgument, len(data), MaxChunkSize)
	}
	if got := chunkid.Sum(data); got != id {
		return fmt.Errorf("cache: put chunk: %w: data hashes to %s, not %s", ErrDigestMismatch, got, id)
	}
	if err := u.s.Ensure(ctx, id, data); err != nil {
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
			u.s.Close()
			u.err = fmt.Errorf("cache: put chunks: %w", err)
			return
		}
		defer u.c.end()
		if err := u.s.Flush(); err != nil {
			u.err = fmt.Errorf("cache: put chunks: %w", err)
		}
		u.s.Close()
	})
	return u.err
}

// Commit makes a client-side chunked layer visible: the chunks, in order,
// must all be in the cache (else ErrFailedPrecondition naming a missing
// one), and together hash to d (else ErrDigestMismatch). The check reads
// every chunk back, verified, before the layer is committed. Committing a
// layer that is already committed returns its record.
func (c *Cache) Commit(ctx context.Context, d digest.Digest, mediaType string, refs []ChunkRef) (LayerInfo, error) {
	if err := c.begin(ctx); err != nil {
		return LayerInfo{}, fmt.Errorf("cache: commit: %w", err)
	}
	defer c.end()
	info, err := c.commitRecipe(ctx, d, mediaType, refs)
	if err != nil {
		return LayerInfo{}, fmt.Errorf("cache: commit %s: %w", d, err)
	}
	return info, nil
}

func (c *Cache) commitRecipe(ctx context.Context, d digest.Digest, mediaType string, refs []ChunkRef) (LayerInfo, error) {
	if err := ParseLayerDigest(d); err != nil {
		return LayerInfo{}, err
	}
	if len(refs) > MaxChunkList {
		return LayerInfo{}, fmt.Errorf("%w: %d chunks, at most %d", ErrInvalidArgument, len(refs), MaxChunkList)
	}
	if mediaType == "" {
		mediaType = DefaultMediaType
	}
	lr := &index.LayerRecord{Digest: d, MediaType: mediaType, Recipe: make([]index.RecipeEntry, len(refs))}
	ids := make([]chunkid.ID, len(refs))
	for i, ch := range refs {
		if ch.Size <= 0 || ch.Size > MaxChunkSize {
			return LayerInfo{}, fmt.Errorf("%w: chunk %d (%s): size %d, want 1 to %d", ErrInvalidArgument, i, ch.ID, ch.Size, MaxChunkSize)
		}
		lr.Recipe[i] = index.RecipeEntry{ID: ch.ID, Size: ch.Size}
		ids[i] = ch.ID
		lr.Size += ch.Size
	}
	if old, err := c.stat(d); err == nil && !old.Damaged() {
		if found, err := c.hold(ctx, d, true); err != nil || found {
			return old, err
		}
	}
	// Lease every chunk before checking that it is there: from here to
	// the commit, the collector must not take any of them away.
	release := c.chunks.Lease(ids)
	defer release()
	infos, found, err := c.idx.Chunks(ids)
	if err != nil {
		return LayerInfo{}, fmt.Errorf("check chunks: %w", err)
	}
	for i, e := range lr.Recipe {
		if !found[i] {
			return LayerInfo{}, fmt.Errorf("%w: chunk %d (%s) has not been uploaded", ErrFailedPrecondition, i, e.ID)
		}
		if infos[i].Size != e.Size {
			return LayerInfo{}, fmt.Errorf("%w: chunk %d (%s) has %d bytes, the list says %d", ErrInvalidArgument, i, e.ID, infos[i].Size, e.Size)
		}
	}
	if err := c.verifyRecipe(ctx, lr, d); err != nil {
		if bad := c.idx.DamagedChunks(lr); errors.Is(err, ErrDataLoss) && len(bad) > 0 {
			// The read found a stored copy bad and quarantined it: the
			// client can heal it by uploading the chunk again.
			return LayerInfo{}, fmt.Errorf("%w: chunk %s was damaged in the store and is quarantined: upload it again: %w", ErrFailedPrecondition, bad[0], err)
		}
		return LayerInfo{}, err
	}
	lr.Created = time.Now().UTC()
	return c.commit(ctx, lr, nil)
}

// verifyRecipe reads lr's chunks back (each verified against its hash) and
// checks that together they hash to d, with d's algorithm.
func (c *Cache) verifyRecipe(ctx context.Context, lr *index.LayerRecord, d digest.Digest) error {
	h := d.Algorithm().Hash()
	rr, err := c.blobReader(ctx, lr, 0, lr.Size)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	_, err = io.Copy(h, rr)
	rr.Close()
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	if got := digest.NewDigestFromBytes(d.Algorithm(), h.Sum(nil)); got != d {
		return fmt.Errorf("%w: the chunks hash to %s, declared %s", ErrDigestMismatch, got, d)
	}
	return nil
}
