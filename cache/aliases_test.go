package cache

import (
	"context"

	"github.com/cairnbuild/cairn/backend"

	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
)

// Short names for the internal packages' types, for the tests.
type (
	chunkID   = chunkid.ID
	chunkInfo = index.ChunkInfo
	packEntry = pack.Entry
)

const (
	packPrefix      = pack.Prefix
	chunkHeaderSize = pack.HeaderSize
	packFooterSize  = pack.FooterSize
	packEntrySize   = pack.EntrySize
)

var packKey = pack.Key

// lookupChunk reads chunk id's index entry.
func (c *Cache) lookupChunk(id chunkID) (chunkInfo, bool, error) { return c.idx.Chunk(id) }

// readPackTable reads a pack's table as Reindex does.
func (c *Cache) readPackTable(ctx context.Context, key string, size int64) ([]packEntry, error) {
	return pack.ReadTable(ctx, c.store, key, size)
}

// setBackend makes the cache use b (for reading and writing) and returns
// the backend it used.
func (c *Cache) setBackend(b backend.Store) backend.Store {
	c.store = b
	return c.chunks.SetBackend(b)
}
