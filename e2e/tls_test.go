package e2e

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"

	"github.com/cairnbuild/cairn/internal/tlsfiles/tlstest"
)

// tlsReload is the servers' --tls-reload-interval here: short, so that a
// replaced certificate is seen within the poll below.
const tlsReload = "100ms"

// tlsSetup is a CA for the server, a server certificate for 127.0.0.1, a
// second CA for clients and a client certificate, as files.
type tlsSetup struct {
	dir                                     string
	ca                                      *tlstest.CA
	caFile, certFile, keyFile               string
	clientCAFile, clientCertFile, clientKey string
	roots                                   *x509.CertPool
	clientPair                              tls.Certificate
}

func newTLSSetup(t *testing.T) *tlsSetup {
	t.Helper()
	s := &tlsSetup{dir: t.TempDir(), ca: tlstest.NewCA(t, "cairn e2e CA")}
	s.caFile = s.ca.WriteCA(t, s.dir, "ca")
	s.certFile, s.keyFile = s.ca.Server(t, "cairn one", "127.0.0.1").Write(t, s.dir, "server")
	clientCA := tlstest.NewCA(t, "cairn e2e client CA")
	s.clientCAFile = clientCA.WriteCA(t, s.dir, "client-ca")
	s.clientCertFile, s.clientKey = clientCA.Client(t, "ci runner").Write(t, s.dir, "client")
	s.roots = x509.NewCertPool()
	s.roots.AddCert(s.ca.Cert)
	pair, err := tls.LoadX509KeyPair(s.clientCertFile, s.clientKey)
	if err != nil {
		t.Fatal(err)
	}
	s.clientPair = pair
	return s
}

// clientConfig trusts the CA and, with cert, presents the client
// certificate.
func (s *tlsSetup) clientConfig(cert bool) *tls.Config {
	cfg := &tls.Config{RootCAs: s.roots, MinVersion: tls.VersionTLS12}
	if cert {
		cfg.Certificates = []tls.Certificate{s.clientPair}
	}
	return cfg
}

// start runs `cairn serve` with TLS (and, with mtls, client certificates
// required) on a fresh data directory.
func (s *tlsSetup) start(t *testing.T, b backendConfig, mtls bool) *server {
	t.Helper()
	return startServerWith(t, b, func(srv *server) {
		srv.extraArgs = []string{"--tls-cert", s.certFile, "--tls-key", s.keyFile, "--tls-reload-interval", tlsReload}
		if mtls {
			srv.extraArgs = append(srv.extraArgs, "--tls-client-ca", s.clientCAFile)
		}
		srv.tlsClient = s.clientConfig(mtls)
	})
}

