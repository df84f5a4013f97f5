package cache

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/tarsplit"
	"github.com/opencontainers/go-digest"
)

// storedGrowth pushes a, then b, into a fresh cache and returns the stored
// bytes b added and a's own.
func storedGrowth(t *testing.T, plain bool, a, b []byte) (added, first int64) {
	t.Helper()
	c, err := Open(context.Background(), Options{Dir: t.TempDir(), Backend: mem.New(), PlainTars: plain})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	push(t, c, a)
	s1, _ := c.Stats(t.Context())
	info := push(t, c, b)
	s2, _ := c.Stats(t.Context())
	if got := pull(t, c, info.Digest, 0, -1); !bytes.Equal(got, b) {
		t.Fatal("the second tar does not read back")
	}
	checkRefcounts(t, c)
	return s2.StoredBytes - s1.StoredBytes, s1.StoredBytes
}

// The goal: the same files with new timestamps share ≥ 99 % of
// their stored bytes; one changed file adds little more than that file.
func TestTarTimestampsDeduplicate(t *testing.T) {
	for _, tree := range []string{"net/http", "encoding"} {
		t.Run(tree, func(t *testing.T) {
			a := sourceTar(t, tree, scale(16<<20, 4<<20), time.Unix(1700000000, 0))
			b := sourceTar(t, tree, scale(16<<20, 4<<20), time.Unix(1800000000, 0))
			if bytes.Equal(a, b) {
				t.Fatal("the two tars are the same")
			}
			added, first := storedGrowth(t, false, a, b)
			plainAdded, _ := storedGrowth(t, true, a, b)
			t.Logf("%s: tar %d bytes, stored %d; the re-timestamped tar adds %d split (%.2f%%), %d plain",
				tree, len(a), first, added, 100*float64(added)/float64(first), plainAdded)
			if added*100 > first {
				t.Errorf("a re-timestamped tar adds %d stored bytes to %d: want under 1%%", added, first)
			}
			// One file changed (its first bytes), re-timestamped as well:
			// a chunk or two of content, and the meta.
			c := bytes.Replace(b, []byte("// Copyright"), []byte("// Copyleft!"), 1)
			added, _ = storedGrowth(t, false, a, c)
			t.Logf("%s: one changed file adds %d", tree, added)
			if added > 2*256<<10 {
				t.Errorf("one changed file adds %d stored bytes", added)
			}
		})
	}
}

// A split tar reads back byte for byte, whole and in ranges that start in
// headers, contents and the end marker; its chunks survive Reindex.
func TestSplitTarReads(t *testing.T) {
	store := mem.New()
	c := openCache(t, t.TempDir(), store)
	data := sourceTar(t, "encoding", 3<<20, time.Unix(1600000000, 0))
	info := push(t, c, data)
	if !info.SplitTar {
		t.Fatalf("a tar stored plain: %+v", info)
	}
	for _, r := range [][2]int64{{0, -1}, {0, 1}, {1, 511}, {512, 1000}, {100000, 300000}, {int64(len(data)) - 1024, -1}, {int64(len(data)) - 1, 1}, {int64(len(data)), -1}} {
		end := int64(len(data))
		if r[1] >= 0 {
			end = r[0] + r[1]
		}
		if got := pull(t, c, info.Digest, r[0], r[1]); !bytes.Equal(got, data[r[0]:end]) {
			t.Fatalf("range %v: %d bytes, not the tar's", r, len(got))
		}
	}
	if _, err := c.Chunks(t.Context(), info.Digest); !isErr(err, ErrFailedPrecondition) {
		t.Errorf("Chunks of a split tar: %v", err)
	}
	checkRefcounts(t, c)
	if err := c.Reindex(t.Context()); err != nil {
		t.Fatal(err)
	}
	if back, err := c.Stat(t.Context(), info.Digest); err != nil || !back.SplitTar || back.Size != info.Size {
		t.Fatalf("after Reindex: %+v, %v", back, err)
	}
	if got := pull(t, c, info.Digest, 0, -1); !bytes.Equal(got, data) {
		t.Fatal("does not read back after Reindex")
	}
	checkRefcounts(t, c)
	if err := c.Delete(t.Context(), info.Digest); err != nil {
		t.Fatal(err)
	}
	checkRefcounts(t, c)
}

