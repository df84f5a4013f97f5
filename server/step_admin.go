package server

import (
	"context"
	"fmt"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// ListSteps implements cairnv1.CacheServiceServer: a page of step records,
// without counting hits.
func (s *cacheService) ListSteps(ctx context.Context, req *cairnv1.ListStepsRequest) (*cairnv1.ListStepsResponse, error) {
	if req.GetPageSize() < 0 {
		return nil, toStatus(fieldErr("page_size", fmt.Errorf("%w: negative page size %d", errInvalidArgument, req.GetPageSize())))
	}
	layer, err := parseDigest("layer_digest", req.GetLayerDigest(), true)
	if err != nil {
		return nil, toStatus(err)
	}
	// The listing shows every namespace's records.
	if err := auth.Check(ctx, auth.Read, allNamespaces); err != nil {
		return nil, toStatus(err)
	}
	recs, next, err := s.admin.ListSteps(ctx, req.GetPageToken(), int(req.GetPageSize()), layer)
	if err != nil {
		return nil, toStatus(err)
	}
	resp := &cairnv1.ListStepsResponse{Records: make([]*cairnv1.StepRecord, len(recs)), NextPageToken: next}
	for i, r := range recs {
		resp.Records[i] = recordToProto(r)
	}
	return resp, nil
}

// DeleteStep implements cairnv1.CacheServiceServer.
func (s *cacheService) DeleteStep(ctx context.Context, req *cairnv1.DeleteStepRequest) (*cairnv1.DeleteStepResponse, error) {
	key, err := parseDigest("key", req.GetKey(), false)
	if err != nil {
		return nil, toStatus(err)
	}
	if err := cache.ValidNamespace(req.GetNamespace()); err != nil {
		return nil, toStatus(fieldErr("namespace", err))
	}
	if err := auth.Check(ctx, auth.Delete, req.GetNamespace()); err != nil {
		audit(ctx, s.log, auth.Delete, "delete step "+key.String(), req.GetNamespace(), err)
		return nil, toStatus(err)
	}
	err = s.admin.DeleteStepIn(ctx, req.GetNamespace(), key)
	audit(ctx, s.log, auth.Delete, "delete step "+key.String(), req.GetNamespace(), err)
	if err != nil {
		return nil, toStatus(err)
	}
	return &cairnv1.DeleteStepResponse{}, nil
}
