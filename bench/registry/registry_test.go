package registry

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

const (
	envRun    = "CAIRN_BENCH_REGISTRY"
	envRounds = "CAIRN_BENCH_REGISTRY_ROUNDS"
	envSize   = "CAIRN_BENCH_REGISTRY_SIZE"
	envDir    = "CAIRN_BENCH_REGISTRY_DIR"
	envKeep   = "CAIRN_BENCH_REGISTRY_KEEP"
	envCairn  = "CAIRN_BENCH_REGISTRY_CAIRN"

	distributionVersion = "v3.1.2"
	distributionInstall = "go install github.com/distribution/distribution/v3/cmd/registry@" + distributionVersion
)

// TestRegistryVsDistribution is the benchmark; see the package comment.
func TestRegistryVsDistribution(t *testing.T) {
	if os.Getenv(envRun) == "" {
		t.Skip("benchmark: set " + envRun + "=1 to run it (builds cairn, runs distribution's registry, pushes and pulls 512 MiB layers for several minutes)")
	}
	rounds := 3
	if s := os.Getenv(envRounds); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a count ≥ 1", envRounds, s)
		}
		rounds = n
	}
	size := int64(512 << 20)
	if s := os.Getenv(envSize); s != "" {
		n, err := humanize.ParseBytes(s)
		if err != nil || n < 1<<20 || n%512 != 0 {
			t.Fatalf("%s=%q: want a size of at least 1MiB, a multiple of 512", envSize, s)
		}
		size = int64(n)
	}

	registryBin := findRegistry(t)
	out, err := exec.Command(registryBin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("%s --version: %v\n%s", registryBin, err, out)
	}
	regVersion := strings.TrimSpace(string(out))
	if !strings.Contains(regVersion, distributionVersion) {
		t.Logf("warning: %s is %q, not %s (install it with: %s)", registryBin, regVersion, distributionVersion, distributionInstall)
	}
	cairnBin := buildCairn(t)
	layers := prepareLayers(t, size)

	t.Logf("machine: %s/%s, %d CPUs, %s; distribution: %s (%s)", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), regVersion, registryBin)
	for _, l := range layers {
		t.Logf("layer %-5s %s, %s (%d bytes), %s", l.name, l.mediaType, humanize.IBytes(uint64(l.size)), l.size, l.digest)
	}

	servers := []serverKind{
		{name: "cairn", start: func(t *testing.T, dir string) *server { return startCairn(t, cairnBin, dir) }},
		{name: "distribution", start: func(t *testing.T, dir string) *server { return startDistribution(t, registryBin, dir) }},
	}
	results := map[string]map[string][]runResult{} // layer -> server -> per round
	for round := 1; round <= rounds; round++ {
		for _, l := range layers {
			for _, s := range servers {
				r := runOne(t, s, l, round)
				if results[l.name] == nil {
					results[l.name] = map[string][]runResult{}
				}
				results[l.name][s.name] = append(results[l.name][s.name], r)
				t.Logf("round %d %-5s %-12s push %6.1f MB/s  pull %6.1f MB/s  re-push %6.1f MB/s  mount %s  again %s  du %s / %s  cpu push %.2fs pull %.2fs  rss %s",
					round, l.name, s.name, r.pushMBps(l.size), r.pullMBps(l.size), mbps(l.size, r.repush),
					r.mount.Round(time.Millisecond), r.again.Round(time.Millisecond),
					humanize.IBytes(uint64(r.duPush)), humanize.IBytes(uint64(r.duFinal)),
					r.cpuPush.Seconds(), r.cpuPull.Seconds(), humanize.IBytes(uint64(r.maxRSS)))
			}
		}
	}
	t.Log("\n" + report(layers, results, rounds))
}

// ---- the runs ----

type serverKind struct {
	name  string
	start func(t *testing.T, dir string) *server
}

type runResult struct {
	push, pull, repush, mount, again time.Duration
	duPush, duFinal                  int64 // allocated bytes on disk
	cpuPush, cpuPull, cpuRepush      time.Duration
	maxRSS                           int64
}

