package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// serveLog is a stderr that the server's goroutines and the test share.
type serveLog struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *serveLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *serveLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// startServe runs `cairn serve args...` in-process with env as its
// environment, waits for the start-up line and returns the log, the
// listen and metrics addresses from it, and a stop function that cancels
// the run (as SIGTERM does) and returns its exit code.
func startServe(t *testing.T, env map[string]string, args ...string) (log *serveLog, listen, metricsURL string, stop func() int) {
	t.Helper()
	log = &serveLog{}
	a := &app{stdin: strings.NewReader(""), stdout: io.Discard, stderr: log, getenv: func(k string) string { return env[k] }}
	ctx, cancel := context.WithCancel(context.Background())
	code := make(chan int, 1)
	// The registry on a port of its own unless args set one (the default,
	// 5000, would collide between tests).
	args = append([]string{"serve", "--registry-listen", "127.0.0.1:0"}, args...)
	go func() { code <- run(ctx, a, args) }()
	var (
		once     sync.Once
		exitCode = -1
	)
	stop = func() int { // idempotent, for defer
		once.Do(func() {
			cancel()
			select {
			case exitCode = <-code:
			case <-time.After(30 * time.Second):
				t.Errorf("serve did not stop; log:\n%s", log)
			}
		})
		return exitCode
	}
	started := regexp.MustCompile(`msg="cairn serving" listen=(\S+) .* metrics=(\S+)`)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if m := started.FindStringSubmatch(log.String()); m != nil {
			return log, m[1], m[2], stop
		}
		select {
		case c := <-code:
			t.Fatalf("serve exited with %d before serving; log:\n%s", c, log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			t.Fatalf("no start-up line; log:\n%s", log)
		}
	}
}

func TestServe(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	// The listen address comes from the environment twin, the data
	// directory from a flag.
	log, listen, metricsURL, stop := startServe(t,
		map[string]string{"CAIRN_LISTEN": "127.0.0.1:0", "CAIRN_METRICS_LISTEN": "127.0.0.1:0", "CAIRN_DATA": "/nonexistent/ignored"},
		"--data", data, "--grace-period", "2s")
	defer func() {
		if t.Failed() {
			t.Logf("serve log:\n%s", log)
		}
	}()
	line := log.String()
	for _, want := range []string{"backend=fs", "blobs=" + filepath.Join(data, "blobs"), "index=" + filepath.Join(data, "index"), "metrics=http://127.0.0.1:"} {
		if !strings.Contains(line, want) {
			t.Errorf("start-up line lacks %q:\n%s", want, line)
		}
	}

	conn, err := grpc.NewClient(listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "cairn.v1.LayerService"})
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health check: %v, %v", resp, err)
	}

	// One push over real TCP, so that the blob store has seen requests.
	layer := []byte("a small layer")
	push, err := cairnv1.NewLayerServiceClient(conn).PushLayer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	push.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{ExpectedDigest: digest.FromBytes(layer).String()}}})
	push.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: layer}})
	if _, err := push.CloseAndRecv(); err != nil {
		t.Fatalf("push: %v", err)
	}

	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, metricsURL, nil)
	mresp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(mresp.Body)
	mresp.Body.Close()
	for _, want := range []string{
		`cairn_rpc_requests_total{code="OK",method="grpc.health.v1.Health/Check"} 1`,
		`cairn_rpc_requests_total{code="OK",method="cairn.v1.LayerService/PushLayer"} 1`,
		"cairn_logical_bytes 13", "cairn_chunks 1", `cairn_step_lookups_total{result="hit"} 0`,
		`cairn_backend_requests_total{op="put",result="ok"}`, "cairn_backend_request_duration_seconds_bucket",
		"cairn_bytes_received_total 13", "go_goroutines",
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	if code := stop(); code != exitOK {
		t.Errorf("exit code %d after shutdown, want 0", code)
	}
	if !strings.Contains(log.String(), `msg=stopped`) {
		t.Errorf("no shutdown line in the log")
	}
	if _, err := os.Stat(filepath.Join(data, "index")); err != nil {
		t.Errorf("index directory: %v", err)
	}
	if _, err := os.Stat("/nonexistent/ignored"); err == nil {
		t.Errorf("the environment twin won over the flag")
	}
}

func TestServeConfigErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"bucket without endpoint", nil, []string{"--s3-bucket", "b"}, "--s3-bucket needs --s3-endpoint"},
		{"endpoint without bucket", map[string]string{"CAIRN_S3_ENDPOINT": "127.0.0.1:9000"}, nil, "--s3-endpoint needs --s3-bucket"},
		{"half the credentials", nil, []string{"--s3-endpoint", "x:1", "--s3-bucket", "b", "--s3-access-key", "k"}, "go together"},
		{"tiny messages", nil, []string{"--max-recv-msg-size", "1MiB"}, "--max-recv-msg-size"},
		{"unparsable size", nil, []string{"--max-recv-msg-size", "lots"}, "--max-recv-msg-size"},
		{"bad twin", map[string]string{"CAIRN_GRACE_PERIOD": "soon"}, nil, `CAIRN_GRACE_PERIOD="soon"`},
		{"bad listen", nil, []string{"--listen", "7070"}, "--listen"},
		{"bad log level", nil, []string{"--log-level", "loud"}, "--log-level"},
		{"same port twice", nil, []string{"--listen", "127.0.0.1:7070", "--metrics-listen", "127.0.0.1:7070"}, "both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			a := &app{stdin: strings.NewReader(""), stdout: io.Discard, stderr: &stderr, getenv: func(k string) string { return tt.env[k] }}
			args := append([]string{"serve", "--data", t.TempDir()}, tt.args...)
			if code := run(context.Background(), a, args); code != exitFailure {
				t.Errorf("exit code %d, want %d", code, exitFailure)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tt.want)
			}
		})
	}
}

func TestServeHelpNamesTwins(t *testing.T) {
	var stdout bytes.Buffer
	a := &app{stdin: strings.NewReader(""), stdout: &stdout, stderr: io.Discard, getenv: func(string) string { return "" }}
	if code := run(context.Background(), a, []string{"serve", "--help"}); code != exitOK {
		t.Fatalf("exit code %d", code)
	}
	for _, want := range []string{"[$CAIRN_DATA]", "[$CAIRN_LISTEN]", "[$CAIRN_METRICS_LISTEN]", "[$CAIRN_S3_ENDPOINT]", "[$CAIRN_S3_SECRET_KEY]", "[$CAIRN_GRACE_PERIOD]"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("help lacks %s", want)
		}
	}
}

// TestServeS3 runs serve against the MinIO that scripts/test.sh starts
// (CAIRN_TEST_S3_*), configured through the environment twins only.
func TestServeS3(t *testing.T) {
	endpoint := os.Getenv("CAIRN_TEST_S3_ENDPOINT")
	if endpoint == "" {
		t.Skip("CAIRN_TEST_S3_ENDPOINT not set (scripts/test.sh starts MinIO and sets it)")
	}
	bucket := "cairn-serve-" + strings.ToLower(strings.ReplaceAll(time.Now().UTC().Format("150405.000000000"), ".", ""))
	log, listen, _, stop := startServe(t, map[string]string{
		"CAIRN_DATA":          t.TempDir(),
		"CAIRN_LISTEN":        "127.0.0.1:0",
		"CAIRN_S3_ENDPOINT":   endpoint,
		"CAIRN_S3_BUCKET":     bucket,
		"CAIRN_S3_PREFIX":     "ci",
		"CAIRN_S3_ACCESS_KEY": os.Getenv("CAIRN_TEST_S3_ACCESS_KEY"),
		"CAIRN_S3_SECRET_KEY": os.Getenv("CAIRN_TEST_S3_SECRET_KEY"),
		"CAIRN_S3_INSECURE":   "true",
	})
	defer stop()
	line := log.String()
	if !strings.Contains(line, "backend=s3") || !strings.Contains(line, bucket) {
		t.Errorf("start-up line does not name S3 and the bucket:\n%s", line)
	}
	if strings.Contains(line, os.Getenv("CAIRN_TEST_S3_SECRET_KEY")) {
		t.Errorf("the secret key is in the log")
	}
	conn, err := grpc.NewClient(listen, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	layers := cairnv1.NewLayerServiceClient(conn)
	data := bytes.Repeat([]byte("cairn on s3 "), 100_000)
	d := digest.FromBytes(data).String()
	push, err := layers.PushLayer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	push.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Header{Header: &cairnv1.PushLayerHeader{ExpectedDigest: d}}})
	for rest := data; len(rest) > 0; {
		n := min(len(rest), cairnv1.MaxDataMessageBytes)
		push.Send(&cairnv1.PushLayerRequest{Content: &cairnv1.PushLayerRequest_Data{Data: rest[:n]}})
		rest = rest[n:]
	}
	if _, err := push.CloseAndRecv(); err != nil {
		t.Fatalf("push: %v", err)
	}
	pull, err := layers.PullLayer(ctx, &cairnv1.PullLayerRequest{Digest: d})
	if err != nil {
		t.Fatal(err)
	}
	var got []byte
	for {
		resp, err := pull.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("pull: %v", err)
		}
		got = append(got, resp.GetData()...)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("pulled %d bytes, pushed %d", len(got), len(data))
	}
	if code := stop(); code != exitOK {
		t.Errorf("exit code %d", code)
	}
}
