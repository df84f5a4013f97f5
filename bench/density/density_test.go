package density

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/cairnbuild/cairn/chunker"
	"github.com/cairnbuild/cairn/chunkid"
)

// releases is the number of releases in the corpus; commitStep the number
// of commits between two releases' source layers.
const (
	releases   = 5
	commitStep = 10
)

type layer struct {
	name string
	data []byte
}

// TestDensity measures stored bytes, compression and decompression speed of
// cairn's unique chunks per codec, level and frame size. See the package
// documentation.
func TestDensity(t *testing.T) {
	if testing.Short() || os.Getenv("CAIRN_DENSITY") != "1" {
		t.Skip("set CAIRN_DENSITY=1 (and no -short) to run the issue 17 measurement")
	}
	start := time.Now()
	layers := corpus(t)
	var total int64
	for _, l := range layers {
		total += int64(len(l.data))
		t.Logf("layer %-40s %8.1f MB", l.name, mb(int64(len(l.data))))
	}

	// Chunk with the stored format's parameters and keep the first
	// occurrence of each chunk, in stream order: what ingest writes.
	seen := map[chunkid.ID]bool{}
	var joined []byte
	var ends []int // ends[i] is the end of unique chunk i in joined
	nchunks := 0
	buf := make([]byte, 2*chunker.V1.Max)
	for _, l := range layers {
		ch, err := chunker.New(bytes.NewReader(l.data), chunker.V1, buf)
		if err != nil {
			t.Fatal(err)
		}
		for {
			c, err := ch.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			nchunks++
			id := chunkid.Sum(c.Data)
			if seen[id] {
				continue
			}
			seen[id] = true
			joined = append(joined, c.Data...)
			ends = append(ends, len(joined))
		}
	}
	unique := int64(len(joined))
	t.Logf("corpus: %d layers, %.1f MB; %d chunks, %d unique, %.1f MB unique (%.1f s to build and chunk)",
		len(layers), mb(total), nchunks, len(ends), mb(unique), time.Since(start).Seconds())

	// The throughput passes cover a prefix of the unique stream, 128 MiB
	// unless CAIRN_DENSITY_SPEED_MB says otherwise (0: all of it), to bound
	// the run; sizes and decoding always cover all of it.
	speedLimit := min(unique, 128<<20)
	if v, err := strconv.Atoi(os.Getenv("CAIRN_DENSITY_SPEED_MB")); err == nil {
		speedLimit = unique
		if v > 0 {
			speedLimit = min(unique, int64(v)<<20)
		}
	}

	var rows []row
	for _, c := range codecs() {
		for _, target := range []int{0, 1 << 20, 2 << 20, 4 << 20} {
			if c.perChunkOnly && target != 0 {
				continue
			}
			frames := group(ends, target)
			r := measure(t, c, joined, ends, frames, speedLimit)
			r.frame = frameName(target)
			rows = append(rows, r)
			t.Logf("%-12s %-9s %8.1f MB  %7.1f / %7.1f MB/s  dec %7.1f MB/s  %6.0f µs/chunk read",
				r.codec, r.frame, mb(r.stored), r.comp1, r.comp2, r.dec, r.readUS)
		}
	}

	ref := zstdReference(t, joined, layers)

	var out strings.Builder
	fmt.Fprintf(&out, "\ncorpus: %d layers, %.1f MB; %d chunks, %d unique, %.1f MB unique\n", len(layers), mb(total), nchunks, len(ends), mb(unique))
	if speedLimit < unique {
		fmt.Fprintf(&out, "compression speed measured on the first %.1f MB of the unique stream\n", mb(speedLimit))
	}
	fmt.Fprintf(&out, "\n| codec | frame | stored MB | × unique | vs today | comp MB/s 1 core | comp MB/CPU-s | comp MB/s 2 cores | decode MB/s | µs per 1-chunk read |\n")
	fmt.Fprintf(&out, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	today := rows[0].stored // zstd fastest, one frame per chunk
	for _, r := range rows {
		fmt.Fprintf(&out, "| %s | %s | %.1f | %.3f | %.3f | %.0f | %.0f | %.0f | %.0f | %.0f |\n",
			r.codec, r.frame, mb(r.stored), float64(r.stored)/float64(unique), float64(r.stored)/float64(today),
			r.comp1, r.comp1c, r.comp2, r.dec, r.readUS)
	}
	out.WriteString(ref)
	fmt.Fprintf(&out, "\ntotal run %.0f s\n", time.Since(start).Seconds())
	t.Log(out.String())
	fmt.Print(out.String())
}

type row struct {
	codec, frame string
	stored       int64
	comp1, comp2 float64 // MB/s of input, wall time
	comp1c       float64 // MB of input per CPU-second, one core
	dec          float64 // MB/s of output, every frame decoded once
	readUS       float64 // mean µs to read one chunk chosen uniformly
}

// codec is a compressor and its decompressor. newEnc returns one encoder
// per worker; windowed encoders are given the frame's target size.
type codec struct {
	name         string
	perChunkOnly bool
	newEnc       func(window int) func(dst, src []byte) []byte
	newDec       func() func(dst, src []byte) ([]byte, error)
}

func codecs() []codec {
	zs := func(name string, l zstd.EncoderLevel) codec {
		return codec{
			name: name,
			newEnc: func(window int) func(dst, src []byte) []byte {
				// As cache/internal/chunks does today, with a window
				// that holds the whole frame.
				e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(l), zstd.WithEncoderConcurrency(1),
					zstd.WithWindowSize(window), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
				if err != nil {
					panic(err)
				}
				return func(dst, src []byte) []byte { return e.EncodeAll(src, dst[:0]) }
			},
			newDec: func() func(dst, src []byte) ([]byte, error) {
				d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.IgnoreChecksum(true),
					zstd.WithDecoderMaxMemory(64<<20))
				if err != nil {
					panic(err)
				}
				return func(dst, src []byte) ([]byte, error) { return d.DecodeAll(src, dst[:0]) }
			},
		}
	}
	s2dec := func() func(dst, src []byte) ([]byte, error) {
		return func(dst, src []byte) ([]byte, error) { return s2.Decode(dst[:cap(dst)], src) }
	}
	return []codec{
		zs("zstd fastest", zstd.SpeedFastest),
		zs("zstd default", zstd.SpeedDefault),
		zs("zstd better", zstd.SpeedBetterCompression),
		zs("zstd best", zstd.SpeedBestCompression),
		{
			name: "s2",
			newEnc: func(int) func(dst, src []byte) []byte {
				return func(dst, src []byte) []byte { return s2.Encode(dst[:cap(dst)], src) }
			},
			newDec: s2dec,
		},
		{
			name: "s2 better",
			newEnc: func(int) func(dst, src []byte) []byte {
				return func(dst, src []byte) []byte { return s2.EncodeBetter(dst[:cap(dst)], src) }
			},
			newDec: s2dec,
		},
	}
}

