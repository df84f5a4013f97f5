#!/usr/bin/env bash
# BuildKit against cairn's registry and against the reference registry
# (CNCF distribution v3.1.2), in one run (bench/buildkit/README.md):
#
#   (a) five consecutive releases of a real Go module, each built with
#       --export-cache type=registry,...,mode=max,compression=uncompressed
#       into the same cache tag and pushed as an uncompressed image: bytes on
#       disk per registry after each release, and the ratio;
#   (b) a rebuild of the last release with --import-cache after
#       `buildctl prune --all` (every step must be CACHED): wall time per
#       registry, the median of BENCH_REPS runs, the registries alternating.
#
#   bench/buildkit/run.sh        # 9–15 min on 2 cores; needs root (buildkitd)
#
# Environment: BENCH_MODULE (default github.com/spf13/cobra), BENCH_VERSIONS
# (default "v1.9.0 v1.9.1 v1.10.0 v1.10.1 v1.10.2", its five latest releases,
# in order), BENCH_REPS (rebuilds per registry, default 3), BENCH_KEEP=1 keeps
# the work directory (registries' data, every build log, buildkitd and cairn
# logs) and prints where it is, BUILDKITD_LOG_LEVEL (default debug: the
# buildkitd log then holds every registry request BuildKit made and the
# status it got, which the report counts). The report (Markdown) goes to
# stdout, progress to stderr.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/tools.sh

