// Package server is cairn's gRPC adapter: it serves a store through the
// cairn.v1 API (proto/cairn/v1), together with grpc.health.v1 and server
// reflection. It only translates: requests are validated at the edge
// (digests, sizes, list lengths), handed to the store, and the store's
// errors leave through one mapping to gRPC codes (toStatus in errors.go).
//
// The server declares what it needs of the store in store.go, one small
// interface per part (LayerStore, ChunkStore, StepCache, StatsSource,
// ImageStore; Store is all five), and takes no *cache.Cache: the cache implements them, and
// tests can put fakes or decorators in front of any one part. Step hits and
// misses are counted by a decorator around the StepCache (metrics.Steps),
// not by the handlers.
//
// One file per service: cache_service.go (step lookups and records),
// layer_service.go (layers, chunks and stats) and registry_service.go (the
// registry front's images, listed and deleted). server.go builds the
// grpc.Server with its limits, keepalive policy and interceptors;
// metrics.go holds the RPC metrics.
//
// Data-carrying calls (pushes, pulls, chunk streams, commits) each hold a
// slot of a transfer.Limiter while they run, one client (peer IP address)
// at most a share of them; a stream whose client stops sending
// (StreamIdleTimeout) or reading (SendIdleTimeout) is ended, which frees
// its slot, and logged as a stalled client.
//
// Data travels in bounded messages: pushes are piped from Recv into
// cache.Push as they arrive (never buffered whole), pulls are cut into
// messages of at most cairnv1.MaxDataMessageBytes from one reused buffer,
// and chunks travel whole (at most cache.MaxChunkSize).
package server
