package client

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// randomBytes returns n bytes from a seeded generator: the same every run.
func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n+8)
	for i := 0; i < n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b[:n:n]
}

// layerSize is the size of the test layers: several batches, smaller under
// -short (and -race).
func layerSize() int {
	if testing.Short() {
		return 6 << 20
	}
	return 24 << 20
}

func TestPushPullRoundTrip(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		size int
	}{
		{"empty", 0},
		{"one byte", 1},
		{"below min chunk", 1000},
		{"several batches", layerSize()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeServer()
			c := startFake(t, f)
			data := randomBytes(1, tc.size)
			var progress int64
			res, err := c.Push(ctx, bytes.NewReader(data), PushOptions{
				Size: int64(len(data)), Progress: func(n int64) { progress = n },
			})
			if err != nil {
				t.Fatal(err)
			}
			if want := digest.FromBytes(data); res.Digest != want {
				t.Errorf("digest = %s, want %s", res.Digest, want)
			}
			if res.Size != int64(len(data)) || res.BytesSent != int64(len(data)) || progress != int64(len(data)) {
				t.Errorf("size %d, bytes sent %d, progress %d; want all %d", res.Size, res.BytesSent, progress, len(data))
			}
			var out bytes.Buffer
			pr, err := c.Pull(ctx, res.Digest, &out, PullOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), data) || pr.BytesWritten != int64(len(data)) {
				t.Errorf("pulled %d bytes (result says %d), want the %d pushed", out.Len(), pr.BytesWritten, len(data))
			}
		})
	}
}

