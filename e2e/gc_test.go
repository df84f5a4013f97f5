package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cairnbuild/cairn/client"
)

type gcJSON struct {
	DeletePacks  int64    `json:"delete_packs"`
	RewritePacks int64    `json:"rewrite_packs"`
	PlannedBytes int64    `json:"planned_bytes"`
	DeletedPacks int64    `json:"deleted_packs"`
	FreedBytes   int64    `json:"freed_bytes"`
	Skipped      []string `json:"skipped"`
}

func packBytes(t *testing.T, s *server) int64 {
	t.Helper()
	var n int64
	for _, p := range packs(t, s.blobStore()) {
		n += p.Size
	}
	return n
}

// TestGC is issue 15's collection with the real binary: cairn rm then
// cairn gc gives the space of the deleted layer back (fs and MinIO), a dry
// run changes nothing, everything still stored pulls back whole and
// verifies, the metrics count it, and a reindex afterwards agrees.
func TestGC(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) { testGC(t, b) })
	}
}

func testGC(t *testing.T, b backendConfig) {
	s := startServer(t, b)
	dir := t.TempDir()
	keep, drop := filepath.Join(dir, "keep.tar"), filepath.Join(dir, "drop.tar")
	keepData := writeTar(t, keep, map[string][]byte{"a": seeded(21, 6<<20)})
	writeTar(t, drop, map[string][]byte{"b": seeded(22, 6<<20)})
	var pk, pd pushJSON
	s.okJSON(&pk, nil, "push", keep, "--instruction", "RUN keep")
	s.okJSON(&pd, nil, "push", drop, "--instruction", "RUN drop")
	before := packBytes(t, s)
	s.ok(nil, "rm", pd.Digest.String())

	// Within the grace period nothing is dead.
	var g gcJSON
	s.okJSON(&g, nil, "gc", "--dry-run")
	if g.DeletePacks != 0 {
		t.Errorf("dry run with the default grace: %+v; want nothing to delete", g)
	}
	s.okJSON(&g, nil, "gc", "--dry-run", "--grace", "0")
	if g.DeletePacks == 0 || g.PlannedBytes < 5<<20 || g.DeletedPacks != 0 {
		t.Errorf("dry run without grace: %+v; want the dropped layer's packs planned", g)
	}
	if got := packBytes(t, s); got != before {
		t.Fatalf("the dry run changed the store: %d → %d bytes", before, got)
	}
	s.okJSON(&g, nil, "gc", "--grace", "0", "--pack-grace", "0")
	after := packBytes(t, s)
	if g.DeletedPacks == 0 || before-after != g.FreedBytes || g.FreedBytes < 5<<20 || len(g.Skipped) != 0 {
		t.Errorf("gc: %+v; pack bytes %d → %d", g, before, after)
	}
	out := filepath.Join(dir, "out")
	s.ok(nil, "pull", pk.Digest.String(), "-o", out)
	if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, keepData) {
		t.Fatalf("the kept layer after gc: %d bytes, %v", len(got), err)
	}
	s.ok(nil, "verify")
	s.ok(nil, "lookup", "--instruction", "RUN keep")
	s.want(exitMiss, nil, "lookup", "--instruction", "RUN drop")
	if n := s.metric("cairn_gc_freed_bytes_total"); n != float64(g.FreedBytes) {
		t.Errorf("cairn_gc_freed_bytes_total = %v, want %d", n, g.FreedBytes)
	}
	// The dropped layer, pushed again, is stored again.
	s.ok(nil, "push", drop)
	s.ok(nil, "pull", pd.Digest.String(), "-o", out)

	// A reindex of what the collection left agrees with the index.
	var st1, st2 client.Stats
	s.okJSON(&st1, nil, "stat")
	s.reindex()
	s.okJSON(&st2, nil, "stat")
	if st1.Layers != st2.Layers || st1.Steps != st2.Steps || st1.StoredBytes != st2.StoredBytes {
		t.Errorf("reindex after gc: %+v, before %+v", st2, st1)
	}
	if r := s.cli(nil, "gc", "--grace", "0", "--pack-grace", "0"); r.code != 0 || strings.Contains(r.stdout, "skipped") {
		t.Errorf("gc after the reindex: %v", r)
	}
	// Retention: step records no build used within --step-max-age go.
	var stale struct {
		StaleSteps int64 `json:"stale_steps"`
	}
	s.okJSON(&stale, nil, "gc", "--step-max-age", "1ns", "--dry-run")
	if stale.StaleSteps != st2.Steps || st2.Steps == 0 {
		t.Errorf("dry run with --step-max-age 1ns: %d stale of %d steps", stale.StaleSteps, st2.Steps)
	}
	s.okJSON(&stale, nil, "gc", "--step-max-age", "1ns")
	s.want(exitMiss, nil, "lookup", "--instruction", "RUN keep")
	s.okJSON(&st2, nil, "stat")
	if st2.Steps != 0 {
		t.Errorf("%d steps left after gc --step-max-age 1ns", st2.Steps)
	}
}

// reindex stops the server, runs cairn reindex on its data with its
// storage flags and credentials, and starts it again.
func (s *server) reindex() {
	s.t.Helper()
	if err := s.stop(); err != nil {
		s.t.Fatal(err)
	}
	args := []string{"reindex", "--data", s.dataDir}
	if c := s.backend.s3; c != nil {
		args = append(args, "--s3-endpoint", c.endpoint, "--s3-bucket", c.bucket, "--s3-insecure")
	}
	cmd := exec.Command(cairnBin, args...)
	cmd.Env = s.serveEnv() // the S3 credentials
	if out, err := cmd.CombinedOutput(); err != nil {
		s.t.Fatalf("cairn reindex: %v\n%s", err, out)
	}
	s.start()
}
