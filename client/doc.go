// Package client is the Go client of a cairn server, for builders and for
// the cairn CLI.
//
// A Client wraps one gRPC connection and is safe for concurrent use. Its
// methods take the caller's context first and return errors that wrap one
// of the sentinels in errors.go (ErrNotFound, ErrMiss, ErrInvalidArgument,
// ...), never raw gRPC codes.
//
// Push chunks a layer here, with the server's stored chunking format
// (chunker.V1) and chunk hash (BLAKE3 of the uncompressed chunk, see
// ChunkDigest), asks the server which chunks it lacks and uploads only
// those, then commits the layer's recipe; the layer digest is computed
// while reading. Memory stays bounded by PushOptions.WindowBytes, whatever
// the layer's size. Pull streams a layer (or a range) back; with a local
// chunk cache directory it fetches only the chunks the directory lacks.
// LookupStep, LookupChain and RecordStep are the build cache. Images and
// DeleteImage show and prune what the server's OCI registry front holds.
//
// The package depends on the API (proto/cairn/v1) and the chunker only, not
// on the server's storage, so builders can import it cheaply.
package client