func (r runResult) pushMBps(size int64) float64 { return mbps(size, r.push) }
func (r runResult) pullMBps(size int64) float64 { return mbps(size, r.pull) }

func mbps(size int64, d time.Duration) float64 {
	if d <= 0 {
		return 0
	}
	return float64(size) / 1e6 / d.Seconds()
}

// runOne starts s on a fresh directory, pushes l to a new repository,
// pulls it, pushes it again three ways, stops the server and measures.
func runOne(t *testing.T, s serverKind, l *layer, round int) runResult {
	t.Helper()
	dir, err := os.MkdirTemp(workDir(t), fmt.Sprintf("r%d-%s-%s-", round, l.name, s.name))
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv(envKeep) == "" {
		defer os.RemoveAll(dir)
	} else {
		t.Logf("keeping %s", dir)
	}
	data := filepath.Join(dir, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	srv := s.start(t, dir)
	defer srv.stop()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	repo := func(suffix string) name.Reference {
		ref, err := name.ParseReference(fmt.Sprintf("%s/bench/r%d-%s-%s:latest", srv.addr, round, l.name, suffix))
		if err != nil {
			t.Fatal(err)
		}
		return ref
	}
	img, err := l.image(nil)
	if err != nil {
		t.Fatal(err)
	}
	var r runResult
	// One client per run, as a CLI invocation has: a fresh transport, so
	// no connection is reused from the other server's run.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	defer tr.CloseIdleConnections()
	opts := []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr)}

	refA := repo("a")
	c0 := srv.cpu()
	r.push = timed(func() {
		if err := remote.Write(refA, img, opts...); err != nil {
			t.Fatalf("%s: push %s: remote.Write: %v\n%s", s.name, refA, err, srv.logTail())
		}
	})
	c1 := srv.cpu()
	r.cpuPush = c1 - c0
	r.duPush = diskUsage(t, data)

	r.pull = timed(func() {
		if err := pull(refA, opts); err != nil {
			t.Fatalf("%s: pull %s: %v\n%s", s.name, refA, err, srv.logTail())
		}
	})
	c2 := srv.cpu()
	r.cpuPull = c2 - c1

	// The same layer to another repository: the client HEADs it there,
	// finds nothing (a repository sees only what was pushed or mounted to
	// it, on both servers) and uploads it whole again.
	refB := repo("b")
	r.repush = timed(func() {
		if err := remote.Write(refB, img, opts...); err != nil {
			t.Errorf("%s: second push of the same layer to %s: remote.Write: %v\n%s", s.name, refB, err, srv.logTail())
		}
	})
	r.cpuRepush = srv.cpu() - c2

	// A mount from the first repository: POST ?mount=<digest>&from=<a>.
	refC := repo("c")
	mimg, err := l.image(refA)
	if err != nil {
		t.Fatal(err)
	}
	r.mount = timed(func() {
		if err := remote.Write(refC, mimg, opts...); err != nil {
			t.Errorf("%s: mount push to %s: remote.Write: %v\n%s", s.name, refC, err, srv.logTail())
		}
	})
	if err := checkBlobIn(ctx, tr, srv.addr, refC, l.digest, l.size); err != nil {
		t.Errorf("%s: after the mount: %v", s.name, err)
	}

	// The same image to the first repository again: HEAD hits, nothing sent.
	r.again = timed(func() {
		if err := remote.Write(refA, img, opts...); err != nil {
			t.Errorf("%s: push again to %s: remote.Write: %v\n%s", s.name, refA, err, srv.logTail())
		}
	})

	if msg := srv.logErrors(); msg != "" {
		t.Logf("%s logged (round %d, %s):\n%s", s.name, round, l.name, msg)
	}
	r.maxRSS = srv.stop()
	r.duFinal = diskUsage(t, data)
	return r
}

func timed(f func()) time.Duration {
	start := time.Now()
	f()
	return time.Since(start)
}

