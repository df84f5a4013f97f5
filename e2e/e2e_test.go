package e2e

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// The --json shapes the tests read (a subset of what the CLI prints).
type pushJSON struct {
	Digest      digest.Digest `json:"digest"`
	Size        int64         `json:"size"`
	ChunksTotal int           `json:"chunks_total"`
	ChunksSent  int           `json:"chunks_sent"`
	BytesSent   int64         `json:"bytes_sent"`
	Step        *stepJSON     `json:"step"`
}

type stepJSON struct {
	Key   digest.Digest `json:"key"`
	Next  digest.Digest `json:"next"`
	Layer *struct {
		Digest digest.Digest `json:"digest"`
	} `json:"layer"`
}

type chainJSON struct {
	Steps   int           `json:"steps"`
	Hits    int           `json:"hits"`
	Next    digest.Digest `json:"next"`
	Records []stepJSON    `json:"records"`
}

type pullJSON struct {
	BytesWritten  int64 `json:"bytes_written"`
	BytesFetched  int64 `json:"bytes_fetched"`
	ChunksFetched int   `json:"chunks_fetched"`
	ChunksCached  int   `json:"chunks_cached"`
}

// Exit codes of the CLI (cmd/cairn/main.go).
const (
	exitFailure  = 1
	exitMiss     = 2
	exitNotFound = 3
)

// TestBuildWorkflow is the builder's life: push real layer tars while
// recording the steps that made them, look the chain up, pull the layers
// back byte for byte, and push a similar layer that sends only the chunks
// the server lacks.
func TestBuildWorkflow(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { testBuildWorkflow(t, b) })
	}
}

