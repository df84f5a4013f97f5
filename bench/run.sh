#!/usr/bin/env bash
# The reproducible bench run: corpus → reuse analysis → a real `cairn serve`
# on the fs backend and on MinIO → stored bytes against the registry figure,
# push and pull against raw MinIO PUT and GET of the same blobs, the server's
# peak RSS over a push and pull of one big layer, a short load run. Writes a
# Markdown report (machine, commands, figures) and the reuse plot next to it.
#
#   bench/run.sh            # full run: real corpus, 4 GiB layer; ~10 min on 2 cores
#   bench/run.sh --smoke    # seconds: synthetic corpus, 64 MiB layer (run by go test)
#
# Environment: BENCH_OUT (report path; default bench/RESULTS.md, where the
# report replaces the section between the run.sh markers, or
# a temp file with --smoke), BENCH_BIG_LAYER (default 4G), BENCH_LOAD_DURATION
# (default 10s), BENCH_MINIO=0 to skip MinIO, BENCH_REPS (MinIO rounds,
# default 3, medians reported), CAIRN_CORPUS_DIR and the
# CORPUS_* variables of bench/corpus.sh. With CAIRN_TEST_S3_ENDPOINT,
# _ACCESS_KEY and _SECRET_KEY set (scripts/test.sh does), that MinIO is used
# instead of starting one.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
. scripts/tools.sh

SMOKE=0
[ "${1:-}" = --smoke ] && SMOKE=1
WORK=$(mktemp -d)
if [ "$SMOKE" = 1 ]; then
  OUT=${BENCH_OUT:-$WORK/results.md}
  BIG=${BENCH_BIG_LAYER:-64M}
  LOAD_DURATION=${BENCH_LOAD_DURATION:-2s}
else
  OUT=${BENCH_OUT:-bench/RESULTS.md}
  BIG=${BENCH_BIG_LAYER:-4G}
  LOAD_DURATION=${BENCH_LOAD_DURATION:-10s}
fi
MINIO=${BENCH_MINIO:-1}
REPS=${BENCH_REPS:-$([ "$SMOKE" = 1 ] && echo 1 || echo 3)}
SRV_PID=
OWN_MINIO=0