// pull reads every layer of ref to the end (remote checks each digest).
func pull(ref name.Reference, opts []remote.Option) error {
	img, err := remote.Image(ref, opts...)
	if err != nil {
		return fmt.Errorf("remote.Image: %w", err)
	}
	ls, err := img.Layers()
	if err != nil {
		return fmt.Errorf("Layers: %w", err)
	}
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("Compressed: %w", err)
		}
		_, err = io.Copy(io.Discard, rc)
		if cerr := rc.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("reading the layer: %w", err)
		}
	}
	return nil
}

// checkBlobIn HEADs the layer in ref's repository, to see the mount took.
func checkBlobIn(ctx context.Context, tr http.RoundTripper, addr string, ref name.Reference, d v1.Hash, size int64) error {
	u := fmt.Sprintf("http://%s/v2/%s/blobs/%s", addr, ref.Context().RepositoryStr(), d)
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, u, nil)
	if err != nil {
		return err
	}
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.ContentLength != size {
		return fmt.Errorf("HEAD %s: %s, Content-Length %d (want 200, %d)", u, resp.Status, resp.ContentLength, size)
	}
	return nil
}

// ---- the layers ----

type layer struct {
	name      string // "tar" or "gzip"
	path      string
	size      int64
	digest    v1.Hash
	mediaType types.MediaType
	l         v1.Layer
}

// image is the layer on an empty OCI image; with from, the layer is
// mountable from that repository.
func (l *layer) image(from name.Reference) (v1.Image, error) {
	var ly v1.Layer = l.l
	if from != nil {
		ly = &remote.MountableLayer{Layer: l.l, Reference: from}
	}
	return mutate.AppendLayers(ociBase(), ly)
}

// ociBase is the empty image with OCI manifest and config media types.
func ociBase() v1.Image {
	base := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	return mutate.ConfigMediaType(base, types.OCIConfigJSON)
}

// rawLayer is a layer whose blob is the tar itself. tarball.LayerFromOpener
// cannot make one: it gzips whatever is not compressed already, and
// WithMediaType only changes the label. static.NewLayer would hold the
// 512 MiB in memory; this reads the file as the gzip layer does.
type rawLayer struct {
	path   string
	digest v1.Hash
	size   int64
}

func (r *rawLayer) Digest() (v1.Hash, error)             { return r.digest, nil }
func (r *rawLayer) DiffID() (v1.Hash, error)             { return r.digest, nil }
func (r *rawLayer) Compressed() (io.ReadCloser, error)   { return os.Open(r.path) }
func (r *rawLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(r.path) }
func (r *rawLayer) Size() (int64, error)                 { return r.size, nil }
func (r *rawLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }

var _ v1.Layer = (*rawLayer)(nil)