// group cuts the unique chunks into frames of consecutive chunks: a frame
// takes chunks while its input stays within target bytes (a chunk larger
// than target is a frame alone). target 0 is one frame per chunk. It
// returns the frames' ends as chunk indexes.
func group(ends []int, target int) []int {
	var frames []int
	prev := 0 // byte offset where the open frame starts
	for i := range ends {
		if i > 0 && (target == 0 || ends[i]-prev > target) {
			frames = append(frames, i)
			prev = ends[i-1]
		}
	}
	return append(frames, len(ends))
}

func frameName(target int) string {
	if target == 0 {
		return "per chunk"
	}
	return fmt.Sprintf("%d MiB", target>>20)
}

// window is the smallest power of two holding target, at least 1 MiB
// (pack.MaxChunkSize bounds chunks at 4 MiB; V1 cuts them at 1 MiB).
func window(target int) int {
	w := 1 << 20
	for w < target {
		w <<= 1
	}
	return w
}

func measure(t *testing.T, c codec, joined []byte, ends, frames []int, speedLimit int64) row {
	target := 0
	span := func(f int) (lo, hi int) { // byte range of frame f
		if f > 0 {
			lo = ends[frames[f-1]-1]
		}
		return lo, ends[frames[f]-1]
	}
	for f := range frames {
		lo, hi := span(f)
		target = max(target, hi-lo)
	}
	win := window(target)
	prevProcs := runtime.GOMAXPROCS(0)
	defer runtime.GOMAXPROCS(prevProcs)

	// The frames within speedLimit are timed.
	nf := 0
	var speedBytes int64
	for f := range frames {
		if _, hi := span(f); int64(hi) <= speedLimit {
			nf, speedBytes = f+1, int64(hi)
		}
	}

	// One core: every frame, kept for the decode pass; the sizes come from
	// here. Timed, in wall and CPU time, over the first nf frames.
	runtime.GOMAXPROCS(1)
	runtime.GC()
	enc := c.newEnc(win)
	out := make([][]byte, len(frames))
	var stored int64
	var wall1, cpu1 time.Duration
	scratch := make([]byte, 0, s2.MaxEncodedLen(win)+win)
	t0, c0 := time.Now(), cpuTime()
	for f := range frames {
		lo, hi := span(f)
		b := enc(scratch, joined[lo:hi])
		out[f] = slices.Clone(b)
		stored += int64(len(b))
		if f == nf-1 {
			wall1, cpu1 = time.Since(t0), cpuTime()-c0
		}
	}
	comp1 := mb(speedBytes) / wall1.Seconds()
	comp1cpu := 0.0
	if cpu1 > 0 {
		comp1cpu = mb(speedBytes) / cpu1.Seconds()
	}

	// Two cores: two workers with an encoder each take frames in turn, as
	// a compactor or two concurrent pushes would.
	runtime.GOMAXPROCS(2)
	runtime.GC()
	var next atomic.Int64
	var wg sync.WaitGroup
	t0 = time.Now()
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			enc := c.newEnc(win)
			scratch := make([]byte, 0, s2.MaxEncodedLen(win)+win)
			for {
				f := int(next.Add(1) - 1)
				if f >= nf {
					return
				}
				lo, hi := span(f)
				scratch = enc(scratch, joined[lo:hi])
			}
		}()
	}
	wg.Wait()
	comp2 := mb(speedBytes) / time.Since(t0).Seconds()

	// Decode, one core: every frame once, checked. Reading one chunk
	// decodes its whole frame, so a uniformly chosen chunk costs the mean
	// over chunks of their frame's decode time.
	runtime.GOMAXPROCS(1)
	runtime.GC()
	dec := c.newDec()
	dst := make([]byte, 0, win)
	var decTime time.Duration
	var chunkTime float64
	for f := range frames {
		lo, hi := span(f)
		t0 := time.Now()
		d, err := dec(dst, out[f])
		el := time.Since(t0)
		if err != nil || !bytes.Equal(d, joined[lo:hi]) {
			t.Fatalf("%s: frame %d does not decode to its input: %v", c.name, f, err)
		}
		decTime += el
		first := 0
		if f > 0 {
			first = frames[f-1]
		}
		chunkTime += float64(frames[f]-first) * el.Seconds()
	}
	return row{
		codec:  c.name,
		stored: stored,
		comp1:  comp1,
		comp1c: comp1cpu,
		comp2:  comp2,
		dec:    mb(int64(len(joined))) / decTime.Seconds(),
		readUS: chunkTime / float64(len(ends)) * 1e6,
	}
}

