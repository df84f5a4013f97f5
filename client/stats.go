package client

import (
	"context"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// Stats are a server's totals at one moment.
type Stats struct {
	Layers int64 `json:"layers"`
	// Chunks counts the distinct chunks stored, including uploaded chunks
	// no committed layer names (yet).
	Chunks int64 `json:"chunks"`
	Steps  int64 `json:"steps"` // step records in the build cache
	// LogicalBytes is the sum of the layers' sizes, as pushed.
	LogicalBytes int64 `json:"logical_bytes"`
	// StoredBytes is what the chunks take in the server's blob store:
	// compressed, each distinct chunk once.
	StoredBytes int64 `json:"stored_bytes"`
	// UniqueBytes is the distinct chunks' bytes, uncompressed:
	// LogicalBytes / UniqueBytes is what deduplication alone saves.
	UniqueBytes int64 `json:"unique_bytes"`
	// DedupRatio is LogicalBytes / StoredBytes: what deduplication and
	// compression save together (0 with nothing stored).
	DedupRatio float64 `json:"dedup_ratio"`
	// Repositories, Tags and Manifests count what the registry front
	// holds; a manifest held by two repositories counts twice. Their
	// blobs are layers, counted in Layers too.
	Repositories int64 `json:"repositories"`
	Tags         int64 `json:"tags"`
	Manifests    int64 `json:"manifests"`
	// Quarantined counts chunks the server found bad (on a read or a
	// verify) that no push has supplied again yet.
	Quarantined int64 `json:"quarantined_chunks"`
	// StoredBytes and Chunks by tier: the ingest tier holds chunks as
	// pushes store them, one compressed record each; the compacted tier
	// the chunks a collection rewrote into frames of several, compressed
	// harder, once they went untouched for the compact age.
	IngestBytes     int64 `json:"ingest_stored_bytes"`
	CompactedBytes  int64 `json:"compacted_stored_bytes"`
	IngestChunks    int64 `json:"ingest_chunks"`
	CompactedChunks int64 `json:"compacted_chunks"`
}

// Stats returns the server's totals, in one call. The server walks its
// index to count them, so the call takes a while on a large server: meant
// for people and for a check now and then, not for a hot path.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	resp, err := c.layers.GetStats(ctx, &cairnv1.GetStatsRequest{})
	if err != nil {
		return Stats{}, wrapErr("stats", err)
	}
	st := Stats{
		Layers:       resp.GetLayerCount(),
		Chunks:       resp.GetChunkCount(),
		Steps:        resp.GetStepCount(),
		LogicalBytes: resp.GetLogicalSizeBytes(),
		StoredBytes:  resp.GetStoredSizeBytes(),
		UniqueBytes:  resp.GetUniqueSizeBytes(),
		Repositories: resp.GetRepositoryCount(),
		Tags:         resp.GetTagCount(),
		Manifests:    resp.GetManifestCount(),
		Quarantined:  resp.GetQuarantinedChunkCount(),

		IngestBytes:     resp.GetIngestStoredSizeBytes(),
		CompactedBytes:  resp.GetCompactedStoredSizeBytes(),
		IngestChunks:    resp.GetIngestChunkCount(),
		CompactedChunks: resp.GetCompactedChunkCount(),
	}
	if st.StoredBytes > 0 {
		st.DedupRatio = float64(st.LogicalBytes) / float64(st.StoredBytes)
	}
	return st, nil
}
