package backendtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend"
)

// Options tunes the suite for a backend. The zero value runs everything
// with the defaults below.
type Options struct {
	// LargeObjectSize is the size of the object streamed through the store
	// to check that memory stays bounded. Default 256 MiB. A negative value
	// skips the test, for stores that keep objects in memory by design
	// (mem). The test is also skipped under -short.
	LargeObjectSize int64

	// MaxLargeHeap is how far the live heap may grow above its starting
	// point while the large object is written and read back. Default 64 MiB:
	// a quarter of the default object, and room for an S3 client's part
	// buffers.
	MaxLargeHeap int64

	// ListKeys is how many objects the listing test writes. Default 10 000,
	// enough to cross many pages of an S3 listing (1 000 keys a page); 1 500
	// under -short, still more than one page.
	ListKeys int
}

func (o Options) withDefaults() Options {
	if o.LargeObjectSize == 0 {
		o.LargeObjectSize = 256 << 20
	}
	if o.MaxLargeHeap == 0 {
		o.MaxLargeHeap = 64 << 20
	}
	if o.ListKeys == 0 {
		o.ListKeys = 10000
		if testing.Short() {
			o.ListKeys = 1500
		}
	}
	return o
}

// Run runs the conformance suite against the stores newStore returns.
// newStore is called once per subtest and must return an empty store; it
// may register cleanups (and checks) with t.Cleanup.
func Run(t *testing.T, newStore func(t *testing.T) backend.Store) {
	RunWithOptions(t, newStore, Options{})
}

// RunWithOptions is Run with the suite tuned by opts.
func RunWithOptions(t *testing.T, newStore func(t *testing.T) backend.Store, opts Options) {
	opts = opts.withDefaults()
	s := suite{newStore: newStore, opts: opts}
	tests := []struct {
		name string
		fn   func(t *testing.T)
	}{
		{"RoundTrip", s.testRoundTrip},
		{"Overwrite", s.testOverwrite},
		{"Ranges", s.testRanges},
		{"RangesEmptyObject", s.testRangesEmpty},
		{"Missing", s.testMissing},
		{"SizeMismatch", s.testSizeMismatch},
		{"ReaderError", s.testReaderError},
		{"NegativeSize", s.testNegativeSize},
		{"ReaderPosition", s.testReaderPosition},
		{"ConcurrentPutSameKey", s.testConcurrentPut},
		{"NestedKeys", s.testNestedKeys},
		{"List", s.testList},
		{"ListStops", s.testListStops},
		{"DeleteTwice", s.testDeleteTwice},
		{"BadKeys", s.testBadKeys},
		{"BadPrefixes", s.testBadPrefixes},
		{"MaxKeyLen", s.testMaxKeyLen},
		{"ContextCancelled", s.testContextCancelled},
		{"ContextCancelledMidPut", s.testContextCancelledMidPut},
		{"LargeObject", s.testLargeObject},
	}
	for _, tc := range tests {
		t.Run(tc.name, tc.fn)
	}
}

type suite struct {
	newStore func(t *testing.T) backend.Store
	opts     Options
}

// put stores data under key and fails the test on error.
func put(t *testing.T, s backend.Store, key string, data []byte) {
	t.Helper()
	if err := s.Put(context.Background(), key, bytes.NewReader(data), int64(len(data))); err != nil {
		t.Fatalf("Put(%q, %d bytes): %v", key, len(data), err)
	}
}

// read returns the bytes of Open(key, offset, length).
func read(t *testing.T, s backend.Store, key string, offset, length int64) ([]byte, error) {
	t.Helper()
	rc, err := s.Open(context.Background(), key, offset, length)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

// mustRead is read that fails the test on error.
func mustRead(t *testing.T, s backend.Store, key string, offset, length int64) []byte {
	t.Helper()
	b, err := read(t, s, key, offset, length)
	if err != nil {
		t.Fatalf("Open(%q, %d, %d): %v", key, offset, length, err)
	}
	return b
}

// absent checks that key holds no object, by Stat, Open and List.
func absent(t *testing.T, s backend.Store, key string) {
	t.Helper()
	ctx := context.Background()
	if info, err := s.Stat(ctx, key); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Stat(%q) = %+v, %v; want ErrNotFound", key, info, err)
	}
	if _, err := read(t, s, key, 0, -1); !errors.Is(err, backend.ErrNotFound) {
		t.Errorf("Open(%q): %v; want ErrNotFound", key, err)
	}
	err := s.List(ctx, key, func(info backend.Info) error {
		if info.Key == key {
			t.Errorf("List(%q) still shows %+v", key, info)
		}
		return nil
	})
	if err != nil {
		t.Errorf("List(%q): %v", key, err)
	}
}

