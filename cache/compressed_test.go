package cache

import (
	"archive/tar"
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/recompress"
	kgzip "github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
	"github.com/opencontainers/go-digest"
)

// sourceTar is a tar of the Go sources under GOROOT/src/sub, up to limit
// bytes, every entry with modification time mtime.
func sourceTar(t testing.TB, sub string, limit int, mtime time.Time) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	root := filepath.Join(goroot(), "src", sub)
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || buf.Len() > limit {
			return fs.SkipAll
		}
		info, err := d.Info()
		if err != nil || !info.Mode().IsRegular() && !info.IsDir() {
			return nil
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return nil
		}
		hdr.Name, _ = filepath.Rel(root, path)
		hdr.ModTime = mtime
		var b []byte
		if info.Mode().IsRegular() {
			if b, err = os.ReadFile(path); err != nil {
				return nil
			}
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		_, err = tw.Write(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	tw.Close()
	if buf.Len() < 256<<10 {
		t.Skipf("GOROOT/src/%s gave only %d bytes", sub, buf.Len())
	}
	return buf.Bytes()
}

func gz(t testing.TB, data []byte, level int) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := stdgzip.NewWriterLevel(&b, level)
	if err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	w.Close()
	return b.Bytes()
}

func pushBlob(t testing.TB, c *Cache, blob []byte, mt string) LayerInfo {
	t.Helper()
	info, err := c.Push(t.Context(), bytes.NewReader(blob), PushOptions{Size: int64(len(blob)), Expected: digest.FromBytes(blob), MediaType: mt})
	if err != nil {
		t.Fatalf("Push of a %d-byte blob: %v", len(blob), err)
	}
	return info
}

const gzipLayer = "application/vnd.oci.image.layer.v1.tar+gzip"

