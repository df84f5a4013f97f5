package main

import (
	"bytes"
	"compress/gzip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// A gzip layer pushed with the CLI is stored as its tar plus the encoder;
// `cairn materialize` stores its compressed bytes instead, and it still
// pulls back byte for byte.
func TestMaterializeCLI(t *testing.T) {
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(bytes.Repeat(testLayer(3, 256<<10), 4))
	zw.Close()
	blob := gz.Bytes()
	path := filepath.Join(dir, "layer.tar.gz")
	if err := os.WriteFile(path, blob, 0o644); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"CAIRN_LISTEN": "127.0.0.1:0", "CAIRN_PLATFORM": "linux/amd64"}
	log, listen, _, stop := startServe(t, env, "--data", data, "--grace-period", "2s")
	cli := map[string]string{"CAIRN_SERVER": listen}
	if r := runClientCLI(t, cli, nil, "push", path); r.code != 0 {
		t.Fatalf("push: %d %s\nserve log:\n%s", r.code, r.stderr, log)
	}
	// A rebuilt blob has no chunks of its own: a chunk-cache pull streams.
	cached := filepath.Join(dir, "cached")
	if r := runClientCLI(t, cli, nil, "pull", digest.FromBytes(blob).String(), "-o", cached, "--chunk-cache", filepath.Join(dir, "chunks")); r.code != 0 {
		t.Fatalf("pull --chunk-cache: %d %s", r.code, r.stderr)
	}
	if got, _ := os.ReadFile(cached); !bytes.Equal(got, blob) {
		t.Fatalf("pull --chunk-cache: %d bytes, pushed %d", len(got), len(blob))
	}
	if code := stop(); code != exitOK {
		t.Fatalf("serve exit %d", code)
	}
	d := digest.FromBytes(blob)

	r := runClientCLI(t, env, nil, "materialize", "--data", data, "--all", "--dry-run")
	if r.code != 0 || !strings.Contains(r.stdout, string(d)+"\t") || !strings.Contains(r.stdout, "go-gzip/6") || !strings.Contains(r.stdout, "1 of 1 rebuilt blobs selected") {
		t.Fatalf("materialize --dry-run: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if r := runClientCLI(t, env, nil, "materialize", "--data", data, "--encoder", "pgzip"); r.code != 0 || !strings.Contains(r.stdout, "materialized 0 of 1") {
		t.Fatalf("materialize --encoder pgzip: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if r := runClientCLI(t, env, nil, "materialize", "--data", data, "sha256:"+strings.Repeat("0", 64)); r.code == 0 {
		t.Fatalf("materialize of an unknown digest: exit 0\nstdout: %s", r.stdout)
	}
	if r := runClientCLI(t, env, nil, "materialize", "--data", data, string(d)); r.code != 0 || !strings.Contains(r.stdout, "materialized 1 of 1") {
		t.Fatalf("materialize: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if r := runClientCLI(t, env, nil, "materialize", "--data", data, "--all", "--dry-run"); r.code != 0 || !strings.Contains(r.stdout, "0 of 0 rebuilt blobs") {
		t.Fatalf("after materialize, --dry-run: exit %d\nstdout: %s", r.code, r.stdout)
	}

	log, listen, _, stop = startServe(t, env, "--data", data, "--grace-period", "2s")
	defer stop()
	back := filepath.Join(dir, "back")
	if r := runClientCLI(t, map[string]string{"CAIRN_SERVER": listen}, nil, "pull", string(d), "-o", back); r.code != 0 {
		t.Fatalf("pull: %d %s\nserve log:\n%s", r.code, r.stderr, log)
	}
	if got, _ := os.ReadFile(back); !bytes.Equal(got, blob) {
		t.Fatalf("pulled %d bytes, pushed %d", len(got), len(blob))
	}
}