// holds checks that key holds exactly want.
func holds(t *testing.T, s backend.Store, key string, want []byte) {
	t.Helper()
	info, err := s.Stat(context.Background(), key)
	if err != nil {
		t.Fatalf("Stat(%q): %v", key, err)
	}
	if info.Key != key || info.Size != int64(len(want)) {
		t.Errorf("Stat(%q) = %+v, want key %q size %d", key, info, key, len(want))
	}
	got := mustRead(t, s, key, 0, -1)
	if !bytes.Equal(got, want) {
		t.Errorf("Open(%q) returned %d bytes (sha256 %x), want %d bytes (sha256 %x)",
			key, len(got), sha256.Sum256(got), len(want), sha256.Sum256(want))
	}
}

func (s suite) testRoundTrip(t *testing.T) {
	st := s.newStore(t)
	for _, n := range []int{0, 1, 4099, 1<<20 + 3} {
		key := fmt.Sprintf("roundtrip/%d", n)
		data := Pattern{Seed: uint64(n)}.Bytes(n)
		put(t, st, key, data)
		holds(t, st, key, data)
	}
}

func (s suite) testOverwrite(t *testing.T) {
	st := s.newStore(t)
	first, second := Pattern{Seed: 1}.Bytes(5000), Pattern{Seed: 2}.Bytes(17)
	put(t, st, "k", first)
	put(t, st, "k", second)
	holds(t, st, "k", second)
	put(t, st, "k", nil)
	holds(t, st, "k", nil)
}

func (s suite) testRanges(t *testing.T) {
	st := s.newStore(t)
	const n = 4099
	data := Pattern{Seed: 3}.Bytes(n)
	put(t, st, "r", data)
	tests := []struct {
		name           string
		offset, length int64
		want           []byte // nil with wantErr
		wantErr        error
	}{
		{"whole", 0, -1, data, nil},
		{"whole with exact length", 0, n, data, nil},
		{"first byte", 0, 1, data[:1], nil},
		{"nothing at start", 0, 0, []byte{}, nil},
		{"middle", 100, 200, data[100:300], nil},
		{"last byte", n - 1, -1, data[n-1:], nil},
		{"last byte with long length", n - 1, 1000, data[n-1:], nil},
		{"length past the end is cut", n - 10, 100, data[n-10:], nil},
		{"offset at the end is empty", n, -1, []byte{}, nil},
		{"offset at the end with length", n, 5, []byte{}, nil},
		{"offset past the end", n + 1, -1, nil, backend.ErrInvalidRange},
		{"offset far past the end", 1 << 40, 1, nil, backend.ErrInvalidRange},
		{"negative offset", -1, -1, nil, backend.ErrInvalidRange},
	}
	for _, tc := range tests {
		got, err := read(t, st, "r", tc.offset, tc.length)
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("%s: Open(r, %d, %d) = %d bytes, %v; want %v", tc.name, tc.offset, tc.length, len(got), err, tc.wantErr)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: Open(r, %d, %d): %v", tc.name, tc.offset, tc.length, err)
			continue
		}
		if !bytes.Equal(got, tc.want) {
			t.Errorf("%s: Open(r, %d, %d) = %d bytes, want %d bytes", tc.name, tc.offset, tc.length, len(got), len(tc.want))
		}
	}
}

func (s suite) testRangesEmpty(t *testing.T) {
	st := s.newStore(t)
	put(t, st, "empty", nil)
	if got := mustRead(t, st, "empty", 0, -1); len(got) != 0 {
		t.Errorf("Open(empty, 0, -1) = %d bytes, want 0", len(got))
	}
	if got := mustRead(t, st, "empty", 0, 10); len(got) != 0 {
		t.Errorf("Open(empty, 0, 10) = %d bytes, want 0", len(got))
	}
	if _, err := read(t, st, "empty", 1, -1); !errors.Is(err, backend.ErrInvalidRange) {
		t.Errorf("Open(empty, 1, -1): %v, want ErrInvalidRange", err)
	}
}