// prepareLayers makes (or finds from an earlier run) the tar and its gzip.
func prepareLayers(t *testing.T, size int64) []*layer {
	t.Helper()
	dir := os.Getenv(envDir)
	if dir == "" {
		dir = filepath.Join(os.TempDir(), "cairn-bench-registry")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	tarPath := filepath.Join(dir, fmt.Sprintf("layer-%d.tar", size))
	gzPath := tarPath + ".gz"
	if _, err := os.Stat(tarPath); err != nil {
		start := time.Now()
		if err := writeTar(tarPath, size); err != nil {
			t.Fatalf("making the layer tar: %v", err)
		}
		t.Logf("wrote %s in %s", tarPath, time.Since(start).Round(time.Millisecond))
	} else {
		t.Logf("reusing %s", tarPath)
	}
	opener := func(p string) tarball.Opener { return func() (io.ReadCloser, error) { return os.Open(p) } }
	if _, err := os.Stat(gzPath); err != nil {
		// Exactly what tarball.LayerFromOpener pushes for a plain tar
		// (compress/gzip, gzip.BestSpeed), computed once into a file.
		start := time.Now()
		gl, err := tarball.LayerFromOpener(opener(tarPath))
		if err != nil {
			t.Fatal(err)
		}
		if err := writeCompressed(gl, gzPath); err != nil {
			t.Fatalf("gzipping the layer: %v", err)
		}
		t.Logf("wrote %s in %s", gzPath, time.Since(start).Round(time.Millisecond))
	} else {
		t.Logf("reusing %s", gzPath)
	}

	f, err := os.Open(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	h, n, err := v1.SHA256(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	raw := &layer{name: "tar", path: tarPath, size: n, digest: h, mediaType: types.OCIUncompressedLayer,
		l: &rawLayer{path: tarPath, digest: h, size: n}}

	// A gzip stream given to LayerFromOpener is used as it is.
	gl, err := tarball.LayerFromOpener(opener(gzPath), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	gd, err := gl.Digest()
	if err != nil {
		t.Fatal(err)
	}
	gn, err := gl.Size()
	if err != nil {
		t.Fatal(err)
	}
	if diff, err := gl.DiffID(); err != nil || diff != h {
		t.Fatalf("%s does not unzip to %s: diffID %v, %v (delete both files to make them anew)", gzPath, tarPath, diff, err)
	}
	gz := &layer{name: "gzip", path: gzPath, size: gn, digest: gd, mediaType: types.OCILayer, l: gl}
	return []*layer{raw, gz}
}

func writeCompressed(l v1.Layer, path string) error {
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	return writeAtomic(path, func(w io.Writer) error {
		_, err := io.Copy(w, rc)
		return err
	})
}

func writeAtomic(path string, fill func(io.Writer) error) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	if err := fill(f); err != nil {
		f.Close()
		os.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, path)
}

// writeTar writes a tar of exactly size bytes: the files of GOROOT, then
// of GOMODCACHE, in filepath.WalkDir's lexical order, with names under
// goroot/ and gomodcache/; the file that does not fit is cut so that the
// tar, end blocks included, ends at size.
func writeTar(path string, size int64) error {
	var roots []string
	for _, v := range []string{"GOROOT", "GOMODCACHE"} {
		out, err := exec.Command("go", "env", v).Output()
		if err != nil {
			return fmt.Errorf("go env %s: %v", v, err)
		}
		roots = append(roots, strings.TrimSpace(string(out)))
	}
	return writeAtomic(path, func(w io.Writer) error {
		cw := &countWriter{w: w}
		tw := tar.NewWriter(cw)
		full := errors.New("full")
		for i, root := range roots {
			prefix := []string{"goroot", "gomodcache"}[i]
			err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return nil // unreadable: leave it out
				}
				rel, err := filepath.Rel(root, p)
				if err != nil || rel == "." {
					return nil
				}
				info, err := d.Info()
				if err != nil {
					return nil
				}
				link := ""
				switch {
				case info.Mode()&fs.ModeSymlink != 0:
					if link, err = os.Readlink(p); err != nil {
						return nil
					}
				case !info.Mode().IsRegular() && !info.IsDir():
					return nil
				}
				hdr, err := tar.FileInfoHeader(info, link)
				if err != nil {
					return nil
				}
				hdr.Name = prefix + "/" + filepath.ToSlash(rel)
				if info.IsDir() {
					hdr.Name += "/"
				}
				hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
				hlen, err := headerLen(hdr)
				if err != nil {
					return err
				}
				room := size - 1024 - cw.n - hlen // data bytes that still fit
				if room < 0 {
					return full
				}
				cut := hdr.Size > 0 && roundUp(hdr.Size) > room
				if cut {
					hdr.Size = room
				}
				if err := tw.WriteHeader(hdr); err != nil {
					return err
				}
				if hdr.Size > 0 {
					f, err := os.Open(p)
					if err != nil {
						return err
					}
					_, err = io.CopyN(tw, f, hdr.Size)
					f.Close()
					if err != nil {
						return fmt.Errorf("%s: %w", p, err)
					}
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				if cut {
					return full
				}
				return nil
			})
			if errors.Is(err, full) {
				break
			}
			if err != nil {
				return err
			}
		}
		if err := tw.Close(); err != nil {
			return err
		}
		if cw.n > size {
			return fmt.Errorf("tar of %d bytes, more than %d", cw.n, size)
		}
		if cw.n < size { // ran out of files, or a header did not fit: pad
			_, err := w.Write(make([]byte, size-cw.n))
			return err
		}
		return nil
	})
}

// headerLen is how many bytes tar.Writer writes for hdr before its data
// (PAX records for long names included).
func headerLen(hdr *tar.Header) (int64, error) {
	var b bytes.Buffer
	h := *hdr
	h.Size = 0
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&h); err != nil {
		return 0, err
	}
	return int64(b.Len()), nil
}

