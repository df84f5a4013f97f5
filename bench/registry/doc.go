// Package registry benchmarks cairn's OCI Distribution (registry) API
// against the reference registry, distribution v3.1.2, on the same machine
// and in the same run. It has no code of its own outside its test:
//
//	CAIRN_BENCH_REGISTRY=1 go test ./bench/registry -run TestRegistryVsDistribution -count=1 -v -timeout 60m
//
// (-count=1: go test would otherwise replay a cached result.) Without
// CAIRN_BENCH_REGISTRY the test skips, so `go test ./...` never runs
// it. With it, the test builds `cairn` from this module, finds
// distribution's `registry` binary on PATH or in $(go env GOPATH)/bin (and
// fails with the install command when it is missing:
// `go install github.com/distribution/distribution/v3/cmd/registry@v3.1.2`),
// and measures, through go-containerregistry's pkg/v1/remote, the way
// crane and ko push and pull:
//
//   - one layer made of real files, the first 512 MiB of a tar of
//     $(go env GOROOT) then $(go env GOMODCACHE) in walk (sorted) order,
//     written once and kept in $CAIRN_BENCH_REGISTRY_DIR (default
//     $TMPDIR/cairn-bench-registry), pushed as it is (media type
//     application/vnd.oci.image.layer.v1.tar) and gzipped the way
//     tarball.LayerFromOpener gzips (compress/gzip at level 1,
//     gzip.BestSpeed), which is done once into a file so that the push
//     times the server and not the client's compressor;
//   - push: remote.Write of mutate.AppendLayers(empty.Image, layer) (OCI
//     media types) to a new repository of a server started on a fresh
//     data directory, so that nothing is already there;
//   - pull: remote.Image, then every layer's Compressed() read to the end
//     (go-containerregistry checks its digest on the way);
//   - the same layer again to another repository, as a plain push (the
//     client uploads it whole again, the server may deduplicate what it
//     stores) and as a cross-repository mount (remote.MountableLayer, one
//     POST ?mount=&from=), and a third time to the first repository (the
//     client's HEAD finds it and sends nothing);
//   - the bytes each server holds on disk (allocated blocks, as du counts)
//     after the first push and after it stopped, its CPU time per push and
//     pull (from /proc, Linux only), and its peak RSS.
//
// The servers alternate (cairn, distribution, cairn, ...) for several
// rounds, each on 127.0.0.1 only, and the test reports medians and the
// cairn/distribution ratio of each figure in a Markdown table. Both servers
// log at warn; distribution runs with its OpenTelemetry trace export off
// (OTEL_TRACES_EXPORTER=none, as its docs advise when no collector runs)
// and the in-memory blob-descriptor cache of its shipped config.
//
// Knobs: CAIRN_BENCH_REGISTRY_ROUNDS (default 3), CAIRN_BENCH_REGISTRY_SIZE
// (default 512MiB; a small size makes a quick smoke run),
// CAIRN_BENCH_REGISTRY_DIR (where the layer files are kept between runs),
// CAIRN_BENCH_REGISTRY_KEEP=1 (keep the servers' data and logs, and print
// where), CAIRN_BENCH_REGISTRY_CAIRN=PATH (a cairn binary to run instead of
// building one, e.g. to profile it with perf, which needs the binary after
// the run).
package registry