MODULE=${BENCH_MODULE:-github.com/spf13/cobra}
read -r -a VERSIONS <<<"${BENCH_VERSIONS:-v1.9.0 v1.9.1 v1.10.0 v1.10.1 v1.10.2}"
REPS=${BENCH_REPS:-3}
KEEP=${BENCH_KEEP:-0}
export BUILDKITD_LOG_LEVEL=${BUILDKITD_LOG_LEVEL:-debug}
[ "$(id -u)" -eq 0 ] || { echo "run.sh: needs root (buildkitd with runc)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/cairn-bkbench.XXXXXX)
CAIRN_PID=
BK_LOGS=() # buildkitd logs, copied out before stop_buildkitd removes them

cleanup() {
  local rc=$?
  stop_buildkitd
  stop_distribution
  if [ -n "$CAIRN_PID" ]; then
    kill "$CAIRN_PID" 2>/dev/null || true
    wait "$CAIRN_PID" 2>/dev/null || true
    CAIRN_PID=
  fi
  if [ "$KEEP" = 1 ] || [ "$rc" -ne 0 ]; then
    echo "bench: work directory kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT

log() { echo "bench: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "-"; else printf "%.3f", a / b }'; }
mb() { awk -v a="$1" 'BEGIN { printf "%.1f", a / 1e6 }'; }
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
dub() { du -sb "$1" | cut -f1; }

install_crane
install_distribution
install_buildkit
install_debian_tools
T0=$(now)

# --- the project: each release's source from the module proxy -----------
log "downloading $MODULE ${VERSIONS[*]}"
declare -A SRC
for v in "${VERSIONS[@]}"; do
  SRC[$v]=$(cd / && GOWORK=off GOFLAGS='' go mod download -json "$MODULE@$v" | jq -r .Dir)
  [ -f "${SRC[$v]}/go.mod" ] || { log "no go.mod in ${SRC[$v]}"; exit 1; }
done
# A CI image build of the library: dependencies first (their own layer,
# cached while go.mod and go.sum stay the same), then the source, then a
# build that fills GOCACHE (the build-cache layer) and makes the test binary
# the image ships (cobra has no command of its own). The tests are not run:
# some fail as root. No go vet: it would double the build time here.
cat >"$WORK/Dockerfile" <<'EOF'
ARG BASE
FROM ${BASE} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN go build ./... && go test -c -o /out/app.test .

FROM scratch
COPY --from=build /out/app.test /app.test
EOF

# fresh_context V DIR: the release's tree copied out of the module cache
# anew (new mtimes, writable, as a CI checkout is) plus the Dockerfile.
fresh_context() {
  rm -rf "$2"
  cp -r "${SRC[$1]}" "$2"
  chmod -R u+w "$2"
  cp "$WORK/Dockerfile" "$2/Dockerfile"
}

# --- the base image: busybox + the Go toolchain + CA certificates ----------
GOROOT_DIR=$(go env GOROOT)
GOPROXY_HOST=$(go env GOPROXY)
GOVERSION=$(go env GOVERSION)
log "making the toolchain layer from $GOROOT_DIR ($GOVERSION)"
mkdir -p "$WORK/gobase/usr/local" "$WORK/gobase/etc/ssl/certs"
cp -a "$GOROOT_DIR" "$WORK/gobase/usr/local/go"
cp /etc/ssl/certs/ca-certificates.crt "$WORK/gobase/etc/ssl/certs/"
tar -C "$WORK/gobase" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -cf "$WORK/go.tar" .
rm -rf "$WORK/gobase"

push_golang_base() { # REGISTRY
  push_busybox_base "$1/base/busybox:1"
  crane append -b "$1/base/busybox:1" -f "$WORK/go.tar" -t "$1/base/golang:1" >/dev/null
  crane mutate "$1/base/golang:1" \
    -e PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    -e GOROOT=/usr/local/go -e GOPATH=/go -e GOCACHE=/tmp/gocache -e GOTOOLCHAIN=local \
    -e CGO_ENABLED=0 -e GOFLAGS=-buildvcs=false -e "GOPROXY=$GOPROXY_HOST" \
    -t "$1/base/golang:1" >/dev/null
}

# --- the registries ------------------------------------------------------
log "building cairn"
go build -o "$WORK/cairn" ./cmd/cairn
start_cairn() {
  local ports
  for _ in 1 2 3; do
    ports=$(free_port 2)
    CAIRN_GRPC=127.0.0.1:$(echo "$ports" | sed -n 1p)
    CAIRN_ADDR=127.0.0.1:$(echo "$ports" | sed -n 2p)
    "$WORK/cairn" serve --data "$WORK/cairn-data" --listen "$CAIRN_GRPC" \
      --registry-listen "$CAIRN_ADDR" --metrics-listen "" >>"$WORK/cairn.log" 2>&1 &
    CAIRN_PID=$!
    for _ in $(seq 1 100); do
      if curl -fsS "http://$CAIRN_ADDR/v2/" >/dev/null 2>&1; then
        log "cairn ready on $CAIRN_ADDR, gRPC $CAIRN_GRPC (pid $CAIRN_PID)"
        return 0
      fi
      kill -0 "$CAIRN_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill "$CAIRN_PID" 2>/dev/null || true
    wait "$CAIRN_PID" 2>/dev/null || true
    CAIRN_PID=
  done
  log "cairn did not start:"; cat "$WORK/cairn.log" >&2
  return 1
}
start_cairn
CAIRN_ADDRS=$CAIRN_ADDR
start_distribution "$WORK/distribution-data"
DIST_DATA=$WORK/distribution-data
declare -A ADDR=([cairn]=$CAIRN_ADDR [distribution]=$DISTRIBUTION_ADDR)
REGS=(cairn distribution)

stop_cairn() {
  kill "$CAIRN_PID" 2>/dev/null || true # SIGTERM: a clean shutdown
  wait "$CAIRN_PID" 2>/dev/null || true
  CAIRN_PID=
}

# bytes_on_disk NAME: the registry's storage, total and blobs alone, in
# apparent bytes (du -sb). cairn's index is counted as allocated bytes
# while cairn runs: its key-value store (badger) keeps a 128 MiB value log
# and a 32 MiB memtable file preallocated, sparse, and truncates them on a
# clean stop; the final figures are taken after such a stop.
bytes_on_disk() {
  case $1 in
  cairn)
    local b i
    b=$(dub "$WORK/cairn-data/blobs")
    if [ -n "$CAIRN_PID" ]; then i=$(du -s -B1 "$WORK/cairn-data/index" | cut -f1); else i=$(dub "$WORK/cairn-data/index"); fi
    echo "$((b + i)) $b"
    ;;
  distribution) echo "$(dub "$DIST_DATA") $(dub "$DIST_DATA/docker/registry/v2/blobs")" ;;
  esac
}

declare -A BYTES BLOBS BUILD_S EXPORT_S STEPS CSTAT
for r in "${REGS[@]}"; do
  log "pushing base/golang:1 to $r"
  push_golang_base "${ADDR[$r]}"
  read -r BYTES[$r,base] BLOBS[$r,base] < <(bytes_on_disk "$r")
done
cairn_stat() { "$WORK/cairn" stat --server "$CAIRN_GRPC" --json; }
# cairn_totals: "logical unique stored" bytes from cairn stat.
cairn_totals() { cairn_stat | jq -r '"\(.logical_bytes) \(.unique_bytes) \(.stored_bytes)"'; }
CSTAT[base]=$(cairn_totals)

# step_check FILE: "N/M" RUN and COPY steps of a plain progress log that
# printed CACHED.
step_check() {
  awk '
    match($0, /^#[0-9]+ \[[^]]*\] (RUN|COPY) /) { split($1, a, "#"); step[a[2]] = 1 }
    /^#[0-9]+ CACHED$/ { split($1, a, "#"); cached[a[2]] = 1 }
    END { n = 0; c = 0; for (s in step) { n++; if (s in cached) c++ }; printf "%d/%d", c, n }' "$1"
}

# step_seconds FILE TITLE: the DONE time of the progress log's vertex named
# TITLE ("exporting cache to registry").
step_seconds() {
  awk -v t="$2" '
    index($0, t) && match($0, /^#[0-9]+ /) { id = substr($0, 1, RLENGTH) }
    id != "" && index($0, id "DONE ") == 1 { s = $3; sub(/s$/, "", s) }
    END { print (s == "" ? "-" : s) }' "$1"
}

# build REGISTRY TAG CONTEXT LOG [buildctl flags...]
build() {
  local reg=$1 tag=$2 ctx=$3 out=$4
  shift 4
  buildctl build --progress=plain --frontend dockerfile.v0 \
    --local context="$ctx" --local dockerfile="$ctx" \
    --opt build-arg:BASE="$reg/base/golang:1" \
    --output "type=image,name=$reg/proj:$tag,push=true,compression=uncompressed" \
    "$@" >"$out" 2>&1 || { log "build failed, $out:"; tail -40 "$out" >&2; return 1; }
}

# --- (a) five releases per registry, a fresh buildkitd for each ----------
for r in "${REGS[@]}"; do
  A=${ADDR[$r]}
  BUILDKITD_INSECURE_REGISTRIES=$A start_buildkitd
  i=0
  for v in "${VERSIONS[@]}"; do
    i=$((i + 1))
    fresh_context "$v" "$WORK/ctx"
    log "$r: release $i ($MODULE@$v)"
    t=$(now)
    build "$A" "$v" "$WORK/ctx" "$WORK/build-$r-$i.log" \
      --import-cache "type=registry,ref=$A/cache/proj:main" \
      --export-cache "type=registry,ref=$A/cache/proj:main,mode=max,compression=uncompressed"
    BUILD_S[$r,$i]=$(since "$t")
    EXPORT_S[$r,$i]=$(step_seconds "$WORK/build-$r-$i.log" "exporting cache to registry")
    STEPS[$r,$i]=$(step_check "$WORK/build-$r-$i.log")
    read -r BYTES[$r,$i] BLOBS[$r,$i] < <(bytes_on_disk "$r")
    crane manifest "$A/cache/proj:main" >"$WORK/cache-manifest-$r-$i.json"
    [ "$r" = cairn ] && CSTAT[$i]=$(cairn_totals)
    log "$r: release $i built in ${BUILD_S[$r,$i]} s (cache export ${EXPORT_S[$r,$i]} s), cached steps ${STEPS[$r,$i]}, $(mb "${BYTES[$r,$i]}") MB on disk"
  done
  cp "$BUILDKITD_DIR/log" "$WORK/buildkitd-a-$r.log"
  BK_LOGS+=("$WORK/buildkitd-a-$r.log")
  stop_buildkitd
done
cairn_stat >"$WORK/cairn-stat-a.json"
curl -fsS "http://$CAIRN_ADDR/v2/_catalog" >"$WORK/cairn-catalog.json"
curl -fsS "http://$DISTRIBUTION_ADDR/v2/_catalog" >"$WORK/distribution-catalog.json"
ls -las "$WORK/cairn-data/index" >"$WORK/cairn-index-running.txt"
# The final bytes: cairn stopped cleanly (and started again for (b), on new
# ports), distribution as it is.
stop_cairn
read -r "BYTES[cairn,final]" "BLOBS[cairn,final]" < <(bytes_on_disk cairn)
read -r "BYTES[distribution,final]" "BLOBS[distribution,final]" < <(bytes_on_disk distribution)
start_cairn
CAIRN_ADDRS="$CAIRN_ADDRS $CAIRN_ADDR"
ADDR[cairn]=$CAIRN_ADDR

# --- (b) rebuild of the last release from the imported cache -------------
LAST=${VERSIONS[${#VERSIONS[@]} - 1]}
BUILDKITD_INSECURE_REGISTRIES="${ADDR[cairn]} ${ADDR[distribution]}" start_buildkitd
declare -A RB CHECK MED
for rep in $(seq 1 "$REPS"); do
  # alternate which registry goes first
  order=(cairn distribution)
  [ $((rep % 2)) -eq 0 ] && order=(distribution cairn)
  for r in "${order[@]}"; do
    A=${ADDR[$r]}
    buildctl prune --all >/dev/null
    fresh_context "$LAST" "$WORK/ctx"
    t=$(now)
    build "$A" "rebuild-$rep" "$WORK/ctx" "$WORK/rebuild-$r-$rep.log" \
      --import-cache "type=registry,ref=$A/cache/proj:main"
    RB[$r,$rep]=$(since "$t")
    CHECK[$r,$rep]=$(step_check "$WORK/rebuild-$r-$rep.log")
    log "$r: rebuild $rep in ${RB[$r,$rep]} s, cached steps ${CHECK[$r,$rep]}"
  done
done
buildctl prune --all >/dev/null
cp "$BUILDKITD_DIR/log" "$WORK/buildkitd-b.log"
BK_LOGS+=("$WORK/buildkitd-b.log")
stop_buildkitd
TOTAL_S=$(since "$T0")

# --- report --------------------------------------------------------------
# layer_reuse: the layers of distribution's last cache manifest and, for
# each uncompressed one, how many of its regular files' bytes have content
# (SHA-256) that was already in a layer of an earlier release's cache
# manifest (read from distribution's storage directory).
layer_reuse() {
  local m=()
  for k in $(seq 1 "$n"); do m+=("$WORK/cache-manifest-distribution-$k.json"); done
  python3 - "$DIST_DATA/docker/registry/v2/blobs/sha256" "${m[@]}" <<'PY'
import hashlib, json, sys, tarfile
blobs, manifests = sys.argv[1], sys.argv[2:]
def layers(path):
    m = json.load(open(path))
    return sorted(m["layers"], key=lambda l: l.get("annotations", {}).get("buildkit/createdat", ""))
def files(layer):
    d = layer["digest"].split(":")[1]
    out = {}
    with tarfile.open(f"{blobs}/{d[:2]}/{d}/data") as t:
        for f in t:
            if f.isfile():
                out[hashlib.sha256(t.extractfile(f).read()).hexdigest()] = f.size
    return out
def tar(l):
    return l["mediaType"].endswith(".tar")
seen, seen_blobs = set(), set()
for path in manifests[:-1]:
    for l in layers(path):
        if tar(l) and l["digest"] not in seen_blobs:
            seen_blobs.add(l["digest"])
            seen.update(files(l))
print("| layer | size | media type | regular files | their bytes | of which seen before |")
print("| --- | ---: | --- | ---: | ---: | ---: |")
for l in layers(manifests[-1]):
    kind = l["mediaType"].rsplit(".", 1)[-1]
    row = f"| {l['digest'][7:19]} | {l['size'] / 1e6:.2f} MB | {kind} |"
    if l["digest"] in seen_blobs or not tar(l):
        print(row + " | | " + ("same blob as before |" if l["digest"] in seen_blobs else "(base image, gzip) |"))
        continue
    b = files(l)
    tot = sum(b.values())
    old = sum(s for h, s in b.items() if h in seen)
    print(row + f" {len(b)} | {tot / 1e6:.2f} MB | {100 * old / tot if tot else 0:.0f} % |")
PY
}
# responses LOG: containerd's resolver (inside buildkitd) logs "do request"
# (method, url) and "fetch response received" (url, status) at debug
# level; counted by registry, method, endpoint kind and status.
# "?" for a response whose request line was not found.
responses() {
  awk '
    function field(name,   re) {
      re = name "=(\"[^\"]*\"|[^ ]*)"
      if (!match($0, re)) return ""
      v = substr($0, RSTART + length(name) + 1, RLENGTH - length(name) - 1)
      gsub(/"/, "", v)
      return v
    }
    /msg="do request"/ {
      u = field("url"); method[u] = field("request.method"); last[field("spanID")] = field("request.method")
    }
    /msg="fetch response received"/ {
      u = field("url"); st = field("response.status")
      host = u; sub(/^https?:\/\//, "", host); sub(/\/.*/, "", host)
      kind = "other"
      if (u ~ /\/manifests\//) kind = "manifests"
      else if (u ~ /\/blobs\/uploads\//) kind = "blobs/uploads"
      else if (u ~ /\/blobs\//) kind = "blobs"
      m = method[u]
      if (u == "" && field("span") ~ /^resolving /) {
        # resolving a reference logs no url: the span names it, the last
        # request of the span has the method
        host = field("span"); sub(/^resolving /, "", host); sub(/\/.*/, "", host)
        kind = "resolve"; m = last[field("spanID")]
      }
      if (m == "") m = "?"
      print host, m, kind, st
    }' "$1" | sort | uniq -c | sed -E "$(for a in $CAIRN_ADDRS; do printf 's#%s#cairn#;' "$a"; done)s#${ADDR[distribution]}#distribution#"
}
n=${#VERSIONS[@]}
jqs() { jq -r "$1" "$2"; }
{
  echo "Run $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg); total $TOTAL_S s."
  echo "Project: $MODULE ${VERSIONS[*]}; base image busybox + $GOVERSION toolchain ($(mb "$(stat -c %s "$WORK/go.tar")") MB tar, gzip layer as crane pushes it)."
  echo
  echo "### (a) bytes on disk after each release (du -sb)"
  echo
  echo "| after | cairn total | cairn blobs | distribution total | distribution blobs | ratio total | ratio blobs | build s cairn / distr. | cache export s cairn / distr. | CACHED steps |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"
  for k in base $(seq 1 "$n"); do
    label=$k
    [ "$k" = base ] && label="base image pushed" || label="release $k (${VERSIONS[$((k - 1))]})"
    s="- | - | -"
    [ "$k" = base ] || s="${BUILD_S[cairn,$k]} / ${BUILD_S[distribution,$k]} | ${EXPORT_S[cairn,$k]} / ${EXPORT_S[distribution,$k]} | ${STEPS[cairn,$k]}, ${STEPS[distribution,$k]}"
    echo "| $label | $(mb "${BYTES[cairn,$k]}") MB | $(mb "${BLOBS[cairn,$k]}") MB | $(mb "${BYTES[distribution,$k]}") MB | $(mb "${BLOBS[distribution,$k]}") MB | $(div "${BYTES[cairn,$k]}" "${BYTES[distribution,$k]}") | $(div "${BLOBS[cairn,$k]}" "${BLOBS[distribution,$k]}") | $s |"
  done
  k=final
  echo "| **final, cairn stopped cleanly** | $(mb "${BYTES[cairn,$k]}") MB | $(mb "${BLOBS[cairn,$k]}") MB | $(mb "${BYTES[distribution,$k]}") MB | $(mb "${BLOBS[distribution,$k]}") MB | **$(div "${BYTES[cairn,$k]}" "${BYTES[distribution,$k]}")** | $(div "${BLOBS[cairn,$k]}" "${BLOBS[distribution,$k]}") | | | |"
  cb=$((BYTES[cairn,final] - BYTES[cairn,base])) db=$((BYTES[distribution,final] - BYTES[distribution,base]))
  cbb=$((BLOBS[cairn,final] - BLOBS[cairn,base])) dbb=$((BLOBS[distribution,final] - BLOBS[distribution,base]))
  echo "| the $n builds alone (final − base) | $(mb $cb) MB | $(mb $cbb) MB | $(mb $db) MB | $(mb $dbb) MB | $(div $cb $db) | $(div $cbb $dbb) | | | |"
  echo
  echo "Exact bytes, final: cairn ${BYTES[cairn,final]} (blobs ${BLOBS[cairn,final]}), distribution ${BYTES[distribution,final]} (blobs ${BLOBS[distribution,final]}). MB = 10^6 bytes."
  echo
  echo "### where the bytes go: what each release added"
  echo
  echo "distribution: its blobs (du -sb); cairn: \`cairn stat\` totals, logical (every layer whole), unique (distinct chunks, uncompressed) and stored (distinct chunks, zstd)."
  echo
  echo "| release | distribution blobs + | cairn logical + | cairn unique + | cairn stored + | unique / logical | stored / unique |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  prev=base
  for k in $(seq 1 "$n"); do
    read -r l0 u0 s0 <<<"${CSTAT[$prev]}"
    read -r l1 u1 s1 <<<"${CSTAT[$k]}"
    echo "| $k (${VERSIONS[$((k - 1))]}) | $(mb $((BLOBS[distribution,$k] - BLOBS[distribution,$prev]))) MB | $(mb $((l1 - l0))) MB | $(mb $((u1 - u0))) MB | $(mb $((s1 - s0))) MB | $(div $((u1 - u0)) $((l1 - l0))) | $(div $((s1 - s0)) $((u1 - u0))) |"
    prev=$k
  done
  echo
  echo "The last release's cache manifest, layer by layer, in build order: the share of each layer's regular-file bytes whose content (SHA-256) was already in an earlier release's cache layers, i.e. what deduplication by file content could skip (tar headers, with their new mtimes, are not counted):"
  echo
  layer_reuse
  echo
  echo "cairn stat after the builds: $(jq -c . "$WORK/cairn-stat-a.json")"
  echo
  echo "cairn catalog: $(jq -c . "$WORK/cairn-catalog.json"); distribution catalog: $(jq -c . "$WORK/distribution-catalog.json")"
  echo
  echo "### (b) rebuild of $LAST with --import-cache after buildctl prune --all (wall s)"
  echo
  echo "| registry | runs (s) | median (s) | CACHED RUN/COPY steps |"
  echo "| --- | --- | ---: | --- |"
  for r in "${REGS[@]}"; do
    runs=() checks=()
    for rep in $(seq 1 "$REPS"); do runs+=("${RB[$r,$rep]}"); checks+=("${CHECK[$r,$rep]}"); done
    MED[$r]=$(median "${runs[@]}")
    echo "| $r | ${runs[*]} | ${MED[$r]} | ${checks[*]} |"
  done
  echo
  echo "cairn / distribution (median): $(div "${MED[cairn]}" "${MED[distribution]}")"
  echo
  if [ "$BUILDKITD_LOG_LEVEL" = debug ]; then
    echo "### registry responses in buildkitd's debug log (count, registry, method, endpoint, status)"
    for f in "${BK_LOGS[@]}"; do
      echo
      echo "$(basename "$f"):"
      echo
      echo '```'
      responses "$f"
      echo '```'
    done
    echo
  fi
  echo "buildkitd warnings and errors (count, log, text up to 160 characters):"
  echo
  echo '```'
  for f in "${BK_LOGS[@]}"; do
    grep -E 'level=(warning|error|fatal)' "$f" |
      sed -E "s/^time=\"[^\"]*\" //; s/ (spanID|traceID)=[0-9a-f]*//g; s/sha256:[0-9a-f]{64}/sha256:…/g; s#$WORK/##g; s#/tmp/tmp\.[A-Za-z0-9]*/#…/#g; s/^/$(basename "$f" .log): /" |
      cut -c1-160 | sort | uniq -c | sort -rn | head -10 || true
  done
  echo '```'
  echo
  echo "cairn log lines at WARN or ERROR: $(grep -c -E 'level=(WARN|ERROR)' "$WORK/cairn.log" || true)"
  grep -E 'level=(WARN|ERROR)' "$WORK/cairn.log" | head -20 | sed 's/^/    /' || true
} | tee "$WORK/report.md"