// A gzip layer written by compress/gzip is stored as its tar plus the
// encoder: it reads back byte for byte, whole and in ranges, and its tar is
// a layer of its own under its diffID.
func TestGzipLayerRebuilt(t *testing.T) {
	c, _ := newCache(t)
	data := sourceTar(t, "net/http", scale(8<<20, 3<<20), time.Unix(1700000000, 0))
	blob := gz(t, data, stdgzip.DefaultCompression)
	info := pushBlob(t, c, blob, gzipLayer)
	if !strings.HasPrefix(info.Rebuilt, "go-gzip/6 ") {
		t.Fatalf("stored as %q (Rebuilt), want go-gzip/6", info.Rebuilt)
	}
	if info.Size != int64(len(blob)) || info.MediaType != gzipLayer {
		t.Errorf("info %+v", info)
	}
	if got := pull(t, c, info.Digest, 0, -1); !bytes.Equal(got, blob) {
		t.Fatalf("pulled %d bytes, not the blob's %d", len(got), len(blob))
	}
	for _, r := range [][2]int64{{0, 1}, {0, 100}, {12345, 70000}, {int64(len(blob)) - 1, 1}, {int64(len(blob)) / 2, -1}, {int64(len(blob)), -1}} {
		end := int64(len(blob))
		if r[1] >= 0 {
			end = r[0] + r[1]
		}
		if got := pull(t, c, info.Digest, r[0], r[1]); !bytes.Equal(got, blob[r[0]:end]) {
			t.Errorf("range %d+%d: %d bytes, not the blob's", r[0], r[1], len(got))
		}
	}
	diff, err := c.Stat(t.Context(), digest.FromBytes(data))
	if err != nil {
		t.Fatalf("the tar under its diffID: %v", err)
	}
	if diff.Size != int64(len(data)) || diff.MediaType != "application/vnd.oci.image.layer.v1.tar" || diff.Rebuilt != "" {
		t.Errorf("the tar's layer: %+v", diff)
	}
	if got := pull(t, c, diff.Digest, 0, -1); !bytes.Equal(got, data) {
		t.Fatal("the tar does not read back")
	}
	checkRefcounts(t, c)
	if _, err := c.Chunks(t.Context(), info.Digest); !isErr(err, ErrFailedPrecondition) {
		t.Errorf("Chunks of a rebuilt blob: %v, want ErrFailedPrecondition", err)
	}
	st, err := c.Stats(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tar %d bytes, gzip %d, stored %d (blob record %d, tar record %d)", len(data), len(blob), st.StoredBytes, info.StoredSize, diff.StoredSize)
}

// The point of it all: two layers of the same files, one file changed,
// share their chunks once stored rebuilt, where their gzip bytes share
// almost none.
func TestGzipLayersDeduplicate(t *testing.T) {
	data := sourceTar(t, "net/http", scale(8<<20, 3<<20), time.Unix(1700000000, 0))
	// A change early in the tar: every gzip byte after it differs.
	changed := bytes.Clone(data)
	copy(changed[2048:], "a changed line of source code")
	a, b := gz(t, data, 6), gz(t, changed, 6)

	stored := func(keep bool) int64 {
		c, err := Open(t.Context(), Options{Dir: t.TempDir(), Backend: mem.New(), KeepCompressed: keep})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		pushBlob(t, c, a, gzipLayer)
		before, _ := c.Stats(t.Context())
		pushBlob(t, c, b, gzipLayer)
		after, _ := c.Stats(t.Context())
		return after.StoredBytes - before.StoredBytes
	}
	rebuilt, kept := stored(false), stored(true)
	t.Logf("second layer adds %d bytes stored rebuilt, %d stored as it came (gzip %d bytes)", rebuilt, kept, len(b))
	if rebuilt*4 > kept {
		t.Errorf("the second layer adds %d bytes stored rebuilt, %d as it came: want under a quarter", rebuilt, kept)
	}
}

// Every real client's encoder round-trips through Push and Open.
func TestClientBlobsRebuilt(t *testing.T) {
	c, _ := newCache(t)
	data := sourceTar(t, "encoding", scale(4<<20, 2<<20), time.Unix(1600000000, 0))
	enc := func(w func(io.Writer) io.WriteCloser) []byte {
		var b bytes.Buffer
		zw := w(&b)
		zw.Write(data)
		zw.Close()
		return b.Bytes()
	}
	cases := map[string]struct {
		blob []byte
		want string
	}{
		"crane (gzip.BestSpeed)": {gz(t, data, stdgzip.BestSpeed), "go-gzip/1 "},
		"skopeo (pgzip)": {enc(func(w io.Writer) io.WriteCloser {
			zw, _ := pgzip.NewWriterLevel(w, pgzip.DefaultCompression)
			return zw
		}), "pgzip/"},
		"buildkit zstd": {enc(func(w io.Writer) io.WriteCloser {
			zw, _ := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault))
			return zw
		}), "klauspost-zstd/2 "},
		// A second-stage candidate: tried only once the likely ones are
		// gone, over the bytes seen so far again.
		"klauspost gzip level 9": {enc(func(w io.Writer) io.WriteCloser {
			zw, _ := kgzip.NewWriterLevel(w, kgzip.BestCompression)
			return zw
		}), "klauspost-gzip/9 "},
		"named gzip": {func() []byte {
			var b bytes.Buffer
			zw := stdgzip.NewWriter(&b)
			zw.Header = stdgzip.Header{Name: "layer.tar", Comment: "made by hand", ModTime: time.Unix(1500000000, 0), OS: 3, Extra: []byte("xy")}
			zw.Write(data)
			zw.Close()
			return b.Bytes()
		}(), "go-gzip/6 "},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			info := pushBlob(t, c, tc.blob, gzipLayer)
			if !strings.HasPrefix(info.Rebuilt, tc.want) {
				t.Fatalf("stored as %q, want %s", info.Rebuilt, tc.want)
			}
			if got := pull(t, c, info.Digest, 0, -1); !bytes.Equal(got, tc.blob) {
				t.Fatal("does not read back byte for byte")
			}
		})
	}
}

