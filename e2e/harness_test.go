package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// cairnBin is the binary under test, built once by TestMain.
var cairnBin string

// goroot is the Go tree the test layers are made of (`go env GOROOT`).
var goroot string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "cairn-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: go env GOROOT:", err)
		return 1
	}
	goroot = strings.TrimSpace(string(out))
	cairnBin = filepath.Join(dir, "cairn")
	build := exec.Command("go", "build", "-o", cairnBin, "github.com/cairnbuild/cairn/cmd/cairn")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building cairn:", err)
		return 1
	}
	return m.Run()
}

// backendConfig says which blob store a server runs on.
type backendConfig struct {
	name string
	// s3 is set for the MinIO variant.
	s3 *s3Config
}

type s3Config struct {
	endpoint, accessKey, secretKey, bucket string
}

// backends returns the blob stores to run a scenario on: the fs backend
// always, MinIO when scripts/test.sh started one.
func backends(t *testing.T) []backendConfig {
	out := []backendConfig{{name: "fs"}}
	endpoint := os.Getenv("CAIRN_TEST_S3_ENDPOINT")
	if endpoint == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("CI=true but CAIRN_TEST_S3_ENDPOINT is not set: run scripts/test.sh, which starts MinIO")
		}
		t.Log("CAIRN_TEST_S3_ENDPOINT not set: skipping the MinIO variant (scripts/test.sh runs it)")
		return out
	}
	return append(out, backendConfig{name: "minio", s3: &s3Config{
		endpoint:  endpoint,
		accessKey: os.Getenv("CAIRN_TEST_S3_ACCESS_KEY"),
		secretKey: os.Getenv("CAIRN_TEST_S3_SECRET_KEY"),
		bucket:    "cairn-e2e-" + randomHex(6),
	}})
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// server is a `cairn serve` subprocess.
type server struct {
	t       *testing.T
	backend backendConfig
	dataDir string
	addr    string
	metrics string // the /metrics listen address
	reg     string // the registry API's listen address
	cmd     *exec.Cmd
	log     *syncBuffer
	exited  chan struct{}
	exitErr error
	// extraArgs are more flags for `cairn serve` (startServerWith sets
	// them), and tlsClient, if set, is how the harness's own gRPC
	// connections (health checks, dial) reach a server serving TLS.
	extraArgs []string
	tlsClient *tls.Config
}

// startServer starts `cairn serve` on a fresh data directory and waits
// until it reports healthy; t.Cleanup stops it.
func startServer(t *testing.T, b backendConfig) *server {
	t.Helper()
	return startServerWith(t, b, nil)
}

// startServerWith is startServer with configure applied to the server
// before it starts (to set extraArgs and tlsClient).
func startServerWith(t *testing.T, b backendConfig, configure func(*server)) *server {
	t.Helper()
	s := &server{t: t, backend: b, dataDir: t.TempDir()}
	if configure != nil {
		configure(s)
	}
	s.start()
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			t.Logf("server log:\n%s", s.log.String())
		}
	})
	return s
}

// serveArgs are the flags for `cairn serve`.
func (s *server) serveArgs() []string {
	// A short grace period: the signal test waits for the exit.
	args := []string{"serve", "--listen", s.addr, "--data", s.dataDir, "--grace-period", "2s", "--metrics-listen", s.metrics,
		"--registry-listen", s.reg}
	if c := s.backend.s3; c != nil {
		args = append(args, "--s3-endpoint", c.endpoint, "--s3-bucket", c.bucket, "--s3-insecure")
	}
	return append(args, s.extraArgs...)
}

// creds are the transport credentials of the harness's connections.
func (s *server) creds() grpc.DialOption {
	if s.tlsClient != nil {
		return grpc.WithTransportCredentials(credentials.NewTLS(s.tlsClient))
	}
	return grpc.WithTransportCredentials(insecure.NewCredentials())
}

func (s *server) serveEnv() []string {
	env := os.Environ()
	if c := s.backend.s3; c != nil {
		env = append(env, "CAIRN_S3_ACCESS_KEY="+c.accessKey, "CAIRN_S3_SECRET_KEY="+c.secretKey)
	}
	return env
}

// start runs the server (again, after stop, on the same data and port).
// If a port was taken meanwhile (by another test's server), it moves to
// new ports.
func (s *server) start() {
	s.t.Helper()
	if s.addr == "" {
		s.addr, s.metrics, s.reg = freePorts(s.t)
	}
	if s.log == nil {
		s.log = &syncBuffer{}
	}
	for attempt := 1; ; attempt++ {
		logStart := len(s.log.String())
		s.cmd = exec.Command(cairnBin, s.serveArgs()...)
		s.cmd.Env = s.serveEnv()
		s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
		if err := s.cmd.Start(); err != nil {
			s.t.Fatal(err)
		}
		s.exited = make(chan struct{})
		go func() {
			s.exitErr = s.cmd.Wait()
			close(s.exited)
		}()
		if s.waitHealthy() {
			return
		}
		if attempt == 3 || !strings.Contains(s.log.String()[logStart:], "address already in use") {
			s.t.Fatalf("cairn serve exited (%v) before it was healthy:\n%s", s.exitErr, s.log.String())
		}
		s.addr, s.metrics, s.reg = freePorts(s.t)
	}
}

