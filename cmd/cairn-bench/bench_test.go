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
	"github.com/cairnbuild/cairn/cmd/internal/storage"
)

// runBenchCLI runs the CLI in-process with an empty environment and
// returns its exit code and streams.
func runBenchCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	return runBenchCLIEnv(t, nil, args...)
}

// runBenchCLIEnv is runBenchCLI with the environment env.
func runBenchCLIEnv(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	a := &app{stdin: strings.NewReader(""), stdout: &stdout, stderr: &stderr, getenv: func(k string) string { return env[k] }}
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

	code, out, errOut := runBenchCLI(t, "reuse", "--json", "--avg", "16K,64K", l1, l2)
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
	code, _, errOut = runBenchCLI(t, "reuse", "--out", report, "--json-out", filepath.Join(dir, "out", "r.json"), l1, l2)
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
		{"no path", []string{"reuse"}, "requires at least 1 arg"},
		{"missing file", []string{"reuse", "/nonexistent/layer.tar"}, "no such file"},
		{"bad avg", []string{"reuse", "--avg", "100K", os.Args[0]}, "power of two"},
		{"not a size", []string{"reuse", "--avg", "big", os.Args[0]}, "not a size"},
		{"bad mix", []string{"load", "--mix", "1,2"}, "--mix"},
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
	for in, want := range map[string]int64{"4096": 4096, "64K": 64 << 10, "256KiB": 256 << 10, "1M": 1 << 20, "4g": 4 << 30, "1MB": 1 << 20, "4 MiB": 4 << 20, "4 m": 4 << 20} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "x", "-1", "1.5M", " MiB", "4 4M"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q): want an error", in)
		}
	}
}

