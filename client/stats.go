package client

import (
	"context"
	"errors"
	"sync"

	"golang.org/x/sync/errgroup"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// Stats summarizes the layers on a server.
type Stats struct {
	Layers       int64 `json:"layers"`
	LogicalBytes int64 `json:"logical_bytes"` // sum of the layers' sizes
	Chunks       int64 `json:"chunks"`        // distinct chunks the layers use
	UniqueBytes  int64 `json:"unique_bytes"`  // uncompressed bytes of those chunks
	// DedupRatio is LogicalBytes / UniqueBytes: what chunk-level
	// deduplication saves before compression (0 with no data).
	DedupRatio float64 `json:"dedup_ratio"`
}

// statsConcurrency bounds the recipe requests Stats has in flight.
const statsConcurrency = 8

// Stats walks the server's layers and their recipes and adds them up. The
// API has no single call for this, so it costs one ListLayers call per 1000
// layers and one GetLayerChunks call per layer: meant for people, not for
// a hot path. Layers deleted during the walk are skipped.
func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var (
		st     Stats
		mu     sync.Mutex
		chunks = make(map[string]struct{})
	)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(statsConcurrency)
	token := ""
	for {
		page, next, err := c.List(gctx, token, 1000)
		if err != nil {
			_ = g.Wait()
			return Stats{}, err
		}
		for _, l := range page {
			g.Go(func() error {
				resp, err := c.layers.GetLayerChunks(gctx, &cairnv1.GetLayerChunksRequest{Digest: l.Digest.String()})
				if err != nil {
					err = wrapErr("stats: "+l.Digest.String(), err)
					if errors.Is(err, ErrNotFound) {
						return nil // deleted meanwhile
					}
					return err
				}
				mu.Lock()
				defer mu.Unlock()
				st.Layers++
				st.LogicalBytes += resp.GetLayer().GetSizeBytes()
				for _, ch := range resp.GetChunks() {
					if _, ok := chunks[ch.GetDigest()]; !ok {
						chunks[ch.GetDigest()] = struct{}{}
						st.Chunks++
						st.UniqueBytes += ch.GetSizeBytes()
					}
				}
				return nil
			})
		}
		if next == "" {
			break
		}
		token = next
	}
	if err := g.Wait(); err != nil {
		return Stats{}, err
	}
	if st.UniqueBytes > 0 {
		st.DedupRatio = float64(st.LogicalBytes) / float64(st.UniqueBytes)
	}
	return st, nil
}
