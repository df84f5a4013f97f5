#!/usr/bin/env bash
# Regenerates the Go code for the protobuf API (proto/cairn/v1) with pinned
# tools: buf (version in tools.sh) and the protoc-gen-go and
# protoc-gen-go-grpc plugins below. The generated code is committed; rerun
# this after editing a .proto file, then `buf lint`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/tools.sh

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.5.1

install_buf
install_tool protoc-gen-go "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
install_tool protoc-gen-go-grpc "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"

buf lint
buf generate
bad=$(gofmt -l proto)
if [ -n "$bad" ]; then echo "gofmt wants to change: $bad"; exit 1; fi
echo "generated: $(ls proto/cairn/v1/*.pb.go | tr '\n' ' ')"
