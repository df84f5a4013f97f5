package recompress

import (
	"archive/tar"
	"bytes"
	stdgzip "compress/gzip"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
)

var update = flag.Bool("update", false, "rewrite the vectors in vectors.go")

// TestVectors checks that every encoder a Matcher tries still writes its
// pinned output; with -update it rewrites the table instead.
func TestVectors(t *testing.T) {
	if raceEnabled && !*update {
		t.Skip("race detector: the vectors are checked by the plain run (about 20× slower here, and nothing concurrent)")
	}
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range vectors {
			if !yield(k) {
				return
			}
		}
	})
	specs := map[string]Spec{}
	for _, f := range []Format{Gzip, Zstd} {
		for _, s := range Candidates(f, &GzipHeader{}) {
			specs[s.Key()] = s
		}
	}
	if len(specs) != len(vectors) {
		t.Errorf("%d candidate encoders, %d vectors: every candidate needs a vector", len(specs), len(vectors))
	}
	got := map[string]string{}
	for _, k := range keys {
		s, ok := specs[k]
		if !ok {
			t.Errorf("vector %s names no candidate", k)
			continue
		}
		sum, err := VectorSum(s)
		if err != nil {
			t.Fatalf("%s: %v", k, err)
		}
		got[k] = sum
		if !*update && sum != vectors[k] {
			t.Errorf("%s (%s) writes %s for its vector, pinned %s: its output changed; see vectors.go", k, Version(s.Encoder), sum, vectors[k])
		}
	}
	if *update {
		writeVectors(t, keys, got)
	}
}

