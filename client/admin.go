package client

import (
	"context"

	"github.com/opencontainers/go-digest"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// ListSteps returns a page of the server's step records, in key order, and
// the token of the next page ("" after the last); with layer set, only the
// records naming that layer. Listing does not count as hits. pageSize <= 0
// means the server's default (100).
func (c *Client) ListSteps(ctx context.Context, pageToken string, pageSize int, layer digest.Digest) ([]StepRecord, string, error) {
	if layer != "" {
		if err := checkDigest("list steps", layer); err != nil {
			return nil, "", err
		}
	}
	resp, err := c.cache.ListSteps(ctx, &cairnv1.ListStepsRequest{
		PageSize:    int32(min(max(pageSize, 0), 1000)),
		PageToken:   pageToken,
		LayerDigest: layer.String(),
	})
	if err != nil {
		return nil, "", wrapErr("list steps", err)
	}
	out := make([]StepRecord, 0, len(resp.GetRecords()))
	for _, r := range resp.GetRecords() {
		out = append(out, stepRecord(r))
	}
	return out, resp.GetNextPageToken(), nil
}

// DeleteStep removes the step record with key (StepRecord.Key); a missing
// one is ErrNotFound.
func (c *Client) DeleteStep(ctx context.Context, key digest.Digest) error {
	if err := checkDigest("delete step", key); err != nil {
		return err
	}
	_, err := c.cache.DeleteStep(ctx, &cairnv1.DeleteStepRequest{Key: key.String()})
	return wrapErr("delete step "+key.String(), err)
}

// VerifyReport is what a VerifyStore found.
type VerifyReport struct {
	Packs            int64           `json:"packs"`
	ReadBytes        int64           `json:"read_bytes"`
	Chunks           int64           `json:"chunks"`
	NewlyQuarantined int64           `json:"newly_quarantined"`
	Quarantined      []string        `json:"quarantined_chunks"`
	DamagedLayers    []digest.Digest `json:"damaged_layers"`
	DamagedSteps     []digest.Digest `json:"damaged_steps"`
	Problems         []string        `json:"problems"`
}

// Verify asks the server to read its whole blob store (at most rate bytes
// a second; 0: no limit) and check it against its index, quarantining the
// chunks it finds bad. It takes as long as reading the store: call it
// without a deadline, or a generous one.
func (c *Client) Verify(ctx context.Context, rate int64) (VerifyReport, error) {
	resp, err := c.layers.VerifyStore(ctx, &cairnv1.VerifyStoreRequest{RateBytes: rate})
	if err != nil {
		return VerifyReport{}, wrapErr("verify", err)
	}
	rep := VerifyReport{
		Packs: resp.GetPackCount(), ReadBytes: resp.GetReadBytes(), Chunks: resp.GetChunkCount(),
		NewlyQuarantined: resp.GetNewlyQuarantinedCount(), Quarantined: resp.GetQuarantinedChunks(),
		Problems: resp.GetProblems(),
	}
	for _, d := range resp.GetDamagedLayers() {
		rep.DamagedLayers = append(rep.DamagedLayers, digest.Digest(d))
	}
	for _, d := range resp.GetDamagedSteps() {
		rep.DamagedSteps = append(rep.DamagedSteps, digest.Digest(d))
	}
	return rep, nil
}