// zstdReference compresses the unique chunks, and the whole corpus as
// concatenated tars, with the C zstd at -3 --long=31, one thread; it
// returns the lines for the report, or why there are none.
func zstdReference(t *testing.T, joined []byte, layers []layer) string {
	if _, err := exec.LookPath("zstd"); err != nil {
		return "\nzstd (C) not on PATH: no `zstd -3 --long=31` reference.\n"
	}
	var all []byte
	for _, l := range layers {
		all = append(all, l.data...)
	}
	var b strings.Builder
	for _, in := range []struct {
		name string
		data []byte
	}{{"unique chunks, concatenated", joined}, {"all tars, concatenated", all}} {
		for _, args := range [][]string{{"-3", "--long=31", "-T1"}, {"-3", "-T2"}} {
			cmd := exec.Command("zstd", append(args, "-c", "-q")...)
			cmd.Stdin = bytes.NewReader(in.data)
			var n countWriter
			cmd.Stdout = &n
			t0 := time.Now()
			if err := cmd.Run(); err != nil {
				t.Fatalf("zstd %v: %v", args, err)
			}
			el := time.Since(t0)
			fmt.Fprintf(&b, "\n`zstd %s` of the %s (%.1f MB): %.1f MB, %.3f× input, %.0f MB/s",
				strings.Join(args, " "), in.name, mb(int64(len(in.data))), mb(n.n), float64(n.n)/float64(len(in.data)),
				mb(int64(len(in.data)))/el.Seconds())
		}
	}
	// How far the matches that --long=31 finds lie: the unique chunks with
	// a sliding window of 4 MiB to 256 MiB (one stream, not frames).
	fmt.Fprintf(&b, "\n\n`zstd -3 -T1 --long=W` of the unique chunks, by window:")
	for _, w := range []int{22, 24, 26, 28} {
		cmd := exec.Command("zstd", "-3", "-T1", fmt.Sprintf("--long=%d", w), "-c", "-q")
		cmd.Stdin = bytes.NewReader(joined)
		var n countWriter
		cmd.Stdout = &n
		if err := cmd.Run(); err != nil {
			t.Fatalf("zstd --long=%d: %v", w, err)
		}
		fmt.Fprintf(&b, " %d MiB %.1f MB;", 1<<(w-20), mb(n.n))
	}
	out, _ := exec.Command("zstd", "--version").Output()
	fmt.Fprintf(&b, "\n(%s)\n", strings.TrimSpace(string(out)))
	return b.String()
}

type countWriter struct{ n int64 }

func (w *countWriter) Write(p []byte) (int, error) { w.n += int64(len(p)); return len(p), nil }

func mb(n int64) float64 { return float64(n) / 1e6 }

