// Package server is cairn's gRPC adapter: it serves the cache.Cache through
// the cairn.v1 API (proto/cairn/v1), together with grpc.health.v1 and server
// reflection. It only translates: requests are validated at the edge
// (digests, sizes, list lengths), handed to the cache, and the cache's
// errors leave through one mapping to gRPC codes (toStatus in errors.go).
//
// One file per service: cache_service.go (step lookups and records) and
// layer_service.go (layers and chunks). server.go builds the grpc.Server
// with its limits, keepalive policy and interceptors; metrics.go holds the
// RPC metrics.
//
// Data travels in bounded messages: pushes are piped from Recv into
// cache.Push as they arrive (never buffered whole), pulls are cut into
// messages of at most cairnv1.MaxDataMessageBytes from one reused buffer,
// and chunks travel whole (at most cache.MaxChunkSize).
package server