func writeVectors(t *testing.T, keys []string, got map[string]string) {
	src, err := os.ReadFile("vectors.go")
	if err != nil {
		t.Fatal(err)
	}
	start := bytes.Index(src, []byte("var vectors = map[string]string{\n"))
	end := bytes.Index(src[start:], []byte("\n}\n"))
	if start < 0 || end < 0 {
		t.Fatal("vectors.go: no vectors table")
	}
	var b bytes.Buffer
	b.WriteString("var vectors = map[string]string{\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "\t%q: %q,\n", k, got[k])
	}
	out := append(append(append([]byte{}, src[:start]...), b.Bytes()[:b.Len()-1]...), src[start+end:]...)
	if err := os.WriteFile("vectors.go", out, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Log("rewrote vectors.go; run gofmt")
}

// TestCheckRefusesChangedEncoder: a spec whose vector does not match is
// unusable, and Rebuild refuses it.
func TestCheckRefusesChangedEncoder(t *testing.T) {
	s := Candidates(Gzip, &GzipHeader{})[0]
	key := s.Key()
	old := vectors[key]
	vectors[key] = strings.Repeat("0", 64)
	checked.Delete(key)
	t.Cleanup(func() { vectors[key] = old; checked.Delete(key) })
	if err := Check(s); !errors.Is(err, ErrChanged) {
		t.Fatalf("Check with a wrong vector: %v, want ErrChanged", err)
	}
	if err := Rebuild(s, strings.NewReader("x"), io.Discard); !errors.Is(err, ErrChanged) {
		t.Fatalf("Rebuild with a wrong vector: %v, want ErrChanged", err)
	}
	m, err := NewMatcher([]Spec{s}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.Live() != 0 {
		t.Fatal("a Matcher runs an encoder whose vector does not match")
	}
}

// tarLimit is the size of realTar: several MiB, a quarter of one under the
// race detector (compression runs about 20× slower there, and every test
// runs all 34 candidates).
func tarLimit() int {
	if raceEnabled {
		return 256 << 10
	}
	return 6 << 20
}

// realTar is a tar of a part of GOROOT: real files, several MiB.
var realTar = sync.OnceValues(func() ([]byte, error) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return nil, err
	}
	root := filepath.Join(strings.TrimSpace(string(out)), "src", "net")
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || buf.Len() > tarLimit() {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name, _ = filepath.Rel(root, p)
		hdr.ModTime = time.Unix(1700000000, 0)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if d.Type().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			_, err = tw.Write(b)
			return err
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
})

func getTar(t testing.TB) []byte {
	b, err := realTar()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// match runs a Matcher over blob the way an ingest does: compressed bytes
// in small pieces, decompressed bytes as the decoder produces them.
func match(t testing.TB, blob []byte, window int) (Spec, bool) {
	t.Helper()
	f := Detect(blob)
	var h *GzipHeader
	var dec io.Reader
	cr := &feeder{r: bytes.NewReader(blob)}
	switch f {
	case Gzip:
		zr, err := stdgzip.NewReader(cr)
		if err != nil {
			t.Fatal(err)
		}
		h = HeaderOf(zr.Header)
		dec = zr
	case Zstd:
		zr, err := zstd.NewReader(cr, zstd.WithDecoderConcurrency(1))
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		dec = zr
	default:
		t.Fatalf("Detect: %q", f)
	}
	m, err := NewMatcher(Candidates(f, h), window)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	cr.start(m)
	buf := make([]byte, 32<<10)
	for {
		n, err := dec.Read(buf)
		m.Feed(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return Spec{}, false
		}
	}
	if _, err := io.Copy(io.Discard, cr); err != nil {
		t.Fatal(err)
	}
	return m.Finish()
}

// feeder hands what the decoder reads to the matcher, as an ingest's tee
// does.
type feeder struct {
	r      io.Reader
	m      *Matcher
	before []byte // read before the matcher started (the decoder's header)
}

func (f *feeder) Read(p []byte) (int, error) {
	n, err := f.r.Read(p[:min(len(p), 7000)])
	if f.m != nil {
		f.m.AddCompressed(p[:n])
	} else {
		f.before = append(f.before, p[:n]...)
	}
	return n, err
}

func (f *feeder) start(m *Matcher) {
	f.m = m
	m.AddCompressed(f.before)
	f.before = nil
}

func compress(t testing.TB, s Spec, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := s.NewWriter(&b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// TestRoundTrip: for every candidate, a real tar compressed by it is
// matched to a spec that rebuilds it byte for byte.
func TestRoundTrip(t *testing.T) {
	data := getTar(t)
	hdr := &GzipHeader{Name: "layer.tar", ModTime: 1234567890, OS: 255}
	for _, f := range []Format{Gzip, Zstd} {
		for _, s := range Candidates(f, hdr) {
			t.Run(s.Key(), func(t *testing.T) {
				if testing.Short() && s.Level != 6 && s.Level != 1 && s.Level != 2 {
					t.Skip("short: levels 1, 2 and 6 only")
				}
				blob := compress(t, s, data)
				got, ok := match(t, blob, 0)
				if !ok {
					t.Fatalf("no candidate reproduces a blob written by %s", s)
				}
				var out bytes.Buffer
				if err := Rebuild(got, bytes.NewReader(data), &out); err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(out.Bytes(), blob) {
					t.Fatalf("%s (matched for %s) rebuilds %d bytes, not the %d of the blob", got, s, out.Len(), len(blob))
				}
			})
		}
	}
}

// TestClientsWriters: the writers real clients use, called as they call
// them, are reproduced.
func TestClientsWriters(t *testing.T) {
	data := getTar(t)
	cases := map[string]func(w io.Writer) io.WriteCloser{
		// BuildKit/containerd: gzip.NewWriterLevel(w, gzip.DefaultCompression).
		"buildkit-gzip": func(w io.Writer) io.WriteCloser {
			zw, _ := stdgzip.NewWriterLevel(w, stdgzip.DefaultCompression)
			return zw
		},
		// go-containerregistry: gzip.NewWriterLevel(w, gzip.BestSpeed).
		"ggcr-gzip": func(w io.Writer) io.WriteCloser {
			zw, _ := stdgzip.NewWriterLevel(w, stdgzip.BestSpeed)
			return zw
		},
		// containers/image: pgzip.NewWriterLevel(w, level) with its
		// default concurrency (1 MiB blocks, GOMAXPROCS of them).
		"containers-image-pgzip": func(w io.Writer) io.WriteCloser {
			zw, _ := pgzip.NewWriterLevel(w, stdgzip.DefaultCompression)
			return zw
		},
		"pgzip-8-blocks": func(w io.Writer) io.WriteCloser {
			zw, _ := pgzip.NewWriterLevel(w, stdgzip.DefaultCompression)
			_ = zw.SetConcurrency(1<<20, 8)
			return zw
		},
		// BuildKit compression=zstd: zstd.NewWriter with its default
		// concurrency (GOMAXPROCS) at SpeedDefault.
		"buildkit-zstd": func(w io.Writer) io.WriteCloser {
			zw, _ := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault))
			return zw
		},
		"zstd-concurrency-8": func(w io.Writer) io.WriteCloser {
			zw, _ := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(8))
			return zw
		},
	}
	names := make([]string, 0, len(cases))
	for k := range cases {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			var b bytes.Buffer
			w := cases[name](&b)
			// Writes of uneven sizes, as a tar writer makes them.
			for rest := data; len(rest) > 0; {
				n := min(len(rest), 1+len(rest)%70001)
				if _, err := w.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			s, ok := match(t, b.Bytes(), 0)
			if !ok {
				t.Fatalf("%s: not reproduced", name)
			}
			var out bytes.Buffer
			if err := Rebuild(s, bytes.NewReader(data), &out); err != nil || !bytes.Equal(out.Bytes(), b.Bytes()) {
				t.Fatalf("%s: matched %s, which does not rebuild it (%v)", name, s, err)
			}
			t.Logf("%s → %s", name, s)
		})
	}
}