cleanup() {
  [ -n "$SRV_PID" ] && kill "$SRV_PID" 2>/dev/null && wait "$SRV_PID" 2>/dev/null
  [ "$OWN_MINIO" = 1 ] && stop_minio
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { echo "bench: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
div() { awk -v a="$1" -v b="$2" -v f="${3:-%.2f}" 'BEGIN { if (b == 0) print "-"; else printf f, a / b }'; }
mib() { awk -v a="$1" 'BEGIN { printf "%.1f MiB", a / 1048576 }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s == 0) print "-"; else printf "%.1f", b / 1e6 / s }'; }
command -v jq >/dev/null || { [ "$(id -u)" = 0 ] && apt-get install -y -qq jq >/dev/null 2>&1; } || { log "needs jq"; exit 1; }

T0=$(now)
log "building cairn and cairn-bench"
CAIRN=$WORK/cairn BENCH=$WORK/cairn-bench
go build -o "$CAIRN" ./cmd/cairn
go build -o "$BENCH" ./cmd/cairn-bench

# --- corpus
if [ "$SMOKE" = 1 ]; then
  mapfile -t LAYERS < <(CORPUS_SYNTHETIC=1 bench/corpus.sh "$WORK/corpus")
  CORPUS_CMD="CORPUS_SYNTHETIC=1 bench/corpus.sh DIR"
else
  mapfile -t LAYERS < <(bench/corpus.sh)
  CORPUS_CMD="bench/corpus.sh   # ${CORPUS_MODULE:-github.com/prometheus/client_golang} ${CORPUS_VERSIONS:-v1.22.0 v1.23.0 v1.23.1 v1.23.2 v1.24.0}"
fi
[ "${#LAYERS[@]}" -gt 0 ] || { log "empty corpus"; exit 1; }
RAW_FILES_BYTES=$(cat "${LAYERS[@]}" | wc -c)
N_LAYERS=${#LAYERS[@]}
log "corpus: ${#LAYERS[@]} layers, $(mib "$RAW_FILES_BYTES") ($(elapsed "$T0") s so far)"

# --- reuse analysis (local, no server)
t=$(now)
PLOT=${BENCH_PLOT:-$([ "$SMOKE" = 1 ] && echo "${OUT%.md}.svg" || echo bench/reuse-plot.svg)}
case $PLOT in /*) ;; *) PLOT=$ROOT/$PLOT ;; esac
# From the corpus directory, so that the report names the layers by file name.
(cd "$(dirname "${LAYERS[0]}")" && "$BENCH" reuse --json-out "$WORK/reuse.json" --plot "$PLOT" "${LAYERS[@]##*/}") >"$WORK/reuse.txt" 2>/dev/null
REUSE_S=$(elapsed "$t")
REG=$(jq '.total.registry_bytes' "$WORK/reuse.json")
RAW=$(jq '.total.raw_bytes' "$WORK/reuse.json")
PRED=$(jq '[.total.chunks[] | select(.avg_bytes == 262144)][0].stored_bytes // 0' "$WORK/reuse.json")
# The what-if table's verdict: which average chunk size stores least, and
# what cairn's 256 KiB costs against it (in bytes, and saves in objects).
BEST=$(jq -r '.total.chunks | min_by(.stored_bytes) | "\(.avg_bytes) \(.stored_bytes) \(.new_chunks)"' "$WORK/reuse.json")
read -r BEST_AVG BEST_STORED BEST_CHUNKS <<<"$BEST"
PRED_CHUNKS=$(jq '[.total.chunks[] | select(.avg_bytes == 262144)][0].new_chunks // 0' "$WORK/reuse.json")
log "reuse: raw $(mib "$RAW"), registry $(mib "$REG"), cairn predicted $(mib "$PRED") (${REUSE_S} s)"

# --- a server: start_server NAME DATA [serve flags...] sets SRV_ADDR, SRV_PID
start_server() {
  local name=$1 data=$2 port
  shift 2
  port=$(free_port)
  SRV_ADDR=127.0.0.1:$port
  "$CAIRN" serve --listen "$SRV_ADDR" --data "$data" "$@" >"$WORK/$name.log" 2>&1 &
  SRV_PID=$!
  for _ in $(seq 1 150); do
    if "$CAIRN" stat --server "$SRV_ADDR" --timeout 2s >/dev/null 2>&1; then return 0; fi
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.2
  done
  log "cairn serve ($name) did not start:"; cat "$WORK/$name.log" >&2
  return 1
}
stop_server() {
  kill -TERM "$SRV_PID" 2>/dev/null || true
  wait "$SRV_PID" 2>/dev/null || true
  SRV_PID=
}
peak_rss_kib() { awk '/^VmHWM:/ { print $2 }' "/proc/$SRV_PID/status"; }

# push_all NAME: pushes every layer in order, then pulls each back (to
# /dev/null; the client verifies the digest); sets PUSH_S, PULL_S and
# UNIQUE (the server's distinct chunk bytes, uncompressed).
push_all() {
  local t d
  : >"$WORK/$1.digests"
  t=$(now)
  for f in "${LAYERS[@]}"; do
    "$CAIRN" push --server "$SRV_ADDR" --no-progress --json "$f" | jq -r '.digest' >>"$WORK/$1.digests"
  done
  PUSH_S=$(elapsed "$t")
  "$CAIRN" stat --server "$SRV_ADDR" --json >"$WORK/$1.stat.json"
  UNIQUE=$(jq '.unique_bytes' "$WORK/$1.stat.json")
  t=$(now)
  while read -r d; do
    "$CAIRN" pull --server "$SRV_ADDR" --no-progress "$d" -o - >/dev/null
  done <"$WORK/$1.digests"
  PULL_S=$(elapsed "$t")
}

# --- fs backend
log "fs backend: push and pull the corpus"
start_server fs "$WORK/fs"
push_all fs
FS_PUSH_S=$PUSH_S FS_PULL_S=$PULL_S FS_UNIQUE=$UNIQUE
# Stored: the bytes of the backend's objects (chunks, layer manifests, step
# records), as the registry figure counts blobs. The Badger index apart, on
# disk (its files are sparse and preallocated).
FS_STORED=$(find "$WORK/fs/blobs" -type f -printf '%s\n' | awk '{ n += $1 } END { printf "%d", n }')
FS_INDEX=$(($(du -sk "$WORK/fs/index" | cut -f1) * 1024))
FS_RSS=$(peak_rss_kib)
log "fs: stored $(mib "$FS_STORED") (index $(mib "$FS_INDEX")), push ${FS_PUSH_S} s, pull ${FS_PULL_S} s"

# --- load, on the same server
log "load: 4 clients for $LOAD_DURATION"
"$BENCH" load --server "$SRV_ADDR" --clients 4 --duration "$LOAD_DURATION" --layer-size 1M --seed 1 >"$WORK/load.txt"
"$BENCH" load --server "$SRV_ADDR" --clients 4 --duration "$LOAD_DURATION" --mix 1,0,0 --chain 20 --seed 2 >"$WORK/load-chain.txt"
stop_server

# --- MinIO: raw PUT/GET, then cairn on the s3 backend
MINIO_DONE=0
if [ "$MINIO" = 1 ]; then
  if [ -z "${CAIRN_TEST_S3_ENDPOINT:-}" ]; then
    start_minio
    OWN_MINIO=1
  fi
  export CAIRN_S3_ACCESS_KEY=$CAIRN_TEST_S3_ACCESS_KEY CAIRN_S3_SECRET_KEY=$CAIRN_TEST_S3_SECRET_KEY
  export AWS_ACCESS_KEY_ID=$CAIRN_TEST_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$CAIRN_TEST_S3_SECRET_KEY
  # Each round: raw PUT and GET, then a fresh cairn server on a fresh
  # bucket (so that every push stores everything), interleaved so that
  # both see the same machine load; the medians are reported.
  RAW_PUTS=() RAW_GETS=() S3_PUSHES=() S3_PULLS=()
  for round in $(seq 1 "$REPS"); do
    BUCKET=bench-$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')
    log "MinIO round $round/$REPS: raw PUT and GET, then cairn push and pull"
    "$BENCH" s3 --json --s3-insecure --s3-endpoint "$CAIRN_TEST_S3_ENDPOINT" --s3-bucket "$BUCKET-raw" "${LAYERS[@]}" >"$WORK/s3raw.json"
    RAW_PUTS+=("$(jq '.put_seconds * 100 | round / 100' "$WORK/s3raw.json")")
    RAW_GETS+=("$(jq '.get_seconds * 100 | round / 100' "$WORK/s3raw.json")")
    rm -rf "$WORK/s3"
    start_server s3 "$WORK/s3" --s3-endpoint "$CAIRN_TEST_S3_ENDPOINT" --s3-insecure --s3-bucket "$BUCKET"
    push_all s3
    S3_PUSHES+=("$PUSH_S") S3_PULLS+=("$PULL_S")
    S3_RSS=$(peak_rss_kib)
    "$BENCH" s3 --json --du --s3-insecure --s3-endpoint "$CAIRN_TEST_S3_ENDPOINT" --s3-bucket "$BUCKET" >"$WORK/s3du.json"
    S3_STORED=$(jq '.bytes' "$WORK/s3du.json")
    S3_OBJECTS=$(jq '.objects' "$WORK/s3du.json")
    stop_server
  done
  RAW_PUT_S=$(median "${RAW_PUTS[@]}") RAW_GET_S=$(median "${RAW_GETS[@]}")
  S3_PUSH_S=$(median "${S3_PUSHES[@]}") S3_PULL_S=$(median "${S3_PULLS[@]}")
  unset CAIRN_S3_ACCESS_KEY CAIRN_S3_SECRET_KEY AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY
  MINIO_DONE=1
  log "s3: stored $(mib "$S3_STORED"), push ${S3_PUSH_S} s (raw ${RAW_PUT_S}), pull ${S3_PULL_S} s (raw ${RAW_GET_S})"
fi

# --- one big layer: the server's peak RSS over its push and pull
log "big layer: $BIG through a fresh fs server"
start_server big "$WORK/big"
BASE_RSS=$(peak_rss_kib)
t=$(now)
BIG_DIGEST=$("$BENCH" gen "$BIG" --seed 4 | "$CAIRN" push --server "$SRV_ADDR" --no-progress --json - | jq -r '.digest')
BIG_PUSH_S=$(elapsed "$t")
t=$(now)
"$CAIRN" pull --server "$SRV_ADDR" --no-progress "$BIG_DIGEST" -o - >/dev/null
BIG_PULL_S=$(elapsed "$t")
BIG_RSS=$(peak_rss_kib)
BIG_BYTES=$(awk -v s="$BIG" 'BEGIN { n = s + 0; u = substr(s, length(s)); if (u == "K") n *= 1024; if (u == "M") n *= 1048576; if (u == "G") n *= 1073741824; printf "%d", n }')
stop_server
rm -rf "$WORK/big"
log "big: push ${BIG_PUSH_S} s, pull ${BIG_PULL_S} s, server peak RSS $((BIG_RSS / 1024)) MiB"

# What one CLI call costs before any transfer (process start), so the
# per-layer push and pull loops can be read without it.
t=$(now)
for _ in 1 2 3 4 5; do "$CAIRN" version >/dev/null; done
CLI_S=$(awk -v s="$(elapsed "$t")" 'BEGIN { printf "%.3f", s / 5 }')

TOTAL_S=$(elapsed "$T0")

# --- the report
{
  echo "# Bench results: layer reuse, cairn on fs and MinIO, peak RSS"
  echo
  echo "Written by \`bench/run.sh$([ "$SMOKE" = 1 ] && echo " --smoke")\` on $(date -u '+%Y-%m-%d %H:%M UTC'), in ${TOTAL_S} s."
  echo
  echo "## Machine"
  echo
  echo "- CPU: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), $(nproc) cores (shared with other work while this ran: treat times as ±20 %)"
  echo "- memory: $(awk '/^MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo); kernel $(uname -r); $(go version | cut -d' ' -f3-)"
  echo "- cairn $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo
  echo "## Commands"
  echo
  echo '```sh'
  echo "$CORPUS_CMD"
  echo "cairn-bench reuse --json-out reuse.json --plot $(basename "$PLOT") LAYERS...   # the layers in the order below"
  echo "cairn serve --listen ADDR --data DIR [--s3-endpoint E --s3-bucket B]"
  echo "for f in LAYERS; do cairn push --server ADDR --json \$f; done; cairn stat --json; find DIR/blobs -type f   # sizes added up"
  echo "for d in DIGESTS; do cairn pull --server ADDR \$d -o - >/dev/null; done"
  echo "cairn-bench s3 --s3-endpoint E --s3-insecure --s3-bucket B LAYERS...   # raw MinIO PUT, then GET"
  echo "cairn-bench s3 --s3-endpoint E --s3-insecure --s3-bucket B --du   # what cairn stored in its bucket"
  echo "cairn-bench gen $BIG | cairn push -; cairn pull DIGEST -o - >/dev/null   # VmHWM of the server"
  echo "cairn-bench load --server ADDR --clients 4 --duration $LOAD_DURATION --layer-size 1M"
  echo "cairn-bench load --server ADDR --clients 4 --duration $LOAD_DURATION --mix 1,0,0 --chain 20   # 20-step LookupChain calls"
  echo '```'
  echo
  echo "## Corpus (ingest order)"
  echo
  echo "| # | layer | size |"
  echo "| ---: | --- | ---: |"
  i=1
  for f in "${LAYERS[@]}"; do
    echo "| $i | $(basename "$f") | $(mib "$(stat -c %s "$f")") |"
    i=$((i + 1))
  done
  echo
  echo "## Stored bytes"
  echo
  echo "| what | bytes | vs registry |"
  echo "| --- | ---: | ---: |"
  echo "| raw (uncompressed layers) | $(mib "$RAW") | $(div "$RAW" "$REG") |"
  echo "| registry (each distinct blob once, plain layers as their gzip) | $(mib "$REG") | 1.00 |"
  echo "| cairn, predicted by \`cairn-bench reuse\` (256 KiB chunks, zstd) | $(mib "$PRED") | $(div "$PRED" "$REG") |"
  echo "| cairn serve, distinct chunks uncompressed (\`cairn stat\` unique bytes) | $(mib "$FS_UNIQUE") | $(div "$FS_UNIQUE" "$REG") |"
  echo "| **cairn serve, fs backend** (bytes of the blob objects) | **$(mib "$FS_STORED")** | **$(div "$FS_STORED" "$REG")** |"
  if [ "$MINIO_DONE" = 1 ]; then
    echo "| **cairn serve, MinIO backend** (bucket listing: $S3_OBJECTS objects) | **$(mib "$S3_STORED")** | **$(div "$S3_STORED" "$REG")** |"
  fi
  echo "| (the fs server's Badger index, on disk, not counted above) | $(mib "$FS_INDEX") | |"
  echo
  echo "What-if: the least stored is at $((BEST_AVG / 1024)) KiB average chunks, $(mib "$BEST_STORED") in $BEST_CHUNKS chunks;"
  echo "cairn's 256 KiB (chunker.V1) stores $(div "$PRED" "$BEST_STORED")× that, in $(div "$BEST_CHUNKS" "$PRED_CHUNKS" %.1f)× fewer objects."
  echo
  echo "Plot: [$(basename "$PLOT")]($(basename "$PLOT")) (cumulative stored bytes, registry versus cairn)."
  echo
  echo "### Reuse analysis (\`cairn-bench reuse\`, ${REUSE_S} s)"
  echo
  echo '```'
  cat "$WORK/reuse.txt"
  echo '```'
  echo
  echo "## Push and pull of the corpus ($(mib "$RAW_FILES_BYTES"), one layer after the other)"
  echo
  echo "One \`cairn push\` / \`cairn pull\` process per layer ($N_LAYERS each; a process start costs ${CLI_S} s); the raw"
  echo "figures are one process looping over the same files. MB/s are of the layers' raw bytes."
  echo
  echo "| backend | push s | push MB/s | pull s | pull MB/s | server peak RSS |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: |"
  echo "| cairn, fs | $FS_PUSH_S | $(mbps "$RAW_FILES_BYTES" "$FS_PUSH_S") | $FS_PULL_S | $(mbps "$RAW_FILES_BYTES" "$FS_PULL_S") | $((FS_RSS / 1024)) MiB |"
  if [ "$MINIO_DONE" = 1 ]; then
    echo "| cairn, MinIO | $S3_PUSH_S | $(mbps "$RAW_FILES_BYTES" "$S3_PUSH_S") | $S3_PULL_S | $(mbps "$RAW_FILES_BYTES" "$S3_PULL_S") | $((S3_RSS / 1024)) MiB |"
    echo "| raw MinIO PUT / GET (minio-go) | $RAW_PUT_S | $(mbps "$RAW_FILES_BYTES" "$RAW_PUT_S") | $RAW_GET_S | $(mbps "$RAW_FILES_BYTES" "$RAW_GET_S") | – |"
    echo
    echo "cairn on MinIO as a ratio to raw MinIO (time, lower is better): push **$(div "$S3_PUSH_S" "$RAW_PUT_S")×**, pull **$(div "$S3_PULL_S" "$RAW_GET_S")×**."
    echo "MinIO rows: medians of $REPS interleaved rounds, each cairn round on a fresh server and bucket (raw PUT s: ${RAW_PUTS[*]}; GET s: ${RAW_GETS[*]}; cairn push s: ${S3_PUSHES[*]}; pull s: ${S3_PULLS[*]})."
  else
    echo
    echo "MinIO skipped (BENCH_MINIO=0)."
  fi
  echo
  echo "## One big layer: $BIG of pseudo-random bytes (\`cairn-bench gen\`)"
  echo
  echo "| push s | push MB/s | pull s | pull MB/s | server peak RSS (VmHWM) | at start |"
  echo "| ---: | ---: | ---: | ---: | ---: | ---: |"
  echo "| $BIG_PUSH_S | $(mbps "$BIG_BYTES" "$BIG_PUSH_S") | $BIG_PULL_S | $(mbps "$BIG_BYTES" "$BIG_PULL_S") | **$((BIG_RSS / 1024)) MiB** | $((BASE_RSS / 1024)) MiB |"
  echo
  echo "Goal: under 256 MiB: $([ "$BIG_RSS" -lt $((256 * 1024)) ] && echo met || echo '**missed**')."
  echo
  echo "## Load (\`cairn-bench load\`, fs backend, after the corpus)"
  echo
  echo '```'
  cat "$WORK/load.txt"
  echo '```'
  echo
  echo "Lookups only, each a 20-step chain in one \`LookupChain\` call (a whole Dockerfile):"
  echo
  echo '```'
  cat "$WORK/load-chain.txt"
  echo '```'
} >"$OUT.tmp"
# Into a file that has the markers, the report (headings one level down)
# replaces what stands between them; any other file is overwritten.
BEGIN='<!-- bench/run.sh report: begin -->' END='<!-- bench/run.sh report: end -->'
if [ -f "$OUT" ] && grep -qF "$BEGIN" "$OUT"; then
  sed -i 's/^#/##/' "$OUT.tmp"
  awk -v b="$BEGIN" -v e="$END" -v part="$OUT.tmp" '
    $0 == b { print; while ((getline l < part) > 0) print l; skip = 1; next }
    $0 == e { skip = 0 }
    !skip' "$OUT" >"$OUT.new"
  mv "$OUT.new" "$OUT"; rm -f "$OUT.tmp"
else
  mv "$OUT.tmp" "$OUT"
fi
log "report written to $OUT, plot to $PLOT (${TOTAL_S} s)"