func roundUp(n int64) int64 { return (n + 511) &^ 511 }

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// ---- the servers ----

type server struct {
	name    string
	addr    string // host:port of the registry API
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	once    sync.Once
	rss     int64
}

var (
	workOnce sync.Once
	workRoot string
)

// workDir is where the servers' data directories go: one temp directory
// for the whole test, on the same file system for both servers.
func workDir(t *testing.T) string {
	workOnce.Do(func() { workRoot = t.TempDir() })
	return workRoot
}

func findRegistry(t *testing.T) string {
	t.Helper()
	if p, err := exec.LookPath("registry"); err == nil {
		return p
	}
	out, err := exec.Command("go", "env", "GOPATH").Output()
	if err == nil {
		for _, gp := range filepath.SplitList(strings.TrimSpace(string(out))) {
			p := filepath.Join(gp, "bin", "registry")
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	t.Fatalf("distribution's registry binary is neither on PATH nor in $(go env GOPATH)/bin; install it with:\n\t%s", distributionInstall)
	return ""
}

// buildCairn builds ./cmd/cairn of this module into the test's temp
// directory, or takes the binary $CAIRN_BENCH_REGISTRY_CAIRN names (to
// profile it with perf, whose report needs the binary after the test).
func buildCairn(t *testing.T) string {
	t.Helper()
	if p := os.Getenv(envCairn); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v", envCairn, err)
		}
		return p
	}
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	root := strings.TrimSpace(string(out))
	bin := filepath.Join(t.TempDir(), "cairn")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/cairn")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/cairn in %s: %v\n%s", root, err, out)
	}
	return bin
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startCairn(t *testing.T, bin, dir string, extra ...string) *server {
	addr := freePort(t)
	args := append([]string{"serve",
		"--data", filepath.Join(dir, "data"),
		"--listen", "127.0.0.1:0",
		"--registry-listen", addr,
		"--metrics-listen", "",
		"--log-level", "warn"}, extra...)
	return startServer(t, "cairn", addr, dir, nil, bin, args...)
}

