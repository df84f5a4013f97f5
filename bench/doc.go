// Package bench holds cairn's benchmark harness; the Go code lives in its
// subpackages and the scripts next to this file:
//
//   - reuse: the layer-reuse analysis behind `cairn-bench reuse` (registry,
//     file and chunk level, a what-if table of chunk sizes, an SVG plot);
//   - load: the load generator behind `cairn-bench load`;
//   - s3raw: raw S3 PUT and GET timings, the baseline of `cairn-bench s3`;
//   - corpus.sh builds a corpus of real layers (successive releases of a Go
//     project from the module proxy, a Debian base layer);
//   - run.sh runs everything against a real `cairn serve` on the fs backend
//     and on MinIO and writes a Markdown report with the figures.
//
// This package has only the test that runs `run.sh --smoke`, so that the
// script cannot rot; the full run stays out of the test suite.
package bench