func testBuildWorkflow(t *testing.T, b backendConfig) {
	s := startServer(t, b)
	dir := t.TempDir()
	files := goSrcTree(t, layerTree())
	base := writeTar(t, filepath.Join(dir, "base.tar"), files)
	app := writeTar(t, filepath.Join(dir, "app.tar"), edit(files, 3))
	platform := "--platform=linux/amd64"

	// Step 1: RUN, a layer, pushed and recorded in one go.
	var p1 pushJSON
	s.okJSON(&p1, nil, "push", filepath.Join(dir, "base.tar"), "--instruction", "RUN make base", platform)
	if want := digest.FromBytes(base); p1.Digest != want || p1.Size != int64(len(base)) {
		t.Fatalf("push base: digest %s, size %d; want %s, %d", p1.Digest, p1.Size, want, len(base))
	}
	if p1.BytesSent != int64(len(base)) || p1.Step == nil {
		t.Fatalf("push base: sent %d of %d bytes, step %v; want all bytes and a step", p1.BytesSent, len(base), p1.Step)
	}
	// Step 2: ENV, no layer.
	var s2 stepJSON
	s.okJSON(&s2, nil, "record", "--parent", p1.Step.Next.String(), "--instruction", "ENV MODE=release", platform)
	// Step 3: COPY of the similar tree: only the chunks the server lacks
	// cross the wire.
	inputs := digest.FromString("the build context of app").String()
	received := s.metric("cairn_bytes_received_total")
	var p3 pushJSON
	s.okJSON(&p3, nil, "push", filepath.Join(dir, "app.tar"), "--parent", s2.Next.String(),
		"--instruction", "COPY . /src", "--inputs", inputs, platform)
	if want := digest.FromBytes(app); p3.Digest != want {
		t.Fatalf("push app: digest %s, want %s", p3.Digest, want)
	}
	// Each of the 3 edits dirties a chunk or two, at most 1 MiB each.
	if p3.BytesSent <= 0 || p3.BytesSent > 6<<20 || p3.BytesSent > int64(len(app))/2 {
		t.Errorf("push of the similar layer sent %d of %d bytes (%d of %d chunks); want only the few edited chunks",
			p3.BytesSent, len(app), p3.ChunksSent, p3.ChunksTotal)
	}
	// The server counts the same bytes coming in.
	if got := s.metric("cairn_bytes_received_total") - received; got != float64(p3.BytesSent) {
		t.Errorf("the server received %.0f data bytes during the second push; the client says it sent %d", got, p3.BytesSent)
	}
	t.Logf("similar layer: sent %d of %d bytes (%d of %d chunks)", p3.BytesSent, len(app), p3.ChunksSent, p3.ChunksTotal)

	// The chain, in one lookup.
	chain := filepath.Join(dir, "chain.txt")
	writeFile(t, chain, "# the Dockerfile\nRUN make base\n  env   MODE=release\n--inputs="+inputs+" COPY . /src\n")
	var c chainJSON
	s.okJSON(&c, nil, "lookup", "--chain", chain, platform)
	if c.Hits != 3 || c.Steps != 3 || c.Records[0].Layer.Digest != p1.Digest || c.Records[2].Layer.Digest != p3.Digest || c.Next != p3.Step.Next {
		t.Errorf("lookup --chain = %+v; want 3 hits ending in %s", c, p3.Step.Next)
	}
	// One more step: a miss after three hits, exit 2, the text output
	// naming the parent to continue from.
	writeFile(t, chain, "RUN make base\nENV MODE=release\n--inputs="+inputs+" COPY . /src\nRUN make test\n")
	r := s.cli(nil, "lookup", "--chain", chain, platform)
	if r.code != exitMiss || strings.Count(r.stdout, "HIT") != 3 || !strings.Contains(r.stdout, "MISS") || !strings.Contains(r.stdout, "next "+p3.Step.Next.String()) {
		t.Errorf("lookup --chain with a new last step: want 3 HIT, a MISS, exit 2: %v", r)
	}
	// Single lookups: a hit, a miss (different inputs), a miss (another platform).
	r = s.ok(nil, "lookup", "--parent", s2.Next.String(), "--instruction", "COPY . /src", "--inputs", inputs, platform)
	if !strings.Contains(r.stdout, p3.Digest.String()) {
		t.Errorf("lookup hit does not name the layer: %v", r)
	}
	s.want(exitMiss, []string{"miss"}, "lookup", "--parent", s2.Next.String(), "--instruction", "COPY . /src",
		"--inputs", digest.FromString("other context").String(), platform)
	s.want(exitMiss, []string{"miss"}, "lookup", "--instruction", "RUN make base", "--platform", "linux/arm64")

	// Pull both layers back: to a file, to stdout, through a chunk cache.
	s.ok(nil, "pull", p1.Digest.String(), "-o", filepath.Join(dir, "base.out"))
	sameBytes(t, filepath.Join(dir, "base.out"), base)
	r = s.ok(nil, "pull", p3.Digest.String(), "-o", "-")
	if !bytes.Equal([]byte(r.stdout), app) {
		t.Errorf("pull -o - returned %d bytes that differ from the %d pushed", len(r.stdout), len(app))
	}
	cacheDir := filepath.Join(dir, "chunks")
	var cold, similar, warm pullJSON
	s.okJSON(&cold, nil, "pull", p1.Digest.String(), "-o", filepath.Join(dir, "base.cached"), "--chunk-cache", cacheDir)
	sameBytes(t, filepath.Join(dir, "base.cached"), base)
	s.okJSON(&similar, nil, "pull", p3.Digest.String(), "-o", filepath.Join(dir, "app.cached"), "--chunk-cache", cacheDir)
	sameBytes(t, filepath.Join(dir, "app.cached"), app)
	s.okJSON(&warm, nil, "pull", p3.Digest.String(), "-o", filepath.Join(dir, "app.cached"), "--chunk-cache", cacheDir)
	if cold.BytesFetched != int64(len(base)) || similar.BytesFetched != p3.BytesSent || warm.BytesFetched != 0 {
		t.Errorf("chunk-cache pulls fetched %d, %d, %d bytes; want %d (all), %d (the edited chunks), 0",
			cold.BytesFetched, similar.BytesFetched, warm.BytesFetched, len(base), p3.BytesSent)
	}
	// A range.
	r = s.ok(nil, "pull", p1.Digest.String(), "-o", "-", "--offset", "1000", "--length", "5000")
	if !bytes.Equal([]byte(r.stdout), base[1000:6000]) {
		t.Errorf("range pull returned %d bytes that differ from base[1000:6000]", len(r.stdout))
	}

	// ls, stat, rm.
	r = s.ok(nil, "ls")
	for _, d := range []digest.Digest{p1.Digest, p3.Digest} {
		if !strings.Contains(r.stdout, d.String()) {
			t.Errorf("ls does not list %s: %v", d, r)
		}
	}
	r = s.ok(nil, "stat", p3.Digest.String())
	if !strings.Contains(r.stdout, fmt.Sprint(len(app))) {
		t.Errorf("stat does not show the size %d: %v", len(app), r)
	}
	r = s.ok(nil, "stat")
	if !strings.Contains(r.stdout, "layers") || !strings.Contains(r.stdout, "dedup") {
		t.Errorf("stat without a digest: %v", r)
	}
	s.ok(nil, "rm", p3.Digest.String())
	s.want(exitNotFound, []string{"not found"}, "stat", p3.Digest.String())
	s.want(exitNotFound, []string{"not found"}, "pull", p3.Digest.String(), "-o", filepath.Join(dir, "gone"))
	if _, err := os.Stat(filepath.Join(dir, "gone")); err == nil {
		t.Error("a failed pull left its output file behind")
	}
	s.want(exitNotFound, nil, "rm", p3.Digest.String())
	// The step that made the deleted layer is a miss now; the chain stops
	// before it.
	r = s.cli(nil, "lookup", "--chain", chain, platform, "--json")
	if r.code != exitMiss || !strings.Contains(r.stdout, `"hits": 2`) {
		t.Errorf("lookup --chain after rm: want 2 hits and exit 2: %v", r)
	}
	// The base layer is untouched by the delete of a layer sharing chunks.
	s.ok(nil, "pull", p1.Digest.String(), "-o", filepath.Join(dir, "base.again"))
	sameBytes(t, filepath.Join(dir, "base.again"), base)
	s.alive()
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func sameBytes(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s: %d bytes that differ from the %d pushed", filepath.Base(path), len(got), len(want))
	}
}
