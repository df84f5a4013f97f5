package registry

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	fsbackend "github.com/cairnbuild/cairn/backend/fs"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/internal/tlsfiles"
	"github.com/cairnbuild/cairn/internal/tlsfiles/tlstest"
	cairnregistry "github.com/cairnbuild/cairn/registry"
)

// tlsBlobSize is the blob BenchmarkRegistryPullTLS pulls: a tar of the
// first 64 MiB of $(go env GOROOT)/src, real text that the store chunks,
// compresses and verifies as it would a layer.
const tlsBlobSize = 64 << 20

// tlsBench is one cache served by one registry handler on two loopback
// ports, plain HTTP and HTTPS (the files of package tlsfiles, as `cairn
// serve --tls-cert` serves them), with one blob in repository bench/tls.
type tlsBench struct {
	plain, tls string // host:port
	roots      *x509.CertPool
	blob       string // the blob's URL path
	size       int64
}

var (
	tlsBenchOnce sync.Once
	tlsBenchEnv  *tlsBench
	tlsBenchErr  error
)

// BenchmarkRegistryPullTLS is "registry pull throughput over TLS ≥ 0.8×
// plain" (issue 16): GET of one 64 MiB blob, read to the end, from the same
// in-process registry over plain HTTP/1.1, over TLS with HTTP/1.1, and over
// TLS with HTTP/2 (what go-containerregistry's default transport
// negotiates when the server offers it), each on a fresh connection per
// pull as a CLI invocation has; MB/s from b.SetBytes. `cairn serve` offers
// HTTP/1.1 only on its TLS registry port, because of the tls-h2 figure.
//
//	go test ./bench/registry -run '^$' -bench RegistryPullTLS -benchtime 20x -count 1
func BenchmarkRegistryPullTLS(b *testing.B) {
	tlsBenchOnce.Do(func() { tlsBenchEnv, tlsBenchErr = setupTLSBench(b) })
	if tlsBenchErr != nil {
		b.Fatal(tlsBenchErr)
	}
	e := tlsBenchEnv
	b.Logf("blob %d bytes; %s/%s, %d CPUs, GOMAXPROCS %d, %s", e.size, runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	for _, tc := range []struct {
		name  string
		url   string
		tls   bool
		http2 bool
	}{
		{"plain", "http://" + e.plain + e.blob, false, false},
		{"tls", "https://" + e.tls + e.blob, true, false},
		{"tls-h2", "https://" + e.tls + e.blob, true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(e.size)
			b.ReportAllocs()
			cpu0 := processCPU()
			for b.Loop() {
				tr := &http.Transport{DisableCompression: true}
				if tc.tls {
					tr.TLSClientConfig = &tls.Config{RootCAs: e.roots, MinVersion: tls.VersionTLS12}
					tr.ForceAttemptHTTP2 = tc.http2
				}
				resp, err := (&http.Client{Transport: tr}).Get(tc.url)
				if err != nil {
					b.Fatal(err)
				}
				n, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				tr.CloseIdleConnections()
				if err != nil || n != e.size || resp.StatusCode != http.StatusOK {
					b.Fatalf("GET %s: %s, %d bytes, %v", tc.url, resp.Status, n, err)
				}
				if tc.http2 != (resp.ProtoMajor == 2) {
					b.Fatalf("GET %s: %s, want HTTP/2 %v", tc.url, resp.Proto, tc.http2)
				}
			}
			// CPU time of the process (server and client) per pull: on
			// a shared machine a steadier figure than MB/s.
			b.ReportMetric(float64((processCPU()-cpu0).Milliseconds())/float64(b.N), "cpu-ms/op")
		})
	}
}

func setupTLSBench(b *testing.B) (*tlsBench, error) {
	// A directory of its own, not b.TempDir: the servers outlive this
	// benchmark's sub-benchmarks and serve every -count round.
	dir, err := os.MkdirTemp("", "cairn-bench-tls-")
	if err != nil {
		return nil, err
	}
	store, err := fsbackend.New(filepath.Join(dir, "blobs"))
	if err != nil {
		return nil, err
	}
	c, err := cache.Open(context.Background(), cache.Options{Dir: filepath.Join(dir, "index"), Backend: store})
	if err != nil {
		return nil, err
	}
	h := cairnregistry.New(c, cairnregistry.Options{})

	ca := tlstest.NewCA(b, "bench CA")
	certFile, keyFile := ca.Server(b, "bench", "127.0.0.1").Write(b, dir, "server")
	files, err := tlsfiles.NewServer(tlsfiles.Options{CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		return nil, err
	}
	e := &tlsBench{roots: x509.NewCertPool()}
	e.roots.AddCert(ca.Cert)
	for _, l := range []struct {
		addr  *string
		serve func(*http.Server, net.Listener) error
		tls   *tls.Config
	}{
		{&e.plain, (*http.Server).Serve, nil},
		{&e.tls, func(s *http.Server, l net.Listener) error { return s.ServeTLS(l, "", "") }, files.Config("h2", "http/1.1")},
	} {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		srv := &http.Server{Handler: h, ReadHeaderTimeout: 30 * time.Second, TLSConfig: l.tls}
		go l.serve(srv, lis)
		*l.addr = lis.Addr().String()
	}

	layer, err := goSrcTar(tlsBlobSize)
	if err != nil {
		return nil, err
	}
	ref, err := name.NewRepository(e.plain+"/bench/tls", name.Insecure)
	if err != nil {
		return nil, err
	}
	sl := static.NewLayer(layer, types.OCIUncompressedLayer)
	if err := remote.WriteLayer(ref, sl); err != nil {
		return nil, fmt.Errorf("pushing the blob: %w", err)
	}
	d, _ := sl.Digest()
	e.blob, e.size = "/v2/bench/tls/blobs/"+d.String(), int64(len(layer))
	return e, nil
}

// goSrcTar is a tar of $(go env GOROOT)/src files in walk order, cut at
// about size bytes.
func goSrcTar(size int) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		return nil, fmt.Errorf("go env GOROOT: %w", err)
	}
	root := filepath.Join(strings.TrimSpace(string(out)), "src")
	errFull := fmt.Errorf("full")
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		if buf.Len() >= size {
			return errFull
		}
		content, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if err := tw.WriteHeader(&tar.Header{Name: rel, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
			return err
		}
		_, err = tw.Write(content)
		return err
	})
	if err != nil && err != errFull {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if buf.Len() < 1<<20 {
		return nil, fmt.Errorf("only %d bytes of Go sources under %s", buf.Len(), root)
	}
	return buf.Bytes(), nil
}
