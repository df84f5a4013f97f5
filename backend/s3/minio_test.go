package s3

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// requireEnv returns the value of the environment variable name. When it is
// empty the test is skipped, or fails under CI (CI=true), where a missing
// MinIO is a broken set-up rather than an optional extra.
func requireEnv(tb testing.TB, name string) string {
	tb.Helper()
	v := os.Getenv(name)
	if v == "" {
		msg := name + " is not set: the S3 tests need a MinIO server " +
			"(scripts/test.sh starts one; by hand: . scripts/tools.sh && start_minio)"
		if os.Getenv("CI") == "true" {
			tb.Fatal(msg)
		}
		tb.Skip(msg)
	}
	return v
}

// sharedOptions returns Options for the MinIO server the test script
// started (CAIRN_TEST_S3_*), with a random bucket-less Prefix.
func sharedOptions(tb testing.TB) Options {
	tb.Helper()
	return Options{
		Endpoint:  requireEnv(tb, "CAIRN_TEST_S3_ENDPOINT"),
		AccessKey: requireEnv(tb, "CAIRN_TEST_S3_ACCESS_KEY"),
		SecretKey: requireEnv(tb, "CAIRN_TEST_S3_SECRET_KEY"),
		Bucket:    "cairn-test",
		Region:    "us-east-1",
		Prefix:    "t-" + randomHex(6),
	}
}

// newTestStore opens a Store on the shared MinIO under a fresh random
// prefix and empties that prefix when the test ends.
func newTestStore(tb testing.TB) *Store {
	tb.Helper()
	return openStore(tb, sharedOptions(tb))
}

// openStore opens a Store with opts and deletes everything under its prefix
// when the test ends.
func openStore(tb testing.TB, opts Options) *Store {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := New(ctx, opts)
	if err != nil {
		tb.Fatalf("New(%+v): %v", redact(opts), err)
	}
	tb.Cleanup(func() { emptyStore(tb, s) })
	return s
}

// emptyStore deletes every object under s's prefix, in batches.
func emptyStore(tb testing.TB, s *Store) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if ok, err := s.client.BucketExists(ctx, s.bucket); err != nil || !ok {
		return // the test removed it, or the server is gone
	}
	objects := s.client.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, Recursive: true})
	for rerr := range s.client.RemoveObjects(ctx, s.bucket, objects, minio.RemoveObjectsOptions{}) {
		if rerr.Err != nil && minio.ToErrorResponse(rerr.Err).Code != "NoSuchBucket" {
			tb.Logf("cleanup: delete %s: %v", rerr.ObjectName, rerr.Err)
		}
	}
}

func redact(o Options) Options {
	if o.SecretKey != "" {
		o.SecretKey = "***"
	}
	return o
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

// minioServer is a MinIO process of the test's own, for fault injection:
// it can be killed (SIGKILL) and restarted on the same address and data
// directory. It listens on 127.0.0.1 only.
type minioServer struct {
	tb             testing.TB
	bin, dir       string
	addr, console  string
	access, secret string
	cmd            *exec.Cmd
	exited         chan struct{}
	logf           *os.File
}

// startMinio starts a private MinIO from CAIRN_TEST_MINIO_BIN on a free
// port with a temporary data directory; it is stopped when the test ends.
func startMinio(tb testing.TB) *minioServer {
	tb.Helper()
	bin := requireEnv(tb, "CAIRN_TEST_MINIO_BIN")
	m := &minioServer{
		tb:      tb,
		bin:     bin,
		dir:     tb.TempDir(),
		addr:    freeAddr(tb),
		console: freeAddr(tb),
		access:  "cairn" + randomHex(6),
		secret:  randomHex(18),
	}
	m.start()
	tb.Cleanup(m.stop)
	return m
}

func freeAddr(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start runs the server and waits until it reports ready.
func (m *minioServer) start() {
	m.tb.Helper()
	if err := m.tryStart(); err != nil {
		m.tb.Fatal(err)
	}
}

// tryStart is start for goroutines other than the test's: it returns the
// error instead of failing the test.
func (m *minioServer) tryStart() error {
	if m.cmd != nil {
		return errors.New("minio: start while running")
	}
	logf, err := os.OpenFile(filepath.Join(m.dir, "minio.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(m.bin, "server", "--quiet", "--address", m.addr,
		"--console-address", m.console, filepath.Join(m.dir, "data"))
	cmd.Env = append(os.Environ(),
		"MINIO_ROOT_USER="+m.access, "MINIO_ROOT_PASSWORD="+m.secret,
		"MINIO_BROWSER=off", "MINIO_UPDATE=off")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("minio: %v", err)
	}
	m.cmd, m.logf, m.exited = cmd, logf, make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); close(done) }(m.exited)

	deadline := time.Now().Add(30 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		resp, err := client.Get("http://" + m.addr + "/minio/health/cluster")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-m.exited:
			m.cmd = nil
			logf.Close()
			return fmt.Errorf("minio exited at start-up:\n%s", m.log())
		case <-time.After(50 * time.Millisecond):
		}
	}
	m.kill()
	return fmt.Errorf("minio not ready after 30s:\n%s", m.log())
}

// kill stops the server with SIGKILL, as a crash would, and waits for it.
func (m *minioServer) kill() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Kill()
	<-m.exited
	m.logf.Close()
	m.cmd = nil
}

func (m *minioServer) stop() { m.kill() }

func (m *minioServer) log() string {
	b, _ := os.ReadFile(filepath.Join(m.dir, "minio.log"))
	return string(bytes.TrimSpace(b))
}

// options returns Options for a store on this server.
func (m *minioServer) options(bucket string) Options {
	return Options{
		Endpoint:  m.addr,
		AccessKey: m.access,
		SecretKey: m.secret,
		Bucket:    bucket,
		Region:    "us-east-1",
	}
}

// mustBeIs fails the test unless errors.Is(err, target).
func mustBeIs(tb testing.TB, what string, err, target error) {
	tb.Helper()
	if !errors.Is(err, target) {
		tb.Fatalf("%s: got error %v, want one wrapping %v", what, err, target)
	}
}