func TestPushSendsOnlyMissingChunks(t *testing.T) {
	ctx := context.Background()
	f := newFakeServer()
	c := startFake(t, f)
	a := randomBytes(2, layerSize())
	if _, err := c.Push(ctx, bytes.NewReader(a), PushOptions{}); err != nil {
		t.Fatal(err)
	}
	// A similar layer: three small edits.
	b := bytes.Clone(a)
	for _, off := range []int{len(b) / 5, len(b) / 2, len(b) - 100} {
		copy(b[off:], "edited")
	}
	res, err := c.Push(ctx, bytes.NewReader(b), PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// Each edit dirties a chunk or two (1 MiB at most each).
	if res.BytesSent == 0 || res.BytesSent > 6<<20 || res.ChunksSent > 6 {
		t.Errorf("second push sent %d chunks, %d bytes of %d; want a few chunks", res.ChunksSent, res.BytesSent, len(b))
	}
	if f.putBytes != int64(len(a))+res.BytesSent {
		t.Errorf("server received %d chunk bytes, want %d", f.putBytes, int64(len(a))+res.BytesSent)
	}
	// The same layer again sends nothing.
	res, err = c.Push(ctx, bytes.NewReader(b), PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesSent != 0 {
		t.Errorf("third push sent %d bytes, want 0", res.BytesSent)
	}
}

func TestPushSendsRepeatedChunkOnce(t *testing.T) {
	f := newFakeServer()
	c := startFake(t, f)
	// A random 3 MiB block four times over: after the first copy the
	// chunker falls back into the same boundaries.
	block := randomBytes(3, 3<<20)
	data := bytes.Repeat(block, 4)
	res, err := c.Push(context.Background(), bytes.NewReader(data), PushOptions{WindowBytes: 1})
	if err != nil {
		t.Fatal(err)
	}
	if res.BytesSent > int64(len(block))+(2<<20) {
		t.Errorf("sent %d bytes of %d; a repeated chunk should go once", res.BytesSent, len(data))
	}
}

func TestPushRejects(t *testing.T) {
	ctx := context.Background()
	data := randomBytes(4, 300<<10)
	for _, tc := range []struct {
		name string
		opts PushOptions
		want error
	}{
		{"wrong expected digest", PushOptions{ExpectedDigest: digest.FromString("something else")}, ErrDigestMismatch},
		{"malformed expected digest", PushOptions{ExpectedDigest: "sha256:abc"}, ErrInvalidArgument},
		{"truncated input", PushOptions{Size: int64(len(data)) + 1}, ErrInvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeServer()
			c := startFake(t, f)
			_, err := c.Push(ctx, bytes.NewReader(data), tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want %v", err, tc.want)
			}
			if len(f.layers) != 0 {
				t.Errorf("%d layers committed, want none", len(f.layers))
			}
		})
	}
}

func TestPullRanges(t *testing.T) {
	ctx := context.Background()
	f := newFakeServer()
	c := startFake(t, f)
	data := randomBytes(5, 3<<20)
	res, err := c.Push(ctx, bytes.NewReader(data), PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n := int64(len(data))
	for _, tc := range []struct {
		name           string
		offset, length int64
	}{
		{"whole", 0, 0},
		{"first byte", 0, 1},
		{"last byte", n - 1, 0},
		{"at the end", n, 0},
		{"middle across chunks", 100_000, 2 << 20},
		{"length past the end", n - 10, 100},
	} {
		for _, cached := range []bool{false, true} {
			name := tc.name
			if cached {
				name += " via chunk cache"
			}
			t.Run(name, func(t *testing.T) {
				opts := PullOptions{Offset: tc.offset, Length: tc.length}
				if cached {
					opts.ChunkCacheDir = t.TempDir()
				}
				var out bytes.Buffer
				if _, err := c.Pull(ctx, res.Digest, &out, opts); err != nil {
					t.Fatal(err)
				}
				want := data[tc.offset:]
				if tc.length > 0 && tc.length < int64(len(want)) {
					want = want[:tc.length]
				}
				if !bytes.Equal(out.Bytes(), want) {
					t.Errorf("got %d bytes, want %d (offset %d, length %d)", out.Len(), len(want), tc.offset, tc.length)
				}
			})
		}
	}
	_, err = c.Pull(ctx, res.Digest, &bytes.Buffer{}, PullOptions{Offset: n + 1})
	if !errors.Is(err, ErrOutOfRange) {
		t.Errorf("offset past the end: err = %v, want ErrOutOfRange", err)
	}
	_, err = c.Pull(ctx, res.Digest, &bytes.Buffer{}, PullOptions{Offset: n + 1, ChunkCacheDir: t.TempDir()})
	if !errors.Is(err, ErrOutOfRange) {
		t.Errorf("offset past the end, chunk cache: err = %v, want ErrOutOfRange", err)
	}
}

func TestPullChunkCacheFetchesOnlyMissing(t *testing.T) {
	ctx := context.Background()
	f := newFakeServer()
	c := startFake(t, f)
	a := randomBytes(6, layerSize())
	b := bytes.Clone(a)
	copy(b[len(b)/2:], "edited")
	ra, err := c.Push(ctx, bytes.NewReader(a), PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	rb, err := c.Push(ctx, bytes.NewReader(b), PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pull := func(d digest.Digest, want []byte) PullResult {
		t.Helper()
		var out bytes.Buffer
		res, err := c.Pull(ctx, d, &out, PullOptions{ChunkCacheDir: dir})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(out.Bytes(), want) {
			t.Fatalf("pulled %d bytes that differ from the %d pushed", out.Len(), len(want))
		}
		return res
	}
	if res := pull(ra.Digest, a); res.BytesFetched != int64(len(a)) || res.ChunksCached != 0 {
		t.Errorf("cold pull fetched %d bytes, %d chunks cached; want %d, 0", res.BytesFetched, res.ChunksCached, len(a))
	}
	if res := pull(rb.Digest, b); res.BytesFetched == 0 || res.BytesFetched > 2<<20 {
		t.Errorf("pull of the similar layer fetched %d bytes, want a chunk or two", res.BytesFetched)
	}
	if res := pull(ra.Digest, a); res.BytesFetched != 0 {
		t.Errorf("warm pull fetched %d bytes, want 0", res.BytesFetched)
	}

	// A damaged chunk in the directory is noticed, fetched again, and
	// replaced.
	var damaged string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() && damaged == "" {
			damaged = p
		}
		return nil
	})
	if err := os.WriteFile(damaged, []byte("not the chunk"), 0o644); err != nil {
		t.Fatal(err)
	}
	if res := pull(ra.Digest, a); res.ChunksFetched != 1 {
		t.Errorf("after damaging one chunk file the pull fetched %d chunks, want 1", res.ChunksFetched)
	}
	if res := pull(ra.Digest, a); res.ChunksFetched != 0 {
		t.Errorf("the damaged chunk was not replaced: %d fetched", res.ChunksFetched)
	}
}

func TestNotFoundAndBadDigests(t *testing.T) {
	ctx := context.Background()
	c := startFake(t, newFakeServer())
	missing := digest.FromString("no such layer")
	if _, err := c.Stat(ctx, missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("stat: err = %v, want ErrNotFound", err)
	}
	if _, err := c.Pull(ctx, missing, &bytes.Buffer{}, PullOptions{}); !errors.Is(err, ErrNotFound) {
		t.Errorf("pull: err = %v, want ErrNotFound", err)
	}
	if _, err := c.Pull(ctx, missing, &bytes.Buffer{}, PullOptions{ChunkCacheDir: t.TempDir()}); !errors.Is(err, ErrNotFound) {
		t.Errorf("pull via chunk cache: err = %v, want ErrNotFound", err)
	}
	if err := c.Delete(ctx, missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("delete: err = %v, want ErrNotFound", err)
	}
	for _, bad := range []digest.Digest{"", "sha256:xyz", "md5:d41d8cd98f00b204e9800998ecf8427e"} {
		if _, err := c.Pull(ctx, bad, &bytes.Buffer{}, PullOptions{}); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("pull %q: err = %v, want ErrInvalidArgument", bad, err)
		}
	}
}

func TestSteps(t *testing.T) {
	ctx := context.Background()
	c := startFake(t, newFakeServer())
	layer, err := c.Push(ctx, bytes.NewReader(randomBytes(7, 100<<10)), PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	steps := []Step{
		{Instruction: "RUN make", Platform: "linux/amd64"},
		{Instruction: "ENV A=1", Platform: "linux/amd64"},
		{Instruction: "RUN make install", Platform: "linux/amd64"},
	}
	if _, err := c.LookupStep(ctx, "", steps[0]); !errors.Is(err, ErrMiss) {
		t.Fatalf("lookup before record: err = %v, want ErrMiss", err)
	}
	r1, err := c.RecordStep(ctx, "", steps[0], &LayerRef{Digest: layer.Digest}, nil)
	if err != nil {
		t.Fatal(err)
	}
	r2, err := c.RecordStep(ctx, r1.Next, steps[1], nil, []byte(`{"Env":["A=1"]}`))
	if err != nil {
		t.Fatal(err)
	}
	hit, err := c.LookupStep(ctx, r1.Next, steps[1])
	if err != nil {
		t.Fatal(err)
	}
	if hit.Key != r2.Key || hit.Layer != nil || string(hit.Config) != `{"Env":["A=1"]}` {
		t.Errorf("lookup = %+v, want the record %+v", hit, r2)
	}
	got, err := c.LookupChain(ctx, "", steps)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Layer == nil || got[0].Layer.Digest != layer.Digest || got[1].Next != r2.Next {
		t.Errorf("chain = %+v, want the two recorded steps", got)
	}
	_, err = c.RecordStep(ctx, "", steps[2], &LayerRef{Digest: digest.FromString("not pushed")}, nil)
	if !errors.Is(err, ErrFailedPrecondition) {
		t.Errorf("record with a layer not pushed: err = %v, want ErrFailedPrecondition", err)
	}
}

func TestWrapErr(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want error
	}{
		{cairnErr(codes.InvalidArgument, cairnv1.ReasonDigestMismatch, "x"), ErrDigestMismatch},
		{cairnErr(codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "x"), ErrInvalidArgument},
		{cairnErr(codes.NotFound, cairnv1.ReasonNotFound, "x"), ErrNotFound},
		{cairnErr(codes.Unavailable, cairnv1.ReasonUnavailable, "x"), ErrUnavailable},
		{cairnErr(codes.ResourceExhausted, cairnv1.ReasonResourceExhausted, "x"), ErrResourceExhausted},
		{cairnErr(codes.DeadlineExceeded, "", "x"), context.DeadlineExceeded},
		{cairnErr(codes.Internal, "", "x"), ErrServer},
	} {
		if got := wrapErr("op", tc.err); !errors.Is(got, tc.want) {
			t.Errorf("wrapErr(%v) = %v, want it to match %v", tc.err, got, tc.want)
		}
	}
	if errors.Is(wrapErr("op", cairnErr(codes.InvalidArgument, cairnv1.ReasonInvalidDigest, "x")), ErrDigestMismatch) {
		t.Error("an invalid digest matches ErrDigestMismatch")
	}
}

// patternReader yields n pseudo-random bytes without holding them.
type patternReader struct {
	r *rand.Rand
	n int64
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.n == 0 {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n)]
	for i := range b {
		b[i] = byte(p.r.Uint32())
	}
	p.n -= int64(len(b))
	return len(b), nil
}