// Blobs no encoder reproduces, or that do not decompress, are stored as
// they came: early (the probe) or late (a second member, trailing bytes).
func TestCompressedFallback(t *testing.T) {
	// Larger than the probe, so that trailing bytes and a second member
	// come after it.
	data := sourceTar(t, "", 12<<20, time.Unix(1600000000, 0))
	if len(data) < 3*probeBytes {
		t.Skipf("GOROOT/src gave only %d bytes", len(data))
	}
	one := gz(t, data, 6)
	cases := map[string]struct {
		blob        []byte
		withContent bool // the content is committed too (a late fallback)
	}{
		"unknown XFL":           {func() []byte { b := bytes.Clone(one); b[8] = 0x7f; return b }(), false},
		"corrupt deflate early": {func() []byte { b := bytes.Clone(one); b[100] ^= 0xff; return b }(), false},
		"truncated gzip":        {one[:len(one)/2], false},
		"gzip magic only":       {[]byte{0x1f, 0x8b, 8, 0}, false},
		"zstd magic only":       {[]byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0}, false},
		// The decoder fails on them after the whole content: its chunks
		// stay unreferenced, for the collector.
		"trailing bytes": {append(bytes.Clone(one), "trailing"...), false},
		"two members":    {append(gz(t, data[:len(data)/2], 6), gz(t, data[len(data)/2:], 6)...), true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c, _ := newCache(t)
			info := pushBlob(t, c, tc.blob, gzipLayer)
			if info.Rebuilt != "" {
				t.Fatalf("stored rebuilt by %s", info.Rebuilt)
			}
			if got := pull(t, c, info.Digest, 0, -1); !bytes.Equal(got, tc.blob) {
				t.Fatal("does not read back byte for byte")
			}
			layers, _, err := c.List(t.Context(), "", 0)
			if err != nil {
				t.Fatal(err)
			}
			if want := map[bool]int{false: 1, true: 2}[tc.withContent]; len(layers) != want {
				t.Errorf("%d layers stored, want %d", len(layers), want)
			}
		})
	}
}

// Bad input changes nothing: a wrong digest, a short or long stream, a
// blob that expands past the bound.
func TestCompressedBadInput(t *testing.T) {
	data := sourceTar(t, "encoding", 2<<20, time.Unix(1600000000, 0))
	blob := gz(t, data, 6)
	bomb := gz(t, make([]byte, 64<<20), 9) // 64 MiB of zeros in about 64 KiB
	store := mem.New()
	c, err := Open(t.Context(), Options{Dir: t.TempDir(), Backend: store, MaxExpandedSize: 32 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for name, tc := range map[string]struct {
		r    io.Reader
		opts PushOptions
		want error
	}{
		"wrong digest":  {bytes.NewReader(blob), PushOptions{Size: -1, Expected: digest.FromString("x")}, ErrDigestMismatch},
		"short":         {bytes.NewReader(blob), PushOptions{Size: int64(len(blob)) + 1}, ErrSizeMismatch},
		"long":          {bytes.NewReader(blob), PushOptions{Size: int64(len(blob)) - 1}, ErrSizeMismatch},
		"bomb":          {bytes.NewReader(bomb), PushOptions{Size: -1}, ErrExpansion},
		"stream breaks": {io.MultiReader(bytes.NewReader(blob[:len(blob)/2]), errReader{errBroken}), PushOptions{Size: -1}, errBroken},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := c.Push(t.Context(), tc.r, tc.opts)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Push: %v, want %v", err, tc.want)
			}
			layers, _, _ := c.List(t.Context(), "", 0)
			if len(layers) != 0 {
				t.Fatalf("%d layers committed after a failed push", len(layers))
			}
		})
	}
}

