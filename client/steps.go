package client

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// LookupStep asks whether step s ran before on parent ("" is scratch), in
// the default namespace. A miss is an error wrapping ErrMiss; on a hit the
// record's Next is the parent of the following step.
func (c *Client) LookupStep(ctx context.Context, parent digest.Digest, s Step) (StepRecord, error) {
	return c.LookupStepIn(ctx, nil, parent, s)
}

// LookupStepIn is LookupStep searching namespaces in order (the first
// that holds a record answers; none: the default namespace), for example
// a pull request's own namespace, then main's.
func (c *Client) LookupStepIn(ctx context.Context, namespaces []string, parent digest.Digest, s Step) (StepRecord, error) {
	resp, err := c.cache.LookupStep(ctx, &cairnv1.LookupStepRequest{Parent: parent.String(), Step: stepProto(s), Namespaces: namespaces})
	if err != nil {
		return StepRecord{}, wrapErr("lookup", err)
	}
	if !resp.GetHit() {
		return StepRecord{}, &Error{Op: "lookup", Message: fmt.Sprintf("no cached step %s", resp.GetKey()), kind: ErrMiss}
	}
	return stepRecord(resp.GetRecord()), nil
}

// LookupChain walks steps from base ("" is scratch) and returns the records
// of the longest cached prefix, in one round trip: len(result) is the number
// of steps that hit, and a miss is not an error. The first step to run is
// steps[len(result)], on the parent result[len(result)-1].Next (base if
// nothing hit).
func (c *Client) LookupChain(ctx context.Context, base digest.Digest, steps []Step) ([]StepRecord, error) {
	return c.LookupChainIn(ctx, nil, base, steps)
}

// LookupChainIn is LookupChain searching namespaces in order for each
// step (see LookupStepIn).
func (c *Client) LookupChainIn(ctx context.Context, namespaces []string, base digest.Digest, steps []Step) ([]StepRecord, error) {
	if len(steps) > cairnv1.MaxChainSteps {
		return nil, &Error{Op: "lookup chain", Message: fmt.Sprintf("%d steps, the most one lookup takes is %d", len(steps), cairnv1.MaxChainSteps), kind: ErrInvalidArgument}
	}
	req := &cairnv1.LookupChainRequest{Base: base.String(), Steps: make([]*cairnv1.Step, len(steps)), Namespaces: namespaces}
	for i, s := range steps {
		req.Steps[i] = stepProto(s)
	}
	resp, err := c.cache.LookupChain(ctx, req)
	if err != nil {
		return nil, wrapErr("lookup chain", err)
	}
	out := make([]StepRecord, 0, len(resp.GetHits()))
	for _, r := range resp.GetHits() {
		out = append(out, stepRecord(r))
	}
	return out, nil
}

// RecordStep records that step s ran on parent and made layer (nil: no
// layer). The layer must be committed already (else ErrFailedPrecondition);
// its size and media type default to the stored layer's. config is an
// opaque fragment returned on hits, at most 64 KiB. It writes to the
// default namespace.
func (c *Client) RecordStep(ctx context.Context, parent digest.Digest, s Step, layer *LayerRef, config []byte) (StepRecord, error) {
	return c.RecordStepIn(ctx, "", parent, s, layer, config)
}

// RecordStepIn is RecordStep writing to namespace ns. Records are
// immutable: the same layer again returns the record, another one fails
// with ErrDiverged.
func (c *Client) RecordStepIn(ctx context.Context, ns string, parent digest.Digest, s Step, layer *LayerRef, config []byte) (StepRecord, error) {
	req := &cairnv1.RecordStepRequest{Parent: parent.String(), Step: stepProto(s), Config: config, Namespace: ns}
	if layer != nil {
		req.Layer = &cairnv1.LayerDescriptor{
			Digest:    layer.Digest.String(),
			DiffId:    layer.DiffID.String(),
			SizeBytes: layer.Size,
			MediaType: layer.MediaType,
		}
	}
	resp, err := c.cache.RecordStep(ctx, req)
	if err != nil {
		return StepRecord{}, wrapErr("record", err)
	}
	return stepRecord(resp.GetRecord()), nil
}

func stepProto(s Step) *cairnv1.Step {
	return &cairnv1.Step{
		Instruction:  s.Instruction,
		InputsDigest: s.InputsDigest.String(),
		Platform:     s.Platform,
		BuildArgs:    s.BuildArgs,
	}
}

func stepRecord(r *cairnv1.StepRecord) StepRecord {
	s := r.GetStep()
	rec := StepRecord{
		Key:    digest.Digest(r.GetKey()),
		Parent: digest.Digest(r.GetParent()),
		Step: Step{
			Instruction:  s.GetInstruction(),
			InputsDigest: digest.Digest(s.GetInputsDigest()),
			Platform:     s.GetPlatform(),
			BuildArgs:    s.GetBuildArgs(),
		},
		Config:      r.GetConfig(),
		Next:        digest.Digest(r.GetNextParent()),
		Hits:        r.GetHitCount(),
		Namespace:   r.GetNamespace(),
		Divergences: r.GetDivergenceCount(),
	}
	if l := r.GetLayer(); l != nil {
		rec.Layer = &LayerRef{
			Digest:    digest.Digest(l.GetDigest()),
			DiffID:    digest.Digest(l.GetDiffId()),
			Size:      l.GetSizeBytes(),
			MediaType: l.GetMediaType(),
		}
	}
	if t := r.GetCreateTime(); t != nil {
		rec.Created = t.AsTime()
	}
	if t := r.GetLastHitTime(); t != nil {
		rec.LastHit = t.AsTime()
	}
	if t := r.GetLastDivergenceTime(); t != nil {
		rec.LastDivergence = t.AsTime()
	}
	return rec
}