// TestNotReproduced: blobs no candidate writes fall back, whatever their
// shape.
func TestNotReproduced(t *testing.T) {
	data := getTar(t)
	s6 := Candidates(Gzip, &GzipHeader{OS: 255})[0]
	one := compress(t, s6, data)
	half := compress(t, s6, data[:len(data)/2])
	zs := Candidates(Zstd, nil)[0]
	cases := map[string][]byte{
		"two gzip members":              append(append([]byte{}, half...), compress(t, s6, data[len(data)/2:])...),
		"trailing bytes":                append(append([]byte{}, one...), "trailing"...),
		"two zstd frames":               append(compress(t, zs, data[:len(data)/2]), compress(t, zs, data[len(data)/2:])...),
		"an XFL byte no encoder writes": func() []byte { b := bytes.Clone(one); b[8] = 0x7f; return b }(),
		"zstd via EncodeAll":            func() []byte { e, _ := zstd.NewWriter(nil); return e.EncodeAll(data, nil) }(),
		"a flipped bit at the end":      func() []byte { b := bytes.Clone(one); b[len(b)-20] ^= 4; return b }(),
	}
	for name, blob := range cases {
		t.Run(name, func(t *testing.T) {
			if s, ok := match(t, blob, 0); ok {
				t.Fatalf("%s matched %s", name, s)
			}
		})
	}
}

// TestWindowBoundsMemory: a candidate that falls a window behind is
// dropped; a small window still reproduces a level-6 blob whose encoder
// buffers little.
func TestWindowBoundsMemory(t *testing.T) {
	if raceEnabled {
		t.Skip("race detector: the tar is too small to fill a pgzip block")
	}
	data := getTar(t)
	s := Candidates(Gzip, &GzipHeader{OS: 255})[0]
	blob := compress(t, s, data)
	if _, ok := match(t, blob, 256<<10); !ok {
		t.Fatal("a 256 KiB window does not reproduce a compress/gzip blob")
	}
	ps := Candidates(Gzip, &GzipHeader{OS: 255})[10] // pgzip level 6
	if ps.Encoder != EncPgzip || ps.Level != 6 {
		t.Fatalf("candidate 10 is %s", ps)
	}
	pblob := compress(t, ps, data)
	if s, ok := match(t, pblob, 64<<10); ok {
		t.Fatalf("a 64 KiB window matched pgzip's 1 MiB blocks (%s): the window does not bound pending output", s)
	}
	if _, ok := match(t, pblob, 0); !ok {
		t.Fatal("the default window does not reproduce pgzip")
	}
}