// TestBenchLoadCLI runs `cairn-bench load` against a real server over TCP:
// every kind of operation runs, none fails, and the run stops by itself
// after exactly --max-ops operations. --duration is only the backstop, long
// enough for a loaded machine (-race under a parallel test run): which
// limit stopped the run is in the result, not in a wall-clock bound.
func TestBenchLoadCLI(t *testing.T) {
	addr := startTestServer(t)
	code, out, errOut := runBenchCLI(t, "load", "--server", addr, "--clients", "3",
		"--duration", "2m", "--max-ops", "120", "--layer-size", "256K", "--seed", "3", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
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
	// The server from its environment twin.
	code, out, errOut := runBenchCLIEnv(t, map[string]string{"CAIRN_SERVER": startTestServer(t)}, "load", "--clients", "2",
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

// TestBenchGen: the same seed and size give the same bytes, another seed
// others.
func TestBenchGen(t *testing.T) {
	gen := func(args ...string) string {
		t.Helper()
		code, out, errOut := runBenchCLI(t, append([]string{"gen"}, args...)...)
		if code != 0 {
			t.Fatalf("gen %v: exit %d: %s", args, code, errOut)
		}
		return out
	}
	a, b, c := gen("3M", "--seed", "4"), gen("3M", "--seed", "4"), gen("3M", "--seed", "5")
	if len(a) != 3<<20 || a != b {
		t.Errorf("gen 3M twice with seed 4: %d and %d bytes, equal %v; want 3 MiB, equal", len(a), len(b), a == b)
	}
	if a == c {
		t.Errorf("seeds 4 and 5 gave the same bytes")
	}
	if n := len(gen("1000")); n != 1000 {
		t.Errorf("gen 1000: %d bytes", n)
	}
}

func TestBenchS3CLIErrors(t *testing.T) {
	s3 := []string{"s3", "--s3-endpoint", "127.0.0.1:1", "--s3-bucket", "b", "--s3-access-key", "k", "--s3-secret-key", "s"}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"no endpoint", nil, []string{"s3", "f.tar"}, "--s3-endpoint"},
		{"no bucket", map[string]string{"CAIRN_S3_ENDPOINT": "127.0.0.1:1"}, []string{"s3", "f.tar"}, "--s3-endpoint needs --s3-bucket"},
		{"half the keys", nil, []string{"s3", "--s3-endpoint", "127.0.0.1:1", "--s3-bucket", "b", "--s3-access-key", "k"}, "go together"},
		{"session token", nil, append(s3, "--s3-session-token", "t"), "--s3-session-token"},
		{"du with files", nil, append(s3, "--du", "f.tar"), "--du takes no files"},
		{"no files", nil, s3, "name the files"},
		{"bad twin", map[string]string{"CAIRN_S3_INSECURE": "sometimes"}, s3, `CAIRN_S3_INSECURE="sometimes"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runBenchCLIEnv(t, tc.env, tc.args...)
			if code != exitFailure || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q; want %d and %q", code, errOut, exitFailure, tc.want)
			}
		})
	}
}

// TestBenchS3 times two files against the MinIO that scripts/test.sh
// starts, configured through cairn serve's environment twins only, keeps
// them, and counts them with --du under the same prefix.
func TestBenchS3(t *testing.T) {
	endpoint := os.Getenv("CAIRN_TEST_S3_ENDPOINT")
	if endpoint == "" {
		t.Skip("CAIRN_TEST_S3_ENDPOINT not set (scripts/test.sh starts MinIO and sets it)")
	}
	dir := t.TempDir()
	files := []string{filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")}
	writeTestLayer(t, files[0], map[string]string{"a": "aaaa"})
	writeTestLayer(t, files[1], map[string]string{"b": strings.Repeat("b", 100_000)})
	var total int64
	for _, f := range files {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		total += st.Size()
	}
	env := map[string]string{
		"CAIRN_S3_ENDPOINT":   endpoint,
		"CAIRN_S3_BUCKET":     "cairn-bench-" + strings.ToLower(strings.ReplaceAll(time.Now().UTC().Format("150405.000000000"), ".", "")),
		"CAIRN_S3_PREFIX":     "ci",
		"CAIRN_S3_ACCESS_KEY": os.Getenv("CAIRN_TEST_S3_ACCESS_KEY"),
		"CAIRN_S3_SECRET_KEY": os.Getenv("CAIRN_TEST_S3_SECRET_KEY"),
		"CAIRN_S3_INSECURE":   "true",
	}
	code, out, errOut := runBenchCLIEnv(t, env, "s3", "--json", "--keep", files[0], files[1])
	if code != 0 {
		t.Fatalf("s3: exit %d: %s", code, errOut)
	}
	var res struct {
		Files int   `json:"files"`
		Bytes int64 `json:"bytes"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Files != 2 || res.Bytes != total {
		t.Errorf("s3 --json = %s (%v); want 2 files, %d bytes", out, err, total)
	}
	code, out, errOut = runBenchCLIEnv(t, env, "s3", "--du", "--json")
	if code != 0 {
		t.Fatalf("s3 --du: exit %d: %s", code, errOut)
	}
	var du struct {
		Objects int   `json:"objects"`
		Bytes   int64 `json:"bytes"`
	}
	if err := json.Unmarshal([]byte(out), &du); err != nil || du.Objects != 2 || du.Bytes != total {
		t.Errorf("s3 --du --json = %s (%v); want the 2 objects kept, %d bytes", out, err, total)
	}
}

// TestHelpNamesTwins: the bench flags have the same twins as cairn's.
func TestHelpNamesTwins(t *testing.T) {
	for cmd, wants := range map[string][]string{
		"load":  {"[$CAIRN_SERVER]", "[$CAIRN_CLIENTS]", "[$CAIRN_JSON]"},
		"s3":    {"[$CAIRN_S3_ENDPOINT]", "[$CAIRN_S3_BUCKET]", "[$CAIRN_S3_ACCESS_KEY]", "[$CAIRN_S3_SECRET_KEY]", "[$CAIRN_S3_PREFIX]", "[$CAIRN_S3_INSECURE]"},
		"reuse": {"[$CAIRN_AVG]"},
	} {
		code, out, errOut := runBenchCLI(t, cmd, "--help")
		if code != 0 {
			t.Fatalf("%s --help: exit %d: %s", cmd, code, errOut)
		}
		for _, want := range wants {
			if !strings.Contains(out, want) {
				t.Errorf("%s --help lacks %s", cmd, want)
			}
		}
	}
}

// TestStaticKeys: the flags' keys, else the AWS environment's, as cairn
// serve's S3 backend finds them.
func TestStaticKeys(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "env-access")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
	for _, tc := range []struct {
		s3                 storage.S3
		wantAccess, wantSK string
	}{
		{storage.S3{AccessKey: "flag-access", SecretKey: "flag-secret"}, "flag-access", "flag-secret"},
		{storage.S3{}, "env-access", "env-secret"},
	} {
		ak, sk, err := staticKeys(&tc.s3)
		if err != nil || ak != tc.wantAccess || sk != tc.wantSK {
			t.Errorf("staticKeys(%+v) = %q, %q, %v; want %q, %q", tc.s3, ak, sk, err, tc.wantAccess, tc.wantSK)
		}
	}
}
