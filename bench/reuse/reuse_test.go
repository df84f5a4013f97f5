package reuse

import (
	"archive/tar"
	"bytes"
	stdgzip "compress/gzip"
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io"
	mrand "math/rand"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// text returns n bytes of seeded, compressible, word-like data: what source
// trees and binaries' string tables look like to zstd, not random noise.
func text(seed uint64, n int) []byte {
	words := strings.Fields("func return if err nil package import type struct interface map slice chan go defer select case default for range var const")
	r := rand.New(rand.NewPCG(seed, 42))
	var b bytes.Buffer
	for b.Len() < n {
		b.WriteString(words[r.IntN(len(words))])
		if r.IntN(8) == 0 {
			b.WriteByte('\n')
		} else {
			b.WriteByte(' ')
		}
	}
	return b.Bytes()[:n]
}

type file struct {
	name string
	data []byte
}

func makeTar(t *testing.T, files ...file) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func gzipBytes(t *testing.T, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&b, gzip.DefaultCompression)
	zw.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// checkConsistent checks what holds for any report: per-layer figures add
// up to the totals, and no level stores more than the one above it.
func checkConsistent(t *testing.T, r *Report) {
	t.Helper()
	var raw int64
	for i, l := range r.Layers {
		raw += l.RawBytes
		if l.FileUniqueBytes > l.FileBytes || l.FileBytes > l.RawBytes {
			t.Errorf("layer %d: file unique %d, file bytes %d, raw %d: want unique ≤ file bytes ≤ raw", i, l.FileUniqueBytes, l.FileBytes, l.RawBytes)
		}
		if len(l.Chunks) != len(r.Averages) {
			t.Fatalf("layer %d: %d chunk figures, want %d", i, len(l.Chunks), len(r.Averages))
		}
		for _, c := range l.Chunks {
			if c.UniqueBytes > l.RawBytes {
				t.Errorf("layer %d avg %d: unique %d > raw %d", i, c.AvgBytes, c.UniqueBytes, l.RawBytes)
			}
			if c.NewChunks > c.Chunks {
				t.Errorf("layer %d avg %d: %d new chunks of %d", i, c.AvgBytes, c.NewChunks, c.Chunks)
			}
			// zstd may add a frame header (≤ 18 bytes) to a chunk it cannot compress.
			if c.StoredBytes > c.UniqueBytes+18*c.NewChunks {
				t.Errorf("layer %d avg %d: stored %d > unique %d + overhead", i, c.AvgBytes, c.StoredBytes, c.UniqueBytes)
			}
		}
	}
	if raw != r.Total.RawBytes {
		t.Errorf("total raw %d, layers add up to %d", r.Total.RawBytes, raw)
	}
	for _, c := range r.Total.Chunks {
		if c.UniqueBytes > r.Total.RawBytes {
			t.Errorf("avg %d: unique %d > raw %d", c.AvgBytes, c.UniqueBytes, r.Total.RawBytes)
		}
	}
}

// TestSmoke runs the whole analysis over generated inputs of every kind and
// checks the figures against what was built into them.
func TestSmoke(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	shared := file{"usr/lib/shared.so", text(1, 1<<20)}
	l1 := makeTar(t, shared, file{"app/one.go", text(2, 512<<10)})
	l2 := makeTar(t, file{"app/two.go", text(3, 256<<10)}, shared)
	p1 := writeFile(t, dir, "l1.tar", l1)
	p2 := writeFile(t, dir, "l2.tar.gz", gzipBytes(t, l2))
	// l1 again, zstd-compressed: a new blob to a registry, nothing new to cairn.
	enc, _ := zstd.NewWriter(nil)
	p3 := writeFile(t, dir, "l1.tar.zst", enc.EncodeAll(l1, nil))

	a, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{p1, p2, p3} {
		if err := a.AddPath(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	r := a.Report()
	checkConsistent(t, r)
	if got, want := len(r.Layers), 3; got != want {
		t.Fatalf("%d layers, want %d", got, want)
	}
	L1, L2, L3 := r.Layers[0], r.Layers[1], r.Layers[2]
	if L1.RawBytes != int64(len(l1)) || L2.RawBytes != int64(len(l2)) || L3.RawBytes != int64(len(l1)) {
		t.Errorf("raw bytes %d %d %d, want %d %d %d", L1.RawBytes, L2.RawBytes, L3.RawBytes, len(l1), len(l2), len(l1))
	}
	if got, want := []string{L1.Compression, L2.Compression, L3.Compression}, []string{"none", "gzip", "zstd"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("compression %v, want %v", got, want)
	}
	if L1.DiffID != L3.DiffID {
		t.Errorf("diff IDs of the same tar differ: %s, %s", L1.DiffID, L3.DiffID)
	}
	// A registry stores the plain layer as its gzip, and every blob once.
	if got, want := L1.RegistryBytes, int64(len(gzipBytes(t, l1))); got != want {
		t.Errorf("registry bytes of a plain layer %d, want its gzip size %d", got, want)
	}
	if L3.RegistryBytes != L3.BlobBytes {
		t.Errorf("zstd copy: registry %d, want its blob size %d", L3.RegistryBytes, L3.BlobBytes)
	}
	// File level: the shared file counts once.
	if got, want := L2.FileUniqueBytes, int64(256<<10); got != want {
		t.Errorf("layer 2 file-unique bytes %d, want %d (the shared file seen in layer 1)", got, want)
	}
	if L3.FileUniqueBytes != 0 || L3.UniqueFiles != 0 {
		t.Errorf("layer 3 (layer 1 again) adds %d file bytes, want 0", L3.FileUniqueBytes)
	}
	for _, c := range L3.Chunks {
		if c.UniqueBytes != 0 || c.StoredBytes != 0 {
			t.Errorf("avg %d: layer 1 again adds %d unique bytes, want 0", c.AvgBytes, c.UniqueBytes)
		}
	}
	// Chunk level finds most of the shared MiB in layer 2 at the chunk sizes
	// small enough for a MiB to hold several chunks. Not all of it: after the
	// shift the cut points take a few chunks to fall back in step
	// (normalized chunking), ~100 KiB at 16 KiB on this data.
	for _, c := range L2.Chunks {
		if c.AvgBytes <= 64<<10 && c.UniqueBytes > L2.RawBytes-(1<<20)/2 {
			t.Errorf("avg %d: layer 2 adds %d unique bytes of %d; the shared MiB was not found", c.AvgBytes, c.UniqueBytes, L2.RawBytes)
		}
	}
	// Compressible data: cairn stores less than the registry.
	for _, c := range r.Total.Chunks {
		if c.StoredBytes >= r.Total.RegistryBytes {
			t.Errorf("avg %d: stored %d ≥ registry %d", c.AvgBytes, c.StoredBytes, r.Total.RegistryBytes)
		}
	}

	// The outputs.
	var txt, js, svg bytes.Buffer
	if err := r.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(txt.String(), "total") || !strings.Contains(txt.String(), "stored/registry") {
		t.Errorf("text report lacks the totals or the what-if table:\n%s", txt.String())
	}
	if err := json.NewEncoder(&js).Encode(r); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || back.Total.RawBytes != r.Total.RawBytes {
		t.Errorf("JSON round trip: %v, raw %d want %d", err, back.Total.RawBytes, r.Total.RawBytes)
	}
	if err := WriteSVG(&svg, r); err != nil {
		t.Fatal(err)
	}
	checkSVG(t, svg.Bytes())
}

func checkSVG(t *testing.T, b []byte) {
	t.Helper()
	d := xml.NewDecoder(bytes.NewReader(b))
	lines := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("SVG is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "polyline" {
			lines++
		}
	}
	if lines != 3 {
		t.Errorf("SVG has %d lines, want 3 (raw, registry, cairn)", lines)
	}
}

// TestImages reads an OCI layout and a docker save tarball made from the
// same go-containerregistry random image: same layers, so the second adds
// nothing to a content-addressed store.
func TestImages(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	img, err := random.Image(256<<10, 3, random.WithSource(mrand.NewSource(7)))
	if err != nil {
		t.Fatal(err)
	}
	lp, err := layout.Write(filepath.Join(dir, "oci"), empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	// The same image twice in the index: its layers are duplicates.
	if err := lp.AppendImage(img); err != nil {
		t.Fatal(err)
	}
	save := writeDockerSave(t, dir, img)

	for _, tc := range []struct {
		path string
		want Kind
	}{{filepath.Join(dir, "oci"), KindOCILayout}, {save, KindDockerSave}} {
		if got, err := DetectKind(tc.path); err != nil || got != tc.want {
			t.Errorf("DetectKind(%s) = %q, %v; want %q", tc.path, got, err, tc.want)
		}
	}

	a, err := New(Options{Averages: []int{16 << 10, 64 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.AddPath(ctx, filepath.Join(dir, "oci")); err != nil {
		t.Fatal(err)
	}
	if err := a.AddPath(ctx, save); err != nil {
		t.Fatal(err)
	}
	r := a.Report()
	checkConsistent(t, r)
	if got, want := len(r.Layers), 9; got != want {
		t.Fatalf("%d layers, want 9 (3 in the layout, 3 again, 3 in the docker save)", got)
	}
	layers, _ := img.Layers()
	for i, l := range r.Layers[:3] {
		d, _ := layers[i].Digest()
		if l.Digest != d.String() || l.Compression != "gzip" || l.RegistryBytes != l.BlobBytes {
			t.Errorf("layer %d: digest %s compression %s registry %d; want %s gzip %d", i, l.Digest, l.Compression, l.RegistryBytes, d, l.BlobBytes)
		}
	}
	for i, l := range r.Layers[3:] {
		if l.RegistryBytes != 0 {
			t.Errorf("layer %d: a blob seen before adds %d registry bytes", i+3, l.RegistryBytes)
		}
		for _, c := range l.Chunks {
			if c.UniqueBytes != 0 {
				t.Errorf("layer %d avg %d: content seen before adds %d unique bytes", i+3, c.AvgBytes, c.UniqueBytes)
			}
		}
	}
	if !r.Layers[3].Duplicate {
		t.Errorf("layer 4 (the same blob again in the layout) is not marked duplicate")
	}
}

// writeDockerSave writes img the way `docker save` does, through
// go-containerregistry's tarball writer (manifest.json at the top, layers
// gzip'd as it writes them).
func writeDockerSave(t *testing.T, dir string, img v1.Image) string {
	t.Helper()
	p := filepath.Join(dir, "save.tar")
	tag, err := name.NewTag("example.com/smoke:1")
	if err != nil {
		t.Fatal(err)
	}
	if err := tarball.WriteToFile(p, tag, img); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestClassicDockerSave reads the older `docker save` form: plain
// <id>/layer.tar entries, a repeated layer as a symbolic link.
func TestClassicDockerSave(t *testing.T) {
	dir := t.TempDir()
	layer := makeTar(t, file{"etc/os-release", text(9, 300<<10)})
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	add := func(h *tar.Header, data []byte) {
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	add(&tar.Header{Name: "aaa/layer.tar", Mode: 0o644, Typeflag: tar.TypeReg}, layer)
	add(&tar.Header{Name: "bbb/layer.tar", Typeflag: tar.TypeSymlink, Linkname: "../aaa/layer.tar"}, nil)
	add(&tar.Header{Name: "manifest.json", Mode: 0o644, Typeflag: tar.TypeReg},
		[]byte(`[{"Config":"c.json","RepoTags":null,"Layers":["aaa/layer.tar","bbb/layer.tar"]}]`))
	tw.Close()
	p := writeFile(t, dir, "classic.tar", b.Bytes())

	a, err := New(Options{Averages: []int{64 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.AddPath(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	r := a.Report()
	checkConsistent(t, r)
	if len(r.Layers) != 2 {
		t.Fatalf("%d layers, want 2", len(r.Layers))
	}
	l0, l1 := r.Layers[0], r.Layers[1]
	if l0.RawBytes != int64(len(layer)) || l1.RawBytes != int64(len(layer)) {
		t.Errorf("raw %d, %d; want %d twice", l0.RawBytes, l1.RawBytes, len(layer))
	}
	if l0.RegistryBytes == 0 || l1.RegistryBytes != 0 {
		t.Errorf("registry %d, %d; want the gzip size once", l0.RegistryBytes, l1.RegistryBytes)
	}
	if l1.Chunks[0].UniqueBytes != 0 || l1.FileUniqueBytes != 0 {
		t.Errorf("the linked layer adds %d chunk and %d file bytes, want 0", l1.Chunks[0].UniqueBytes, l1.FileUniqueBytes)
	}
}

// TestLayerWithManifestJSON: a plain layer whose top holds a manifest.json
// that is not docker save's is still read as one layer.
func TestLayerWithManifestJSON(t *testing.T) {
	dir := t.TempDir()
	p := writeFile(t, dir, "webapp.tar", makeTar(t, file{"manifest.json", []byte(`{"name":"a web app"}`)}, file{"index.html", text(4, 10000)}))
	a, _ := New(Options{Averages: []int{16 << 10}})
	if err := a.AddPath(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	r := a.Report()
	if len(r.Layers) != 1 || r.Layers[0].Files != 2 {
		t.Errorf("%d layers; want the tar as one layer of 2 files", len(r.Layers))
	}
}

// TestNotATar: an opaque blob is still chunked; the file figure says why it
// is missing instead of failing the run.
func TestNotATar(t *testing.T) {
	a, _ := New(Options{Averages: []int{16 << 10}})
	data := text(5, 100<<10)
	if err := a.AddLayer(context.Background(), "opaque", bytes.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	l := a.Report().Layers[0]
	if l.RawBytes != int64(len(data)) || l.FileError == "" || l.Chunks[0].UniqueBytes != int64(len(data)) {
		t.Errorf("raw %d file error %q unique %d; want %d, an error, %d", l.RawBytes, l.FileError, l.Chunks[0].UniqueBytes, len(data), len(data))
	}
}

// TestCorruptGzip: a broken layer is an error that names it.
func TestCorruptGzip(t *testing.T) {
	a, _ := New(Options{Averages: []int{16 << 10}})
	gz := gzipBytes(t, makeTar(t, file{"a", text(1, 200<<10)}))
	gz = gz[:len(gz)/2]
	err := a.AddLayer(context.Background(), "broken.tar.gz", bytes.NewReader(gz))
	if err == nil || !strings.Contains(err.Error(), "broken.tar.gz") {
		t.Errorf("got %v, want an error naming the layer", err)
	}
}

// The report says which compressed layers an encoder reproduces, and what
// storing those as their tar saves: two versions of a layer, gzipped as
// BuildKit does, share most chunks; a blob with a header byte no encoder
// writes is not reproduced.
func TestReproduced(t *testing.T) {
	dir := t.TempDir()
	base := text(7, 3<<20)
	v1 := makeTar(t, file{"app/a.txt", base}, file{"app/b.txt", text(8, 100<<10)})
	v2 := makeTar(t, file{"app/a.txt", base}, file{"app/b.txt", text(9, 100<<10)})
	odd := gzipBytes(t, makeTar(t, file{"x", text(10, 200<<10)}))
	odd[8] = 0x7f // an XFL byte none of the encoders writes
	a, err := New(Options{Averages: []int{256 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range [][]byte{stdGzip(t, v1), stdGzip(t, v2), odd} {
		if err := a.AddPath(t.Context(), writeFile(t, dir, fmt.Sprintf("l%d.tar.gz", i), b)); err != nil {
			t.Fatal(err)
		}
	}
	r := a.Report()
	checkConsistent(t, r)
	if r.Layers[0].Reproduced != "go-gzip/6" || r.Layers[1].Reproduced != "go-gzip/6" || r.Layers[2].Reproduced != "none" {
		t.Fatalf("reproduced: %q %q %q", r.Layers[0].Reproduced, r.Layers[1].Reproduced, r.Layers[2].Reproduced)
	}
	if r.Total.Compressed != 3 || r.Total.Reproduced["go-gzip/6"] != 2 {
		t.Fatalf("totals: %d compressed, %v", r.Total.Compressed, r.Total.Reproduced)
	}
	if r.Total.StoredWithRecompress*3 > r.Total.StoredWithout*2 {
		t.Errorf("stored with recompress %d, without %d: want well under", r.Total.StoredWithRecompress, r.Total.StoredWithout)
	}
	var out bytes.Buffer
	if err := r.WriteText(&out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "compressed layers: 3, of which 2 reproduced from their tar (go-gzip/6: 2)") {
		t.Errorf("text report:\n%s", out.String())
	}
}

func stdGzip(t *testing.T, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	zw := stdgzip.NewWriter(&b)
	zw.Write(data)
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// Tar-aware figures: the same files with other timestamps add almost
// nothing split, and everything chunked plain.
func TestTarAware(t *testing.T) {
	dir := t.TempDir()
	mk := func(mtime time.Time) []byte {
		var b bytes.Buffer
		tw := tar.NewWriter(&b)
		for i := range 40 {
			data := text(uint64(i), 20<<10)
			tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("src/f%d.go", i), Mode: 0o644, Size: int64(len(data)), ModTime: mtime})
			tw.Write(data)
		}
		tw.Close()
		return b.Bytes()
	}
	a, err := New(Options{Averages: []int{64 << 10}})
	if err != nil {
		t.Fatal(err)
	}
	for i, m := range []time.Time{time.Unix(1700000000, 0), time.Unix(1800000000, 0)} {
		if err := a.AddPath(t.Context(), writeFile(t, dir, fmt.Sprintf("t%d.tar", i), mk(m))); err != nil {
			t.Fatal(err)
		}
	}
	r := a.Report()
	second := r.Layers[1]
	if second.TarChunks.UniqueBytes*20 > r.Layers[0].TarChunks.UniqueBytes {
		t.Errorf("tar-aware: the re-timestamped tar adds %d unique bytes to %d", second.TarChunks.UniqueBytes, r.Layers[0].TarChunks.UniqueBytes)
	}
	if second.Chunks[0].UniqueBytes*2 < r.Layers[0].Chunks[0].UniqueBytes {
		t.Errorf("plain chunking: the re-timestamped tar adds only %d unique bytes to %d (expected most of it)", second.Chunks[0].UniqueBytes, r.Layers[0].Chunks[0].UniqueBytes)
	}
	var out bytes.Buffer
	r.WriteText(&out)
	if !strings.Contains(out.String(), "tar-aware") {
		t.Errorf("text report lacks the tar-aware line:\n%s", out.String())
	}
}
