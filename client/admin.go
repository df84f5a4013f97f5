package client

import (
	"context"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/protobuf/types/known/durationpb"

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
	return c.DeleteStepIn(ctx, "", key)
}

// DeleteStepIn is DeleteStep in namespace ns.
func (c *Client) DeleteStepIn(ctx context.Context, ns string, key digest.Digest) error {
	if err := checkDigest("delete step", key); err != nil {
		return err
	}
	_, err := c.cache.DeleteStep(ctx, &cairnv1.DeleteStepRequest{Key: key.String(), Namespace: ns})
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

// GCOptions qualify a CollectGarbage. Zero durations mean the server's
// defaults; NoGrace and NoPackGrace ask for none at all.
type GCOptions struct {
	DryRun       bool
	Grace        time.Duration
	NoGrace      bool
	PackGrace    time.Duration
	NoPackGrace  bool
	RewriteRatio float64
	// StepMaxAge, if positive, deletes the step records neither recorded
	// nor hit within it.
	StepMaxAge time.Duration
	// UntaggedMaxAge, if positive, is how long a manifest no tag reaches
	// is kept after its last push or pull; zero means the server's
	// (cairn serve --untagged-max-age). NoUntaggedMaxAge keeps them no
	// time at all.
	UntaggedMaxAge   time.Duration
	NoUntaggedMaxAge bool
	// MaxSize, if positive, is the quota in bytes: least recently used
	// layers and tagged manifests are evicted until the store is
	// estimated to be under it. Zero means the server's (cairn serve
	// --max-size), if any.
	MaxSize int64
	// KeepTags is a regular expression (Go RE2) of the tags the quota
	// never evicts, matched against whole tags; empty means the server's
	// (cairn serve --keep-tags).
	KeepTags string
	// CompactAge, if positive, compacts the packs of the ingest tier none
	// of whose chunks was touched within it; zero means the server's
	// (cairn serve --compact-age). NoCompact compacts nothing in this
	// run.
	CompactAge time.Duration
	NoCompact  bool
}

// GCReport is a collection's plan and what it did.
type GCReport struct {
	Packs          int64         `json:"packs"`
	Chunks         int64         `json:"chunks"`
	LiveChunks     int64         `json:"live_chunks"`
	DeadChunks     int64         `json:"dead_chunks"`
	YoungChunks    int64         `json:"young_chunks"`
	DeletePacks    int64         `json:"delete_packs"`
	RewritePacks   int64         `json:"rewrite_packs"`
	OrphanPacks    int64         `json:"orphan_packs"`
	DuePacks       int64         `json:"due_packs"`
	WaitingPacks   int64         `json:"waiting_packs"`
	PlannedBytes   int64         `json:"planned_bytes"`
	DeletedPacks   int64         `json:"deleted_packs"`
	RewrittenPacks int64         `json:"rewritten_packs"`
	MarkedPacks    int64         `json:"marked_packs"`
	DeletedChunks  int64         `json:"deleted_chunks"`
	MovedChunks    int64         `json:"moved_chunks"`
	FreedBytes     int64         `json:"freed_bytes"`
	Skipped        []string      `json:"skipped,omitempty"`
	Duration       time.Duration `json:"duration_ns"`
	StaleSteps     int64         `json:"stale_steps"`
	// The layer-level collection: layers only the registry holds that
	// nothing reaches, manifests no tag reaches past the untagged age,
	// and the layers deleted (zero on a dry run).
	UnreachedLayers   int64 `json:"unreached_layers"`
	UntaggedManifests int64 `json:"untagged_manifests"`
	DeletedLayers     int64 `json:"deleted_layers"`
	// The quota: the packs' bytes when the run began, the roots evicted,
	// and the bytes they alone held, as estimated.
	StoredBytes      int64 `json:"stored_bytes"`
	EvictedLayers    int64 `json:"evicted_layers"`
	EvictedManifests int64 `json:"evicted_manifests"`
	EvictedBytes     int64 `json:"evicted_bytes"`
	// The compaction: packs of the ingest tier planned for it, and (zero
	// on a dry run) the packs compacted, the uncompressed bytes of the
	// chunks they held and the bytes of the packs written.
	CompactPacks   int64 `json:"compact_packs"`
	CompactedPacks int64 `json:"compacted_packs"`
	CompactRead    int64 `json:"compact_read_bytes"`
	CompactWritten int64 `json:"compact_written_bytes"`
}

// GC asks the server to collect garbage (or, with DryRun, only to plan).
// It walks the whole index: call it without a short deadline.
func (c *Client) GC(ctx context.Context, opts GCOptions) (GCReport, error) {
	req := &cairnv1.CollectGarbageRequest{DryRun: opts.DryRun, RewriteRatio: opts.RewriteRatio}
	if opts.NoGrace || opts.Grace > 0 {
		req.Grace = durationpb.New(opts.Grace)
	}
	if opts.NoPackGrace || opts.PackGrace > 0 {
		req.PackGrace = durationpb.New(opts.PackGrace)
	}
	if opts.StepMaxAge > 0 {
		req.StepMaxAge = durationpb.New(opts.StepMaxAge)
	}
	switch {
	case opts.NoUntaggedMaxAge:
		req.UntaggedMaxAge = durationpb.New(0)
	case opts.UntaggedMaxAge > 0:
		req.UntaggedMaxAge = durationpb.New(opts.UntaggedMaxAge)
	}
	switch {
	case opts.NoCompact:
		req.CompactAge = durationpb.New(0)
	case opts.CompactAge > 0:
		req.CompactAge = durationpb.New(opts.CompactAge)
	}
	req.MaxSize, req.KeepTags = opts.MaxSize, opts.KeepTags
	resp, err := c.layers.CollectGarbage(ctx, req)
	if err != nil {
		return GCReport{}, wrapErr("gc", err)
	}
	return GCReport{
		Packs: resp.GetPackCount(), Chunks: resp.GetChunkCount(), LiveChunks: resp.GetLiveChunkCount(),
		DeadChunks: resp.GetDeadChunkCount(), YoungChunks: resp.GetYoungChunkCount(),
		DeletePacks: resp.GetDeletePackCount(), RewritePacks: resp.GetRewritePackCount(),
		OrphanPacks: resp.GetOrphanPackCount(), DuePacks: resp.GetDuePackCount(), WaitingPacks: resp.GetWaitingPackCount(),
		PlannedBytes: resp.GetPlannedBytes(), DeletedPacks: resp.GetDeletedPackCount(),
		RewrittenPacks: resp.GetRewrittenPackCount(), MarkedPacks: resp.GetMarkedPackCount(),
		DeletedChunks: resp.GetDeletedChunkCount(), MovedChunks: resp.GetMovedChunkCount(),
		FreedBytes: resp.GetFreedBytes(), Skipped: resp.GetSkipped(), Duration: resp.GetDuration().AsDuration(),
		StaleSteps:      resp.GetStaleStepCount(),
		UnreachedLayers: resp.GetUnreachedLayerCount(), UntaggedManifests: resp.GetUntaggedManifestCount(),
		DeletedLayers: resp.GetDeletedLayerCount(), StoredBytes: resp.GetStoredBytes(),
		EvictedLayers: resp.GetEvictedLayerCount(), EvictedManifests: resp.GetEvictedManifestCount(),
		EvictedBytes: resp.GetEvictedBytes(),
		CompactPacks: resp.GetCompactPackCount(), CompactedPacks: resp.GetCompactedPackCount(),
		CompactRead: resp.GetCompactReadBytes(), CompactWritten: resp.GetCompactWrittenBytes(),
	}, nil
}
