# Sourced by the scripts in this folder: installs the pinned tools the tests
# need into $CAIRN_TOOLS (default: $(go env GOPATH)/bin) unless they are there.
# Pinned because the module proxy's @latest may be old or refused here.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
BUF_VERSION=v1.75.0
# staticcheck 2026.2.2: the v0.8 line is the one made for go1.26 (v0.7: go1.25).
STATICCHECK_VERSION=v0.8.2

CAIRN_TOOLS=${CAIRN_TOOLS:-$(go env GOPATH)/bin}
export PATH="$CAIRN_TOOLS:$PATH"

# install_tool NAME MODULE@VERSION [HOW_LONG]: builds NAME unless a binary
# that reports the pinned version is already present (a stamp file records
# which), so only the first run on a machine, or after a version bump, pays
# for the build. HOW_LONG, for the message, is what the build takes.
install_tool() {
  local name=$1 pkg=$2 stamp="$CAIRN_TOOLS/.$1.version"
  if [ -x "$CAIRN_TOOLS/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pkg" ]; then
    return 0
  fi
  echo "building $pkg from source (${3:-a few minutes}; once: later runs reuse it)" >&2
  GOBIN="$CAIRN_TOOLS" GOFLAGS=-buildvcs=false go install "$pkg" >&2
  echo "$pkg" >"$stamp"
}

# MinIO publishes no package that this machine's registries carry (Debian
# has only its client libraries), so it is built: the longest build here.
install_minio() { install_tool minio "github.com/minio/minio@$MINIO_VERSION" "about 20 minutes on 2 cores"; }

# install_buf: buf at BUF_VERSION. buf's release binaries are published on
# the npm registry (@bufbuild/buf-linux-x64 and the like, one package per
# platform, the version without its v), so where npm is there the binary
# is unpacked from that package (seconds; npm checks the tarball against
# the registry's integrity hash) and checked with `buf --version`; else it
# is built from source (about 6 minutes on 2 cores). The stamp is the same
# either way, so a buf installed by one is reused by the other.
install_buf() {
  local pkg="github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"
  if [ -x "$CAIRN_TOOLS/buf" ] && [ "$(cat "$CAIRN_TOOLS/.buf.version" 2>/dev/null)" = "$pkg" ]; then
    return 0
  fi
  install_buf_npm "$pkg" || install_tool buf "$pkg" "about 6 minutes on 2 cores"
}

# install_buf_npm STAMP: the npm half of install_buf; fails, leaving
# nothing behind, where npm or the platform's package is missing.
install_buf_npm() {
  local platform d tgz version
  case "$(uname -s)/$(uname -m)" in
  Linux/x86_64) platform=linux-x64 ;;
  Linux/aarch64 | Linux/arm64) platform=linux-aarch64 ;;
  Darwin/x86_64) platform=darwin-x64 ;;
  Darwin/arm64) platform=darwin-arm64 ;;
  *) return 1 ;;
  esac
  command -v npm >/dev/null 2>&1 || return 1
  d=$(mktemp -d)
  echo "installing buf $BUF_VERSION from npm (@bufbuild/buf-$platform)" >&2
  if tgz=$(cd "$d" && npm pack --loglevel=error "@bufbuild/buf-$platform@${BUF_VERSION#v}" 2>"$d/log") &&
    tar -xzf "$d/$tgz" -C "$d" package/bin/buf 2>>"$d/log" &&
    version=$("$d/package/bin/buf" --version 2>>"$d/log") && [ "$version" = "${BUF_VERSION#v}" ]; then
    mkdir -p "$CAIRN_TOOLS" && cp "$d/package/bin/buf" "$CAIRN_TOOLS/buf.tmp" &&
      chmod 0755 "$CAIRN_TOOLS/buf.tmp" && mv "$CAIRN_TOOLS/buf.tmp" "$CAIRN_TOOLS/buf" &&
      echo "$1" >"$CAIRN_TOOLS/.buf.version" && rm -rf "$d" && return 0
  fi
  echo "buf from npm failed (${version:+it reports $version; }building it instead):" >&2
  cat "$d/log" >&2
  rm -rf "$d" "$CAIRN_TOOLS/buf.tmp"
  return 1
}
install_staticcheck() { install_tool staticcheck "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION"; }

