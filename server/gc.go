package server

import (
	"context"
	"fmt"
	"regexp"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// GCDefaults are the collection settings CollectGarbage applies where a
// request leaves them unset: the server's configuration, which cmd/cairn
// serve also gives its background collection (--untagged-max-age,
// --max-size, --keep-tags, --compact-age, --compact-pace). The zero value
// is the cache's defaults: a day for untagged manifests, no quota, no
// compaction.
type GCDefaults struct {
	// UntaggedMaxAge, as cache.GCOptions has it: 0 means
	// cache.DefaultUntaggedMaxAge, negative none.
	UntaggedMaxAge time.Duration
	// MaxSize is the quota in bytes; 0 (or negative) means none.
	MaxSize int64
	// KeepTags: tags it matches are never evicted by the quota; nil: none
	// is protected. It is used as given: anchor it (^(?:...)$) to match
	// whole tags.
	KeepTags *regexp.Regexp
	// CompactAge, as cache.GCOptions has it: if positive, the packs of
	// the ingest tier none of whose chunks was touched within it are
	// compacted; 0 (or negative) means no compaction. cmd/cairn serve
	// gives cache.DefaultCompactAge unless told otherwise.
	CompactAge time.Duration
	// CompactPace, as cache.GCOptions has it, is the share of one core a
	// compaction may take; 0 means no rest. A request cannot change it:
	// the server's load is the server's to bound.
	CompactPace float64
}

// maxKeepTags bounds a request's keep_tags pattern, in bytes.
const maxKeepTags = 4096

// CollectGarbage implements cairnv1.LayerServiceServer.
func (s *layerService) CollectGarbage(ctx context.Context, req *cairnv1.CollectGarbageRequest) (*cairnv1.CollectGarbageResponse, error) {
	opts, err := s.gcOptions(req)
	if err != nil {
		return nil, toStatus(err)
	}
	rep, err := s.collector.GC(ctx, opts)
	if err != nil {
		return nil, toStatus(err)
	}
	return &cairnv1.CollectGarbageResponse{
		PackCount:             rep.Packs,
		ChunkCount:            rep.Chunks,
		LiveChunkCount:        rep.LiveChunks,
		DeadChunkCount:        rep.DeadChunks,
		YoungChunkCount:       rep.YoungChunks,
		DeletePackCount:       int64(len(rep.Delete)),
		RewritePackCount:      int64(len(rep.Rewrite)),
		OrphanPackCount:       int64(len(rep.Orphans)),
		DuePackCount:          int64(len(rep.Due)),
		WaitingPackCount:      int64(rep.Waiting),
		PlannedBytes:          rep.PlannedBytes,
		DeletedPackCount:      rep.DeletedPacks,
		RewrittenPackCount:    rep.RewrittenPacks,
		MarkedPackCount:       rep.MarkedPacks,
		DeletedChunkCount:     rep.DeletedChunks,
		MovedChunkCount:       rep.MovedChunks,
		FreedBytes:            rep.FreedBytes,
		Skipped:               rep.Skipped,
		Duration:              durationpb.New(rep.Duration),
		StaleStepCount:        rep.StaleSteps,
		UnreachedLayerCount:   rep.UnreachedLayers,
		UntaggedManifestCount: rep.UntaggedManifests,
		DeletedLayerCount:     rep.DeletedLayers,
		StoredBytes:           rep.StoredBytes,
		EvictedLayerCount:     rep.EvictedLayers,
		EvictedManifestCount:  rep.EvictedManifests,
		EvictedBytes:          rep.EvictedBytes,
		CompactPackCount:      int64(len(rep.Compact)),
		CompactedPackCount:    rep.CompactedPacks,
		CompactReadBytes:      rep.CompactRead,
		CompactWrittenBytes:   rep.CompactWritten,
	}, nil
}

// gcOptions maps a request to cache.GCOptions, the server's GCDefaults
// filling what it leaves unset; a bad field is errInvalidArgument naming it.
func (s *layerService) gcOptions(req *cairnv1.CollectGarbageRequest) (cache.GCOptions, error) {
	opts := cache.GCOptions{DryRun: req.GetDryRun(), RewriteRatio: req.GetRewriteRatio()}
	var err error
	if opts.Grace, err = gcDuration("grace", req.GetGrace()); err != nil {
		return opts, err
	}
	if opts.PackGrace, err = gcDuration("pack_grace", req.GetPackGrace()); err != nil {
		return opts, err
	}
	if a := req.GetStepMaxAge(); a != nil {
		if err := a.CheckValid(); err != nil || a.AsDuration() < 0 {
			return opts, fieldErr("step_max_age", fmt.Errorf("%w: %v, want a duration of 0 or more", errInvalidArgument, a.AsDuration()))
		}
		opts.StepMaxAge = a.AsDuration()
	}
	if r := req.GetRewriteRatio(); r < 0 || r != r {
		return opts, fieldErr("rewrite_ratio", fmt.Errorf("%w: %v, want 0 (the default) or a share above 0", errInvalidArgument, r))
	}
	opts.UntaggedMaxAge = s.gcDefaults.UntaggedMaxAge
	if req.GetUntaggedMaxAge() != nil {
		if opts.UntaggedMaxAge, err = gcDuration("untagged_max_age", req.GetUntaggedMaxAge()); err != nil {
			return opts, err
		}
	}
	switch n := req.GetMaxSize(); {
	case n < 0:
		return opts, fieldErr("max_size", fmt.Errorf("%w: %d, want 0 (the server's quota) or a number of bytes above 0", errInvalidArgument, n))
	case n == 0:
		opts.MaxSize = s.gcDefaults.MaxSize
	default:
		opts.MaxSize = n
	}
	opts.KeepTags = s.gcDefaults.KeepTags
	if k := req.GetKeepTags(); k != "" {
		if opts.KeepTags, err = keepTags(k); err != nil {
			return opts, fieldErr("keep_tags", fmt.Errorf("%w: %w", errInvalidArgument, err))
		}
	}
	opts.CompactAge, opts.CompactPace = s.gcDefaults.CompactAge, s.gcDefaults.CompactPace
	if a := req.GetCompactAge(); a != nil {
		if err := a.CheckValid(); err != nil || a.AsDuration() < 0 {
			return opts, fieldErr("compact_age", fmt.Errorf("%w: %v, want a duration of 0 (no compaction) or more", errInvalidArgument, a.AsDuration()))
		}
		opts.CompactAge = a.AsDuration() // zero: none, as the cache has it
	}
	return opts, nil
}

// keepTags compiles a keep_tags pattern, anchored to match whole tags.
func keepTags(expr string) (*regexp.Regexp, error) {
	if len(expr) > maxKeepTags {
		return nil, fmt.Errorf("a pattern of %d bytes, want at most %d", len(expr), maxKeepTags)
	}
	// Alone first: "a)|(b" would compile once wrapped, meaning something
	// else.
	if _, err := regexp.Compile(expr); err != nil {
		return nil, fmt.Errorf("%q is not a regular expression (Go RE2 syntax): %v", expr, err)
	}
	return regexp.Compile("^(?:" + expr + ")$")
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
