#!/usr/bin/env bash
# Builds the bench corpus: layer tarballs as a CI fleet building successive
# releases of one real Go project would make them, in ingest order.
#
#   bench/corpus.sh [DIR]      # default: $CAIRN_CORPUS_DIR, else ~/.cache/cairn/corpus
#
# For each release of $CORPUS_MODULE (fetched through the Go module proxy):
#   NN-modcache-VER.tar  the layer `RUN go mod download` makes: the module
#                        download cache (go/pkg/mod/cache/download/...), or
#                        the whole module cache with CORPUS_MODCACHE=full
#   NN-src-VER.tar       the layer `COPY . /src` makes: the source tree
# and first, if debootstrap is there (installed with apt-get when root),
#   00-debian.tar        a Debian bookworm minbase rootfs: a real base layer.
# CORPUS_DEBIAN=0 skips it; CORPUS_SYNTHETIC=1 makes a small generated
# corpus without the network (the smoke test uses it).
#
# Tars are written deterministically (sorted, mtime 0, uid/gid 0), so two
# runs make the same bytes, and built layers are kept: a second run reuses
# them. CORPUS_MTIME=build gives each release's tars the time of its own
# build instead (release N: 2025-01-01 plus N days), as a builder's layers
# have: the same files then differ in their headers from release to
# release. The layer paths, in order, go to DIR/layers.txt and to stdout.
set -euo pipefail

DIR=${1:-${CAIRN_CORPUS_DIR:-$HOME/.cache/cairn/corpus}}
MODULE=${CORPUS_MODULE:-github.com/prometheus/client_golang}
VERSIONS=${CORPUS_VERSIONS:-v1.22.0 v1.23.0 v1.23.1 v1.23.2 v1.24.0}
MODCACHE=${CORPUS_MODCACHE:-download}
DEBIAN=${CORPUS_DEBIAN:-1}
SYNTHETIC=${CORPUS_SYNTHETIC:-0}
MTIME=${CORPUS_MTIME:-0}
case "$MTIME" in 0|build) ;; *) echo "corpus: CORPUS_MTIME=$MTIME: want 0 or build" >&2; exit 2 ;; esac
STAMP_MTIME=0

