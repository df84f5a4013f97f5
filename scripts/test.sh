#!/usr/bin/env bash
# Runs cairn's whole test suite: formatting, vet, staticcheck, buf lint (the
# dependency rules are a test: internal/layering), the race detector
# over the quick tests, then every Go test at full size (S3 tests against a
# real MinIO this script starts and stops; registry tests with crane, skopeo
# and, as root, BuildKit). Extra arguments go to both
# `go test` runs (for example -run).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

# The race detector needs cgo, and cgo a C compiler: say so before the
# tools are built, not half an hour later.
cc=$(go env CC)
if [ "$(go env CGO_ENABLED)" != 1 ] || ! command -v "${cc%% *}" >/dev/null 2>&1; then
  echo "go test -race needs cgo and a C compiler ($cc), not found here: install one (Debian: apt-get install gcc libc6-dev, as .ci/run does)" >&2
  exit 1
fi

install_buf
install_staticcheck
# The registry clients the e2e tests drive: crane, the OCI conformance
# suite, BuildKit (buildkitd and
# buildctl, built from the module proxy), and from Debian's packages skopeo,
# runc (BuildKit's worker) and busybox-static (a shell for test images).
install_crane
install_oci_conformance
install_buildkit
install_debian_tools
echo "== gofmt"
bad=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$bad" ]; then echo "gofmt wants to change: $bad"; exit 1; fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
staticcheck ./...
echo "== buf lint"
buf lint

trap stop_minio EXIT
start_minio
echo "== go test -race -short"
go test -race -short -timeout 15m "$@" ./...
echo "== go test (full size)"
go test -timeout 25m "$@" ./...