func (s suite) testMissing(t *testing.T) {
	st := s.newStore(t)
	absent(t, st, "missing")
	absent(t, st, "missing/deeper/still")
	put(t, st, "present", []byte("x"))
	// A key that is a prefix of a stored one, or extends it, is still missing.
	absent(t, st, "pres")
	absent(t, st, "present/child")
	if err := st.Delete(context.Background(), "missing"); err != nil {
		t.Errorf("Delete(missing): %v, want nil", err)
	}
}

// testSizeMismatch checks that a reader yielding fewer or more bytes than
// declared fails the Put and leaves the key as it was.
func (s suite) testSizeMismatch(t *testing.T) {
	st := s.newStore(t)
	ctx := context.Background()
	old := Pattern{Seed: 4}.Bytes(300)
	put(t, st, "existing", old)
	data := Pattern{Seed: 5}.Bytes(1000)
	stream := func(n int64) io.Reader {
		// Not seekable, so no layer can learn the length up front.
		return io.LimitReader(Pattern{Seed: 6}.Reader(n), n)
	}
	tests := []struct {
		name string
		r    func() io.Reader
		size int64
	}{
		{"short reader", func() io.Reader { return bytes.NewReader(data[:999]) }, 1000},
		{"empty reader", func() io.Reader { return bytes.NewReader(nil) }, 1000},
		{"long reader", func() io.Reader { return bytes.NewReader(data) }, 999},
		{"long reader, size 0", func() io.Reader { return bytes.NewReader(data) }, 0},
		{"short stream", func() io.Reader { return stream(1<<20 - 1) }, 1 << 20},
		{"long stream", func() io.Reader { return stream(1 << 20) }, 1<<20 - 1},
	}
	for _, key := range []string{"fresh", "existing"} {
		for _, tc := range tests {
			err := st.Put(ctx, key, tc.r(), tc.size)
			if !errors.Is(err, backend.ErrSizeMismatch) {
				t.Errorf("%s: Put(%q, size %d) = %v, want ErrSizeMismatch", tc.name, key, tc.size, err)
			}
		}
	}
	absent(t, st, "fresh")
	holds(t, st, "existing", old)
}

// errReader yields n bytes and then fails.
type errReader struct {
	n   int
	err error
}

func (r *errReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, r.err
	}
	if len(p) > r.n {
		p = p[:r.n]
	}
	clear(p)
	r.n -= len(p)
	return len(p), nil
}

func (s suite) testReaderError(t *testing.T) {
	st := s.newStore(t)
	old := Pattern{Seed: 7}.Bytes(10)
	put(t, st, "existing", old)
	errBoom := errors.New("boom")
	for _, key := range []string{"fresh", "existing"} {
		err := st.Put(context.Background(), key, &errReader{n: 100 << 10, err: errBoom}, 1<<20)
		if !errors.Is(err, errBoom) {
			t.Errorf("Put(%q) with a failing reader = %v, want the reader's error", key, err)
		}
	}
	absent(t, st, "fresh")
	holds(t, st, "existing", old)
}

func (s suite) testNegativeSize(t *testing.T) {
	st := s.newStore(t)
	if err := st.Put(context.Background(), "neg", bytes.NewReader(nil), -1); err == nil {
		t.Errorf("Put with size -1 succeeded, want an error")
	}
	absent(t, st, "neg")
}

