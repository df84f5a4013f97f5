// Package reuse measures how much of a set of container layers is shared,
// at three levels: whole blobs (what a registry stores), files (tar entries
// by content hash) and content-defined chunks (what cairn stores), the last
// for several average chunk sizes so that the chunk size can be chosen by
// measurement.
//
// Inputs are layer tarballs (plain, gzip or zstd), `docker save` tarballs and
// OCI image layouts; [Analyzer.AddPath] tells them apart. Layers are
// analysed in the order they are added, and every figure of a [Layer] is what
// that layer adds to what came before, so the per-layer figures add up to the
// totals and their running sums are the "cumulative stored bytes" curves of
// [WriteSVG].
//
// Everything streams: a layer is read once, decompressed once, and the
// uncompressed bytes are fanned out to one consumer per figure (diff ID,
// registry gzip size, file hashes, one chunker per chunk size). Only metadata
// (a digest and a size per distinct chunk or file) is held in memory.
package reuse
