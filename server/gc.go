package server

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// CollectGarbage implements cairnv1.LayerServiceServer.
func (s *layerService) CollectGarbage(ctx context.Context, req *cairnv1.CollectGarbageRequest) (*cairnv1.CollectGarbageResponse, error) {
	opts := cache.GCOptions{DryRun: req.GetDryRun(), RewriteRatio: req.GetRewriteRatio()}
	var err error
	if opts.Grace, err = gcDuration("grace", req.GetGrace()); err != nil {
		return nil, toStatus(err)
	}
	if opts.PackGrace, err = gcDuration("pack_grace", req.GetPackGrace()); err != nil {
		return nil, toStatus(err)
	}
	if a := req.GetStepMaxAge(); a != nil {
		if err := a.CheckValid(); err != nil || a.AsDuration() < 0 {
			return nil, toStatus(fieldErr("step_max_age", fmt.Errorf("%w: %v, want a duration of 0 or more", errInvalidArgument, a.AsDuration())))
		}
		opts.StepMaxAge = a.AsDuration()
	}
	if r := req.GetRewriteRatio(); r < 0 || r != r {
		return nil, toStatus(fieldErr("rewrite_ratio", fmt.Errorf("%w: %v, want 0 (the default) or a share above 0", errInvalidArgument, r)))
	}
	rep, err := s.collector.GC(ctx, opts)
	if err != nil {
		return nil, toStatus(err)
	}
	return &cairnv1.CollectGarbageResponse{
		PackCount:          rep.Packs,
		ChunkCount:         rep.Chunks,
		LiveChunkCount:     rep.LiveChunks,
		DeadChunkCount:     rep.DeadChunks,
		YoungChunkCount:    rep.YoungChunks,
		DeletePackCount:    int64(len(rep.Delete)),
		RewritePackCount:   int64(len(rep.Rewrite)),
		OrphanPackCount:    int64(len(rep.Orphans)),
		DuePackCount:       int64(len(rep.Due)),
		WaitingPackCount:   int64(rep.Waiting),
		PlannedBytes:       rep.PlannedBytes,
		DeletedPackCount:   rep.DeletedPacks,
		RewrittenPackCount: rep.RewrittenPacks,
		MarkedPackCount:    rep.MarkedPacks,
		DeletedChunkCount:  rep.DeletedChunks,
		MovedChunkCount:    rep.MovedChunks,
		FreedBytes:         rep.FreedBytes,
		Skipped:            rep.Skipped,
		Duration:           durationpb.New(rep.Duration),
		StaleStepCount:     rep.StaleSteps,
	}, nil
}

// gcDuration maps a request's grace period to cache.GCOptions': unset is
// the default (0 there), an explicit zero is none (negative there).
func gcDuration(field string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil || d.AsDuration() < 0 {
		return 0, fieldErr(field, fmt.Errorf("%w: %v, want a duration of 0 or more", errInvalidArgument, d.AsDuration()))
	}
	if d.AsDuration() == 0 {
		return -1, nil
	}
	return d.AsDuration(), nil
}