# free_port [N] prints N (default 1) distinct TCP ports on 127.0.0.1 that
# nothing listens on now, one per line. The sockets are held together while
# the ports are picked: picked one after the other, two can be the same.
free_port() {
  python3 - "${1:-1}" <<'PY' 2>/dev/null || for _ in $(seq 1 "${1:-1}"); do echo $((20000 + RANDOM % 20000)); done
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

# start_minio: starts MinIO on 127.0.0.1 with a temp directory and random
# credentials, waits until it is ready and exports the CAIRN_TEST_S3_*
# variables the tests read. stop_minio undoes it; callers trap it on EXIT.
# Ready means /minio/health/cluster answers 200: /minio/health/ready does
# so before the object layer is up (requests then fail with
# XMinioServerNotInitialized).
start_minio() {
  install_minio
  MINIO_DIR=$(mktemp -d)
  export CAIRN_TEST_MINIO_BIN="$CAIRN_TOOLS/minio"
  export CAIRN_TEST_S3_ACCESS_KEY="cairn$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')"
  export CAIRN_TEST_S3_SECRET_KEY="$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')"
  # Another process may take a port between free_port and MinIO's bind:
  # then MinIO exits, and it is tried again on new ports.
  local attempt ports port console
  for attempt in 1 2 3; do
    ports=$(free_port 2)
    port=$(echo "$ports" | sed -n 1p); console=$(echo "$ports" | sed -n 2p)
    export CAIRN_TEST_S3_ENDPOINT="127.0.0.1:$port"
    MINIO_ROOT_USER=$CAIRN_TEST_S3_ACCESS_KEY MINIO_ROOT_PASSWORD=$CAIRN_TEST_S3_SECRET_KEY \
      MINIO_BROWSER=off MINIO_UPDATE=off \
      "$CAIRN_TEST_MINIO_BIN" server --quiet --address "127.0.0.1:$port" \
      --console-address "127.0.0.1:$console" "$MINIO_DIR/data" >"$MINIO_DIR/log" 2>&1 &
    MINIO_PID=$!
    for _ in $(seq 1 100); do
      if curl -fsS "http://127.0.0.1:$port/minio/health/cluster" >/dev/null 2>&1; then
        echo "minio ready on 127.0.0.1:$port (pid $MINIO_PID)" >&2
        return 0
      fi
      kill -0 "$MINIO_PID" 2>/dev/null || break
      sleep 0.2
    done
    if kill -0 "$MINIO_PID" 2>/dev/null; then # running but never ready: no retry
      break
    fi
    echo "minio exited on ports $port/$console (attempt $attempt):" >&2; cat "$MINIO_DIR/log" >&2
  done
  echo "minio did not start:" >&2; cat "$MINIO_DIR/log" >&2
  return 1
}

stop_minio() {
  if [ -n "${MINIO_PID:-}" ]; then
    kill "$MINIO_PID" 2>/dev/null || true
    wait "$MINIO_PID" 2>/dev/null || true # 143 after the kill: not a failure
    MINIO_PID=
  fi
  [ -n "${MINIO_DIR:-}" ] && rm -rf "$MINIO_DIR"
  return 0
}

# --- OCI registry test tools (notes: scripts/registry-tools.md) ---
CRANE_VERSION=v0.22.1
DISTRIBUTION_VERSION=v3.1.2
BUILDKIT_VERSION=v0.33.1

# The OCI distribution-spec conformance suite, as a test binary built inside
# its module directory (like BuildKit); e2e's TestOCIConformance runs it.
OCI_CONFORMANCE_VERSION=v0.0.0-20260831232431-97274622c111
install_oci_conformance() {
  local pkg="github.com/opencontainers/distribution-spec/conformance@$OCI_CONFORMANCE_VERSION" stamp="$CAIRN_TOOLS/.oci-conformance.version" dir
  if [ -x "$CAIRN_TOOLS/oci-conformance.test" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pkg" ]; then
    return 0
  fi
  echo "installing $pkg" >&2
  dir=$(cd / && GOWORK=off GOFLAGS='' go mod download -json "$pkg" | sed -n 's/^[[:space:]]*"Dir": "\([^"]*\)".*/\1/p')
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then
    echo "go mod download $pkg gave no directory" >&2
    return 1
  fi
  mkdir -p "$CAIRN_TOOLS"
  (cd "$dir" && GOWORK=off GOFLAGS="-buildvcs=false -mod=readonly" go test -c -o "$CAIRN_TOOLS/oci-conformance.test" .) >&2 || return 1
  echo "$pkg" >"$stamp"
}

install_crane() { install_tool crane "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION"; }
# The reference registry (CNCF distribution); go install names it "registry".
install_distribution() { install_tool registry "github.com/distribution/distribution/v3/cmd/registry@$DISTRIBUTION_VERSION"; }

# install_debian_tools: skopeo, runc (buildkitd's OCI worker runs it) and
# busybox-static (a shell for test base images, see push_busybox_base) from
# Debian's packages, each only if missing. The package lists are updated
# only when a package is not known or the first install attempt fails.
install_debian_tools() {
  local missing=() sudo=
  command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
  command -v runc >/dev/null 2>&1 || missing+=(runc)
  dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  echo "installing ${missing[*]} with apt-get" >&2
  local updated=
  if ! apt-cache show "${missing[@]}" >/dev/null 2>&1; then
    $sudo apt-get update -qq >&2 || return 1
    updated=1
  fi
  local install="$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends"
  if ! $install "${missing[@]}" >&2; then
    [ -z "$updated" ] || return 1
    $sudo apt-get update -qq >&2 && $install "${missing[@]}" >&2 || return 1
  fi
}

# install_buildkit: buildkitd and buildctl at BUILDKIT_VERSION. `go install`
# refuses the module (its go.mod has exclude directives), so the module is
# downloaded and both commands are built inside its (read-only) module cache
# directory with -o to $CAIRN_TOOLS; its go.sum is complete, so -mod=readonly
# works. Flags as upstream's Dockerfile (CGO off, static), minus the VCS stamp.
install_buildkit() {
  local pkg="github.com/moby/buildkit@$BUILDKIT_VERSION" stamp="$CAIRN_TOOLS/.buildkit.version" dir cmd
  if [ -x "$CAIRN_TOOLS/buildkitd" ] && [ -x "$CAIRN_TOOLS/buildctl" ] &&
    [ "$(cat "$stamp" 2>/dev/null)" = "$pkg" ]; then
    return 0
  fi
  echo "building $pkg from source (a few minutes; once: later runs reuse it)" >&2
  # Outside any module (cwd /), so no go.mod or go.sum is touched.
  dir=$(cd / && GOWORK=off GOFLAGS='' go mod download -json "$pkg" | sed -n 's/^[[:space:]]*"Dir": "\([^"]*\)".*/\1/p')
  if [ -z "$dir" ] || [ ! -d "$dir" ]; then
    echo "go mod download $pkg gave no directory" >&2
    return 1
  fi
  local ldflags="-X github.com/moby/buildkit/version.Version=$BUILDKIT_VERSION -X github.com/moby/buildkit/version.Package=github.com/moby/buildkit"
  mkdir -p "$CAIRN_TOOLS"
  for cmd in buildkitd buildctl; do
    (cd "$dir" && GOWORK=off GOFLAGS="-buildvcs=false -mod=readonly" CGO_ENABLED=0 \
      go build -ldflags "$ldflags" -tags "osusergo netgo static_build seccomp" \
      -o "$CAIRN_TOOLS/$cmd" "./cmd/$cmd") >&2 || return 1
  done
  echo "$pkg" >"$stamp"
}

# start_distribution DIR: starts the reference registry on a free 127.0.0.1
# port, storing blobs and manifests in DIR (kept; the caller owns it),
# deletes enabled, no debug/metrics listener, no OpenTelemetry export (its
# default OTLP exporter would dial localhost:4318). Waits until GET /v2/
# answers 200 and exports DISTRIBUTION_ADDR (host:port); the log is
# $DISTRIBUTION_CONF_DIR/log. stop_distribution undoes it.
# DISTRIBUTION_INDEX_PLATFORMS (all, the registry's default, or none) is its
# validation.manifests.indexes.platforms: with "all" an image index whose
# entries are not manifests in the repository is refused (blob unknown to
# registry), and BuildKit's legacy cache format (image-manifest=false) is
# such an index; "none" accepts it.
start_distribution() {
  local data=${1:?usage: start_distribution DIR}
  install_distribution
  mkdir -p "$data"
  data=$(cd "$data" && pwd)
  DISTRIBUTION_CONF_DIR=$(mktemp -d)
  local attempt port v unset_vars=()
  # REGISTRY_* variables would override the file: the registry runs without them.
  for v in $(compgen -e); do
    case $v in REGISTRY_*) unset_vars+=(-u "$v") ;; esac
  done
  for attempt in 1 2 3; do
    port=$(free_port)
    export DISTRIBUTION_ADDR="127.0.0.1:$port"
    cat >"$DISTRIBUTION_CONF_DIR/config.yml" <<YML
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
validation:
  manifests:
    indexes:
      platforms: ${DISTRIBUTION_INDEX_PLATFORMS:-all}
http:
  addr: $DISTRIBUTION_ADDR
  secret: $(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
YML
    env "${unset_vars[@]}" OTEL_TRACES_EXPORTER=none \
      "$CAIRN_TOOLS/registry" serve "$DISTRIBUTION_CONF_DIR/config.yml" >"$DISTRIBUTION_CONF_DIR/log" 2>&1 &
    DISTRIBUTION_PID=$!
    for _ in $(seq 1 100); do
      if curl -fsS "http://$DISTRIBUTION_ADDR/v2/" >/dev/null 2>&1; then
        echo "distribution ready on $DISTRIBUTION_ADDR (pid $DISTRIBUTION_PID)" >&2
        return 0
      fi
      kill -0 "$DISTRIBUTION_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$DISTRIBUTION_PID" 2>/dev/null; then # running but never ready: no retry
      break
    fi
    echo "distribution exited on port $port (attempt $attempt):" >&2; cat "$DISTRIBUTION_CONF_DIR/log" >&2
  done
  echo "distribution did not start:" >&2; cat "$DISTRIBUTION_CONF_DIR/log" >&2
  return 1
}

stop_distribution() {
  if [ -n "${DISTRIBUTION_PID:-}" ]; then
    kill "$DISTRIBUTION_PID" 2>/dev/null || true
    wait "$DISTRIBUTION_PID" 2>/dev/null || true
    DISTRIBUTION_PID=
  fi
  [ -n "${DISTRIBUTION_CONF_DIR:-}" ] && rm -rf "$DISTRIBUTION_CONF_DIR"
  DISTRIBUTION_CONF_DIR=
  return 0
}

# start_buildkitd: starts buildkitd (root only; runc OCI worker, containerd
# worker off) in a temp directory: state, unix socket and the OTel trace
# socket (default /run/buildkit/otel-grpc.sock) all live there, no TCP
# listener. Registries in BUILDKITD_INSECURE_REGISTRIES (host:port entries
# separated by spaces; default $DISTRIBUTION_ADDR) are used over plain HTTP.
# Snapshotter: BUILDKITD_SNAPSHOTTER (default auto: overlayfs where the
# kernel allows it, else native). Networking is host: there is no CNI setup.
# Waits until `buildctl debug workers` answers and exports BUILDKIT_HOST
# (buildctl reads it); the log is $BUILDKITD_DIR/log. stop_buildkitd undoes it.
start_buildkitd() {
  install_buildkit
  install_debian_tools # runc
  if [ "$(id -u)" -ne 0 ]; then
    echo "start_buildkitd: needs root (rootless buildkitd is not set up here)" >&2
    return 1
  fi
  BUILDKITD_DIR=$(mktemp -d)
  local conf="$BUILDKITD_DIR/buildkitd.toml" reg
  cat >"$conf" <<TOML
root = "$BUILDKITD_DIR/root"
[log]
  level = "info"
[grpc]
  address = ["unix://$BUILDKITD_DIR/buildkitd.sock"]
[otel]
  socketPath = "$BUILDKITD_DIR/otel-grpc.sock"
[cdi]
  disabled = true
[worker.oci]
  enabled = true
  snapshotter = "${BUILDKITD_SNAPSHOTTER:-auto}"
  networkMode = "host"
[worker.containerd]
  enabled = false
TOML
  for reg in ${BUILDKITD_INSECURE_REGISTRIES:-${DISTRIBUTION_ADDR:-}}; do
    printf '[registry."%s"]\n  http = true\n  insecure = true\n' "$reg" >>"$conf"
  done
  "$CAIRN_TOOLS/buildkitd" --config "$conf" >"$BUILDKITD_DIR/log" 2>&1 &
  BUILDKITD_PID=$!
  export BUILDKIT_HOST="unix://$BUILDKITD_DIR/buildkitd.sock"
  for _ in $(seq 1 150); do
    if "$CAIRN_TOOLS/buildctl" --addr "$BUILDKIT_HOST" debug workers >/dev/null 2>&1; then
      echo "buildkitd ready on $BUILDKIT_HOST (pid $BUILDKITD_PID)" >&2
      return 0
    fi
    kill -0 "$BUILDKITD_PID" 2>/dev/null || break
    sleep 0.2
  done
  echo "buildkitd did not start:" >&2; cat "$BUILDKITD_DIR/log" >&2
  stop_buildkitd
  return 1
}

stop_buildkitd() {
  if [ -n "${BUILDKITD_PID:-}" ]; then
    kill "$BUILDKITD_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$BUILDKITD_PID" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$BUILDKITD_PID" 2>/dev/null || true
    wait "$BUILDKITD_PID" 2>/dev/null || true
    BUILDKITD_PID=
  fi
  if [ -n "${BUILDKITD_DIR:-}" ]; then
    # Snapshot mounts left behind (overlayfs) go before the files do;
    # with one still mounted the directory is kept rather than recursed into.
    awk -v d="$BUILDKITD_DIR" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
      sort -r | while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
    if awk -v d="$BUILDKITD_DIR" 'index($5, d "/") == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
      echo "stop_buildkitd: mounts remain under $BUILDKITD_DIR; not removed" >&2
    else
      rm -rf "$BUILDKITD_DIR"
    fi
  fi
  BUILDKITD_DIR=
  unset BUILDKIT_HOST
  return 0
}

# push_busybox_base REF: pushes a one-layer linux image holding Debian's
# static busybox (/bin/busybox, a symlink per applet, /bin/sh among them) to
# REF, e.g. $DISTRIBUTION_ADDR/base/busybox:1: a base image with a shell for
# Dockerfile RUN steps where no public registry is reachable. crane talks
# plain HTTP to 127.0.0.1 and localhost by itself.
push_busybox_base() {
  local ref=${1:?usage: push_busybox_base REF} d a
  install_crane
  install_debian_tools # busybox-static
  d=$(mktemp -d)
  mkdir -p "$d/rootfs/bin" "$d/rootfs/etc" "$d/rootfs/tmp" "$d/rootfs/root"
  chmod 1777 "$d/rootfs/tmp"
  cp /bin/busybox "$d/rootfs/bin/busybox"
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$d/rootfs/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$d/rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$d/rootfs/etc/group"
  # Fixed owner and times: the same busybox gives the same layer digest.
  tar -C "$d/rootfs" --sort=name --owner=0 --group=0 --numeric-owner \
    --mtime=@0 -cf "$d/rootfs.tar" . || { rm -rf "$d"; return 1; }
  local rc=0
  if ! { crane append --oci-empty-base -f "$d/rootfs.tar" -t "$ref" >/dev/null &&
    crane mutate "$ref" --set-platform "linux/$(dpkg --print-architecture)" \
      -e PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/sh -t "$ref" >/dev/null; }; then
    rc=1
  fi
  rm -rf "$d"
  return $rc
}
