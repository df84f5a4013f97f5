# Sourced by the scripts in this folder: installs the pinned tools the tests
# need into $CAIRN_TOOLS (default: $(go env GOPATH)/bin) unless they are there.
# Pinned because the module proxy's @latest may be old or refused here.
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
BUF_VERSION=v1.75.0
# staticcheck 2026.2.2: the v0.8 line is the one made for go1.26 (v0.7: go1.25).
STATICCHECK_VERSION=v0.8.2

CAIRN_TOOLS=${CAIRN_TOOLS:-$(go env GOPATH)/bin}
export PATH="$CAIRN_TOOLS:$PATH"

# install_tool NAME MODULE@VERSION: builds NAME unless a binary that reports
# the pinned version is already present (a stamp file records which).
install_tool() {
  local name=$1 pkg=$2 stamp="$CAIRN_TOOLS/.$1.version"
  if [ -x "$CAIRN_TOOLS/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$pkg" ]; then
    return 0
  fi
  echo "installing $pkg (once; a few minutes)" >&2
  GOBIN="$CAIRN_TOOLS" GOFLAGS=-buildvcs=false go install "$pkg" >&2
  echo "$pkg" >"$stamp"
}

install_minio() { install_tool minio "github.com/minio/minio@$MINIO_VERSION"; }
install_buf() { install_tool buf "github.com/bufbuild/buf/cmd/buf@$BUF_VERSION"; }
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
    kill "$MINIO_PID" 2>/dev/null; wait "$MINIO_PID" 2>/dev/null
    MINIO_PID=
  fi
  [ -n "${MINIO_DIR:-}" ] && rm -rf "$MINIO_DIR"
  return 0
}
