// Package tlsfiles builds the TLS configurations of cairn's two sides from
// PEM files: the server's certificate and key (and, for client-certificate
// authentication, the CA that signs client certificates), reloaded when the
// files change so that a renewed certificate needs no restart; and the
// client's CA and optional client certificate.
//
// The server checks the files at most once per Options.Interval, during a
// handshake, by their modification time, size and identity (device and
// inode); a changed file is read
// again, and a new pair that does not load (a key that does not match, a
// half-written file) keeps the old one and is logged, once per change. The
// first load has no old pair to keep: NewServer fails.
package tlsfiles

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// DefaultInterval is how often, at most, a Server looks at its files.
const DefaultInterval = 5 * time.Second

// Options are the files of a server's TLS configuration.
type Options struct {
	// CertFile and KeyFile hold the server's certificate chain (leaf
	// first) and its private key, PEM. Both are required.
	CertFile, KeyFile string
	// ClientCAFile, if set, holds the CA certificates (PEM) that sign the
	// client certificates the server accepts: every client must then
	// present one (tls.RequireAndVerifyClientCert).
	ClientCAFile string
	// Interval is how often, at most, the files are checked for changes;
	// zero means DefaultInterval, negative means at every handshake.
	Interval time.Duration
	// Logger receives the reloads and the failed ones; nil discards.
	Logger *slog.Logger
	// Now is the clock the interval is measured on; nil means time.Now.
	// Tests move it forward to force a check.
	Now func() time.Time
}

// fileStamp is what a check compares: a file that differs in size,
// modification time or identity (device and inode: a file renamed over it,
// as certificate managers and a Kubernetes secret's symlink swap replace
// files) was changed. The zero stamp is an unset file.
type fileStamp struct {
	info os.FileInfo
}

func (a fileStamp) same(b fileStamp) bool {
	if a.info == nil || b.info == nil {
		return a.info == nil && b.info == nil
	}
	return a.info.Size() == b.info.Size() && a.info.ModTime().Equal(b.info.ModTime()) && os.SameFile(a.info, b.info)
}

func sameStamps(a, b [3]fileStamp) bool {
	for i := range a {
		if !a[i].same(b[i]) {
			return false
		}
	}
	return true
}

func stamp(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{info: fi}, nil
}

// loaded is one consistent set of what the files held.
type loaded struct {
	cert      *tls.Certificate
	clientCAs *x509.CertPool // nil without ClientCAFile
}

// Server is a server's TLS configuration over files that may change. It
// is safe for concurrent use.
type Server struct {
	opts Options
	log  *slog.Logger

	mu        sync.Mutex
	cur       loaded
	stamps    [3]fileStamp // cert, key, client CA: as last read
	lastCheck time.Time
	reloads   int
}