// testReaderPosition checks that Put reads from where the reader is, not
// from its start: a client library that sees an io.ReaderAt or io.Seeker
// must not rewind it to offset 0.
func (s suite) testReaderPosition(t *testing.T) {
	st := s.newStore(t)
	data := Pattern{Seed: 8}.Bytes(3000)
	r := bytes.NewReader(data)
	if _, err := r.Seek(1000, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	if err := st.Put(context.Background(), "pos", r, 2000); err != nil {
		t.Fatalf("Put: %v", err)
	}
	holds(t, st, "pos", data[1000:])
}

// testConcurrentPut races writers of distinct contents on one key against
// readers: every read must see one whole version, never a mix or a part.
func (s suite) testConcurrentPut(t *testing.T) {
	st := s.newStore(t)
	ctx := context.Background()
	const writers, rounds, readers = 8, 4, 4
	versions := make(map[[32]byte]int) // sha256 -> size
	contents := make([][]byte, writers)
	for w := range contents {
		contents[w] = Pattern{Seed: uint64(100 + w)}.Bytes(64<<10 + w*1111)
		versions[sha256.Sum256(contents[w])] = len(contents[w])
	}
	put(t, st, "race", contents[0])

	var wg sync.WaitGroup
	var done atomic.Bool
	errs := make(chan error, writers*rounds+readers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				if err := st.Put(ctx, "race", bytes.NewReader(contents[w]), int64(len(contents[w]))); err != nil {
					errs <- fmt.Errorf("writer %d: Put: %w", w, err)
					return
				}
			}
		}()
	}
	var rg sync.WaitGroup
	for r := range readers {
		rg.Add(1)
		go func() {
			defer rg.Done()
			for !done.Load() {
				rc, err := st.Open(ctx, "race", 0, -1)
				if err != nil {
					errs <- fmt.Errorf("reader %d: Open: %w", r, err)
					return
				}
				b, err := io.ReadAll(rc)
				rc.Close()
				if err != nil {
					errs <- fmt.Errorf("reader %d: read: %w", r, err)
					return
				}
				if _, ok := versions[sha256.Sum256(b)]; !ok {
					errs <- fmt.Errorf("reader %d: read %d bytes that match no version written", r, len(b))
					return
				}
			}
		}()
	}
	wg.Wait()
	done.Store(true)
	rg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	info, err := st.Stat(ctx, "race")
	if err != nil {
		t.Fatalf("Stat(race): %v", err)
	}
	got := mustRead(t, st, "race", 0, -1)
	size, ok := versions[sha256.Sum256(got)]
	if !ok || int64(size) != info.Size {
		t.Errorf("after the race: Stat size %d, content of %d bytes known=%v", info.Size, len(got), ok)
	}
}

// testNestedKeys checks that a key may be both an object and a prefix of
// other keys, as in S3: "x", "x/y" and "x/y/z" are three independent objects.
func (s suite) testNestedKeys(t *testing.T) {
	st := s.newStore(t)
	keys := []string{"x/y", "x", "x/y/z", "x.y", "x-y/z"}
	for i, k := range keys {
		put(t, st, k, Pattern{Seed: uint64(i)}.Bytes(10+i))
	}
	for i, k := range keys {
		holds(t, st, k, Pattern{Seed: uint64(i)}.Bytes(10+i))
	}
	got := listAll(t, st, "x")
	if len(got) != len(keys) {
		t.Errorf("List(x) = %v, want %d keys %v", got, len(keys), keys)
	}
	if err := st.Delete(context.Background(), "x"); err != nil {
		t.Fatalf("Delete(x): %v", err)
	}
	absent(t, st, "x")
	holds(t, st, "x/y", Pattern{Seed: 0}.Bytes(10))
	holds(t, st, "x/y/z", Pattern{Seed: 2}.Bytes(12))
	if err := st.Delete(context.Background(), "x/y"); err != nil {
		t.Fatalf("Delete(x/y): %v", err)
	}
	absent(t, st, "x/y")
	holds(t, st, "x/y/z", Pattern{Seed: 2}.Bytes(12))
}

// listAll returns key -> size for List(prefix), failing on duplicates.
func listAll(t *testing.T, st backend.Store, prefix string) map[string]int64 {
	t.Helper()
	got := make(map[string]int64)
	err := st.List(context.Background(), prefix, func(info backend.Info) error {
		if _, dup := got[info.Key]; dup {
			t.Errorf("List(%q) returned %q twice", prefix, info.Key)
		}
		got[info.Key] = info.Size
		return nil
	})
	if err != nil {
		t.Fatalf("List(%q): %v", prefix, err)
	}
	return got
}

