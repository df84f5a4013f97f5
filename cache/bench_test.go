package cache

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend"
	cfs "github.com/cairnbuild/cairn/backend/fs"
	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache/internal/chunks"
	"github.com/cairnbuild/cairn/chunker"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/cairnbuild/cairn/stepkey"
	"github.com/cairnbuild/cairn/tarsplit"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"github.com/zeebo/blake3"
	"golang.org/x/sync/errgroup"
)

// benchSize is the layer the benchmarks push and pull.
const benchSize = 64 << 20

var (
	benchOnce sync.Once
	benchData []byte
)

// benchLayer is 64 MiB of real layer content: a tar of the Go
// distribution's sources (about 4× compressible), topped up with random
// bytes if GOROOT is small.
func benchLayer(b *testing.B) []byte {
	benchOnce.Do(func() {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		root := filepath.Join(goroot(), "src")
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil || buf.Len() >= benchSize {
				return fs.SkipAll
			}
			info, err := d.Info()
			if err != nil || !info.Mode().IsRegular() {
				return nil
			}
			data, err := os.ReadFile(path)
			if err != nil {
				return nil
			}
			hdr, _ := tar.FileInfoHeader(info, "")
			hdr.Name, _ = filepath.Rel(root, path)
			tw.WriteHeader(hdr)
			tw.Write(data)
			return nil
		})
		tw.Close()
		benchData = buf.Bytes()
		if len(benchData) < benchSize {
			benchData = append(benchData, randomData(1, benchSize-len(benchData))...)
		}
		benchData = benchData[:benchSize]
	})
	return benchData
}

// benchStore is the fs backend, the embedded default, in a temporary
// directory; CAIRN_BENCH_BACKEND=mem switches to memory.
func benchStore(b *testing.B) backend.Store {
	if os.Getenv("CAIRN_BENCH_BACKEND") == "mem" {
		return mem.New()
	}
	return fsStore(b)
}