// A gzip of a tar: the blob is rebuilt from the split tar, and both
// records share the tar's chunks.
func TestGzipOfSplitTar(t *testing.T) {
	c, _ := newCache(t)
	data := sourceTar(t, "encoding", 3<<20, time.Unix(1600000000, 0))
	blob := gz(t, data, 6)
	info := pushBlob(t, c, blob, gzipLayer)
	if info.Rebuilt == "" || !info.SplitTar {
		t.Fatalf("%+v: want rebuilt from a split tar", info)
	}
	if got := pull(t, c, info.Digest, 0, -1); !bytes.Equal(got, blob) {
		t.Fatal("the gzip does not read back")
	}
	tarInfo, err := c.Stat(t.Context(), digest.FromBytes(data))
	if err != nil || !tarInfo.SplitTar {
		t.Fatalf("the tar: %+v, %v", tarInfo, err)
	}
	checkRefcounts(t, c)
	// The same files re-timestamped, gzipped: almost nothing new.
	before, _ := c.Stats(t.Context())
	pushBlob(t, c, gz(t, sourceTar(t, "encoding", 3<<20, time.Unix(1700000000, 0)), 6), gzipLayer)
	after, _ := c.Stats(t.Context())
	if added := after.StoredBytes - before.StoredBytes; added*100 > before.StoredBytes {
		t.Errorf("a re-timestamped gzip layer adds %d stored bytes to %d", added, before.StoredBytes)
	}
}

// Bad input through the split path changes nothing: wrong digest, short
// and long streams, a stream that breaks.
func TestSplitTarBadInput(t *testing.T) {
	c, _ := newCache(t)
	data := sourceTar(t, "encoding", 2<<20, time.Unix(1600000000, 0))
	for name, tc := range map[string]struct {
		r    io.Reader
		opts PushOptions
		want error
	}{
		"wrong digest":  {bytes.NewReader(data), PushOptions{Size: -1, Expected: digest.FromString("x")}, ErrDigestMismatch},
		"short":         {bytes.NewReader(data), PushOptions{Size: int64(len(data)) + 1}, ErrSizeMismatch},
		"long":          {bytes.NewReader(data), PushOptions{Size: int64(len(data)) - 1}, ErrSizeMismatch},
		"stream breaks": {io.MultiReader(bytes.NewReader(data[:len(data)/2]), errReader{errBroken}), PushOptions{Size: -1}, errBroken},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := c.Push(t.Context(), tc.r, tc.opts); !isErr(err, tc.want) {
				t.Fatalf("Push: %v, want %v", err, tc.want)
			}
			if layers, _, _ := c.List(t.Context(), "", 0); len(layers) != 0 {
				t.Fatalf("%d layers committed", len(layers))
			}
		})
	}
}

// Whatever a push is given, it commits it and gives back its exact bytes:
// tars, broken tars, anything.
func FuzzPushRoundTrip(f *testing.F) {
	f.Add(sourceTar(f, "unicode", 64<<10, time.Unix(1, 0)))
	f.Add([]byte("not a tar"))
	f.Add(make([]byte, 1536))
	c, err := Open(context.Background(), Options{Dir: f.TempDir(), Backend: mem.New()})
	if err != nil {
		f.Fatal(err)
	}
	defer c.Close()
	f.Fuzz(func(t *testing.T, b []byte) {
		info, err := c.Push(context.Background(), bytes.NewReader(b), PushOptions{Size: int64(len(b)), Expected: digest.FromBytes(b)})
		if err != nil {
			t.Fatalf("push of %d bytes: %v", len(b), err)
		}
		for _, r := range [][2]int64{{0, -1}, {int64(len(b)) / 3, int64(len(b)) / 3}} {
			rc, _, err := c.Open(context.Background(), info.Digest, r[0], r[1])
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			end := int64(len(b))
			if r[1] >= 0 {
				end = r[0] + r[1]
			}
			if err != nil || !bytes.Equal(got, b[r[0]:end]) {
				t.Fatalf("range %v of %d bytes: %d back, %v", r, len(b), len(got), err)
			}
		}
	})
}

