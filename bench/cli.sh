#!/usr/bin/env bash
# The CLI over loopback gRPC against the core in process, on the same file
# in the same run (issue 10's goal: `cairn push` and `cairn pull` at 0.8×
# the in-process figures; a re-push at 0.9× sha256sum). It builds cairn,
# starts `cairn serve` on the fs backend in a temp dir, and prints, for
# each of BENCH_REPS rounds: sha256sum, a push of new data, a re-push, a
# pull to a file (synced, as cairn pull does) and to stdout; then runs
# BenchmarkFile (package cache) on the same file.
#
#   bench/cli.sh FILE       # e.g. a 256 MiB tar; BENCH_REPS=3 by default
set -euo pipefail
FILE=$(realpath "$1")
cd "$(dirname "$0")/.."
REPS=${BENCH_REPS:-3}
WORK=$(mktemp -d)
SRV=
cleanup() { [ -n "$SRV" ] && kill "$SRV" 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
go build -o "$WORK/cairn" ./cmd/cairn
. scripts/tools.sh
PORT=$(free_port)
SIZE=$(stat -c %s "$FILE")
D=sha256:$(sha256sum "$FILE" | cut -d' ' -f1)
secs() {
  local s e
  s=$(date +%s%N)
  "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; return 1; }
  e=$(date +%s%N)
  echo $(((e - s) / 1000000))
}
mbs() { echo $((SIZE * 1000 / $1 / 1000000)); }
echo "file $FILE, $SIZE bytes; $(nproc) cores; $(go version)"
for r in $(seq "$REPS"); do
  rm -rf "$WORK/data" "$WORK/out"
  "$WORK/cairn" serve --data "$WORK/data" --listen "127.0.0.1:$PORT" --log-level warn &
  SRV=$!
  for _ in $(seq 100); do "$WORK/cairn" stat --server "127.0.0.1:$PORT" >/dev/null 2>&1 && break; sleep 0.05; done
  F=(--server "127.0.0.1:$PORT" --no-progress)
  sha=$(secs sha256sum "$FILE")
  push=$(secs "$WORK/cairn" push "${F[@]}" "$FILE")
  repush=$(secs "$WORK/cairn" push "${F[@]}" "$FILE")
  pull=$(secs "$WORK/cairn" pull "${F[@]}" "$D" -o "$WORK/out")
  cmp -s "$FILE" "$WORK/out" || { echo "pulled bytes differ" >&2; exit 1; }
  pullout=$(secs sh -c "\"$WORK/cairn\" pull --server 127.0.0.1:$PORT --no-progress $D -o - > /dev/null")
  echo "round $r: sha256sum $(mbs "$sha") MB/s; cairn push $(mbs "$push") MB/s, re-push $(mbs "$repush") MB/s;" \
    "cairn pull to a file $(mbs "$pull") MB/s, to stdout $(mbs "$pullout") MB/s"
  kill "$SRV"; wait "$SRV" 2>/dev/null || true; SRV=
done
CAIRN_BENCH_FILE=$FILE go test ./cache -run '^$' -bench '^BenchmarkFile$' -benchtime 3x -count "$REPS" | grep '^Benchmark'