func startDistribution(t *testing.T, bin, dir string) *server {
	addr := freePort(t)
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  cache:
    blobdescriptor: inmemory
  filesystem:
    rootdirectory: %s
http:
  addr: %s
  secret: cairn-bench-registry
`, filepath.Join(dir, "data"), addr)
	cfgPath := filepath.Join(dir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return startServer(t, "distribution", addr, dir, []string{"OTEL_TRACES_EXPORTER=none"}, bin, "serve", cfgPath)
}

func startServer(t *testing.T, name, addr, dir string, env []string, bin string, args ...string) *server {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	setProcessGroup(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	s := &server{name: name, addr: addr, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() { cmd.Wait(); logf.Close(); close(s.done) }()
	t.Cleanup(func() { s.stop() })

	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-s.done:
			t.Fatalf("%s exited at start: %v\n%s", name, cmd.ProcessState, s.logTail())
		default:
		}
		resp, err := http.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer GET /v2/ on %s within 60s (last: %v)\n%s", name, addr, err, s.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop ends the server's process group (SIGTERM, then SIGKILL after 15s)
// and returns its peak RSS.
func (s *server) stop() int64 {
	s.once.Do(func() {
		signalGroup(s.cmd, false)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			signalGroup(s.cmd, true)
			<-s.done
		}
		s.rss = maxRSS(s.cmd.ProcessState)
	})
	return s.rss
}

// cpu is the server's CPU time so far (user + system; 0 where /proc is
// missing).
func (s *server) cpu() time.Duration { return procCPU(s.cmd.Process.Pid) }

func (s *server) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return fmt.Sprintf("--- %s log (%s) ---\n%s", s.name, s.logPath, b)
}

// logErrors is what the server logged so far, clipped: both log at warn,
// so anything is worth seeing, except distribution's error line for every
// 404 it answers (the client's HEADs before a push).
func (s *server) logErrors() string {
	b, _ := os.ReadFile(s.logPath)
	var keep []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" || strings.Contains(line, "http.response.status=404") {
			continue
		}
		keep = append(keep, line)
	}
	out := strings.Join(keep, "\n")
	if len(out) > 3000 {
		out = out[:3000] + "\n…"
	}
	return out
}

// diskUsage is what du counts under dir: allocated blocks.
func diskUsage(t *testing.T, dir string) int64 {
	t.Helper()
	var n int64
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // removed while walking (a running server's temp files)
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		n += allocated(info)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// ---- the report ----

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

type metric struct {
	label string
	unit  string // for the cells
	get   func(l *layer, r runResult) float64
	fmt   func(float64) string
}

func report(layers []*layer, results map[string]map[string][]runResult, rounds int) string {
	f1 := func(v float64) string { return fmt.Sprintf("%.1f", v) }
	f3 := func(v float64) string { return fmt.Sprintf("%.3f", v) }
	mib := func(v float64) string { return fmt.Sprintf("%.1f", v/(1<<20)) }
	metrics := []metric{
		{"push", "MB/s", func(l *layer, r runResult) float64 { return r.pushMBps(l.size) }, f1},
		{"pull", "MB/s", func(l *layer, r runResult) float64 { return r.pullMBps(l.size) }, f1},
		{"push again to a new repo (whole upload)", "MB/s", func(l *layer, r runResult) float64 { return mbps(l.size, r.repush) }, f1},
		{"mount push (POST ?mount=&from=)", "s", func(l *layer, r runResult) float64 { return r.mount.Seconds() }, f3},
		{"push again to the same repo (HEAD hit)", "s", func(l *layer, r runResult) float64 { return r.again.Seconds() }, f3},
		{"server CPU, push", "s", func(l *layer, r runResult) float64 { return r.cpuPush.Seconds() }, func(v float64) string { return fmt.Sprintf("%.2f", v) }},
		{"server CPU, pull", "s", func(l *layer, r runResult) float64 { return r.cpuPull.Seconds() }, func(v float64) string { return fmt.Sprintf("%.2f", v) }},
		{"server CPU, push again to a new repo", "s", func(l *layer, r runResult) float64 { return r.cpuRepush.Seconds() }, func(v float64) string { return fmt.Sprintf("%.2f", v) }},
		{"on disk after the push (du)", "MiB", func(l *layer, r runResult) float64 { return float64(r.duPush) }, mib},
		{"on disk after all pushes, stopped (du)", "MiB", func(l *layer, r runResult) float64 { return float64(r.duFinal) }, mib},
		{"server peak RSS", "MiB", func(l *layer, r runResult) float64 { return float64(r.maxRSS) }, mib},
	}
	var b strings.Builder
	fmt.Fprintf(&b, "Median of %d rounds (min – max); MB/s = 10^6 bytes of the layer blob per second; ratio = cairn / distribution\n(above 1 is better for MB/s, below 1 for seconds and MiB).\n", rounds)
	for _, l := range layers {
		fmt.Fprintf(&b, "\n%s layer: %s, %d bytes (%s)\n\n", l.name, l.mediaType, l.size, humanize.IBytes(uint64(l.size)))
		b.WriteString("| figure | unit | cairn | distribution v3.1.2 | ratio |\n| --- | --- | --- | --- | --- |\n")
		for _, m := range metrics {
			cell := func(server string) (string, float64) {
				var xs []float64
				for _, r := range results[l.name][server] {
					xs = append(xs, m.get(l, r))
				}
				if len(xs) == 0 {
					return "–", 0
				}
				md := median(xs)
				return fmt.Sprintf("%s (%s – %s)", m.fmt(md), m.fmt(slices.Min(xs)), m.fmt(slices.Max(xs))), md
			}
			cs, cm := cell("cairn")
			ds, dm := cell("distribution")
			ratio := "–"
			if dm != 0 {
				ratio = fmt.Sprintf("%.2f×", cm/dm)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s |\n", m.label, m.unit, cs, ds, ratio)
		}
	}
	return b.String()
}