// tarLookingManifest is a valid OCI index whose first 512 bytes carry a
// correct tar header checksum (octal digits inside an annotation): stored
// through the push path, it is a split tar.
func tarLookingManifest(t *testing.T) []byte {
	prefix := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"annotations":{"a":"`
	body := []byte(prefix + strings.Repeat("x", 600) + `"}}`)
	blk := body[:512]
	for i := 148; i < 156; i++ {
		blk[i] = ' '
	}
	var sum int
	for _, c := range blk {
		sum += int(c)
	}
	copy(blk[148:], fmt.Sprintf("%07o ", sum))
	if !tarsplit.LooksLikeTar(blk) {
		t.Fatal("not tar-looking")
	}
	return body
}

// Reindex reads manifests back through the same path as a pull: one stored
// split is restored with its tag.
func TestTarLookingManifestSurvivesReindex(t *testing.T) {
	c := openCache(t, t.TempDir(), mem.New())
	b := tarLookingManifest(t)
	mi, err := c.PutManifest(t.Context(), "r/x", "v1", "application/vnd.oci.image.index.v1+json", bytes.NewReader(b), 0)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := c.Stat(t.Context(), mi.Digest); err != nil || !st.SplitTar {
		t.Fatalf("the manifest is not stored split (%+v, %v): the test tests nothing", st, err)
	}
	if err := c.Reindex(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StatManifest(t.Context(), "r/x", "v1"); err != nil {
		t.Fatalf("after Reindex the tagged manifest is gone: %v", err)
	}
}

// A split tar whose recorded size disagrees with what its streams join to
// (a backend manifest edited by hand) is data loss on read, never a short
// read that ends cleanly.
func TestSplitTarWrongSize(t *testing.T) {
	store := mem.New()
	c := openCache(t, t.TempDir(), store)
	data := sourceTar(t, "unicode", 256<<10, time.Unix(1, 0))
	info := push(t, c, data)
	key := layerKey(info.Digest)
	rc, err := store.Open(t.Context(), key, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	m, _ := io.ReadAll(rc)
	rc.Close()
	for _, delta := range []int{1, -1} {
		edited := strings.ReplaceAll(string(m), `"size":`+strconv.Itoa(len(data)), `"size":`+strconv.Itoa(len(data)+delta))
		if edited == string(m) {
			t.Fatal("no size in the manifest")
		}
		if err := store.Put(t.Context(), key, strings.NewReader(edited), int64(len(edited))); err != nil {
			t.Fatal(err)
		}
		if err := c.Reindex(t.Context()); err != nil {
			t.Fatal(err)
		}
		r, _, err := c.Open(t.Context(), info.Digest, 0, -1)
		if err != nil {
			continue // refused at open: fine
		}
		got, err := io.ReadAll(r)
		r.Close()
		if !isErr(err, ErrDataLoss) {
			t.Errorf("size %+d: read %d bytes of %d, %v; want ErrDataLoss", delta, len(got), len(data)+delta, err)
		}
	}
}

// A large file is chunked apart from what precedes it: the same large
// file after other small files adds nothing but the small files and the
// meta stream.
func TestLargeFilesChunkedAlone(t *testing.T) {
	big := genData(77, 5<<20)
	mk := func(small []byte) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for _, f := range []struct {
			name string
			data []byte
		}{{"small", small}, {"big", big}, {"after", small}} {
			tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), ModTime: time.Unix(1, 0)})
			tw.Write(f.data)
		}
		tw.Close()
		return b.Bytes()
	}
	a, b := mk(genData(1, 9000)), mk(genData(2, 13000))
	added, first := storedGrowth(t, false, a, b)
	t.Logf("first tar stored %d; the second adds %d", first, added)
	if added > 40<<10 {
		t.Errorf("the second tar adds %d stored bytes: the large file's chunks depend on the small file before it", added)
	}
}
