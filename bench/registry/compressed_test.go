package registry

import (
	"bufio"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	envCompressed = "CAIRN_BENCH_COMPRESSED"
	envCorpus     = "CAIRN_CORPUS_DIR"
)

// TestCompressedVsDistribution is the compressed-layer benchmark (issue
// #12): the layers of bench/corpus.sh (five consecutive releases of a real
// Go project: the module cache `go mod download` fills and the source
// tree), each gzipped with compress/gzip at level 6 as BuildKit does,
// pushed release by release as images through the registry API to cairn
// and to distribution; then what each stores, how fast each ingested, and
// how fast the last release pulls: cairn from the copy its push left in
// the rebuilt-blob cache, and again with that cache off (every read runs
// the encoder).
//
//	CORPUS_DEBIAN=0 CORPUS_MODCACHE=full bench/corpus.sh ./corpus
//	CAIRN_BENCH_COMPRESSED=1 CAIRN_CORPUS_DIR=$PWD/corpus go test ./bench/registry -run TestCompressedVsDistribution -count=1 -v -timeout 60m
func TestCompressedVsDistribution(t *testing.T) {
	if os.Getenv(envCompressed) == "" {
		t.Skip("benchmark: set " + envCompressed + "=1 and " + envCorpus + " (see bench/corpus.sh)")
	}
	corpus := os.Getenv(envCorpus)
	list, err := os.ReadFile(filepath.Join(corpus, "layers.txt"))
	if err != nil {
		t.Fatalf("%s: %v (make the corpus with bench/corpus.sh)", envCorpus, err)
	}
	// Releases: modcache and src of the same NN- prefix form one image.
	var releases [][]*layer
	var last string
	for _, p := range strings.Fields(string(list)) {
		base := filepath.Base(p)
		if strings.HasPrefix(base, "00-") {
			continue // the Debian base: not a release
		}
		l := gzipLayer(t, p)
		if nn := base[:2]; nn != last {
			releases = append(releases, nil)
			last = nn
		}
		releases[len(releases)-1] = append(releases[len(releases)-1], l)
	}
	registryBin := findRegistry(t)
	cairnBin := buildCairn(t)
	var blobBytes int64
	for _, r := range releases {
		for _, l := range r {
			blobBytes += l.size
		}
	}
	t.Logf("%d releases, %d gzip layers, %.1f MB of blobs", len(releases), 2*len(releases), float64(blobBytes)/1e6)

	type result struct {
		push       []time.Duration
		du         int64 // the data directory
		duStore    int64 // without cairn's rebuilt-blob cache
		pull, cold time.Duration
		cpuPush    time.Duration
	}
	res := map[string]*result{}
	// cairn as it is; cairn storing tars as they come (--plain-tars: before
	// tar-aware chunking); distribution.
	for _, kind := range []string{"cairn", "cairn-plain-tars", "distribution"} {
		dir, err := os.MkdirTemp(workDir(t), "compressed-"+kind+"-")
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		var srv *server
		switch kind {
		case "cairn":
			srv = startCairn(t, cairnBin, dir)
		case "cairn-plain-tars":
			srv = startCairn(t, cairnBin, dir, "--plain-tars")
		default:
			srv = startDistribution(t, registryBin, dir)
		}
		r := &result{}
		res[kind] = r
		ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
		tr := http.DefaultTransport.(*http.Transport).Clone()
		opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr)}
		c0 := srv.cpu()
		var lastRef name.Reference
		for i, rel := range releases {
			ref, err := name.ParseReference(fmt.Sprintf("%s/bench/app:r%d", srv.addr, i+1))
			if err != nil {
				t.Fatal(err)
			}
			var ls []v1.Layer
			for _, l := range rel {
				ls = append(ls, l.l)
			}
			img, err := mutate.AppendLayers(ociBase(), ls...)
			if err != nil {
				t.Fatal(err)
			}
			d := timed(func() {
				if err := remote.Write(ref, img, opts...); err != nil {
					t.Fatalf("%s: push release %d: %v\n%s", kind, i+1, err, srv.logTail())
				}
			})
			r.push = append(r.push, d)
			lastRef = ref
		}
		r.cpuPush = srv.cpu() - c0
		r.du = diskUsage(t, filepath.Join(dir, "data"))
		r.duStore = r.du
		if kind != "distribution" {
			r.duStore -= diskUsage(t, filepath.Join(dir, "data", "rebuilt"))
		}
		// cairn keeps a pushed blob in its rebuilt-blob cache: this pull
		// reads the copy; then the same store with the cache off, where
		// every read runs the encoder.
		r.pull = timed(func() {
			if err := pull(lastRef, opts); err != nil {
				t.Fatalf("%s: pull: %v", kind, err)
			}
		})
		if msg := srv.logErrors(); msg != "" {
			t.Logf("%s logged:\n%s", kind, msg)
		}
		srv.stop()
		tr.CloseIdleConnections()
		if kind != "distribution" {
			addr := freePort(t)
			args := []string{"serve", "--data", filepath.Join(dir, "data"), "--listen", "127.0.0.1:0", "--registry-listen", addr,
				"--metrics-listen", "", "--log-level", "warn", "--rebuilt-cache-size", "0"}
			if kind == "cairn-plain-tars" {
				args = append(args, "--plain-tars")
			}
			srv = startServer(t, kind+"-cold", addr, dir, nil, cairnBin, args...)
			ref, err := name.ParseReference(strings.Replace(lastRef.String(), lastRef.Context().RegistryStr(), addr, 1))
			if err != nil {
				t.Fatal(err)
			}
			tr2 := http.DefaultTransport.(*http.Transport).Clone()
			r.cold = timed(func() {
				if err := pull(ref, []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr2)}); err != nil {
					t.Fatalf("%s without its cache: pull: %v", kind, err)
				}
			})
			srv.stop()
		} else {
			r.cold = r.pull
		}
		cancel()
	}

	lastBytes := int64(0)
	for _, l := range releases[len(releases)-1] {
		lastBytes += l.size
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d releases, %d gzip layers (compress/gzip level 6), %.1f MB of blobs; last release %.1f MB\n\n",
		len(releases), 2*len(releases), float64(blobBytes)/1e6, float64(lastBytes)/1e6)
	fmt.Fprintf(&b, "| figure | cairn | cairn --plain-tars | distribution v3.1.2 | ratio cairn / distribution | ratio --plain-tars / distribution |\n| --- | --- | --- | --- | --- | --- |\n")
	c, p, d := res["cairn"], res["cairn-plain-tars"], res["distribution"]
	rowP := func(what string, cv, pv, dv float64, unit string) {
		fmt.Fprintf(&b, "| %s | %.1f %s | %.1f %s | %.1f %s | %.2f× | %.2f× |\n", what, cv, unit, pv, unit, dv, unit, cv/dv, pv/dv)
	}
	rowP("stored (du of the data directory)", float64(c.du)/1e6, float64(p.du)/1e6, float64(d.du)/1e6, "MB")
	rowP("stored, without cairn's rebuilt-blob cache", float64(c.duStore)/1e6, float64(p.duStore)/1e6, float64(d.du)/1e6, "MB")
	var ct, pt, dt time.Duration
	for i := range c.push {
		ct += c.push[i]
		pt += p.push[i]
		dt += d.push[i]
	}
	mbps := func(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }
	rowP("push, all releases", mbps(blobBytes, ct), mbps(blobBytes, pt), mbps(blobBytes, dt), "MB/s")
	r0 := relBytes(releases[0])
	rowP("push, first release", mbps(r0, c.push[0]), mbps(r0, p.push[0]), mbps(r0, d.push[0]), "MB/s")
	rowP("pull of the last release (cairn: from the rebuilt-blob cache the push filled)", mbps(lastBytes, c.pull), mbps(lastBytes, p.pull), mbps(lastBytes, d.pull), "MB/s")
	rowP("pull, cairn with the cache off (rebuilt by the encoder)", mbps(lastBytes, c.cold), mbps(lastBytes, p.cold), mbps(lastBytes, d.cold), "MB/s")
	rowP("server CPU, all pushes", c.cpuPush.Seconds(), p.cpuPush.Seconds(), d.cpuPush.Seconds(), "s")
	for i := range c.push {
		fmt.Fprintf(&b, "| push release %d (%.1f MB) | %.2f s | %.2f s | %.2f s | %.2f× | %.2f× |\n", i+1, float64(relBytes(releases[i]))/1e6,
			c.push[i].Seconds(), p.push[i].Seconds(), d.push[i].Seconds(), c.push[i].Seconds()/d.push[i].Seconds(), p.push[i].Seconds()/d.push[i].Seconds())
	}
	t.Logf("\n%s", b.String())
}

