package server

import (
	"context"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/cairnbuild/cairn/stepkey"
)

// The interfaces below are what the server asks of the core, one per part it
// serves. *cache.Cache implements all of them (a test checks); the server
// uses the cache package only for its value types (LayerInfo, ChunkRef,
// StepRecord, Stats, ImageInfo ...), its limits, the registry's name
// grammar (ValidRepoName, ValidTag: one definition for both fronts) and
// its error sentinels, which toStatus maps to gRPC codes.
//
// Every method is safe for concurrent use, takes the request's context and
// reports failures with the cache's sentinels (cache.ErrNotFound,
// cache.ErrInvalidArgument ...) wrapped with %w, or a context error.

// LayerStore stores whole layers: PushLayer, PullLayer, StatLayer,
// ListLayers and DeleteLayer.
type LayerStore interface {
	// Push reads a layer from r to EOF, stores it and commits it once all
	// of it is stored; a layer that does not match opts (digest, size) is
	// not committed. Pushing a layer that exists already returns its info.
	Push(ctx context.Context, r io.Reader, opts cache.PushOptions) (cache.LayerInfo, error)
	// Open returns a reader of length bytes of layer d from offset
	// (length < 0: to the end), and the layer's info. A missing layer is
	// cache.ErrNotFound, an offset beyond the end cache.ErrOutOfRange; data
	// that fails verification is cache.ErrDataLoss, from Read.
	Open(ctx context.Context, d digest.Digest, offset, length int64) (io.ReadCloser, cache.LayerInfo, error)
	// Stat returns layer d's info; a missing layer is cache.ErrNotFound.
	Stat(ctx context.Context, d digest.Digest) (cache.LayerInfo, error)
	// List returns a page of layers in digest order and the token of the
	// next page ("" after the last). A malformed token is
	// cache.ErrInvalidArgument.
	List(ctx context.Context, pageToken string, pageSize int) ([]cache.LayerInfo, string, error)
	// Delete removes layer d; a missing layer is cache.ErrNotFound.
	Delete(ctx context.Context, d digest.Digest) error
}

// ChunkStore stores chunks that clients cut themselves and the layers made
// of them: FindMissingChunks, PutChunks, CommitLayer, GetLayerChunks and
// GetChunks. Chunk digests are "blake3:<hex>" (package chunkid), checked
// by the server before they reach the store.
type ChunkStore interface {
	// MissingChunks returns those of ids the store lacks, in the order
	// given, each once.
	MissingChunks(ctx context.Context, ids []chunkid.ID) ([]chunkid.ID, error)
	// NewChunkUpload starts an upload that stores the chunks of one
	// PutChunks stream together; its packs are written under ctx. (A
	// concrete type: cache's API has no interface for it, so a fake
	// ChunkStore cannot make one. Tests that need a fake store embed a
	// real cache.)
	NewChunkUpload(ctx context.Context) *cache.ChunkUpload
	// ReadChunk returns chunk id's bytes, verified; a missing chunk is
	// cache.ErrNotFound, one that fails verification cache.ErrDataLoss.
	ReadChunk(ctx context.Context, id chunkid.ID) ([]byte, error)
	// Commit makes layer d from chunks, in order. A chunk not stored is
	// cache.ErrFailedPrecondition, chunks that do not hash to d
	// cache.ErrDigestMismatch. Committing a layer that exists returns its
	// info.
	Commit(ctx context.Context, d digest.Digest, mediaType string, chunks []cache.ChunkRef) (cache.LayerInfo, error)
	// Chunks returns layer d's recipe, in order; a missing layer is
	// cache.ErrNotFound.
	Chunks(ctx context.Context, d digest.Digest) ([]cache.ChunkRef, error)
}

// StepCache is the build cache: LookupStep, LookupChain and RecordStep.
// metrics.Steps decorates one with hit and miss counts.
type StepCache interface {
	// LookupStep returns the record of step s on top of parent; a miss
	// (never recorded, or its layer is gone) is cache.ErrNotFound, a
	// malformed step cache.ErrInvalidArgument.
	LookupStepIn(ctx context.Context, namespaces []string, parent digest.Digest, s stepkey.Step) (cache.StepRecord, error)
	// LookupChain walks steps from base and returns the records of the
	// longest cached prefix: a miss ends the walk and is no error.
	LookupChainIn(ctx context.Context, namespaces []string, base digest.Digest, steps []stepkey.Step) ([]cache.StepRecord, error)
	// RecordStep records that step s on top of parent produced layer (nil:
	// none) and config. A layer not committed is
	// cache.ErrFailedPrecondition.
	RecordStepIn(ctx context.Context, namespace string, parent digest.Digest, s stepkey.Step, layer *cache.LayerRef, config []byte) (cache.StepRecord, error)
}

// StepAdmin manages step records: ListSteps and DeleteStep.
type StepAdmin interface {
	// ListSteps returns a page of step records in key order (only those
	// naming layer, if it is not "") and the next page's token ("" after
	// the last). A malformed token is cache.ErrInvalidArgument.
	ListSteps(ctx context.Context, pageToken string, pageSize int, layer digest.Digest) ([]cache.StepRecord, string, error)
	// DeleteStep removes step key's record; none is cache.ErrNotFound.
	DeleteStepIn(ctx context.Context, namespace string, key digest.Digest) error
}

// StoreVerifier checks stored data against the index: VerifyStore.
type StoreVerifier interface {
	Verify(ctx context.Context, opts cache.VerifyOptions) (cache.VerifyReport, error)
}

// Collector collects garbage: CollectGarbage.
type Collector interface {
	GC(ctx context.Context, opts cache.GCOptions) (cache.GCReport, error)
}

// StatsSource reports what the store holds: GetStats. One call may walk
// the whole index.
type StatsSource interface {
	Stats(ctx context.Context) (cache.Stats, error)
}

// ImageStore is what the OCI registry front (package registry) wrote, as
// the RegistryService shows it: ListImages and DeleteImage. Repository
// names and references reach it checked against the registry's grammar
// (cache.ValidRepoName, cache.ValidTag, or a digest).
type ImageStore interface {
	// Images returns a page of tagged images, one per tag, in repository
	// and tag order, and the token of the next page ("" after the last). A
	// page holds whole repositories: at least one, more while it holds
	// fewer than pageSize images (pageSize <= 0: cache.DefaultPageSize,
	// at most cache.MaxPageSize). A malformed token is
	// cache.ErrInvalidArgument.
	Images(ctx context.Context, pageToken string, pageSize int) ([]cache.ImageInfo, string, error)
	// DeleteManifest removes tag ref of repo or, ref a digest, the
	// manifest and every tag of repo naming it. A tag, manifest or
	// repository it does not hold is cache.ErrNotFound.
	DeleteManifest(ctx context.Context, repo, ref string) error
}

// Store is everything the server serves: *cache.Cache is one. To serve
// parts from different implementations, or to decorate one part, embed
// them in a struct:
//
//	server.New(struct {
//		server.LayerStore
//		server.ChunkStore
//		server.StepCache
//		server.StepAdmin
//		server.StoreVerifier
//		server.Collector
//		server.StatsSource
//		server.ImageStore
//	}{c, c, myStepCache, c, c, c, c, c}, opts)
type Store interface {
	LayerStore
	ChunkStore
	StepCache
	StepAdmin
	StoreVerifier
	Collector
	StatsSource
	ImageStore
}