func fsStore(b *testing.B) backend.Store {
	s, err := cfs.New(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// cpuMeter measures the process's CPU time (user and system, all threads)
// from its creation to report, which reports MB per CPU-second: on a shared,
// overloaded machine wall-clock throughput says more about the neighbours
// than about the code, CPU time does not. 2 × cpu-MB/s is what 2 dedicated
// cores would do if the work spread perfectly over both.
func cpuMeter() (report func(b *testing.B, bytesPerOp int64)) {
	start := cpuTime()
	return func(b *testing.B, bytesPerOp int64) {
		used := cpuTime() - start
		b.ReportMetric(float64(bytesPerOp)*float64(b.N)/used.Seconds()/1e6, "cpu-MB/s")
	}
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// mutate makes data new content for iteration i without changing its
// compressibility much: 8 bytes every 4 KiB.
func mutate(data []byte, i int) {
	for off := 0; off+8 <= len(data); off += 4 << 10 {
		binary.LittleEndian.PutUint64(data[off:], uint64(i)<<32|uint64(off))
	}
}

// pipeline does the CPU work of a push with no index and no storage: cut,
// hash the layer, hash and compress each chunk on every core, with pooled
// buffers and the cache's encoder settings. It returns the stored bytes.
type pipeline struct {
	enc           *zstd.Encoder
	buf           []byte
	pool, outPool sync.Pool
}

func newPipeline() *pipeline {
	enc, _ := chunks.NewEncoder(runtime.GOMAXPROCS(0))
	return &pipeline{enc: enc, buf: make([]byte, 2*chunker.V1.Max)}
}

func (pl *pipeline) run(data []byte) int64 {
	ch, _ := chunker.New(bytes.NewReader(data), chunker.V1, pl.buf)
	layer := sha256.New()
	var g errgroup.Group
	g.SetLimit(runtime.GOMAXPROCS(0))
	var (
		mu     sync.Mutex
		stored int64
	)
	for {
		c, err := ch.Next()
		if err != nil {
			break
		}
		layer.Write(c.Data)
		p, _ := pl.pool.Get().(*[]byte)
		if p == nil {
			p = new([]byte)
		}
		*p = append((*p)[:0], c.Data...)
		g.Go(func() error {
			_ = chunkid.Sum(*p)
			o, _ := pl.outPool.Get().(*[]byte)
			if o == nil {
				o = new([]byte)
			}
			*o = pl.enc.EncodeAll(*p, (*o)[:0])
			mu.Lock()
			stored += int64(len(*o))
			mu.Unlock()
			pl.pool.Put(p)
			pl.outPool.Put(o)
			return nil
		})
	}
	g.Wait()
	layer.Sum(nil)
	return stored
}

// BenchmarkPipeline is the bound a push of new data is measured against.
func BenchmarkPipeline(b *testing.B) {
	data := bytes.Clone(benchLayer(b))
	pl := newPipeline()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	var stored int64
	meter := cpuMeter()
	for b.Loop() {
		stored = pl.run(data)
	}
	b.ReportMetric(float64(len(data))/float64(stored), "ratio")
	meter(b, int64(len(data)))
}

// BenchmarkPushVsPipeline gives the ratio of push throughput (new data) to
// the pipeline bound so that the neighbours' noise hits both alike: the two
// run in alternate passes, and the best pass of each counts, by wall time
// and by process CPU time. Run it with -benchtime 10x. Backends: fs (the
// figure that counts), mem, and discard (a Put that only reads its input:
// the cache's own overhead over the pipeline).
func BenchmarkPushVsPipeline(b *testing.B) {
	for _, bc := range []struct {
		name  string
		store func(b *testing.B) backend.Store
	}{
		{"fs", func(b *testing.B) backend.Store { return fsStore(b) }},
		{"mem", func(*testing.B) backend.Store { return mem.New() }},
		{"discard", func(*testing.B) backend.Store { return discardStore{mem.New()} }},
	} {
		b.Run(bc.name, func(b *testing.B) { benchPushVsPipeline(b, openCache(b, b.TempDir(), bc.store(b))) })
	}
}

// discardStore drops what is Put (after reading it) and stores the rest.
type discardStore struct{ *mem.Store }

func (d discardStore) Put(ctx context.Context, key string, r io.Reader, size int64) error {
	if strings.HasPrefix(key, packPrefix) {
		_, err := io.Copy(io.Discard, r)
		return err
	}
	return d.Store.Put(ctx, key, r, size)
}

func benchPushVsPipeline(b *testing.B, c *Cache) {
	data := bytes.Clone(benchLayer(b))
	pl := newPipeline()
	best := func(d *[2]time.Duration, wall, cpu time.Duration) {
		if d[0] == 0 || wall < d[0] {
			d[0] = wall
		}
		if d[1] == 0 || cpu < d[1] {
			d[1] = cpu
		}
	}
	var pipe, pushed [2]time.Duration
	for i := 0; b.Loop(); i++ {
		w, u := time.Now(), cpuTime()
		pl.run(data)
		best(&pipe, time.Since(w), cpuTime()-u)

		b.StopTimer()
		mutate(data, i+1)
		b.StartTimer()
		w, u = time.Now(), cpuTime()
		if _, err := c.Push(context.Background(), bytes.NewReader(data), PushOptions{Size: int64(len(data))}); err != nil {
			b.Fatal(err)
		}
		best(&pushed, time.Since(w), cpuTime()-u)
	}
	mb := func(d time.Duration) float64 { return float64(len(data)) / d.Seconds() / 1e6 }
	b.ReportMetric(mb(pipe[0]), "pipe-MB/s")
	b.ReportMetric(mb(pushed[0]), "push-MB/s")
	b.ReportMetric(pipe[0].Seconds()/pushed[0].Seconds(), "ratio-wall")
	b.ReportMetric(pipe[1].Seconds()/pushed[1].Seconds(), "ratio-cpu")
}

func BenchmarkPushNew(b *testing.B) {
	benchPushNew(b, openCache(b, b.TempDir(), benchStore(b)))
}

// BenchmarkPackSize is BenchmarkPushVsPipeline on fs at several pack
// targets; "1B" writes every chunk as a pack of its own, as cairn did
// before it had packs.
func BenchmarkPackSize(b *testing.B) {
	for _, target := range []int{1, 1 << 20, 4 << 20, 16 << 20} {
		name := "1B"
		if target > 1 {
			name = strconv.Itoa(target>>20) + "MiB"
		}
		b.Run(name, func(b *testing.B) {
			c := openCache(b, b.TempDir(), fsStore(b))
			c.chunks.SetPackTarget(target)
			benchPushVsPipeline(b, c)
		})
	}
}

// BenchmarkPushNewMem is BenchmarkPushNew without storage I/O: the mem
// backend, to tell the pipeline's cost from the file system's.
func BenchmarkPushNewMem(b *testing.B) {
	benchPushNew(b, openCache(b, b.TempDir(), mem.New()))
}

func benchPushNew(b *testing.B, c *Cache) {
	data := bytes.Clone(benchLayer(b))

	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	meter := cpuMeter()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		mutate(data, i+1)
		b.StartTimer()
		if _, err := c.Push(context.Background(), bytes.NewReader(data), PushOptions{Size: int64(len(data))}); err != nil {
			b.Fatal(err)
		}
	}
	meter(b, int64(len(data)))
}

// BenchmarkPushStored pushes data whose chunks are all stored already,
// as a new layer each time (one byte at the end differs, so one chunk is
// new).
func BenchmarkPushStored(b *testing.B) {
	data := bytes.Clone(benchLayer(b))
	c := openCache(b, b.TempDir(), benchStore(b))
	push(b, c, data)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	meter := cpuMeter()
	for i := 0; b.Loop(); i++ {
		b.StopTimer()
		data[len(data)-1] = byte(i)
		b.StartTimer()
		if _, err := c.Push(context.Background(), bytes.NewReader(data), PushOptions{Size: int64(len(data))}); err != nil {
			b.Fatal(err)
		}
	}
	meter(b, int64(len(data)))
}

// BenchmarkPushCommitted pushes a layer that is already committed, with
// its digest: the stream is only hashed to verify it.
func BenchmarkPushCommitted(b *testing.B) {
	data := benchLayer(b)
	c := openCache(b, b.TempDir(), benchStore(b))
	info := push(b, c, data)
	b.SetBytes(int64(len(data)))
	meter := cpuMeter()
	for b.Loop() {
		if _, err := c.Push(context.Background(), bytes.NewReader(data), PushOptions{Size: int64(len(data)), Expected: info.Digest}); err != nil {
			b.Fatal(err)
		}
	}
	meter(b, int64(len(data)))
}

func BenchmarkPull(b *testing.B) {
	data := benchLayer(b)
	c := openCache(b, b.TempDir(), benchStore(b))
	info := push(b, c, data)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	meter := cpuMeter()
	for b.Loop() {
		rc, _, err := c.Open(context.Background(), info.Digest, 0, -1)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := io.Copy(io.Discard, rc); err != nil {
			b.Fatal(err)
		}
		rc.Close()
	}
	meter(b, int64(len(data)))
}

// BenchmarkStepLookup looks up one step of a chain of 1000 recorded ones.
func BenchmarkStepLookup(b *testing.B) {
	c := openCache(b, b.TempDir(), mem.New())
	layer := push(b, c, genData(1, 100<<10))
	var parents []digest.Digest
	var steps []stepkey.Step
	parent := digest.Digest("")
	for i := range 1000 {
		s := stepkey.Step{Instruction: "RUN step " + string(rune('a'+i%26)) + string(rune('a'+i/26))}
		r, err := c.RecordStep(context.Background(), parent, s, &LayerRef{Digest: layer.Digest}, nil)
		if err != nil {
			b.Fatal(err)
		}
		parents, steps = append(parents, parent), append(steps, s)
		parent = r.Next
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := c.LookupStep(context.Background(), parents[i%1000], steps[i%1000]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkChunkHash compares the chunk hash candidates on 256 KiB chunks.
func BenchmarkChunkHash(b *testing.B) {
	chunk := benchLayer(b)[:256<<10]
	b.Run("sha256", func(b *testing.B) {
		b.SetBytes(int64(len(chunk)))
		for b.Loop() {
			sha256.Sum256(chunk)
		}
	})
	b.Run("blake3", func(b *testing.B) {
		b.SetBytes(int64(len(chunk)))
		for b.Loop() {
			blake3.Sum256(chunk)
		}
	})
}

// BenchmarkZstdLevel compares compression levels per chunk on the bench
// layer, one core, with the stored ratio.
func BenchmarkZstdLevel(b *testing.B) {
	data := benchLayer(b)[:16<<20]
	for _, lv := range []zstd.EncoderLevel{zstd.SpeedFastest, zstd.SpeedDefault} {
		b.Run(lv.String(), func(b *testing.B) {
			enc, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(lv), zstd.WithEncoderConcurrency(1))
			out := make([]byte, 0, 2<<20)
			b.SetBytes(int64(len(data)))
			var stored int
			for b.Loop() {
				stored = 0
				for off := 0; off < len(data); off += 256 << 10 {
					stored += len(enc.EncodeAll(data[off:off+256<<10], out[:0]))
				}
			}
			b.ReportMetric(float64(len(data))/float64(stored), "ratio")
		})
	}
}

// BenchmarkFile pushes the file named by CAIRN_BENCH_FILE to a cache on
// the fs backend and pulls it back to a file, in process: the figure
// bench/cli.sh sets the CLI's over loopback gRPC against, on the same
// file in the same run. Skipped without the variable.
func BenchmarkFile(b *testing.B) {
	path := os.Getenv("CAIRN_BENCH_FILE")
	if path == "" {
		b.Skip("CAIRN_BENCH_FILE not set")
	}
	st, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	// pushFile pushes the file to a new cache on the fs backend, timing
	// only the push.
	pushFile := func(b *testing.B) (*Cache, LayerInfo) {
		b.StopTimer()
		defer b.StartTimer()
		store, err := cfs.New(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		c := openCache(b, b.TempDir(), store)
		f, err := os.Open(path)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		b.StartTimer()
		info, err := c.Push(context.Background(), f, PushOptions{Size: st.Size()})
		b.StopTimer()
		if err != nil {
			b.Fatal(err)
		}
		return c, info
	}
	b.Run("push", func(b *testing.B) {
		b.SetBytes(st.Size())
		for b.Loop() {
			c, _ := pushFile(b)
			b.StopTimer()
			c.Close()
			b.StartTimer()
		}
	})
	b.Run("pull", func(b *testing.B) {
		c, info := pushFile(b)
		b.ResetTimer()
		out := filepath.Join(b.TempDir(), "out")
		b.SetBytes(st.Size())
		for b.Loop() {
			rc, _, err := c.Open(context.Background(), info.Digest, 0, -1)
			if err != nil {
				b.Fatal(err)
			}
			w, err := os.Create(out)
			if err != nil {
				b.Fatal(err)
			}
			_, err = io.Copy(w, rc)
			rc.Close()
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkTarSplit compares a tar layer stored split (its files' contents
// and its metadata apart, the default) with the same layer stored plain,
// in one run: push of new data (the layer mutated each time) and pull, on
// the fs backend.
func BenchmarkTarSplit(b *testing.B) {
	data := benchLayer(b)
	for _, mode := range []struct {
		name  string
		plain bool
	}{{"plain", true}, {"split", false}} {
		open := func(b *testing.B) *Cache {
			c, err := Open(context.Background(), Options{Dir: b.TempDir(), Backend: fsStore(b), PlainTars: mode.plain})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			return c
		}
		b.Run("push/"+mode.name, func(b *testing.B) {
			c := open(b)
			buf := bytes.Clone(data)
			files := contentRanges(b, buf)
			b.SetBytes(int64(len(buf)))
			meter := cpuMeter()
			for i := 0; b.Loop(); i++ {
				b.StopTimer()
				mutateFiles(buf, files, i+1) // new data, headers intact
				b.StartTimer()
				info, err := c.Push(context.Background(), bytes.NewReader(buf), PushOptions{Size: int64(len(buf))})
				if err != nil {
					b.Fatal(err)
				}
				if info.SplitTar == mode.plain {
					b.Fatalf("stored split: %v", info.SplitTar)
				}
			}
			meter(b, int64(len(buf)))
		})
		b.Run("pull/"+mode.name, func(b *testing.B) {
			c := open(b)
			info := push(b, c, data)
			b.SetBytes(int64(len(data)))
			meter := cpuMeter()
			for b.Loop() {
				rc, _, err := c.Open(context.Background(), info.Digest, 0, -1)
				if err != nil {
					b.Fatal(err)
				}
				if n, err := io.Copy(io.Discard, rc); err != nil || n != int64(len(data)) {
					b.Fatal(n, err)
				}
				rc.Close()
			}
			meter(b, int64(len(data)))
		})
		// A range read near the end: a split tar walks its meta stream
		// from the start to find where the range begins.
		b.Run("range-end/"+mode.name, func(b *testing.B) {
			c := open(b)
			info := push(b, c, data)
			const n = 1 << 20
			off := int64(len(data)) - n - 4096
			b.SetBytes(n)
			for b.Loop() {
				rc, _, err := c.Open(context.Background(), info.Digest, off, n)
				if err != nil {
					b.Fatal(err)
				}
				got, err := io.ReadAll(rc)
				rc.Close()
				if err != nil || !bytes.Equal(got, data[off:off+n]) {
					b.Fatal(len(got), err)
				}
			}
		})
	}
}

// BenchmarkTarSplitManyFiles is the range-end read of BenchmarkTarSplit on
// a tar of 20 000 small files (about 40 MB, half of it meta): a 1 MiB range
// that starts 1 MiB + 4 KiB before the end, stored plain, split with
// checkpoints (built by a read before the timed ones), and split without
// (walkLimit: the join walks the meta stream from its start, as before
// checkpoints). meta-B/op is the meta stream read per range.
func BenchmarkTarSplitManyFiles(b *testing.B) {
	data, _ := smallFilesTar(b, 20000)
	for _, mode := range []struct {
		name      string
		plain     bool
		walkLimit int64
	}{{"plain", true, 0}, {"split", false, 0}, {"split-walk", false, math.MaxInt64}} {
		b.Run("range-end/"+mode.name, func(b *testing.B) {
			c, err := Open(context.Background(), Options{Dir: b.TempDir(), Backend: fsStore(b), PlainTars: mode.plain})
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { c.Close() })
			c.checkpoints.walkLimit = mode.walkLimit
			info := push(b, c, data)
			if info.SplitTar == mode.plain {
				b.Fatalf("stored split: %v", info.SplitTar)
			}
			const n = 1 << 20
			off := int64(len(data)) - n - 4096
			got := make([]byte, n+1) // one more: the range must end at n
			read := func() {
				rc, _, err := c.Open(context.Background(), info.Digest, off, n)
				if err != nil {
					b.Fatal(err)
				}
				k, err := io.ReadFull(rc, got)
				rc.Close()
				if err != io.ErrUnexpectedEOF || !bytes.Equal(got[:k], data[off:off+n]) {
					b.Fatal(k, err)
				}
			}
			read() // builds the checkpoints, where they are used
			before := c.checkpoints.metaRead.Load()
			b.SetBytes(n)
			for b.Loop() {
				read()
			}
			b.ReportMetric(float64(c.checkpoints.metaRead.Load()-before)/float64(b.N), "meta-B/op")
		})
	}
}

// contentRanges are the file contents of the tar data, [start, end) each,
// from its split.
func contentRanges(b *testing.B, data []byte) [][2]int {
	var meta bytes.Buffer
	if _, err := io.Copy(io.Discard, tarsplit.NewSplitter(bytes.NewReader(data), &meta)); err != nil {
		b.Fatal(err)
	}
	m := meta.Bytes()[1:] // after the version byte
	var out [][2]int
	pos := 0
	for len(m) > 0 {
		ml, k := binary.Uvarint(m)
		m = m[k+int(ml):]
		cl, k := binary.Uvarint(m)
		m = m[k:]
		pos += int(ml)
		if cl > 0 {
			out = append(out, [2]int{pos, pos + int(cl)})
		}
		pos += int(cl)
	}
	return out
}

// mutateFiles is mutate inside the file contents only.
func mutateFiles(data []byte, files [][2]int, i int) {
	for _, f := range files {
		mutate(data[f[0]:f[1]], i)
	}
}
