package s3

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/cairnbuild/cairn/backend"
)

// data returns n seeded pseudo-random bytes.
func data(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, 0x5eed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func ctxT(tb testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	tb.Cleanup(cancel)
	return ctx
}

func readAll(tb testing.TB, s *Store, key string, offset, length int64) []byte {
	tb.Helper()
	rc, err := s.Open(ctxT(tb), key, offset, length)
	if err != nil {
		tb.Fatalf("Open(%s, %d, %d): %v", key, offset, length, err)
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		tb.Fatalf("Open(%s, %d, %d): read: %v", key, offset, length, err)
	}
	return got
}

func TestParseEndpoint(t *testing.T) {
	tests := []struct {
		in         string
		secure     bool
		wantHost   string
		wantSecure bool
		wantErr    string
	}{
		{in: "127.0.0.1:9000", wantHost: "127.0.0.1:9000"},
		{in: "s3.amazonaws.com", secure: true, wantHost: "s3.amazonaws.com", wantSecure: true},
		{in: "https://s3.amazonaws.com/", wantHost: "s3.amazonaws.com", wantSecure: true},
		{in: "http://minio:9000", wantHost: "minio:9000"},
		{in: "[::1]:9000", wantHost: "[::1]:9000"},
		{in: "", wantErr: "no endpoint"},
		{in: "http://minio:9000", secure: true, wantErr: "Secure is set"},
		{in: "ftp://minio", wantErr: "unknown scheme"},
		{in: "minio:9000/bucket", wantErr: "no path"},
		{in: "minio:", wantErr: "bad host:port"},
	}
	for _, tt := range tests {
		host, secure, err := parseEndpoint(tt.in, tt.secure)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseEndpoint(%q, %v): got error %v, want one containing %q", tt.in, tt.secure, err, tt.wantErr)
			}
			continue
		}
		if err != nil || host != tt.wantHost || secure != tt.wantSecure {
			t.Errorf("parseEndpoint(%q, %v) = %q, %v, %v; want %q, %v, nil", tt.in, tt.secure, host, secure, err, tt.wantHost, tt.wantSecure)
		}
	}
}

func TestNewRejectsBadOptions(t *testing.T) {
	ok := Options{Endpoint: "127.0.0.1:1", Bucket: "cairn", AccessKey: "a", SecretKey: "b"}
	tests := []struct {
		name    string
		edit    func(*Options)
		wantErr string
	}{
		{"no bucket", func(o *Options) { o.Bucket = "" }, "bucket"},
		{"upper-case bucket", func(o *Options) { o.Bucket = "Cairn" }, "bucket"},
		{"bucket with slash", func(o *Options) { o.Bucket = "a/b" }, "bucket"},
		{"no endpoint", func(o *Options) { o.Endpoint = "" }, "endpoint"},
		{"bad prefix", func(o *Options) { o.Prefix = "../x" }, "prefix"},
		{"tiny part size", func(o *Options) { o.PartSize = 1 << 20 }, "part size"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := ok
			tt.edit(&o)
			_, err := New(context.Background(), o)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("got error %v, want one mentioning %q", err, tt.wantErr)
			}
		})
	}
}

func TestNewUnreachable(t *testing.T) {
	// A port nothing listens on: refused at once, reported as unavailable.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	_, err = New(ctx, Options{Endpoint: addr, Bucket: "cairn", AccessKey: "a", SecretKey: "b", Region: "us-east-1"})
	mustBeIs(t, "New on a closed port", err, backend.ErrUnavailable)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("New on a closed port took %v; want a prompt failure", d)
	}
}

func TestNewCreatesBucket(t *testing.T) {
	opts := sharedOptions(t)
	opts.Bucket = "cairn-new-" + randomHex(4)
	opts.Prefix = ""
	s := openStore(t, opts)
	t.Cleanup(func() { _ = s.client.RemoveBucket(context.Background(), opts.Bucket) })
	ok, err := s.client.BucketExists(ctxT(t), opts.Bucket)
	if err != nil || !ok {
		t.Fatalf("BucketExists(%s) = %v, %v; want true", opts.Bucket, ok, err)
	}
	// Opening again finds the bucket there.
	if _, err := New(ctxT(t), opts); err != nil {
		t.Fatalf("second New: %v", err)
	}
}

