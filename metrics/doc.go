// Package metrics holds cairn's Prometheus instrumentation that is not tied
// to the gRPC layer: a backend.Store decorator that counts and times every
// request the blob store serves (what S3 bills and throttles by), a step
// cache decorator that counts hits and misses (Steps, the same for every
// front), and a collector that reports what the cache holds (layers,
// chunks, steps, logical versus stored bytes).
//
// Everything registers with a prometheus.Registerer the caller passes in;
// nothing touches the global registry. Labels are low-cardinality: operation
// names and outcomes, never a key or a digest.
//
// The gRPC metrics (requests by method and code, bytes in and out) live
// with the server, in package server.
package metrics