var errBroken = errors.New("the client went away")

// A recipe that rebuilds wrong bytes is data loss, never a good read: the
// reader ends with ErrDataLoss before it has delivered the whole range.
func TestRebuildChecksDigest(t *testing.T) {
	c, _ := newCache(t)
	data := sourceTar(t, "encoding", 2<<20, time.Unix(1600000000, 0))
	blob := gz(t, data, 6)
	info := pushBlob(t, c, blob, gzipLayer)
	lr, _, err := c.idx.Layer(info.Digest)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := recompress.Unmarshal(lr.Rebuild)
	if err != nil {
		t.Fatal(err)
	}
	spec.Level = 5 // a plausible but wrong recipe
	lr.Rebuild = spec.Marshal()
	size := int64(len(blob))
	for _, r := range [][2]int64{{0, size}, {0, 10}, {size - 10, 10}} {
		rc, err := c.openRebuilt(t.Context(), lr, r[0], r[1])
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if !isErr(err, ErrDataLoss) || int64(len(got)) >= r[1] {
			t.Errorf("range %v of a wrong recipe: %d bytes, %v; want fewer and ErrDataLoss", r, len(got), err)
		}
	}
}

// A recipe whose encoder no longer reproduces its vector is refused with a
// clear error, never rebuilt.
func TestRebuildRefusesChangedEncoder(t *testing.T) {
	c, _ := newCache(t)
	data := sourceTar(t, "encoding", 1<<20, time.Unix(1600000000, 0))
	info := pushBlob(t, c, gz(t, data, 4), gzipLayer)
	if !strings.HasPrefix(info.Rebuilt, "go-gzip/4 ") {
		t.Fatalf("stored as %q", info.Rebuilt)
	}
	restore := recompress.BreakVectorForTest("go-gzip/4")
	defer restore()
	_, _, err := c.Open(t.Context(), info.Digest, 0, -1)
	if !isErr(err, ErrFailedPrecondition) || !strings.Contains(err.Error(), "materialize") {
		t.Fatalf("Open with a changed encoder: %v, want ErrFailedPrecondition naming the way out", err)
	}
	// New blobs of that encoder are stored as they came.
	other := gz(t, data[:len(data)/2], 4)
	if again := pushBlob(t, c, other, gzipLayer); again.Rebuilt != "" {
		t.Fatalf("a new blob stored rebuilt by a changed encoder: %s", again.Rebuilt)
	}
}

// Reindex restores a rebuilt blob from its backend manifest.
func TestReindexRebuilt(t *testing.T) {
	store := mem.New()
	c := openCache(t, t.TempDir(), store)
	data := sourceTar(t, "encoding", 2<<20, time.Unix(1600000000, 0))
	blob := gz(t, data, 1)
	info := pushBlob(t, c, blob, gzipLayer)
	if err := c.Reindex(context.Background()); err != nil {
		t.Fatal(err)
	}
	back, err := c.Stat(t.Context(), info.Digest)
	if err != nil || back.Rebuilt != info.Rebuilt || back.Size != info.Size {
		t.Fatalf("after Reindex: %+v, %v; want %+v", back, err, info)
	}
	if got := pull(t, c, info.Digest, 0, -1); !bytes.Equal(got, blob) {
		t.Fatal("does not read back after Reindex")
	}
}