func TestCredentialsFromEnvironment(t *testing.T) {
	opts := sharedOptions(t)
	t.Setenv("AWS_ACCESS_KEY_ID", opts.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", opts.SecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_REGION", "us-east-1")
	opts.AccessKey, opts.SecretKey, opts.Region = "", "", ""
	s := openStore(t, opts)
	if err := s.Put(ctxT(t), "k", strings.NewReader("env"), 3); err != nil {
		t.Fatalf("Put with credentials from the environment: %v", err)
	}

	t.Setenv("AWS_SECRET_ACCESS_KEY", "wrong")
	_, err := New(ctxT(t), opts)
	if err == nil {
		t.Fatal("New with a wrong secret key succeeded")
	}
	if errors.Is(err, backend.ErrUnavailable) {
		t.Errorf("wrong credentials reported as unavailable: %v", err)
	}
}

func TestRoundTrip(t *testing.T) {
	opts := sharedOptions(t)
	opts.PartSize = minPartSize // so that multipart is reachable cheaply
	s := openStore(t, opts)
	sizes := []int{0, 1, 1000, 256 << 10, 1 << 20, minPartSize + 1, 2*minPartSize + 12345}
	if testing.Short() {
		sizes = sizes[:5]
	}
	for i, n := range sizes {
		key := "rt/" + strings.Repeat("x", i+1)
		want := data(n, uint64(n))
		if err := s.Put(ctxT(t), key, bytes.NewReader(want), int64(n)); err != nil {
			t.Fatalf("Put(%d bytes): %v", n, err)
		}
		info, err := s.Stat(ctxT(t), key)
		if err != nil || info.Size != int64(n) || info.Key != key {
			t.Fatalf("Stat = %+v, %v; want size %d", info, err, n)
		}
		if got := readAll(t, s, key, 0, -1); !bytes.Equal(got, want) {
			t.Fatalf("Open(%d bytes): got %d bytes, not what was put", n, len(got))
		}
		// iotest.OneByteReader: minio-go must cope with tiny reads.
		if n < 1<<20 {
			if err := s.Put(ctxT(t), key, iotest.OneByteReader(bytes.NewReader(want)), int64(n)); err != nil {
				t.Fatalf("Put(%d bytes, one byte at a time): %v", n, err)
			}
		}
	}
}

func TestOpenRanges(t *testing.T) {
	s := newTestStore(t)
	const n = 1000
	obj := data(n, 1)
	if err := s.Put(ctxT(t), "r", bytes.NewReader(obj), n); err != nil {
		t.Fatal(err)
	}
	if err := s.Put(ctxT(t), "empty", bytes.NewReader(nil), 0); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key            string
		offset, length int64
		want           []byte
		wantErr        error
	}{
		{"r", 0, -1, obj, nil},
		{"r", 0, n, obj, nil},
		{"r", 0, 1, obj[:1], nil},
		{"r", 10, 20, obj[10:30], nil},
		{"r", n - 1, -1, obj[n-1:], nil},
		{"r", n - 1, 5, obj[n-1:], nil}, // cut at the end
		{"r", 500, 1 << 62, obj[500:], nil},
		{"r", 5, 0, nil, nil},
		{"r", n, -1, nil, nil}, // offset == size: empty
		{"r", n, 0, nil, nil},
		{"r", n, 10, nil, nil},
		{"r", n + 1, -1, nil, backend.ErrInvalidRange},
		{"r", n + 1, 0, nil, backend.ErrInvalidRange},
		{"r", -1, 1, nil, backend.ErrInvalidRange},
		{"empty", 0, -1, nil, nil},
		{"empty", 0, 1, nil, nil},
		{"empty", 1, -1, nil, backend.ErrInvalidRange},
		{"missing", 0, -1, nil, backend.ErrNotFound},
		{"missing", 0, 0, nil, backend.ErrNotFound},
		{"missing", 5, 5, nil, backend.ErrNotFound},
		{"bad//key", 0, -1, nil, backend.ErrInvalidKey},
	}
	for _, tt := range tests {
		rc, err := s.Open(ctxT(t), tt.key, tt.offset, tt.length)
		if tt.wantErr != nil {
			if !errors.Is(err, tt.wantErr) {
				t.Errorf("Open(%s, %d, %d): got error %v, want %v", tt.key, tt.offset, tt.length, err, tt.wantErr)
			}
			if rc != nil {
				rc.Close()
			}
			continue
		}
		if err != nil {
			t.Errorf("Open(%s, %d, %d): %v", tt.key, tt.offset, tt.length, err)
			continue
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if err != nil || !bytes.Equal(got, tt.want) {
			t.Errorf("Open(%s, %d, %d): read %d bytes, %v; want %d bytes", tt.key, tt.offset, tt.length, len(got), err, len(tt.want))
		}
	}
}

