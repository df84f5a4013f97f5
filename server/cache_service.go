package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/cairnbuild/cairn/stepkey"
)

// cacheService implements cairnv1.CacheService over a StepCache. It counts
// nothing itself: New decorates the StepCache with the hit and miss
// counters (metrics.Steps).
type cacheService struct {
	cairnv1.UnimplementedCacheServiceServer
	steps StepCache
	admin StepAdmin
	log   *slog.Logger // audit lines of writes and deletes (nil: none)
}

// LookupStep implements cairnv1.CacheServiceServer.
func (s *cacheService) LookupStep(ctx context.Context, req *cairnv1.LookupStepRequest) (*cairnv1.LookupStepResponse, error) {
	parent, err := parseDigest("parent", req.GetParent(), true)
	if err != nil {
		return nil, toStatus(err)
	}
	step, err := stepFromProto("step", req.GetStep())
	if err != nil {
		return nil, toStatus(err)
	}
	nss, err := namespacesFromProto(req.GetNamespaces())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := checkNamespaces(ctx, auth.Read, nss); err != nil {
		return nil, toStatus(err)
	}
	rec, err := s.steps.LookupStepIn(ctx, nss, parent, step)
	if errors.Is(err, cache.ErrNotFound) {
		// A miss carries the step's key, derived once by the store.
		key := rec.Key
		if key == "" { // a store that does not say it
			if key, err = stepkey.Key(parent, step); err != nil {
				return nil, toStatus(err)
			}
		}
		return &cairnv1.LookupStepResponse{Hit: false, Key: key.String()}, nil
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &cairnv1.LookupStepResponse{Hit: true, Record: recordToProto(rec), Key: rec.Key.String()}, nil
}

// LookupChain implements cairnv1.CacheServiceServer.
func (s *cacheService) LookupChain(ctx context.Context, req *cairnv1.LookupChainRequest) (*cairnv1.LookupChainResponse, error) {
	base, err := parseDigest("base", req.GetBase(), true)
	if err != nil {
		return nil, toStatus(err)
	}
	if n := len(req.GetSteps()); n > cairnv1.MaxChainSteps {
		return nil, toStatus(fieldErr("steps", fmt.Errorf("%w: %d steps, at most %d per call", errTooMany, n, cairnv1.MaxChainSteps)))
	}
	steps := make([]stepkey.Step, len(req.GetSteps()))
	for i, ps := range req.GetSteps() {
		if steps[i], err = stepFromProto(fmt.Sprintf("steps[%d]", i), ps); err != nil {
			return nil, toStatus(err)
		}
	}
	resp := &cairnv1.LookupChainResponse{NextParent: base.String()}
	if len(steps) == 0 {
		return resp, nil
	}
	nss, err := namespacesFromProto(req.GetNamespaces())
	if err != nil {
		return nil, toStatus(err)
	}
	if err := checkNamespaces(ctx, auth.Read, nss); err != nil {
		return nil, toStatus(err)
	}
	recs, err := s.steps.LookupChainIn(ctx, nss, base, steps)
	if err != nil {
		return nil, toStatus(err)
	}
	resp.Hits = make([]*cairnv1.StepRecord, len(recs))
	for i, r := range recs {
		resp.Hits[i] = recordToProto(r)
	}
	if len(recs) > 0 {
		resp.NextParent = recs[len(recs)-1].Next.String()
	}
	return resp, nil
}

// RecordStep implements cairnv1.CacheServiceServer.
func (s *cacheService) RecordStep(ctx context.Context, req *cairnv1.RecordStepRequest) (*cairnv1.RecordStepResponse, error) {
	parent, err := parseDigest("parent", req.GetParent(), true)
	if err != nil {
		return nil, toStatus(err)
	}
	step, err := stepFromProto("step", req.GetStep())
	if err != nil {
		return nil, toStatus(err)
	}
	var layer *cache.LayerRef
	if l := req.GetLayer(); l != nil {
		if layer, err = layerRefFromProto("layer", l); err != nil {
			return nil, toStatus(err)
		}
	}
	if n := len(req.GetConfig()); n > cache.MaxConfigSize {
		return nil, toStatus(fieldErr("config", fmt.Errorf("%w: %d bytes, at most %d", errInvalidArgument, n, cache.MaxConfigSize)))
	}
	if err := cache.ValidNamespace(req.GetNamespace()); err != nil {
		return nil, toStatus(fieldErr("namespace", err))
	}
	key, _ := stepkey.Key(parent, step) // for the audit line; the store validates
	what := "record step " + key.String()
	if err := auth.Check(ctx, auth.Write, req.GetNamespace()); err != nil {
		audit(ctx, s.log, auth.Write, what, req.GetNamespace(), err)
		return nil, toStatus(err)
	}
	rec, err := s.steps.RecordStepIn(ctx, req.GetNamespace(), parent, step, layer, req.GetConfig())
	audit(ctx, s.log, auth.Write, what, req.GetNamespace(), err)
	if err != nil {
		return nil, toStatus(err)
	}
	return &cairnv1.RecordStepResponse{Record: recordToProto(rec)}, nil
}

// stepFromProto converts and validates the digests of a step; the cache
// validates the rest (instruction, platform, build args).
func stepFromProto(field string, ps *cairnv1.Step) (stepkey.Step, error) {
	if ps == nil {
		return stepkey.Step{}, fieldErr(field, fmt.Errorf("%w: required", errInvalidArgument))
	}
	inputs, err := parseDigest(field+".inputs_digest", ps.GetInputsDigest(), true)
	if err != nil {
		return stepkey.Step{}, err
	}
	return stepkey.Step{
		Instruction:  ps.GetInstruction(),
		InputsDigest: inputs,
		Platform:     ps.GetPlatform(),
		BuildArgs:    ps.GetBuildArgs(),
	}, nil
}

func layerRefFromProto(field string, l *cairnv1.LayerDescriptor) (*cache.LayerRef, error) {
	d, err := parseDigest(field+".digest", l.GetDigest(), false)
	if err != nil {
		return nil, err
	}
	diffID, err := parseDigest(field+".diff_id", l.GetDiffId(), true)
	if err != nil {
		return nil, err
	}
	if l.GetSizeBytes() < 0 {
		return nil, fieldErr(field+".size_bytes", fmt.Errorf("%w: negative size %d", errInvalidArgument, l.GetSizeBytes()))
	}
	if err := checkMediaType(field+".media_type", l.GetMediaType()); err != nil {
		return nil, err
	}
	return &cache.LayerRef{Digest: d, DiffID: diffID, Size: l.GetSizeBytes(), MediaType: l.GetMediaType()}, nil
}

func recordToProto(r cache.StepRecord) *cairnv1.StepRecord {
	p := &cairnv1.StepRecord{
		Key:    r.Key.String(),
		Parent: r.Parent.String(),
		Step: &cairnv1.Step{
			Instruction:  r.Step.Instruction,
			InputsDigest: r.Step.InputsDigest.String(),
			Platform:     r.Step.Platform,
			BuildArgs:    r.Step.BuildArgs,
		},
		Config:             r.Config,
		CreateTime:         timestamp(r.Created),
		HitCount:           r.Hits,
		LastHitTime:        timestamp(r.LastHit),
		NextParent:         r.Next.String(),
		Namespace:          r.Namespace,
		DivergenceCount:    r.Divergences,
		LastDivergenceTime: timestamp(r.LastDivergence),
	}
	if r.Layer != nil {
		diffID := r.Layer.DiffID
		if diffID == "" {
			diffID = r.Layer.Digest
		}
		p.Layer = &cairnv1.LayerDescriptor{
			Digest:    r.Layer.Digest.String(),
			DiffId:    diffID.String(),
			SizeBytes: r.Layer.Size,
			MediaType: r.Layer.MediaType,
		}
	}
	return p
}

// timestamp converts t, leaving the zero time unset.
func timestamp(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}

// namespacesFromProto checks a lookup's namespaces: at most
// cache.MaxNamespaces, each valid; none means the default namespace.
func namespacesFromProto(nss []string) ([]string, error) {
	if len(nss) > cache.MaxNamespaces {
		return nil, fieldErr("namespaces", fmt.Errorf("%w: %d namespaces, at most %d", errInvalidArgument, len(nss), cache.MaxNamespaces))
	}
	for i, ns := range nss {
		if err := cache.ValidNamespace(ns); err != nil {
			return nil, fieldErr(fmt.Sprintf("namespaces[%d]", i), err)
		}
	}
	return nss, nil
}