// waitHealthy polls grpc.health.v1 until the server says SERVING and
// returns true, or returns false if the server exits first.
func (s *server) waitHealthy() bool {
	s.t.Helper()
	// Redial quickly: with gRPC's default backoff (1s, growing) a server
	// that comes up just after the first attempt is seen a second late,
	// and the crash loop restarts the server many times.
	conn, err := grpc.NewClient(s.addr, s.creds(),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.5, Jitter: 0.2, MaxDelay: 200 * time.Millisecond},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		s.t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := hc.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return true
		}
		select {
		case <-s.exited:
			return false
		default:
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("cairn serve not healthy after 30s (last: %v):\n%s", err, s.log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM and waits for the server to exit (SIGKILL after 20s).
// It returns the server's exit error.
func (s *server) stop() error {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	select {
	case <-s.exited:
		return s.exitErr
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(20 * time.Second):
		s.t.Errorf("cairn serve did not exit 20s after SIGTERM; killing it")
		s.cmd.Process.Kill()
		<-s.exited
	}
	return s.exitErr
}

// alive fails the test if the server process has exited.
func (s *server) alive() {
	s.t.Helper()
	select {
	case <-s.exited:
		s.t.Fatalf("cairn serve exited (%v):\n%s", s.exitErr, s.log.String())
	default:
	}
}

// metric returns the sum of every series of the counter or gauge name on
// the server's /metrics page.
func (s *server) metric(name string) float64 {
	s.t.Helper()
	resp, err := http.Get("http://" + s.metrics + "/metrics")
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	var sum float64
	found := false
	for _, line := range strings.Split(string(body), "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
			continue
		}
		fields := strings.Fields(line)
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			s.t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
		found = true
	}
	if !found {
		s.t.Fatalf("no metric %s on /metrics", name)
	}
	return sum
}

// dial returns a raw gRPC connection to the server, for the tests that
// send what the CLI never would.
func (s *server) dial() *grpc.ClientConn {
	s.t.Helper()
	conn, err := grpc.NewClient(s.addr, s.creds(),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(32<<20), grpc.MaxCallSendMsgSize(64<<20)))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	return conn
}

// freePorts returns the gRPC, metrics and registry addresses for a server: three free
// ports of 127.0.0.1, held open together while they are picked so that
// they differ (picked one after the other, the kernel once handed out the
// same port twice and the server refused to start).
func freePorts(t *testing.T) (addr, metrics, reg string) {
	t.Helper()
	var ls [3]net.Listener
	for i := range ls {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ls[i] = l
	}
	return ls[0].Addr().String(), ls[1].Addr().String(), ls[2].Addr().String()
}

// result is what a CLI run did.
type result struct {
	args           []string
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("cairn %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.args, " "), r.code, r.stdout, r.stderr)
}

// cli runs the cairn CLI against s with stdin (may be nil) and returns
// what it did; it does not judge the exit code.
func (s *server) cli(stdin io.Reader, args ...string) result {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, cairnBin, args...)
	cmd.Env = append(os.Environ(), "CAIRN_SERVER="+s.addr)
	cmd.Stdin = stdin
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{args: args, stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		s.t.Fatalf("cairn %s: %v", strings.Join(args, " "), err)
	}
	return r
}

// ok runs the CLI and fails the test unless it exits 0.
func (s *server) ok(stdin io.Reader, args ...string) result {
	s.t.Helper()
	r := s.cli(stdin, args...)
	if r.code != 0 {
		s.t.Fatalf("%v", r)
	}
	return r
}

// want runs the CLI and fails the test unless it exits with code and its
// stderr contains every one of msgs.
func (s *server) want(code int, msgs []string, args ...string) result {
	s.t.Helper()
	r := s.cli(nil, args...)
	if r.code != code {
		s.t.Fatalf("want exit %d, got %v", code, r)
	}
	for _, m := range msgs {
		if !strings.Contains(r.stderr, m) {
			s.t.Errorf("stderr does not say %q: %v", m, r)
		}
	}
	return r
}

// okJSON runs the CLI with --json and decodes its stdout into v.
func (s *server) okJSON(v any, stdin io.Reader, args ...string) {
	s.t.Helper()
	r := s.ok(stdin, append(args, "--json")...)
	if err := json.Unmarshal([]byte(r.stdout), v); err != nil {
		s.t.Fatalf("decoding --json output: %v\n%v", err, r)
	}
}

// syncBuffer is a bytes.Buffer safe for a process's two output streams.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// goSrcTree returns the files of a subtree of the Go tree's sources, in
// name order: real text, real tar structure, and the same on every run of
// one Go version.
func goSrcTree(t *testing.T, sub string) map[string][]byte {
	t.Helper()
	root := filepath.Join(goroot, "src", sub)
	files := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files[filepath.ToSlash(filepath.Join(sub, rel))] = b
		return nil
	})
	if err != nil {
		t.Skipf("no Go sources to build layers from: %v", err)
	}
	return files
}

// writeTar writes files as a deterministic tar (sorted names, fixed
// metadata) to path and returns its bytes.
func writeTar(t *testing.T, path string, files map[string][]byte) []byte {
	t.Helper()
	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, n := range names {
		hdr := &tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n])), ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(files[n]); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// layerTree is the Go source subtree the test layers are made of: about
// 15 MB, or 5 MB with -short.
func layerTree() string {
	if testing.Short() {
		return "net"
	}
	return "crypto"
}

// edit returns a copy of files with n files (spread over the tree) changed
// by a line appended: the "similar layer" of a rebuild.
func edit(files map[string][]byte, n int) map[string][]byte {
	names := make([]string, 0, len(files))
	for name := range files {
		names = append(names, name)
	}
	sort.Strings(names)
	out := make(map[string][]byte, len(files))
	for k, v := range files {
		out[k] = v
	}
	for i := range n {
		name := names[(i*2+1)*len(names)/(2*n)]
		out[name] = append(bytes.Clone(files[name]), []byte("\n// edited by the e2e test\n")...)
	}
	return out
}
