package server

import (
	"context"
	"fmt"

	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// VerifyStore implements cairnv1.LayerServiceServer. One runs at a time;
// a second waits for the first (within its deadline).
func (s *layerService) VerifyStore(ctx context.Context, req *cairnv1.VerifyStoreRequest) (*cairnv1.VerifyStoreResponse, error) {
	if req.GetRateBytes() < 0 {
		return nil, toStatus(fieldErr("rate_bytes", fmt.Errorf("%w: negative rate %d", errInvalidArgument, req.GetRateBytes())))
	}
	select {
	case s.verifies <- struct{}{}:
	case <-ctx.Done():
		return nil, toStatus(ctx.Err())
	}
	defer func() { <-s.verifies }()
	rep, err := s.verifier.Verify(ctx, cache.VerifyOptions{Rate: req.GetRateBytes()})
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &cairnv1.VerifyStoreResponse{
		PackCount:             rep.Packs,
		ReadBytes:             rep.ReadBytes,
		ChunkCount:            rep.Chunks,
		NewlyQuarantinedCount: rep.Newly,
		Problems:              rep.Problems,
	}
	for _, id := range rep.Quarantine {
		resp.QuarantinedChunks = append(resp.QuarantinedChunks, id.String())
	}
	for _, d := range rep.Damaged {
		resp.DamagedLayers = append(resp.DamagedLayers, d.String())
	}
	for _, k := range rep.Steps {
		resp.DamagedSteps = append(resp.DamagedSteps, k.String())
	}
	return resp, nil
}
