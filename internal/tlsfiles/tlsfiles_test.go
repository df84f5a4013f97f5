package tlsfiles_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/internal/tlsfiles"
	"github.com/cairnbuild/cairn/internal/tlsfiles/tlstest"
)

// clock is a settable clock for Options.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// logBuffer collects what the server logs.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// serve runs a TLS listener on loopback with cfg: each connection that
// completes its handshake gets one byte, "k", and is closed.
func serve(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				if err := c.(*tls.Conn).Handshake(); err != nil {
					return
				}
				c.Write([]byte("k"))
			}()
		}
	}()
	return l.Addr().String()
}

// dial connects with cfg and returns the server's leaf certificate once
// the server has accepted the connection (it read the server's byte), or
// the error.
func dial(addr string, cfg *tls.Config) (*x509.Certificate, error) {
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	// With TLS 1.3 the server checks the client's certificate after the
	// client's side of the handshake is done: its verdict arrives with the
	// first read.
	b := make([]byte, 1)
	if _, err := io.ReadFull(c, b); err != nil {
		return nil, err
	}
	return c.ConnectionState().PeerCertificates[0], nil
}

// setup is a CA, a server pair for 127.0.0.1 written to dir, and the
// client configuration that trusts the CA.
type setup struct {
	dir               string
	ca                *tlstest.CA
	caFile            string
	pair              tlstest.Pair
	certFile, keyFile string
	client            *tls.Config
}

func newSetup(t *testing.T) *setup {
	t.Helper()
	s := &setup{dir: t.TempDir(), ca: tlstest.NewCA(t, "test CA")}
	s.caFile = s.ca.WriteCA(t, s.dir, "ca")
	s.pair = s.ca.Server(t, "server one", "127.0.0.1")
	s.certFile, s.keyFile = s.pair.Write(t, s.dir, "server")
	cfg, err := tlsfiles.Client(tlsfiles.ClientOptions{CAFile: s.caFile})
	if err != nil {
		t.Fatal(err)
	}
	s.client = cfg
	return s
}

func sameCert(a, b *x509.Certificate) bool { return a != nil && b != nil && a.Equal(b) }

func TestServeAndVerify(t *testing.T) {
	s := newSetup(t)
	srv, err := tlsfiles.NewServer(tlsfiles.Options{CertFile: s.certFile, KeyFile: s.keyFile})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv.Config())
	got, err := dial(addr, s.client)
	if err != nil {
		t.Fatal(err)
	}
	if !sameCert(got, s.pair.Cert) {
		t.Fatalf("served %q, want %q", got.Subject.CommonName, s.pair.Cert.Subject.CommonName)
	}

	// A client that does not trust the CA (the system roots) refuses.
	if _, err := dial(addr, &tls.Config{MinVersion: tls.VersionTLS12}); err == nil {
		t.Fatal("a client without the CA connected")
	} else if !errors.As(err, new(*tls.CertificateVerificationError)) {
		t.Fatalf("want a certificate verification error, got %v", err)
	}

	// Below TLS 1.2: refused.
	old := s.client.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	if _, err := dial(addr, old); err == nil {
		t.Fatal("a TLS 1.1 client connected")
	}

	// TLS 1.3 when the client offers it.
	c, err := tls.Dial("tcp", addr, s.client)
	if err != nil {
		t.Fatal(err)
	}
	if v := c.ConnectionState().Version; v != tls.VersionTLS13 {
		t.Errorf("negotiated %s, want TLS 1.3", tls.VersionName(v))
	}
	c.Close()
}

func TestNextProtos(t *testing.T) {
	s := newSetup(t)
	srv, err := tlsfiles.NewServer(tlsfiles.Options{CertFile: s.certFile, KeyFile: s.keyFile})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv.Config("h2", "http/1.1"))
	cfg := s.client.Clone()
	cfg.NextProtos = []string{"h2"}
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Errorf("ALPN chose %q, want h2", p)
	}
}