// TestPushMemoryBounded pushes a layer several times the size of the
// push window and checks that the heap stays within the window and
// fixed buffers, never growing with the layer.
func TestPushMemoryBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("pushes 256 MiB")
	}
	const size = 256 << 20
	f := newFakeServer()
	f.discard = true
	c := startFake(t, f)
	// Collect often, so that the heap in use tracks what is live rather
	// than garbage waiting for a collection.
	defer debug.SetGCPercent(debug.SetGCPercent(20))
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var m runtime.MemStats
		for {
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			runtime.ReadMemStats(&m)
			if m.HeapInuse > peak.Load() {
				peak.Store(m.HeapInuse)
			}
		}
	}()
	res, err := c.Push(context.Background(), &patternReader{r: rand.New(rand.NewPCG(8, 8)), n: size}, PushOptions{})
	close(stop)
	<-done
	if err != nil {
		t.Fatal(err)
	}
	if res.Size != size {
		t.Fatalf("pushed %d bytes, want %d", res.Size, size)
	}
	// The window, the chunker's buffer, and gRPC's buffers on both ends
	// (the fake server runs in this process).
	limit := base.HeapInuse + DefaultWindowBytes + 64<<20
	t.Logf("heap in use: %d MiB before, %d MiB at the peak of a %d MiB push", base.HeapInuse>>20, peak.Load()>>20, size>>20)
	if peak.Load() > limit {
		t.Errorf("heap in use peaked at %d MiB, want at most %d MiB", peak.Load()>>20, limit>>20)
	}
}