// TestTLS: the CLI and a registry client over TLS, with and without the
// CA and a client certificate, and a certificate replaced while the
// server runs.
func TestTLS(t *testing.T) {
	b := backends(t)[0] // TLS is the same over every blob store
	ts := newTLSSetup(t)
	dir := t.TempDir()
	layerFile := filepath.Join(dir, "layer.tar")
	layer := writeTar(t, layerFile, goSrcTree(t, "net/http"))
	want := digest.FromBytes(layer)

	t.Run("server certificate", func(t *testing.T) {
		s := ts.start(t, b, false)
		if log := s.log.String(); !strings.Contains(log, "tls=on") || !strings.Contains(log, "registry=https://"+s.reg+"/v2/") {
			t.Fatalf("the start-up line does not say TLS and https:\n%s", log)
		}
		ca := []string{"--tls-ca", ts.caFile}
		r := s.ok(nil, append([]string{"push", layerFile}, ca...)...)
		if got := strings.TrimSpace(lastLine(r.stdout)); got != want.String() {
			t.Fatalf("push over TLS printed %q, want %s", got, want)
		}
		out := filepath.Join(dir, "pulled.tar")
		s.ok(nil, append([]string{"pull", want.String(), "-o", out}, ca...)...)
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, layer) {
			t.Fatalf("pull over TLS: %d bytes, %v; want the %d bytes pushed", len(got), err, len(layer))
		}

		// Without TLS, or without the CA: a clear failure.
		logStderr(t, s.want(exitFailure, []string{"if it serves TLS", "--tls-ca"}, "pull", want.String(), "-o", out))
		logStderr(t, s.want(exitFailure, []string{"certificate signed by unknown authority", "pass --tls-ca"}, "pull", want.String(), "-o", out, "--tls"))
		logStderr(t, s.want(exitFailure, []string{"certificate signed by unknown authority"}, "push", layerFile, "--tls"))

		// The registry port, through go-containerregistry with the CA.
		ref := pushImage(t, s.reg+"/tls/app:v1", layer, ts.clientConfig(false))
		pullImage(t, ref, ts.clientConfig(false))
		if _, err := remote.Image(ref, remote.WithTransport(tlsTransport(&tls.Config{MinVersion: tls.VersionTLS12}))); err == nil ||
			!strings.Contains(err.Error(), "certificate signed by unknown authority") {
			t.Errorf("a registry client without the CA: %v, want an unknown authority", err)
		}

		// Replace the certificate: new connections to both ports soon see
		// the new one, without a restart, and the CLI still works.
		two := ts.ca.Server(t, "cairn two", "127.0.0.1")
		two.Write(t, ts.dir, "server")
		for _, port := range []struct{ name, addr string }{{"gRPC", s.addr}, {"registry", s.reg}} {
			waitForCert(t, port.name, port.addr, ts.clientConfig(false), "cairn two")
		}
		s.ok(nil, append([]string{"pull", want.String(), "-o", out}, ca...)...)
		pullImage(t, ref, ts.clientConfig(false))
		if log := s.log.String(); !strings.Contains(log, "reloaded the certificate files") {
			t.Errorf("no reload in the server log:\n%s", log)
		}
		// Put the first certificate back for the next subtest.
		ts.certFile, ts.keyFile = ts.ca.Server(t, "cairn one", "127.0.0.1").Write(t, ts.dir, "server")
	})

	t.Run("client certificates", func(t *testing.T) {
		s := ts.start(t, b, true)
		if log := s.log.String(); !strings.Contains(log, `tls="on, client certificates required"`) {
			t.Fatalf("the start-up line does not say client certificates are required:\n%s", log)
		}
		withCert := []string{"--tls-ca", ts.caFile, "--tls-client-cert", ts.clientCertFile, "--tls-client-key", ts.clientKey}
		r := s.ok(nil, append([]string{"push", layerFile}, withCert...)...)
		if got := strings.TrimSpace(lastLine(r.stdout)); got != want.String() {
			t.Fatalf("push over mTLS printed %q, want %s", got, want)
		}
		out := filepath.Join(dir, "pulled-mtls.tar")
		s.ok(nil, append([]string{"pull", want.String(), "-o", out}, withCert...)...)
		if got, err := os.ReadFile(out); err != nil || !bytes.Equal(got, layer) {
			t.Fatalf("pull over mTLS: %d bytes, %v; want the %d bytes pushed", len(got), err, len(layer))
		}
		logStderr(t, s.want(exitFailure, []string{"requires a client certificate", "--tls-client-cert"}, "pull", want.String(), "-o", out, "--tls-ca", ts.caFile))
		logStderr(t, s.want(exitFailure, []string{"requires a client certificate"}, "push", layerFile, "--tls-ca", ts.caFile))
		// A certificate the server's client CA did not sign.
		strangerCert, strangerKey := ts.ca.Client(t, "stranger").Write(t, ts.dir, "stranger")
		logStderr(t, s.want(exitFailure, []string{"client certificate"}, "pull", want.String(), "-o", out, "--tls-ca", ts.caFile,
			"--tls-client-cert", strangerCert, "--tls-client-key", strangerKey))

		ref := pushImage(t, s.reg+"/tls/mtls:v1", layer, ts.clientConfig(true))
		pullImage(t, ref, ts.clientConfig(true))
		if _, err := remote.Image(ref, remote.WithTransport(tlsTransport(ts.clientConfig(false)))); err == nil {
			t.Error("a registry client without a client certificate pulled")
		} else {
			t.Logf("a registry client without a client certificate: %v", err)
		}
	})
}

// logStderr logs what a failing CLI run said, for people reading -v.
func logStderr(t *testing.T, r result) {
	t.Helper()
	t.Logf("cairn %s:\n%s", strings.Join(r.args, " "), r.stderr)
}

// tlsTransport is a registry client's transport trusting cfg.
func tlsTransport(cfg *tls.Config) http.RoundTripper {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return tr
}

// pushImage pushes an image of one layer (the tar, uncompressed) to ref
// over TLS with cfg and returns the reference.
func pushImage(t *testing.T, ref string, layer []byte, cfg *tls.Config) name.Reference {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), static.NewLayer(layer, types.OCIUncompressedLayer))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, remote.WithTransport(tlsTransport(cfg))); err != nil {
		t.Fatalf("remote.Write %s over TLS: %v", ref, err)
	}
	return r
}

// pullImage pulls ref over TLS with cfg and reads its layers.
func pullImage(t *testing.T, ref name.Reference, cfg *tls.Config) {
	t.Helper()
	img, err := remote.Image(ref, remote.WithTransport(tlsTransport(cfg)))
	if err != nil {
		t.Fatalf("remote.Image %s over TLS: %v", ref, err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}
		var buf bytes.Buffer
		_, err = buf.ReadFrom(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("reading a layer of %s over TLS: %v", ref, err)
		}
	}
}

// waitForCert opens new TLS connections to addr until the server presents
// a certificate named cn, for at most 15 s (the reload interval is
// 100 ms: this is headroom for a loaded machine, not a wait).
func waitForCert(t *testing.T, what, addr string, cfg *tls.Config, cn string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var last string
	for {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
		if err == nil {
			last = c.ConnectionState().PeerCertificates[0].Subject.CommonName
			c.Close()
			if last == cn {
				return
			}
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s port %s: still %q 15s after the certificate files were replaced, want %q", what, addr, last, cn)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
