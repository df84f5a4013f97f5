package client

import (
	"time"

	"github.com/opencontainers/go-digest"
)

// LayerInfo describes a layer stored on the server.
type LayerInfo struct {
	Digest     digest.Digest `json:"digest"`
	Size       int64         `json:"size"`        // bytes of the layer as pushed
	StoredSize int64         `json:"stored_size"` // compressed bytes of its chunks (shared chunks counted in full)
	MediaType  string        `json:"media_type"`
	Chunks     int           `json:"chunks"`
	Created    time.Time     `json:"created,omitzero"`
	Accessed   time.Time     `json:"accessed,omitzero"`
	// DamagedChunks counts the layer's chunks the server found bad and
	// quarantined: the layer cannot be pulled whole until a push supplies
	// them again (Push does, since the server then reports the layer
	// absent).
	DamagedChunks int `json:"damaged_chunks,omitempty"`
}

// PushResult is what Push did.
type PushResult struct {
	LayerInfo
	// ChunksTotal is the number of chunks in the layer's recipe.
	ChunksTotal int `json:"chunks_total"`
	// ChunksSent and BytesSent count the chunks the server lacked and
	// that crossed the wire (uncompressed chunk bytes, without framing).
	ChunksSent int   `json:"chunks_sent"`
	BytesSent  int64 `json:"bytes_sent"`
}

// PullResult is what Pull did.
type PullResult struct {
	Digest digest.Digest `json:"digest"`
	// BytesWritten is the number of bytes written to the caller's writer.
	BytesWritten int64 `json:"bytes_written"`
	// BytesFetched counts the layer bytes that crossed the wire: with a
	// chunk cache directory only the chunks it lacked, without one the
	// range read.
	BytesFetched int64 `json:"bytes_fetched"`
	// ChunksFetched and ChunksCached count chunks with a chunk cache
	// directory: fetched from the server versus read from the directory.
	ChunksFetched int `json:"chunks_fetched"`
	ChunksCached  int `json:"chunks_cached"`
}

// Step is one build step as the builder sees it. The server normalizes it
// (keyword case, whitespace, build-arg order) before computing its key.
type Step struct {
	// Instruction is the Dockerfile instruction with its arguments, e.g.
	// "RUN apt-get update".
	Instruction string `json:"instruction"`
	// InputsDigest is, for COPY and ADD, the builder's digest of the
	// copied files' content and metadata; "" otherwise.
	InputsDigest digest.Digest `json:"inputs_digest,omitempty"`
	// Platform is "os/arch[/variant]"; "" means unspecified.
	Platform string `json:"platform,omitempty"`
	// BuildArgs are the "KEY=VALUE" build args the step sees.
	BuildArgs []string `json:"build_args,omitempty"`
}

// LayerRef is the layer a step produced.
type LayerRef struct {
	Digest    digest.Digest `json:"digest"`
	DiffID    digest.Digest `json:"diff_id,omitempty"` // "" means the same as Digest (uncompressed layer)
	Size      int64         `json:"size"`
	MediaType string        `json:"media_type,omitempty"`
}

// StepRecord is a cached step.
type StepRecord struct {
	Key    digest.Digest `json:"key"`
	Parent digest.Digest `json:"parent,omitempty"` // "" is scratch
	Step   Step          `json:"step"`             // normalized by the server
	Layer  *LayerRef     `json:"layer,omitempty"`  // nil: the step makes no layer
	Config []byte        `json:"config,omitempty"`
	// Next is the parent to use for the following step.
	Next    digest.Digest `json:"next"`
	Created time.Time     `json:"created,omitzero"`
	Hits    uint64        `json:"hits"`
	LastHit time.Time     `json:"last_hit,omitzero"`
	// Namespace holds the record ("" is the default one).
	Namespace string `json:"namespace,omitempty"`
	// Divergences counts records refused for the same step and namespace
	// because they named another layer.
	Divergences    uint64    `json:"divergences,omitempty"`
	LastDivergence time.Time `json:"last_divergence,omitzero"`
}
