package chunker

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	fastcdc2020 "github.com/buildbuddy-io/fastcdc2020/fastcdc"
	jotfs "github.com/jotfs/fastcdc-go"
	restic "github.com/restic/chunker"
)

// goSrcTar is a tar of the Go tree's sources (`go env GOROOT`/src), built in
// memory once: real files with tar headers and zero padding, the kind of
// input cairn ingests.
var goSrcTar = sync.OnceValues(func() ([]byte, error) {
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOROOT: %w", err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	root := filepath.Join(strings.TrimSpace(string(out)), "src")
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
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
		rel, _ := filepath.Rel(root, path)
		hdr.Name = filepath.ToSlash(rel)
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.IsDir() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
})

// resticPol is the polynomial restic's own tests and benchmarks use.
const resticPol = restic.Pol(0x3DA3358B4DC173)

// BenchmarkChunkers runs cairn's chunker and its Go peers over the same
// inputs, streaming from a bytes.Reader, at V1's sizes (min 64 KiB, average
// 256 KiB, max 1 MiB). B/chunk shows the average each really reached, and
// cpu-MB/s the speed by the thread's CPU time (see BenchmarkTarRatio), which
// a busy machine disturbs much less than MB/s.
func BenchmarkChunkers(b *testing.B) {
	tarData, err := goSrcTar()
	if err != nil {
		b.Fatal(err)
	}
	inputs := []struct {
		name string
		data []byte
	}{
		{"random", seeded(64<<20, 0)},
		{"tar", tarData},
	}
	p := V1
	impls := []struct {
		name string
		run  func(b *testing.B, data []byte) (chunks int)
	}{
		{"cairn", func(b *testing.B, data []byte) int {
			buf := make([]byte, 2*p.Max)
			r := bytes.NewReader(data)
			c, err := New(r, p, buf)
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for b.Loop() {
				r.Reset(data)
				c.Reset(r)
				for n = 0; ; n++ {
					if _, err := c.Next(); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
			}
			return n
		}},
		{"fastcdc2020", func(b *testing.B, data []byte) int {
			r := bytes.NewReader(data)
			c, err := fastcdc2020.NewChunker(r, p.Avg, fastcdc2020.WithMinSize(p.Min), fastcdc2020.WithMaxSize(p.Max))
			if err != nil {
				b.Fatal(err)
			}
			n := 0
			for b.Loop() {
				r.Reset(data)
				c.Reset(r)
				for n = 0; ; n++ {
					if _, err := c.Next(); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
			}
			return n
		}},
		{"jotfs", func(b *testing.B, data []byte) int {
			// No Reset: a new Chunker (and its 2 MiB buffer) per pass.
			n := 0
			for b.Loop() {
				c, err := jotfs.NewChunker(bytes.NewReader(data), jotfs.Options{AverageSize: p.Avg, MinSize: p.Min, MaxSize: p.Max})
				if err != nil {
					b.Fatal(err)
				}
				for n = 0; ; n++ {
					if _, err := c.Next(); err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
				}
			}
			return n
		}},
		{"restic", func(b *testing.B, data []byte) int {
			r := bytes.NewReader(data)
			c := restic.NewWithBoundaries(r, resticPol, uint(p.Min), uint(p.Max))
			buf := make([]byte, p.Max)
			n := 0
			for b.Loop() {
				r.Reset(data)
				c.ResetWithBoundaries(r, resticPol, uint(p.Min), uint(p.Max))
				c.SetAverageBits(18) // 256 KiB
				for n = 0; ; n++ {
					ch, err := c.Next(buf)
					if err == io.EOF {
						break
					} else if err != nil {
						b.Fatal(err)
					}
					buf = ch.Data
				}
			}
			return n
		}},
	}
	for _, impl := range impls {
		for _, in := range inputs {
			b.Run(impl.name+"/"+in.name, func(b *testing.B) {
				b.SetBytes(int64(len(in.data)))
				b.ReportAllocs()
				runtime.LockOSThread()
				defer runtime.UnlockOSThread()
				cpu := threadCPU()
				n := impl.run(b, in.data)
				cpu = threadCPU() - cpu
				b.ReportMetric(float64(b.N)*float64(len(in.data))/cpu.Seconds()/1e6, "cpu-MB/s")
				if n > 0 {
					b.ReportMetric(float64(len(in.data))/float64(n), "B/chunk")
				}
			})
		}
	}
}

// BenchmarkCut measures the pure split function alone, without the copy
// that streaming costs.
func BenchmarkCut(b *testing.B) {
	data := seeded(64<<20, 0)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		for d := data; len(d) > 0; {
			d = d[Cut(d, V1):]
		}
	}
}

// BenchmarkTarRatio times cairn and fastcdc2020 over the tar in alternate
// passes and reports each one's best pass and the ratio of the two. On a
// shared, noisy machine a load burst then hits both alike, which back-to-back
// sub-benchmarks of BenchmarkChunkers do not promise; and on Linux each pass
// is timed by its thread's CPU time, which leaves out the time spent waiting
// for a CPU.
//
//	go test -run '^$' -bench '^BenchmarkTarRatio$' -cpu 1 -benchtime 20x ./chunker/
func BenchmarkTarRatio(b *testing.B) {
	data, err := goSrcTar()
	if err != nil {
		b.Fatal(err)
	}
	p := V1
	r := bytes.NewReader(data)
	c, err := New(r, p, make([]byte, 2*p.Max))
	if err != nil {
		b.Fatal(err)
	}
	fr := bytes.NewReader(data)
	fc, err := fastcdc2020.NewChunker(fr, p.Avg, fastcdc2020.WithMinSize(p.Min), fastcdc2020.WithMaxSize(p.Max))
	if err != nil {
		b.Fatal(err)
	}
	passes := [2]func(){
		func() {
			r.Reset(data)
			c.Reset(r)
			for {
				if _, err := c.Next(); err != nil {
					return
				}
			}
		},
		func() {
			fr.Reset(data)
			fc.Reset(fr)
			for {
				if _, err := fc.Next(); err != nil {
					return
				}
			}
		},
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var best [2]time.Duration
	b.SetBytes(2 * int64(len(data)))
	for b.Loop() {
		for k, pass := range passes {
			start := threadCPU()
			pass()
			if d := threadCPU() - start; best[k] == 0 || d < best[k] {
				best[k] = d
			}
		}
	}
	mbps := func(d time.Duration) float64 { return float64(len(data)) / d.Seconds() / 1e6 }
	b.ReportMetric(mbps(best[0]), "cairn-MB/s")
	b.ReportMetric(mbps(best[1]), "fastcdc2020-MB/s")
	b.ReportMetric(float64(best[1])/float64(best[0]), "ratio")
}