// corpus builds the releases' layers in ingest order: for each release its
// module-cache layer, then its source layer.
func corpus(t *testing.T) []layer {
	root := repoRoot(t)
	modcache := goEnv(t, "GOMODCACHE")
	mods := requires(t, filepath.Join(root, "go.mod"))
	var layers []layer
	for r := range releases {
		var dirs []string
		for _, m := range mods {
			vs := versions(modcache, m)
			if len(vs) == 0 {
				continue
			}
			dirs = append(dirs, vs[max(0, len(vs)-releases+r)])
		}
		t.Logf("release %d: %s", r, strings.Join(dirs, " "))
		layers = append(layers, layer{fmt.Sprintf("%02d-modcache (%d modules)", r, len(dirs)), tarDirs(t, modcache, dirs)})
		rev := fmt.Sprintf("HEAD~%d", (releases-1-r)*commitStep)
		src, err := exec.Command("git", "-C", root, "archive", "--format=tar", rev).Output()
		if err != nil {
			t.Logf("git archive %s: %v; no source layer", rev, err)
			continue
		}
		layers = append(layers, layer{fmt.Sprintf("%02d-src (%s)", r, rev), src})
	}
	return layers
}

func repoRoot(t *testing.T) string {
	out, err := exec.Command("git", "rev-parse", "--show-toplevel").Output()
	if err != nil {
		t.Fatalf("git rev-parse: %v", err)
	}
	return strings.TrimSpace(string(out))
}

func goEnv(t *testing.T, name string) string {
	out, err := exec.Command("go", "env", name).Output()
	if err != nil {
		t.Fatalf("go env %s: %v", name, err)
	}
	return strings.TrimSpace(string(out))
}

// requires is the module paths required by go.mod, direct and indirect.
func requires(t *testing.T, gomod string) []string {
	f, err := os.Open(gomod)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var mods []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "require (":
			in = true
		case line == ")":
			in = false
		case in || strings.HasPrefix(line, "require "):
			fs := strings.Fields(strings.TrimPrefix(line, "require "))
			if len(fs) >= 2 {
				mods = append(mods, fs[0])
			}
		}
	}
	return mods
}

// versions is the extracted versions of module m in the module cache, as
// paths relative to it, oldest first.
func versions(modcache, m string) []string {
	esc := escape(m)
	matches, _ := filepath.Glob(filepath.Join(modcache, esc+"@v*"))
	var vs []string
	for _, p := range matches {
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			rel, _ := filepath.Rel(modcache, p)
			vs = append(vs, rel)
		}
	}
	slices.SortFunc(vs, func(a, b string) int { return semverCmp(a[len(esc)+1:], b[len(esc)+1:]) })
	return vs
}

// escape is the module cache's case encoding of a module path.
func escape(m string) string {
	var b strings.Builder
	for _, r := range m {
		if 'A' <= r && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

// semverCmp orders vX.Y.Z[-pre][+meta] by their numbers, then a release
// after its pre-releases; enough for the module cache's versions.
func semverCmp(a, b string) int {
	pa, pb := strings.SplitN(strings.TrimPrefix(a, "v"), "-", 2), strings.SplitN(strings.TrimPrefix(b, "v"), "-", 2)
	na, nb := strings.Split(strings.Split(pa[0], "+")[0], "."), strings.Split(strings.Split(pb[0], "+")[0], ".")
	for i := range max(len(na), len(nb)) {
		var x, y int
		if i < len(na) {
			x, _ = strconv.Atoi(na[i])
		}
		if i < len(nb) {
			y, _ = strconv.Atoi(nb[i])
		}
		if x != y {
			return x - y
		}
	}
	switch {
	case len(pa) == len(pb):
		return strings.Compare(a, b)
	case len(pa) == 1:
		return 1
	default:
		return -1
	}
}

// tarDirs is a deterministic tar of dirs (relative to base): sorted,
// mtime 0, uid/gid 0, modes as on disk.
func tarDirs(t *testing.T, base string, dirs []string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, d := range dirs {
		err := filepath.WalkDir(filepath.Join(base, d), func(path string, e fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			info, err := e.Info()
			if err != nil {
				return err
			}
			if !info.Mode().IsRegular() && !info.IsDir() {
				return nil
			}
			hdr, err := tar.FileInfoHeader(info, "")
			if err != nil {
				return err
			}
			hdr.Name, _ = filepath.Rel(base, path)
			if info.IsDir() {
				hdr.Name += "/"
			}
			// No atime or ctime: they would differ from run to run.
			hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = time.Unix(0, 0), time.Time{}, time.Time{}
			hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
			if err := tw.WriteHeader(hdr); err != nil {
				return err
			}
			if info.Mode().IsRegular() {
				data, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				_, err = tw.Write(data)
				return err
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
