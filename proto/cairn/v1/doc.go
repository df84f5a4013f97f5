// Package cairnv1 is cairn's gRPC API, version 1: the CacheService (step
// lookups and records), the LayerService (chunked, deduplicated layer
// blobs) and the RegistryService (the images the OCI registry front holds,
// listed and deleted). The *.pb.go files are generated from the .proto
// files next to them by scripts/gen.sh and committed; errors.go and this
// file are written by hand and hold the error reasons and limits clients
// need.
package cairnv1