func TestMissingAndDelete(t *testing.T) {
	s := newTestStore(t)
	ctx := ctxT(t)
	if _, err := s.Stat(ctx, "nope"); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Stat(missing): got %v, want ErrNotFound", err)
	}
	if err := s.Delete(ctx, "nope"); err != nil {
		t.Errorf("Delete(missing): %v", err)
	}
	if err := s.Put(ctx, "k", strings.NewReader("abc"), 3); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Open(ctx, "k", 0, -1); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Open(deleted): got %v, want ErrNotFound", err)
	}
	for _, bad := range []string{"", "/a", "a/", "a/../b", "a b"} {
		if err := s.Put(ctx, bad, strings.NewReader(""), 0); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Put(%q): got %v, want ErrInvalidKey", bad, err)
		}
		if _, err := s.Stat(ctx, bad); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Stat(%q): got %v, want ErrInvalidKey", bad, err)
		}
	}
}

// errReader yields n bytes of zeros, then err.
type errReader struct {
	n   int
	err error
}

func (r *errReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	k := min(len(p), r.n)
	clear(p[:k])
	r.n -= k
	return k, nil
}

func TestPutSizeMismatchLeavesOldObject(t *testing.T) {
	opts := sharedOptions(t)
	opts.PartSize = minPartSize
	s := openStore(t, opts)
	ctx := ctxT(t)
	old := []byte("the old object")
	if err := s.Put(ctx, "k", bytes.NewReader(old), int64(len(old))); err != nil {
		t.Fatal(err)
	}
	readerBroke := errors.New("reader broke")
	big := minPartSize*2 + 100 // multipart
	tests := []struct {
		name    string
		r       io.Reader
		size    int64
		wantErr error
	}{
		{"short", bytes.NewReader(data(999, 2)), 1000, backend.ErrSizeMismatch},
		{"long", bytes.NewReader(data(1001, 2)), 1000, backend.ErrSizeMismatch},
		{"long by one", bytes.NewReader(data(2, 2)), 1, backend.ErrSizeMismatch},
		{"empty but has bytes", bytes.NewReader([]byte{1}), 0, backend.ErrSizeMismatch},
		{"empty reader, size 1", bytes.NewReader(nil), 1, backend.ErrSizeMismatch},
		{"reader error", &errReader{n: 500, err: readerBroke}, 1000, readerBroke},
		{"reader error after the last byte", &errReader{n: 1000, err: readerBroke}, 1000, readerBroke},
		{"multipart short", bytes.NewReader(data(big-1, 3)), int64(big), backend.ErrSizeMismatch},
		{"multipart long", bytes.NewReader(data(big+1, 3)), int64(big), backend.ErrSizeMismatch},
		{"multipart reader error", &errReader{n: minPartSize + 10, err: readerBroke}, int64(big), readerBroke},
	}
	for _, tt := range tests {
		if testing.Short() && strings.HasPrefix(tt.name, "multipart") {
			continue
		}
		err := s.Put(ctx, "k", tt.r, tt.size)
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("%s: Put: got %v, want %v", tt.name, err, tt.wantErr)
		}
		if errors.Is(err, backend.ErrUnavailable) {
			t.Errorf("%s: a bad reader is reported as unavailable: %v", tt.name, err)
		}
		if got := readAll(t, s, "k", 0, -1); !bytes.Equal(got, old) {
			t.Fatalf("%s: after the failed Put the object is %d bytes, want the old %d", tt.name, len(got), len(old))
		}
		// A failed Put of a new key leaves nothing either.
		_ = s.Put(ctx, "fresh", io.MultiReader(bytes.NewReader(old), bytes.NewReader(old)), int64(len(old)))
		if _, err := s.Stat(ctx, "fresh"); !errors.Is(err, backend.ErrNotFound) {
			t.Fatalf("%s: Stat after a failed Put of a new key: %v, want ErrNotFound", tt.name, err)
		}
	}
	if testing.Short() {
		return
	}
	// No incomplete multipart upload is left over either.
	for u := range s.client.ListIncompleteUploads(ctx, s.bucket, s.prefix, true) {
		if u.Err != nil {
			t.Fatal(u.Err)
		}
		t.Errorf("incomplete upload left behind: %s (%s)", u.Key, u.UploadID)
	}
}