func (s suite) testList(t *testing.T) {
	st := s.newStore(t)
	ctx := context.Background()
	n := s.opts.ListKeys
	dirs := []string{"a", "ab", "b", "c/d", "c"}
	want := make(map[string]int64, n)
	keys := make([]string, n)
	for i := range n {
		keys[i] = fmt.Sprintf("list/%s/%05d", dirs[i%len(dirs)], i)
		want[keys[i]] = int64(i % 7)
	}
	keys = append(keys, "list", "lis", "top")
	want["list"], want["lis"], want["top"] = 1, 2, 3

	// Write in parallel: the point is the listing, not the write latency.
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= len(keys) {
					return
				}
				size := want[keys[i]]
				if err := st.Put(ctx, keys[i], Pattern{Seed: uint64(i)}.Reader(size), size); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Put: %v", err)
	}

	for _, prefix := range []string{
		"", "l", "lis", "list", "list/", "list/a", "list/a/", "list/ab/", "list/c", "list/c/",
		"list/c/d/", "list/c/d/000", "list/b/00005", "list/zz", "nope", "top",
	} {
		got := listAll(t, st, prefix)
		var missing, extra, wrongSize int
		for k, size := range want {
			if !strings.HasPrefix(k, prefix) {
				continue
			}
			gs, ok := got[k]
			switch {
			case !ok:
				missing++
				if missing <= 3 {
					t.Errorf("List(%q) is missing %q", prefix, k)
				}
			case gs != size:
				wrongSize++
				if wrongSize <= 3 {
					t.Errorf("List(%q): %q has size %d, want %d", prefix, k, gs, size)
				}
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok || !strings.HasPrefix(k, prefix) {
				extra++
				if extra <= 3 {
					t.Errorf("List(%q) returned unexpected key %q", prefix, k)
				}
			}
		}
		if missing+extra+wrongSize > 0 {
			t.Errorf("List(%q): %d keys, %d missing, %d unexpected, %d wrong sizes", prefix, len(got), missing, extra, wrongSize)
		}
	}
}

func (s suite) testListStops(t *testing.T) {
	st := s.newStore(t)
	for i := range 10 {
		put(t, st, fmt.Sprintf("stop/%d", i), []byte{byte(i)})
	}
	errStop := errors.New("stop here")
	calls := 0
	err := st.List(context.Background(), "stop/", func(backend.Info) error {
		calls++
		if calls == 3 {
			return errStop
		}
		return nil
	})
	if !errors.Is(err, errStop) {
		t.Errorf("List with fn failing = %v, want fn's error", err)
	}
	if calls != 3 {
		t.Errorf("List called fn %d times after it failed on call 3", calls)
	}
}

func (s suite) testDeleteTwice(t *testing.T) {
	st := s.newStore(t)
	ctx := context.Background()
	put(t, st, "d/x", []byte("hello"))
	put(t, st, "d/y", []byte("kept"))
	for i := range 2 {
		if err := st.Delete(ctx, "d/x"); err != nil {
			t.Errorf("Delete #%d: %v", i+1, err)
		}
	}
	absent(t, st, "d/x")
	holds(t, st, "d/y", []byte("kept"))
	// The key is usable again.
	put(t, st, "d/x", []byte("again"))
	holds(t, st, "d/x", []byte("again"))
}

// BadKeys is the list of keys every store must reject with ErrInvalidKey.
// Exported so that a backend's own tests (fs's "nothing outside the root")
// can reuse it.
var BadKeys = []string{
	"",
	"../x",
	"..",
	".",
	"./x",
	"x/..",
	"x/../../y",
	"x/./y",
	"/abs",
	"/",
	"a//b",
	"a/",
	"trailing/",
	"a\x00b",
	"\x00",
	"é",
	"ключ",
	"a b",
	"a\nb",
	`a\b`,
	`..\x`,
	"a:b",
	"~tmp",
	"a+",
	"*",
	strings.Repeat("a", backend.MaxKeyLen+1),
	strings.Repeat("a/", backend.MaxKeyLen/2) + "a",
}