func TestReload(t *testing.T) {
	s := newSetup(t)
	clk := &clock{now: time.Unix(1_000_000, 0)}
	var logs logBuffer
	srv, err := tlsfiles.NewServer(tlsfiles.Options{CertFile: s.certFile, KeyFile: s.keyFile, Interval: 5 * time.Second,
		Now: clk.Now, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	addr := serve(t, srv.Config())
	mustServe := func(want tlstest.Pair, what string) {
		t.Helper()
		got, err := dial(addr, s.client)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !sameCert(got, want.Cert) {
			t.Fatalf("%s: served %q, want %q", what, got.Subject.CommonName, want.Cert.Subject.CommonName)
		}
	}
	mustServe(s.pair, "first")

	two := s.ca.Server(t, "server two", "127.0.0.1")
	two.Write(t, s.dir, "server")
	// Within the interval the files are not looked at.
	clk.advance(4 * time.Second)
	mustServe(s.pair, "within the interval")
	clk.advance(time.Second)
	mustServe(two, "after the interval")
	if n := srv.Reloads(); n != 1 {
		t.Errorf("Reloads() = %d, want 1", n)
	}
	if !strings.Contains(logs.String(), "reloaded") {
		t.Errorf("no reload logged:\n%s", logs.String())
	}

	// A new certificate whose key has not arrived yet: mismatched, so the
	// old pair stays, and the failure is logged once.
	three := s.ca.Server(t, "server three", "127.0.0.1")
	tlstest.WriteFile(t, s.certFile, three.CertPEM)
	clk.advance(5 * time.Second)
	mustServe(two, "certificate without its key")
	clk.advance(5 * time.Second)
	mustServe(two, "certificate without its key, checked again")
	if n := strings.Count(logs.String(), "do not load"); n != 1 {
		t.Errorf("the bad pair was logged %d times, want once:\n%s", n, logs.String())
	}
	// Its key arrives: the new pair is served.
	tlstest.WriteFile(t, s.keyFile, three.KeyPEM)
	clk.advance(5 * time.Second)
	mustServe(three, "the key arrived")

	// A file missing for a moment (being replaced): the loaded pair stays.
	if err := os.Remove(s.keyFile); err != nil {
		t.Fatal(err)
	}
	clk.advance(5 * time.Second)
	mustServe(three, "key file missing")
	four := s.ca.Server(t, "server four", "127.0.0.1")
	four.Write(t, s.dir, "server")
	clk.advance(5 * time.Second)
	mustServe(four, "files back")

	// Garbage in the certificate file: kept.
	tlstest.WriteFile(t, s.certFile, []byte("not a certificate\n"))
	clk.advance(5 * time.Second)
	mustServe(four, "garbage certificate")
}

func TestClientCertificates(t *testing.T) {
	s := newSetup(t)
	clientCA := tlstest.NewCA(t, "client CA")
	clientCAFile := clientCA.WriteCA(t, s.dir, "client-ca")
	clk := &clock{now: time.Unix(1_000_000, 0)}
	srv, err := tlsfiles.NewServer(tlsfiles.Options{CertFile: s.certFile, KeyFile: s.keyFile, ClientCAFile: clientCAFile, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if !srv.ClientAuth() {
		t.Fatal("ClientAuth() = false with a client CA")
	}
	addr := serve(t, srv.Config())

	// No client certificate: refused.
	if _, err := dial(addr, s.client); err == nil {
		t.Fatal("a client without a certificate was accepted")
	} else if !strings.Contains(err.Error(), "certificate required") {
		t.Errorf("want the server's 'certificate required' alert, got %v", err)
	}

	withCert := func(p tlstest.Pair, name string) *tls.Config {
		certFile, keyFile := p.Write(t, s.dir, name)
		cfg, err := tlsfiles.Client(tlsfiles.ClientOptions{CAFile: s.caFile, CertFile: certFile, KeyFile: keyFile})
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	good := withCert(clientCA.Client(t, "ci runner"), "client")
	if _, err := dial(addr, good); err != nil {
		t.Fatalf("a client with a certificate from the client CA: %v", err)
	}
	// A certificate from another CA (here the server's): refused.
	other := withCert(s.ca.Client(t, "stranger"), "stranger")
	if _, err := dial(addr, other); err == nil {
		t.Fatal("a client certificate from another CA was accepted")
	}

	// The client CA file is reloaded too: after a switch to another CA the
	// old client certificate is refused and the new one accepted.
	newCA := tlstest.NewCA(t, "client CA two")
	newCA.WriteCA(t, s.dir, "client-ca")
	clk.advance(tlsfiles.DefaultInterval)
	if _, err := dial(addr, good); err == nil {
		t.Fatal("a certificate of the replaced client CA was accepted")
	}
	if _, err := dial(addr, withCert(newCA.Client(t, "ci runner two"), "client2")); err != nil {
		t.Fatalf("a certificate of the new client CA: %v", err)
	}
}

func TestNewServerErrors(t *testing.T) {
	s := newSetup(t)
	other := s.ca.Server(t, "other", "127.0.0.1")
	_, otherKey := other.Write(t, s.dir, "other")
	junk := filepath.Join(s.dir, "junk.pem")
	tlstest.WriteFile(t, junk, []byte("hello\n"))
	for _, tc := range []struct {
		name string
		o    tlsfiles.Options
		want string
	}{
		{"no key", tlsfiles.Options{CertFile: s.certFile}, "both required"},
		{"missing cert", tlsfiles.Options{CertFile: filepath.Join(s.dir, "nope.crt"), KeyFile: s.keyFile}, "nope.crt"},
		{"mismatched key", tlsfiles.Options{CertFile: s.certFile, KeyFile: otherKey}, "does not match"},
		{"client CA without certificates", tlsfiles.Options{CertFile: s.certFile, KeyFile: s.keyFile, ClientCAFile: junk}, "no PEM certificate"},
		{"missing client CA", tlsfiles.Options{CertFile: s.certFile, KeyFile: s.keyFile, ClientCAFile: filepath.Join(s.dir, "none.crt")}, "none.crt"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tlsfiles.NewServer(tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("NewServer: %v, want an error saying %q", err, tc.want)
			}
		})
	}
}

func TestClientErrors(t *testing.T) {
	s := newSetup(t)
	if _, err := tlsfiles.Client(tlsfiles.ClientOptions{CertFile: s.certFile}); err == nil {
		t.Error("a client certificate without its key was accepted")
	}
	if _, err := tlsfiles.Client(tlsfiles.ClientOptions{CAFile: s.keyFile}); err == nil || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("a key as CA file: %v", err)
	}
	cfg, err := tlsfiles.Client(tlsfiles.ClientOptions{})
	if err != nil || cfg.RootCAs != nil || cfg.MinVersion != tls.VersionTLS12 {
		t.Errorf("no files: %+v, %v; want the system roots and TLS 1.2 at least", cfg, err)
	}
}
