package bench

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRunSmoke runs bench/run.sh --smoke end to end: a synthetic corpus, a
// real `cairn serve` (and MinIO when scripts/test.sh started one), a 64 MiB
// big layer, and checks the report has every section with figures.
func TestRunSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cairn and runs servers: not with -short")
	}
	out := filepath.Join(t.TempDir(), "results.md")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "run.sh", "--smoke")
	cmd.Env = append(os.Environ(), "BENCH_OUT="+out, "BENCH_LOAD_DURATION=1s")
	if os.Getenv("CAIRN_TEST_S3_ENDPOINT") == "" {
		cmd.Env = append(cmd.Env, "BENCH_MINIO=0") // no MinIO to talk to
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("run.sh --smoke: %v\n%s", err, stderr.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	report := string(b)
	for _, want := range []string{"## Machine", "## Stored bytes", "registry (each distinct blob once", "cairn serve, fs backend",
		"## One big layer", "VmHWM", "## Load", "p99.9"} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q:\n%s", want, report)
		}
	}
	if os.Getenv("CAIRN_TEST_S3_ENDPOINT") != "" && !strings.Contains(report, "raw MinIO PUT / GET") {
		t.Errorf("MinIO was there but the report has no raw MinIO figures:\n%s", report)
	}
	if _, err := os.Stat(strings.TrimSuffix(out, ".md") + ".svg"); err != nil {
		t.Errorf("no plot next to the report: %v", err)
	}
}