func TestList(t *testing.T) {
	opts := sharedOptions(t)
	s := openStore(t, opts)
	// A second store in the same bucket must not be seen.
	other := opts
	other.Prefix = opts.Prefix + "-other"
	o := openStore(t, other)
	ctx := ctxT(t)
	want := map[string]int64{"a/1": 1, "a/2": 2, "ab": 3, "b/c/d": 4}
	for k, n := range want {
		if err := s.Put(ctx, k, bytes.NewReader(make([]byte, n)), n); err != nil {
			t.Fatal(err)
		}
	}
	if err := o.Put(ctx, "a/other", strings.NewReader("x"), 1); err != nil {
		t.Fatal(err)
	}
	list := func(prefix string) map[string]int64 {
		got := map[string]int64{}
		err := s.List(ctx, prefix, func(info backend.Info) error {
			got[info.Key] = info.Size
			return nil
		})
		if err != nil {
			t.Fatalf("List(%q): %v", prefix, err)
		}
		return got
	}
	if got := list(""); len(got) != 4 || got["b/c/d"] != 4 || got["a/1"] != 1 {
		t.Errorf("List(\"\") = %v, want %v", got, want)
	}
	if got := list("a/"); len(got) != 2 || got["a/2"] != 2 {
		t.Errorf("List(a/) = %v, want a/1 and a/2", got)
	}
	if got := list("a"); len(got) != 3 {
		t.Errorf("List(a) = %v, want a/1, a/2 and ab", got)
	}
	stop := errors.New("stop")
	calls := 0
	err := s.List(ctx, "", func(backend.Info) error { calls++; return stop })
	if !errors.Is(err, stop) || calls != 1 {
		t.Errorf("List with a failing fn: %d calls, error %v; want 1 call and the fn's error", calls, err)
	}
	if err := s.List(ctx, "/bad", func(backend.Info) error { return nil }); !errors.Is(err, backend.ErrInvalidKey) {
		t.Errorf("List(/bad): got %v, want ErrInvalidKey", err)
	}
}

func TestContextCancelled(t *testing.T) {
	s := newTestStore(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Put(ctx, "k", strings.NewReader("abc"), 3); !errors.Is(err, context.Canceled) {
		t.Errorf("Put with a cancelled context: got %v, want context.Canceled", err)
	}
	if _, err := s.Stat(ctx, "k"); !errors.Is(err, context.Canceled) {
		t.Errorf("Stat with a cancelled context: got %v, want context.Canceled", err)
	}
	if _, err := s.Open(ctx, "k", 0, -1); !errors.Is(err, context.Canceled) {
		t.Errorf("Open with a cancelled context: got %v, want context.Canceled", err)
	}
}
