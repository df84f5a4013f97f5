package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/bench/load"
	"github.com/cairnbuild/cairn/bench/reuse"
)

// runCLI runs the CLI in-process and returns its exit code and streams.
func runBenchCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	a := &app{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }}
	code := run(context.Background(), a, args)
	return code, stdout.String(), stderr.String()
}

func writeTestLayer(t *testing.T, path string, files map[string]string) {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for name, body := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestBenchReuseCLI(t *testing.T) {
	dir := t.TempDir()
	big := strings.Repeat("package main // shared across layers\n", 20000)
	l1, l2 := filepath.Join(dir, "l1.tar"), filepath.Join(dir, "l2.tar")
	writeTestLayer(t, l1, map[string]string{"a.go": big})
	writeTestLayer(t, l2, map[string]string{"b.go": "other", "a.go": big})

	code, out, errOut := runBenchCLI(t, "bench", "reuse", "--json", "--avg", "16K,64K", l1, l2)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var r reuse.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("--json output does not parse: %v\n%s", err, out)
	}
	if len(r.Layers) != 2 || len(r.Averages) != 2 || r.Layers[1].FileUniqueBytes != 5 {
		t.Errorf("layers %d averages %v layer-2 file-unique %d; want 2, [16K 64K], 5", len(r.Layers), r.Averages, r.Layers[1].FileUniqueBytes)
	}

	report := filepath.Join(dir, "out", "report.txt")
	os.Mkdir(filepath.Dir(report), 0o755)
	code, _, errOut = runBenchCLI(t, "bench", "reuse", "--out", report, "--json-out", filepath.Join(dir, "out", "r.json"), l1, l2)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	txt, err := os.ReadFile(report)
	if err != nil || !strings.Contains(string(txt), "stored/registry") {
		t.Errorf("report: %v\n%s", err, txt)
	}
	if js, err := os.ReadFile(filepath.Join(dir, "out", "r.json")); err != nil || json.Unmarshal(js, &r) != nil {
		t.Errorf("--json-out: %v", err)
	}
	svg, err := os.ReadFile(filepath.Join(dir, "out", "report.svg"))
	if err != nil || !bytes.HasPrefix(svg, []byte("<svg")) {
		t.Errorf("plot next to the report: %v", err)
	}
}

func TestBenchReuseCLIErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no path", []string{"bench", "reuse"}, "requires at least 1 arg"},
		{"missing file", []string{"bench", "reuse", "/nonexistent/layer.tar"}, "no such file"},
		{"bad avg", []string{"bench", "reuse", "--avg", "100K", os.Args[0]}, "power of two"},
		{"not a size", []string{"bench", "reuse", "--avg", "big", os.Args[0]}, "not a size"},
		{"bad mix", []string{"bench", "load", "--mix", "1,2"}, "--mix"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runBenchCLI(t, tc.args...)
			if code != exitFailure || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut, exitFailure, tc.want)
			}
		})
	}
}

func TestBenchParseSize(t *testing.T) {
	for in, want := range map[string]int64{"4096": 4096, "64K": 64 << 10, "256KiB": 256 << 10, "1M": 1 << 20, "4g": 4 << 30, "1MB": 1 << 20} {
		if got, err := benchParseSize(in); err != nil || got != want {
			t.Errorf("benchParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1.5M"} {
		if _, err := benchParseSize(in); err == nil {
			t.Errorf("benchParseSize(%q): want an error", in)
		}
	}
}

// TestBenchLoadCLI runs `cairn bench load` against a real server over TCP:
// every kind of operation runs, none fails, and the run stops by itself.
func TestBenchLoadCLI(t *testing.T) {
	addr := startTestServer(t)
	start := time.Now()
	code, out, errOut := runBenchCLI(t, "bench", "load", "--server", addr, "--clients", "3",
		"--duration", "20s", "--max-ops", "120", "--layer-size", "256K", "--seed", "3", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Errorf("took %s: --max-ops 120 did not stop it", d)
	}
	var r load.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if r.Errors != 0 {
		t.Errorf("%d errors, first: %s", r.Errors, r.FirstError)
	}
	if !r.StoppedByMaxOps || r.Ops[len(r.Ops)-1].Count != 120 {
		t.Errorf("stopped by max ops %v after %d ops; want true after 120", r.StoppedByMaxOps, r.Ops[len(r.Ops)-1].Count)
	}
	for _, s := range r.Ops {
		if s.Count == 0 {
			t.Errorf("no successful %s", s.Op)
		}
	}
	if lk := r.Ops[0]; lk.Hits == 0 || lk.Hits == lk.Count {
		t.Errorf("lookups: %d hits of %d; want both hits and misses", lk.Hits, lk.Count)
	}
	if r.Ops[2].Bytes != r.Ops[2].Count*(256<<10) {
		t.Errorf("pulled %d bytes in %d pulls of 256 KiB layers", r.Ops[2].Bytes, r.Ops[2].Count)
	}
}

// TestBenchLoadChainCLI: lookups of 5-step chains (one LookupChain call
// each) against a real server find the seeded chains whole.
func TestBenchLoadChainCLI(t *testing.T) {
	addr := startTestServer(t)
	code, out, errOut := runBenchCLI(t, "bench", "load", "--server", addr, "--clients", "2",
		"--mix", "1,0,0", "--chain", "5", "--max-ops", "60", "--layer-size", "64K", "--seed", "5", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var r load.Result
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	lk := r.Ops[0]
	if r.Errors != 0 || r.ChainSteps != 5 || lk.Count != 60 || lk.Hits == 0 || lk.Hits == lk.Count {
		t.Errorf("errors %d (%s), chain %d, %d lookups, %d whole-chain hits; want 0, 5, 60, some", r.Errors, r.FirstError, r.ChainSteps, lk.Count, lk.Hits)
	}
}