log() { echo "corpus: $*" >&2; }

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
WORK=$(mktemp -d)
cleanup() { chmod -R u+w "$WORK" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# dtar OUT DIR PATH...: a reproducible tar of PATH... relative to DIR,
# written through a temporary file so that a killed run leaves no half layer.
dtar() {
  local out=$1 dir=$2; shift 2
  tar --sort=name --mtime=@$STAMP_MTIME --owner=0 --group=0 --numeric-owner --format=pax \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$dir" -cf "$out.tmp" "$@"
  mv "$out.tmp" "$out"
}

LAYERS=()

if [ "$SYNTHETIC" = 1 ]; then
  # Three small layers with known sharing: a base, and two app layers that
  # share a file and differ in another. No network.
  if [ ! -f "$DIR/synthetic.stamp" ]; then
    for i in 1 2 3; do mkdir -p "$WORK/s$i/app"; done
    head -c $((2 << 20)) /dev/zero | tr '\0' 'b' >"$WORK/s1/app/base.bin"
    seq 1 200000 >"$WORK/s2/app/shared.txt"; cp "$WORK/s2/app/shared.txt" "$WORK/s3/app/"
    seq 3 300000 >"$WORK/s2/app/v1.txt"; seq 5 310000 >"$WORK/s3/app/v2.txt"
    for i in 1 2 3; do dtar "$DIR/0$i-synthetic.tar" "$WORK/s$i" app; done
    touch "$DIR/synthetic.stamp"
  fi
  LAYERS=("$DIR"/0[123]-synthetic.tar)
else
  if [ "$DEBIAN" = 1 ]; then
    if [ -f "$DIR/00-debian.tar" ]; then
      LAYERS+=("$DIR/00-debian.tar")
    else
      if ! command -v debootstrap >/dev/null && [ "$(id -u)" = 0 ]; then
        log "installing debootstrap"
        timeout 180 apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
          { timeout 120 apt-get update -qq >/dev/null 2>&1 && timeout 180 apt-get install -y -qq debootstrap >/dev/null 2>&1; } || true
      fi
      if command -v debootstrap >/dev/null && [ "$(id -u)" = 0 ]; then
        log "debootstrap bookworm minbase (about a minute)"
        # The Debian mirror this machine's apt already uses (DEBIAN_MIRROR overrides).
        mirror=${DEBIAN_MIRROR:-$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list |
          grep -oE 'https?://[^ ]+/debian/?' | grep -v -- '-security' | head -1)}
        if timeout 300 debootstrap --variant=minbase bookworm "$WORK/debian" $mirror >"$WORK/debootstrap.log" 2>&1; then
          # What a base image holds: the rootfs without the apt caches.
          rm -rf "$WORK/debian/var/cache/apt/archives/"*.deb "$WORK/debian/var/lib/apt/lists/"*
          dtar "$DIR/00-debian.tar" "$WORK/debian" .
          LAYERS+=("$DIR/00-debian.tar")
        else
          log "debootstrap failed, no Debian layer: $(tail -3 "$WORK/debootstrap.log" | tr '\n' ' ')"
        fi
      else
        log "no debootstrap (or not root): no Debian layer"
      fi
    fi
  fi

  # Module downloads accumulate in one shared cache, offered to each
  # version's fresh module cache as a file:// proxy in front of the real one:
  # each layer is what a clean `go mod download` makes, while the network
  # sees every module once.
  SHARED="$DIR/.gomodproxy"
  mkdir -p "$SHARED"
  n=1
  for v in $VERSIONS; do
    nn=$(printf '%02d' "$n")
    if [ "$MTIME" = build ]; then STAMP_MTIME=$((1735689600 + n * 86400)); fi
    src="$DIR/$nn-src-$v.tar" mc="$DIR/$nn-modcache-$v.tar"
    if [ ! -f "$src" ] || [ ! -f "$mc" ] || [ "$(cat "$DIR/$nn.stamp" 2>/dev/null)" != "$MODULE@$v $MODCACHE $MTIME" ]; then
      log "$MODULE@$v"
      zip=$(GOFLAGS=-modcacherw go mod download -json "$MODULE@$v" | sed -n 's/^[[:space:]]*"Zip": "\(.*\)",$/\1/p')
      [ -n "$zip" ] || { log "go mod download $MODULE@$v gave no zip"; exit 1; }
      rm -rf "$WORK/x" "$WORK/root"
      mkdir -p "$WORK/x" "$WORK/root"
      (cd "$WORK/x" && unzip -q "$zip")
      mv "$WORK/x/$MODULE@$v" "$WORK/root/src"
      dtar "$src" "$WORK/root" src

      mkdir -p "$WORK/root/go/pkg/mod"
      (cd "$WORK/root/src" && GOMODCACHE="$WORK/root/go/pkg/mod" GOFLAGS="-modcacherw -mod=mod" \
        GOPROXY="file://$SHARED,${GOPROXY:-$(go env GOPROXY)}" go mod download)
      if [ "$MODCACHE" = full ]; then
        dtar "$mc" "$WORK/root" go
      else
        dtar "$mc" "$WORK/root" go/pkg/mod/cache/download
      fi
      cp -a -n "$WORK/root/go/pkg/mod/cache/download/." "$SHARED/"
      chmod -R u+w "$WORK/root"; rm -rf "$WORK/root" "$WORK/x"
      echo "$MODULE@$v $MODCACHE $MTIME" >"$DIR/$nn.stamp"
    fi
    LAYERS+=("$mc" "$src")
    n=$((n + 1))
  done
fi

printf '%s\n' "${LAYERS[@]}" >"$DIR/layers.txt"
cat "$DIR/layers.txt"