func relBytes(ls []*layer) int64 {
	var n int64
	for _, l := range ls {
		n += l.size
	}
	return n
}

// gzipLayer gzips the tar at path with compress/gzip at level 6 (once:
// the .gz6 file is kept next to it) and returns it as a layer.
func gzipLayer(t *testing.T, path string) *layer {
	t.Helper()
	gz := path + ".gz6"
	if _, err := os.Stat(gz); err != nil {
		err := writeAtomic(gz, func(w io.Writer) error {
			in, err := os.Open(path)
			if err != nil {
				return err
			}
			defer in.Close()
			bw := bufio.NewWriterSize(w, 1<<20)
			zw, _ := gzip.NewWriterLevel(bw, 6)
			if _, err := io.Copy(zw, in); err != nil {
				return err
			}
			if err := zw.Close(); err != nil {
				return err
			}
			return bw.Flush()
		})
		if err != nil {
			t.Fatalf("gzip %s: %v", path, err)
		}
	}
	gl, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return os.Open(gz) }, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	d, err := gl.Digest()
	if err != nil {
		t.Fatal(err)
	}
	n, err := gl.Size()
	if err != nil {
		t.Fatal(err)
	}
	return &layer{name: filepath.Base(path), path: gz, size: n, digest: d, mediaType: types.OCILayer, l: gl}
}
