package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/cairnbuild/cairn/cmd/internal/storage"
)

// reindexRoundTrip pushes a layer with a step through a real `cairn serve`
// (storage from env plus --data first), stops it, rebuilds the index under
// --data second with `cairn reindex`, serves again from there and checks
// that the layer pulls back byte for byte and the step still hits.
func reindexRoundTrip(t *testing.T, env map[string]string, first, second string) {
	t.Helper()
	dir := t.TempDir()
	layer := testLayer(7, 2<<20)
	path := filepath.Join(dir, "layer.tar")
	if err := os.WriteFile(path, layer, 0o644); err != nil {
		t.Fatal(err)
	}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{"CAIRN_LISTEN": "127.0.0.1:0", "CAIRN_PLATFORM": "linux/amd64"}
		for k, v := range env {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}

	log, listen, _, stop := startServe(t, with(nil), "--data", first, "--grace-period", "2s")
	cli := with(map[string]string{"CAIRN_SERVER": listen})
	if r := runClientCLI(t, cli, nil, "push", path, "--instruction", "RUN make"); r.code != 0 {
		t.Fatalf("push: %d %s\nserve log:\n%s", r.code, r.stderr, log)
	}
	// The index is locked while the server runs: reindex says why it cannot.
	if r := runClientCLI(t, with(nil), nil, "reindex", "--data", first); r.code == 0 || !strings.Contains(r.stderr, "is a server using this --data?") {
		t.Errorf("reindex beside a running server: exit %d, stderr %q", r.code, r.stderr)
	}
	if code := stop(); code != exitOK {
		t.Fatalf("serve exit %d", code)
	}

	if first == second { // the index is lost; the blobs are not
		if err := os.RemoveAll(filepath.Join(first, storage.IndexSubdir)); err != nil {
			t.Fatal(err)
		}
	}
	r := runClientCLI(t, with(nil), nil, "reindex", "--data", second)
	if r.code != 0 || !strings.Contains(r.stdout, ": 1 layers, ") || !strings.Contains(r.stdout, ", 1 steps") {
		t.Fatalf("reindex: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	t.Logf("%s", strings.TrimSpace(r.stdout))

	log, listen, _, stop = startServe(t, with(nil), "--data", second, "--grace-period", "2s")
	defer stop()
	cli = with(map[string]string{"CAIRN_SERVER": listen})
	back := filepath.Join(dir, "back.tar")
	if r := runClientCLI(t, cli, nil, "pull", digest.FromBytes(layer).String(), "-o", back); r.code != 0 {
		t.Fatalf("pull after reindex: %d %s\nserve log:\n%s", r.code, r.stderr, log)
	}
	if got, err := os.ReadFile(back); err != nil || !bytes.Equal(got, layer) {
		t.Fatalf("pulled %d bytes (%v), pushed %d", len(got), err, len(layer))
	}
	if r := runClientCLI(t, cli, nil, "lookup", "--instruction", "RUN make"); r.code != 0 {
		t.Errorf("step lookup after reindex: exit %d %s", r.code, r.stderr)
	}
}

// A server whose index is lost gets its layers and steps back from the fs
// blob store.
func TestReindex(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	reindexRoundTrip(t, nil, data, data)
}

// A new server with an empty --data, pointed at the bucket another server
// filled, gets everything with `cairn reindex`: S3 is the source of truth.
func TestReindexS3(t *testing.T) {
	endpoint := os.Getenv("CAIRN_TEST_S3_ENDPOINT")
	if endpoint == "" {
		t.Skip("CAIRN_TEST_S3_ENDPOINT not set (scripts/test.sh starts MinIO and sets it)")
	}
	bucket := "cairn-reindex-" + strings.ToLower(strings.ReplaceAll(time.Now().UTC().Format("150405.000000000"), ".", ""))
	env := map[string]string{
		"CAIRN_S3_ENDPOINT":   endpoint,
		"CAIRN_S3_BUCKET":     bucket,
		"CAIRN_S3_ACCESS_KEY": os.Getenv("CAIRN_TEST_S3_ACCESS_KEY"),
		"CAIRN_S3_SECRET_KEY": os.Getenv("CAIRN_TEST_S3_SECRET_KEY"),
		"CAIRN_S3_INSECURE":   "true",
	}
	reindexRoundTrip(t, env, filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b"))
}