// NewServer loads the files of o and returns the Server, or an error that
// names the file at fault.
func NewServer(o Options) (*Server, error) {
	if o.CertFile == "" || o.KeyFile == "" {
		return nil, errors.New("tlsfiles: a certificate file and a key file are both required")
	}
	if o.Interval == 0 {
		o.Interval = DefaultInterval
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{opts: o, log: log}
	stamps, err := s.stampAll()
	if err != nil {
		return nil, err
	}
	l, err := s.load()
	if err != nil {
		return nil, err
	}
	s.cur, s.stamps, s.lastCheck = l, stamps, o.Now()
	return s, nil
}

func (s *Server) files() [3]string {
	return [3]string{s.opts.CertFile, s.opts.KeyFile, s.opts.ClientCAFile}
}

// stampAll stats the files (an unset client CA file stamps as zero).
func (s *Server) stampAll() ([3]fileStamp, error) {
	var out [3]fileStamp
	for i, p := range s.files() {
		if p == "" {
			continue
		}
		st, err := stamp(p)
		if err != nil {
			return out, fmt.Errorf("tls: %w", err)
		}
		out[i] = st
	}
	return out, nil
}

// load reads and parses every file.
func (s *Server) load() (loaded, error) {
	cert, err := tls.LoadX509KeyPair(s.opts.CertFile, s.opts.KeyFile)
	if err != nil {
		return loaded{}, fmt.Errorf("tls: certificate %s with key %s: %w", s.opts.CertFile, s.opts.KeyFile, err)
	}
	l := loaded{cert: &cert}
	if s.opts.ClientCAFile != "" {
		pool, err := LoadCAs(s.opts.ClientCAFile)
		if err != nil {
			return loaded{}, err
		}
		l.clientCAs = pool
	}
	return l, nil
}

// current returns what the files hold, looking at them first if the
// interval has passed since the last look.
func (s *Server) current() loaded {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.opts.Now()
	if s.opts.Interval > 0 && now.Sub(s.lastCheck) < s.opts.Interval {
		return s.cur
	}
	s.lastCheck = now
	stamps, err := s.stampAll()
	if err != nil {
		// A file being replaced may be missing for a moment: keep what
		// was loaded, and say so once until the files change again.
		if !sameStamps(s.stamps, [3]fileStamp{}) {
			s.log.Warn("tls: cannot check the certificate files; keeping the loaded certificate", "err", err)
			s.stamps = [3]fileStamp{}
		}
		return s.cur
	}
	if sameStamps(stamps, s.stamps) {
		return s.cur
	}
	// Recorded before loading, so that a bad pair is reported once, not at
	// every check; rewriting either file again triggers another load.
	s.stamps = stamps
	l, err := s.load()
	if err != nil {
		s.log.Warn("tls: the changed certificate files do not load; keeping the loaded certificate", "err", err)
		return s.cur
	}
	s.cur = l
	s.reloads++
	s.log.Info("tls: reloaded the certificate files", "cert", s.opts.CertFile, "not_after", l.cert.Leaf.NotAfter,
		"client_ca", s.opts.ClientCAFile)
	return s.cur
}

// Reloads is how many times the files were reloaded after the first load.
func (s *Server) Reloads() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloads
}

// Certificate returns the certificate in use (after a check, if due).
func (s *Server) Certificate() *tls.Certificate { return s.current().cert }

// ClientAuth says whether the server requires client certificates.
func (s *Server) ClientAuth() bool { return s.opts.ClientCAFile != "" }

// Config returns a tls.Config for a listener that serves nextProtos by
// ALPN ("h2", "http/1.1"; gRPC adds "h2" itself). Every handshake gets the
// current certificate and client CAs. TLS 1.2 is the minimum; Go prefers
// 1.3 when the client offers it. With client certificates required,
// session tickets are off, so that every connection presents a
// certificate checked against the current CAs.
func (s *Server) Config(nextProtos ...string) *tls.Config {
	protos := append([]string(nil), nextProtos...)
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: protos,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return s.current().cert, nil
		},
		SessionTicketsDisabled: s.ClientAuth(),
	}
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		l := s.current()
		c := &tls.Config{
			MinVersion:             tls.VersionTLS12,
			NextProtos:             append([]string(nil), protos...),
			Certificates:           []tls.Certificate{*l.cert},
			SessionTicketsDisabled: s.ClientAuth(),
		}
		if l.clientCAs != nil {
			c.ClientAuth = tls.RequireAndVerifyClientCert
			c.ClientCAs = l.clientCAs
		}
		return c, nil
	}
	return cfg
}

// LoadCAs reads a PEM file of CA certificates into a pool; a file without
// a single certificate is an error.
func LoadCAs(path string) (*x509.CertPool, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tls: CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("tls: CA file %s holds no PEM certificate", path)
	}
	return pool, nil
}

// ClientOptions are the files of a client's TLS configuration.
type ClientOptions struct {
	// CAFile holds the CA certificates (PEM) that the server's certificate
	// must chain to; empty means the system's roots.
	CAFile string
	// CertFile and KeyFile, both or neither, are the client certificate
	// and key presented to a server that requires one.
	CertFile, KeyFile string
	// ServerName overrides the name checked against the server's
	// certificate; empty means the host of the address dialled.
	ServerName string
}

// Client returns the tls.Config a client dials with: TLS 1.2 at least,
// the server verified against CAFile (or the system roots), and the client
// certificate if given.
func Client(o ClientOptions) (*tls.Config, error) {
	if (o.CertFile == "") != (o.KeyFile == "") {
		return nil, errors.New("tls: a client certificate needs its key, and a key its certificate")
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: o.ServerName}
	if o.CAFile != "" {
		pool, err := LoadCAs(o.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	if o.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("tls: client certificate %s with key %s: %w", o.CertFile, o.KeyFile, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