// BenchmarkGzip measures a 64 MiB real tar as a gzip blob at the levels
// BuildKit (6) and go-containerregistry (1) write: the encoder alone (the
// floor of both a push and a rebuild), a push (decompress, store the
// content, reproduce) and a pull (rebuild and verify), each in MB/s of the
// gzip blob; and a pull of the same blob stored as it came.
func BenchmarkGzip(b *testing.B) {
	data := benchLayer(b)
	for _, level := range []int{6, 1} {
		blob := gz(b, data, level)
		name := func(s string) string { return s + "/level=" + string(rune('0'+level)) }
		b.Run(name("encode"), func(b *testing.B) {
			b.SetBytes(int64(len(blob)))
			for b.Loop() {
				w, _ := stdgzip.NewWriterLevel(io.Discard, level)
				w.Write(data)
				w.Close()
			}
		})
		b.Run(name("push"), func(b *testing.B) {
			b.SetBytes(int64(len(blob)))
			for b.Loop() {
				b.StopTimer()
				c, err := Open(b.Context(), Options{Dir: b.TempDir(), Backend: benchStore(b)})
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if info := pushBlob(b, c, blob, gzipLayer); info.Rebuilt == "" {
					b.Fatal("not stored rebuilt")
				}
				b.StopTimer()
				c.Close()
				b.StartTimer()
			}
		})
		for _, keep := range []bool{false, true} {
			what := "pull"
			if keep {
				what = "pull-kept"
			}
			b.Run(name(what), func(b *testing.B) {
				c, err := Open(b.Context(), Options{Dir: b.TempDir(), Backend: benchStore(b), KeepCompressed: keep})
				if err != nil {
					b.Fatal(err)
				}
				defer c.Close()
				info := pushBlob(b, c, blob, gzipLayer)
				b.SetBytes(int64(len(blob)))
				for b.Loop() {
					rc, _, err := c.Open(b.Context(), info.Digest, 0, -1)
					if err != nil {
						b.Fatal(err)
					}
					if n, err := io.Copy(io.Discard, rc); err != nil || n != info.Size {
						b.Fatal(n, err)
					}
					rc.Close()
				}
			})
		}
	}
}