func (s suite) testBadKeys(t *testing.T) {
	st := s.newStore(t)
	ctx := context.Background()
	for _, key := range BadKeys {
		name := fmt.Sprintf("%.40q", key)
		if err := st.Put(ctx, key, bytes.NewReader([]byte("x")), 1); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Put(%s) = %v, want ErrInvalidKey", name, err)
		}
		if _, err := st.Open(ctx, key, 0, -1); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Open(%s) = %v, want ErrInvalidKey", name, err)
		}
		if _, err := st.Stat(ctx, key); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Stat(%s) = %v, want ErrInvalidKey", name, err)
		}
		if err := st.Delete(ctx, key); !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("Delete(%s) = %v, want ErrInvalidKey", name, err)
		}
	}
	if got := listAll(t, st, ""); len(got) != 0 {
		t.Errorf("after only bad keys, the store lists %v", got)
	}
}

func (s suite) testBadPrefixes(t *testing.T) {
	st := s.newStore(t)
	put(t, st, "a/b", []byte("x"))
	for _, prefix := range []string{"/", "/a", "../", "..", "a//", "a/../", "a\x00", "é"} {
		err := st.List(context.Background(), prefix, func(info backend.Info) error {
			t.Errorf("List(%q) called fn with %+v", prefix, info)
			return nil
		})
		if !errors.Is(err, backend.ErrInvalidKey) {
			t.Errorf("List(%q) = %v, want ErrInvalidKey", prefix, err)
		}
	}
}

func (s suite) testMaxKeyLen(t *testing.T) {
	st := s.newStore(t)
	// Segments of 100 bytes: the longest key, in names every file system takes.
	var b strings.Builder
	for b.Len() < backend.MaxKeyLen {
		if b.Len() > 0 {
			b.WriteByte('/')
		}
		b.WriteString(strings.Repeat("k", min(100, backend.MaxKeyLen-b.Len())))
	}
	key := b.String()
	if len(key) != backend.MaxKeyLen || strings.HasSuffix(key, "/") {
		t.Fatalf("test bug: built a key of %d bytes", len(key))
	}
	put(t, st, key, []byte("long"))
	holds(t, st, key, []byte("long"))
	if got := listAll(t, st, key[:300]); len(got) != 1 {
		t.Errorf("List(first 300 bytes of the key) = %d keys, want 1", len(got))
	}
	if err := st.Put(context.Background(), key+"k", bytes.NewReader(nil), 0); !errors.Is(err, backend.ErrInvalidKey) {
		t.Errorf("Put(MaxKeyLen+1 bytes) = %v, want ErrInvalidKey", err)
	}
}

func (s suite) testContextCancelled(t *testing.T) {
	st := s.newStore(t)
	put(t, st, "c/present", []byte("data"))
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	for _, tc := range []struct {
		ctx  context.Context
		want error
	}{{cancelled, context.Canceled}, {expired, context.DeadlineExceeded}} {
		if err := st.Put(tc.ctx, "c/new", bytes.NewReader([]byte("x")), 1); !errors.Is(err, tc.want) {
			t.Errorf("Put with a done context = %v, want %v", err, tc.want)
		}
		if rc, err := st.Open(tc.ctx, "c/present", 0, -1); !errors.Is(err, tc.want) {
			t.Errorf("Open with a done context = %v, want %v", err, tc.want)
			if rc != nil {
				rc.Close()
			}
		}
		err := st.List(tc.ctx, "", func(backend.Info) error { return nil })
		if !errors.Is(err, tc.want) {
			t.Errorf("List with a done context = %v, want %v", err, tc.want)
		}
		// Stat and Delete may finish what is instant, but if they fail it
		// must be with the context's error.
		if _, err := st.Stat(tc.ctx, "c/present"); err != nil && !errors.Is(err, tc.want) {
			t.Errorf("Stat with a done context = %v, want nil or %v", err, tc.want)
		}
		if err := st.Delete(tc.ctx, "c/nothing"); err != nil && !errors.Is(err, tc.want) {
			t.Errorf("Delete with a done context = %v, want nil or %v", err, tc.want)
		}
	}
	absent(t, st, "c/new")
	holds(t, st, "c/present", []byte("data"))
}

// cancellingReader cancels its context on its second read, once the store
// has started writing.
type cancellingReader struct {
	r      io.Reader
	cancel context.CancelFunc
	reads  int
}