func TestSpecRoundTrip(t *testing.T) {
	for _, s := range append(Candidates(Gzip, &VectorHeader), Candidates(Zstd, nil)...) {
		got, err := Unmarshal(s.Marshal())
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if string(got.Marshal()) != string(s.Marshal()) {
			t.Fatalf("%s: round trip %s", s.Marshal(), got.Marshal())
		}
	}
	for _, bad := range []string{
		`{"encoder":"brotli","version":"x","level":1}`,
		`{"encoder":"go-gzip","version":"x","level":12,"header":{"os":3}}`,
		`{"encoder":"go-gzip","version":"x","level":6}`,
		`{"encoder":"klauspost-zstd","version":"x","level":3,"header":{"os":3}}`,
		`{"encoder":"pgzip","version":"x","level":6,"header":{"os":3}}`,
		`{"encoder":"pgzip","version":"x","level":6,"blockSize":1,"header":{"os":3}}`,
		`{"encoder":"go-gzip","version":"x","level":6,"header":{"os":3},"extra":1}`,
		`not json`,
	} {
		if _, err := Unmarshal([]byte(bad)); !errors.Is(err, ErrSpec) {
			t.Errorf("Unmarshal(%s): %v, want ErrSpec", bad, err)
		}
	}
}

// TestSpecGolden pins the stored form of a spec.
func TestSpecGolden(t *testing.T) {
	s := Spec{Encoder: EncGo, Version: "go1.26.8", Level: 6, Header: &GzipHeader{Name: "a", ModTime: 7, OS: 3, Extra: []byte{1, 2}}}
	const want = `{"encoder":"go-gzip","version":"go1.26.8","level":6,"header":{"name":"a","mtime":7,"os":3,"extra":"AQI="}}`
	if got := string(s.Marshal()); got != want {
		t.Fatalf("stored spec changed:\n got %s\nwant %s", got, want)
	}
	if _, err := Unmarshal([]byte(want)); err != nil {
		t.Fatal(err)
	}
}

func FuzzUnmarshal(f *testing.F) {
	f.Add([]byte(`{"encoder":"go-gzip","version":"go1.26.8","level":6,"header":{"os":3}}`))
	f.Add([]byte(`{"encoder":"pgzip","version":"x","level":1,"blockSize":1048576,"header":{"os":255}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Unmarshal(b)
		if err != nil {
			return
		}
		w, err := s.NewWriter(io.Discard)
		if err != nil {
			t.Fatalf("valid spec %s: NewWriter: %v", b, err)
		}
		w.Close()
	})
}

// TestVersionsMatchGoMod: the versions recorded in specs when the binary
// carries no module information (tests) are the ones go.mod requires.
func TestVersionsMatchGoMod(t *testing.T) {
	mod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for path, v := range pinnedModules {
		if !strings.Contains(string(mod), "\t"+path+" "+v+"\n") && !strings.Contains(string(mod), "\t"+path+" "+v+" ") {
			t.Errorf("go.mod does not require %s %s: update pinnedModules (and check the vectors)", path, v)
		}
	}
}

// Losing candidates and rebuilds whose writer fails end every goroutine
// they started: pgzip's Close returns early after a write error, which
// leaked its workers and buffers.
func TestNoGoroutineLeaks(t *testing.T) {
	data := getTar(t)
	pg := Candidates(Gzip, &GzipHeader{OS: 255})[10]
	blobs := [][]byte{
		compress(t, Candidates(Gzip, &GzipHeader{OS: 255})[0], data), // compress/gzip: every pgzip candidate loses
		compress(t, pg, data), // pgzip level 6: the other levels lose
	}
	before := runtime.NumGoroutine()
	for i := range 6 {
		if _, ok := match(t, blobs[i%2], 0); !ok {
			t.Fatal("not reproduced")
		}
		if err := Rebuild(pg, bytes.NewReader(data), failingWriter{}); err == nil {
			t.Fatal("Rebuild into a failing writer succeeded")
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		runtime.Gosched()
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines after, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("the reader went away") }