func openWithBlobCache(t testing.TB, dir string, store *mem.Store, size int64) *Cache {
	t.Helper()
	c, err := Open(context.Background(), Options{Dir: filepath.Join(dir, "index"), Backend: store,
		RebuiltCacheDir: filepath.Join(dir, "rebuilt"), RebuiltCacheSize: size})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// The rebuilt-blob cache: a pushed blob starts there and reads come from
// it; a bad copy is a loud error and is dropped, and the next read rebuilds
// and keeps a copy again.
func TestRebuiltCache(t *testing.T) {
	dir := t.TempDir()
	c := openWithBlobCache(t, dir, mem.New(), 64<<20)
	data := sourceTar(t, "encoding", 2<<20, time.Unix(1600000000, 0))
	blob := gz(t, data, 6)
	info := pushBlob(t, c, blob, gzipLayer)
	if s := c.Rebuilds(); s.CacheBlobs != 1 || s.CacheBytes != int64(len(blob)) || s.IngestRebuilt != 1 {
		t.Fatalf("after the push: %+v, want the blob cached", s)
	}
	for _, r := range [][2]int64{{0, -1}, {0, 1}, {7, 100000}, {int64(len(blob)) - 3, 3}, {int64(len(blob)), -1}} {
		end := int64(len(blob))
		if r[1] >= 0 {
			end = r[0] + r[1]
		}
		if got := pull(t, c, info.Digest, r[0], r[1]); !bytes.Equal(got, blob[r[0]:end]) {
			t.Fatalf("a cached read of %v differs", r)
		}
	}
	if s := c.Rebuilds(); s.ServedRebuilt != 0 || s.ServedFromCache != int64(len(blob))+100004 {
		t.Fatalf("after the cached reads: %+v", s)
	}
	// A flipped byte in the cached copy.
	path := filepath.Join(dir, "rebuilt", "sha256-"+info.Digest.Encoded())
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 1
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	rc, _, err := c.Open(t.Context(), info.Digest, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if !isErr(err, ErrDataLoss) || len(got) >= len(blob) {
		t.Fatalf("read of a bad cached copy: %d of %d bytes, %v; want fewer and ErrDataLoss", len(got), len(blob), err)
	}
	if s := c.Rebuilds(); s.CacheBlobs != 0 {
		t.Fatalf("the bad copy stays cached: %+v", s)
	}
	if got := pull(t, c, info.Digest, 10, 1000); !bytes.Equal(got, blob[10:1010]) {
		t.Fatal("the rebuild after a bad copy differs")
	}
	if s := c.Rebuilds(); s.ServedRebuilt != 1000 || s.CacheBlobs != 1 {
		t.Fatalf("after the rebuild: %+v, want 1000 bytes rebuilt and the copy cached again", s)
	}
	// A cached copy outlives an encoder change.
	restore := recompress.BreakVectorForTest("go-gzip/6")
	defer restore()
	if got := pull(t, c, info.Digest, 0, -1); !bytes.Equal(got, blob) {
		t.Fatal("the cached copy is not served once its encoder changed")
	}
}

// The cache holds what fits, least recently used out first, and survives
// a restart.
func TestRebuiltCacheBound(t *testing.T) {
	dir := t.TempDir()
	store := mem.New()
	data := sourceTar(t, "encoding", 2<<20, time.Unix(1600000000, 0))
	var blobs [][]byte
	for i := range 3 {
		blobs = append(blobs, gz(t, data[:len(data)-i*100000], 6))
	}
	// Room for two and a bit (a blob over a quarter of the bound is not
	// kept, so the bound is four of them).
	bound := int64(len(blobs[0]) * 4)
	c := openWithBlobCache(t, dir, store, bound)
	var infos []LayerInfo
	for _, b := range blobs {
		infos = append(infos, pushBlob(t, c, b, gzipLayer))
	}
	if s := c.Rebuilds(); s.CacheBlobs != 3 {
		t.Fatalf("%+v", s)
	}
	c.Close()
	c = openWithBlobCache(t, dir, store, int64(len(blobs[0])+len(blobs[1])+len(blobs[2])-1))
	if s := c.Rebuilds(); s.CacheBlobs != 2 || s.CacheEvictions != 1 {
		t.Fatalf("reopened with room for two: %+v", s)
	}
	pull(t, c, infos[0].Digest, 0, -1) // evicted first (oldest): rebuilt
	pull(t, c, infos[2].Digest, 0, -1) // kept: from the cache
	if s := c.Rebuilds(); s.ServedRebuilt != int64(len(blobs[0])) || s.ServedFromCache != int64(len(blobs[2])) {
		t.Fatalf("the oldest blob was not the one evicted: %+v", s)
	}
}

// Materialize turns a rebuilt blob into chunks of its own compressed
// bytes: it then reads back without its encoder, through a reindex too,
// and the reference counts stay exact.
func TestMaterialize(t *testing.T) {
	store := mem.New()
	c := openCache(t, t.TempDir(), store) // no rebuilt-blob cache: a changed encoder cannot be read around
	data := sourceTar(t, "encoding", 2<<20, time.Unix(1600000000, 0))
	blob := gz(t, data, 6)
	other := gz(t, data[:len(data)/2], 6)
	info := pushBlob(t, c, blob, gzipLayer)
	oinfo := pushBlob(t, c, other, gzipLayer)
	list, err := c.RebuiltBlobs(t.Context())
	if err != nil || len(list) != 2 || !list[0].Usable {
		t.Fatalf("RebuiltBlobs: %+v, %v", list, err)
	}
	got, err := c.Materialize(t.Context(), info.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if got.Rebuilt != "" || got.Size != info.Size || got.Digest != info.Digest {
		t.Fatalf("materialized: %+v", got)
	}
	checkRefcounts(t, c)
	// The encoder goes: the materialized blob still reads, the other one
	// is refused, and listed as unusable.
	restore := recompress.BreakVectorForTest("go-gzip/6")
	defer restore()
	if b := pull(t, c, info.Digest, 0, -1); !bytes.Equal(b, blob) {
		t.Fatal("the materialized blob does not read back")
	}
	if _, _, err := c.Open(t.Context(), oinfo.Digest, 0, -1); !isErr(err, ErrFailedPrecondition) {
		t.Fatalf("the other blob: %v, want ErrFailedPrecondition", err)
	}
	if _, err := c.Materialize(t.Context(), oinfo.Digest); !isErr(err, ErrFailedPrecondition) {
		t.Fatalf("materialize without the encoder or a cached copy: %v", err)
	}
	if list, _ := c.RebuiltBlobs(t.Context()); len(list) != 1 || list[0].Digest != oinfo.Digest || list[0].Usable {
		t.Fatalf("RebuiltBlobs with the encoder gone: %+v", list)
	}
	restore()
	// The content layer is still there; Reindex restores the plain blob.
	if _, err := c.Stat(t.Context(), digest.FromBytes(data)); err != nil {
		t.Fatal(err)
	}
	if err := c.Reindex(t.Context()); err != nil {
		t.Fatal(err)
	}
	if st, err := c.Stat(t.Context(), info.Digest); err != nil || st.Rebuilt != "" {
		t.Fatalf("after Reindex: %+v, %v", st, err)
	}
	if b := pull(t, c, info.Digest, 0, -1); !bytes.Equal(b, blob) {
		t.Fatal("the materialized blob does not read back after Reindex")
	}
	checkRefcounts(t, c)
}

// A gzip header whose fields make the encoder spec larger than a record
// holds: the blob is stored as it came, and the store stays readable.
func TestHugeGzipHeader(t *testing.T) {
	c, _ := newCache(t)
	data := sourceTar(t, "", 12<<20, time.Unix(1600000000, 0))
	var b bytes.Buffer
	zw := stdgzip.NewWriter(&b)
	zw.Header.Extra = bytes.Repeat([]byte("x"), 4000)
	zw.Header.Name = strings.Repeat("<", 500)
	zw.Write(data)
	zw.Close()
	info := pushBlob(t, c, b.Bytes(), gzipLayer)
	if info.Rebuilt != "" {
		t.Fatalf("stored rebuilt by %s", info.Rebuilt)
	}
	layers, _, err := c.List(t.Context(), "", 0)
	if err != nil || len(layers) != 2 {
		t.Fatalf("List: %d layers, %v; want the blob and its tar", len(layers), err)
	}
	if got := pull(t, c, info.Digest, 0, -1); !bytes.Equal(got, b.Bytes()) {
		t.Fatal("does not read back")
	}
	if _, err := c.Stats(t.Context()); err != nil {
		t.Fatal(err)
	}
}

// An upload's declared digest is checked before anything is committed,
// also when no encoder reproduces the blob to its end (the content would
// otherwise be committed first).
func TestCompressedFinishFirst(t *testing.T) {
	c, _ := newCache(t)
	data := sourceTar(t, "", 12<<20, time.Unix(1600000000, 0))
	if len(data) < 3*probeBytes {
		t.Skipf("GOROOT/src gave only %d bytes", len(data))
	}
	for name, blob := range map[string][]byte{
		"reproduced":  gz(t, data, 6),
		"two members": append(gz(t, data[:len(data)/2], 6), gz(t, data[len(data)/2:], 6)...),
		"not gzip":    data,
	} {
		t.Run(name, func(t *testing.T) {
			calls := 0
			_, err := c.Push(t.Context(), bytes.NewReader(blob), PushOptions{Size: -1, finish: func(digest.Digest, int64) error {
				calls++
				return ErrDigestMismatch
			}})
			if !isErr(err, ErrDigestMismatch) || calls != 1 {
				t.Fatalf("Push: %v after %d finish calls; want ErrDigestMismatch after 1", err, calls)
			}
			if layers, _, _ := c.List(t.Context(), "", 0); len(layers) != 0 {
				t.Fatalf("%d layers committed", len(layers))
			}
		})
	}
}