func (r *cancellingReader) Read(p []byte) (int, error) {
	r.reads++
	if r.reads == 2 {
		r.cancel()
	}
	return r.r.Read(p)
}

func (s suite) testContextCancelledMidPut(t *testing.T) {
	st := s.newStore(t)
	old := []byte("old")
	put(t, st, "existing", old)
	for _, key := range []string{"fresh", "existing"} {
		ctx, cancel := context.WithCancel(context.Background())
		const size = 4 << 20
		r := &cancellingReader{r: Pattern{Seed: 9}.Reader(size), cancel: cancel}
		err := st.Put(ctx, key, r, size)
		cancel()
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Put(%q) cancelled mid-stream = %v, want context.Canceled", key, err)
		}
	}
	absent(t, st, "fresh")
	holds(t, st, "existing", old)
}

// hashingReader hashes what passes through it.
type hashingReader struct {
	r io.Reader
	h interface {
		io.Writer
		Sum([]byte) []byte
	}
}

func (r hashingReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	r.h.Write(p[:n])
	return n, err
}

// heapWatch samples the heap in use until stopped and reports the peak.
type heapWatch struct {
	stop chan struct{}
	done chan uint64
}

func watchHeap() *heapWatch {
	w := &heapWatch{stop: make(chan struct{}), done: make(chan uint64)}
	go func() {
		var ms runtime.MemStats
		var peak uint64
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for {
			runtime.ReadMemStats(&ms)
			peak = max(peak, ms.HeapInuse)
			select {
			case <-w.stop:
				w.done <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *heapWatch) peak() uint64 {
	close(w.stop)
	return <-w.done
}

// testLargeObject streams an object larger than any buffer a store should
// hold through Put and Open, and checks that the heap stays bounded.
func (s suite) testLargeObject(t *testing.T) {
	if s.opts.LargeObjectSize < 0 {
		t.Skip("large object test disabled for this store")
	}
	if testing.Short() {
		t.Skip("large object test skipped under -short")
	}
	st := s.newStore(t)
	ctx := context.Background()
	size := s.opts.LargeObjectSize
	g := Pattern{Seed: 256}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	w := watchHeap()

	in := hashingReader{r: io.LimitReader(g.Reader(size), size), h: sha256.New()}
	if err := st.Put(ctx, "large", in, size); err != nil {
		w.peak()
		t.Fatalf("Put(%d bytes): %v", size, err)
	}
	info, err := st.Stat(ctx, "large")
	if err != nil || info.Size != size {
		t.Errorf("Stat(large) = %+v, %v; want size %d", info, err, size)
	}
	rc, err := st.Open(ctx, "large", 0, -1)
	if err != nil {
		w.peak()
		t.Fatalf("Open(large): %v", err)
	}
	out := sha256.New()
	n, err := io.CopyBuffer(out, struct{ io.Reader }{rc}, make([]byte, 256<<10))
	rc.Close()
	if err != nil {
		t.Errorf("reading back: %v after %d bytes", err, n)
	}
	// A range deep inside the object.
	off, length := size-size/3, int64(1<<20+5)
	got, err := read(t, st, "large", off, length)
	peak := w.peak()
	if err != nil {
		t.Errorf("Open(large, %d, %d): %v", off, length, err)
	}
	want := make([]byte, length)
	g.ReadAt(want, off)
	if !bytes.Equal(got, want) {
		t.Errorf("Open(large, %d, %d) returned different bytes", off, length)
	}
	if n != size || !bytes.Equal(out.Sum(nil), in.h.Sum(nil)) {
		t.Errorf("read back %d bytes, sha256 %x; wrote %d bytes, sha256 %x", n, out.Sum(nil), size, in.h.Sum(nil))
	}
	growth := int64(peak) - int64(base)
	t.Logf("%d MiB object: heap in use %d MiB at start, peak %d MiB", size>>20, base>>20, peak>>20)
	if growth > s.opts.MaxLargeHeap {
		t.Errorf("heap grew by %d MiB streaming a %d MiB object, want at most %d MiB",
			growth>>20, size>>20, s.opts.MaxLargeHeap>>20)
	}
	if err := st.Delete(ctx, "large"); err != nil {
		t.Errorf("Delete(large): %v", err)
	}
}
