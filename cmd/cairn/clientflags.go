package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/opencontainers/go-digest"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/grpc"

	"github.com/cairnbuild/cairn/client"
	"github.com/cairnbuild/cairn/internal/tlsfiles"
)

// defaultServer is where the client commands look for `cairn serve` when
// neither --server nor its twin CAIRN_SERVER says otherwise; it is serve's
// default listen address.
const defaultServer = "127.0.0.1:7070"

// defaultRegistry is where `cairn serve` serves the registry API.
const defaultRegistry = "127.0.0.1:5000"

// defaultIdleTimeout is --idle-timeout's default: a pull or push that gets
// no data from the server for this long gives up. Long enough for a call
// queued behind a busy server's transfers (the server's own idle timeouts
// are a minute); short enough that a dead server or network does not hold
// a build for good.
const defaultIdleTimeout = 5 * time.Minute

// idleNotice is how often a pull or push waiting for the server says so on
// stderr (or at half of --idle-timeout, if that is sooner).
const idleNotice = 30 * time.Second

// clientFlags are the flags every client subcommand takes.
type clientFlags struct {
	a          *app
	server     string
	timeout    time.Duration
	json       bool
	noProgress bool
	idle       time.Duration // --idle-timeout, for the commands that add it

	// TLS to the server: --tls, --tls-ca, --tls-client-cert and
	// --tls-client-key. The client side's names differ from serve's
	// --tls-cert, --tls-key and --tls-client-ca, so that no environment
	// twin means one thing to the server and another to a client in the
	// same environment (CAIRN_TLS_CERT is the server's certificate only).
	tls           bool
	tlsCA         string
	tlsClientCert string
	tlsClientKey  string
	// token authenticates the client to a server with a credentials file:
	// --token, or the first line of --token-file.
	token     string
	tokenFile string
	// certRequested is set when a server asked for a client certificate
	// and the client had none to give, certUnsigned when the one it had is
	// not signed by a CA the server named: fail then says what to pass.
	certRequested atomic.Bool
	certUnsigned  atomic.Bool
}

// addClientFlags registers --server, --timeout, --json and (when progress
// is true) --no-progress on cmd.
func addClientFlags(a *app, cmd *cobra.Command, progress bool) *clientFlags {
	f := &clientFlags{a: a}
	fs := cmd.Flags()
	fs.StringVar(&f.server, "server", defaultServer, "address (host:port) of the cairn server")
	fs.DurationVar(&f.timeout, "timeout", 0, "give up after this long, e.g. 30s (0: no limit)")
	fs.BoolVar(&f.json, "json", false, "print the result as JSON on stdout, for scripts")
	if progress {
		fs.BoolVar(&f.noProgress, "no-progress", false, "no progress bar, even on a terminal")
	}
	fs.BoolVar(&f.tls, "tls", false, "connect with TLS, verifying the server against the system's CAs (implied by the other --tls-* flags)")
	fs.StringVar(&f.tlsCA, "tls-ca", "", "PEM file of the CA(s) the server's certificate must chain to, instead of the system's; turns TLS on")
	fs.StringVar(&f.tlsClientCert, "tls-client-cert", "", "PEM file of the client certificate, for a server that requires one (serve --tls-client-ca); with --tls-client-key")
	fs.StringVar(&f.tlsClientKey, "tls-client-key", "", "PEM file of the client certificate's private key")
	fs.StringVar(&f.token, "token", "", "the token to send, for a server with --auth-file (prefer CAIRN_TOKEN or --token-file: a flag shows in the process list)")
	fs.StringVar(&f.tokenFile, "token-file", "", "file whose first line is the token to send")
	return f
}

// tokenOption is the dial option of --token or --token-file, if any. A
// token goes to a server across the network only over TLS.
func (f *clientFlags) tokenOption() (grpc.DialOption, error) {
	token := f.token
	if f.tokenFile != "" {
		if token != "" {
			return nil, errors.New("--token and --token-file: give one")
		}
		b, err := os.ReadFile(f.tokenFile)
		if err != nil {
			return nil, fmt.Errorf("--token-file: %w", err)
		}
		token, _, _ = strings.Cut(string(b), "\n")
		if token = strings.TrimSpace(token); token == "" {
			return nil, fmt.Errorf("--token-file %s: empty", f.tokenFile)
		}
	}
	if token == "" {
		return nil, nil
	}
	if !f.tlsOn() && !isLoopback(f.server) {
		return nil, fmt.Errorf("a token for %s would cross the network in clear text: connect with TLS (--tls or --tls-ca)", f.server)
	}
	if !f.tlsOn() {
		return client.WithTokenOverPlaintext(token), nil // loopback: checked above
	}
	return client.WithToken(token), nil
}

// tlsOn says whether the client connects with TLS.
func (f *clientFlags) tlsOn() bool {
	return f.tls || f.tlsCA != "" || f.tlsClientCert != "" || f.tlsClientKey != ""
}

// dialOptions are the client options the TLS flags ask for.
func (f *clientFlags) dialOptions() ([]grpc.DialOption, error) {
	if !f.tlsOn() {
		return nil, nil
	}
	if (f.tlsClientCert == "") != (f.tlsClientKey == "") {
		return nil, errors.New("--tls-client-cert and --tls-client-key go together")
	}
	cfg, err := tlsfiles.Client(tlsfiles.ClientOptions{CAFile: f.tlsCA, CertFile: f.tlsClientCert, KeyFile: f.tlsClientKey})
	if err != nil {
		return nil, err
	}
	// Choose the client certificate as crypto/tls does (one the server's
	// CAs signed, else none), noting why none was sent: the server's
	// refusal may reach the client only as a broken connection after the
	// handshake (TLS 1.3).
	certs := cfg.Certificates
	cfg.Certificates = nil
	cfg.GetClientCertificate = func(cri *tls.CertificateRequestInfo) (*tls.Certificate, error) {
		if len(certs) == 0 {
			f.certRequested.Store(true)
			return &tls.Certificate{}, nil
		}
		for i := range certs {
			if cri.SupportsCertificate(&certs[i]) == nil {
				return &certs[i], nil
			}
		}
		f.certUnsigned.Store(true)
		return &tls.Certificate{}, nil
	}
	return []grpc.DialOption{client.WithTLS(cfg)}, nil
}

// addIdleFlag registers --idle-timeout, for the commands that move layer
// data (pull, push).
func (f *clientFlags) addIdleFlag(cmd *cobra.Command) {
	cmd.Flags().DurationVar(&f.idle, "idle-timeout", defaultIdleTimeout,
		"give up when the server sends or takes no data for this long, saying what it waited for (0: wait forever, reporting the wait every 30s)")
}

// idleOptions watches a pull or push: while it waits for the server it
// says so on stderr every idleNotice (or half of --idle-timeout), and it
// fails after --idle-timeout without data.
func (f *clientFlags) idleOptions() client.IdleOptions {
	every := idleNotice
	if f.idle > 0 {
		every = min(every, f.idle/2)
	}
	return client.IdleOptions{Timeout: f.idle, NoticeEvery: every, Notice: func(what string, waited time.Duration) {
		fmt.Fprintf(f.a.stderr, "cairn: waiting for the server: no data for %v while %s\n", waited, what)
	}}
}

// statContext bounds a call made before a watched pull, whose answer only
// helps (the size, for the progress bar): it never waits longer than a
// notice period, or --idle-timeout if shorter.
func (f *clientFlags) statContext(ctx context.Context) (context.Context, context.CancelFunc) {
	d := idleNotice
	if f.idle > 0 {
		d = min(d, f.idle)
	}
	return context.WithTimeout(ctx, d)
}

// connect applies --timeout to ctx and dials --server. The caller calls
// the returned cleanup when done.
func (f *clientFlags) connect(ctx context.Context) (context.Context, *client.Client, func(), error) {
	cancel := func() {}
	if f.timeout > 0 {
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
	}
	opts, err := f.dialOptions()
	if err == nil {
		var tok grpc.DialOption
		if tok, err = f.tokenOption(); tok != nil {
			opts = append(opts, tok)
		}
	}
	if err != nil {
		cancel()
		return nil, nil, nil, err
	}
	c, err := client.Dial(ctx, f.server, opts...)
	if err != nil {
		cancel()
		return nil, nil, nil, fmt.Errorf("connect to %s: %w", f.server, err)
	}
	return ctx, c, func() { c.Close(); cancel() }, nil
}

// fail turns an error from the client into one a person can act on, with
// the exit code scripts branch on.
func (f *clientFlags) fail(err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, client.ErrMiss):
		return &exitError{code: exitMiss, err: err}
	case errors.Is(err, client.ErrNotFound):
		return &exitError{code: exitNotFound, err: err}
	case errors.Is(err, client.ErrIdle):
		return fmt.Errorf("%w (is the server at %s overloaded, or the network down? raise --idle-timeout or CAIRN_IDLE_TIMEOUT, 0 waits forever)", err, f.server)
	case errors.Is(err, context.DeadlineExceeded) && f.timeout > 0:
		// Without --timeout, the deadline was the server's (its idle
		// timeouts, its cap on a call), and the error says which.
		return fmt.Errorf("%w (timed out after %s; raise --timeout or CAIRN_TIMEOUT)", err, f.timeout)
	case errors.Is(err, client.ErrUnauthenticated):
		if f.token == "" && f.tokenFile == "" {
			return fmt.Errorf("%w\n(the server at %s wants a token: pass CAIRN_TOKEN, --token-file or --token; cairn token new makes one)", err, f.server)
		}
		return fmt.Errorf("%w\n(the server at %s does not know this token: check it against its --auth-file)", err, f.server)
	case errors.Is(err, client.ErrPermissionDenied):
		return fmt.Errorf("%w\n(the token is good, but its scopes in the server's --auth-file do not cover this)", err)
	case errors.Is(err, client.ErrUnavailable):
		if hint := f.tlsHint(err); hint != "" {
			return fmt.Errorf("%w\n(%s)", err, hint)
		}
		return fmt.Errorf("%w\n(is `cairn serve` running at %s? point --server or CAIRN_SERVER at it)", err, f.server)
	}
	return err
}

// tlsHint says what to change when a connection failed over TLS, or
// failed because one side speaks TLS and the other does not; "" when
// the error shows neither.
func (f *clientFlags) tlsHint(err error) string {
	msg := err.Error()
	switch {
	case !f.tlsOn() && (strings.Contains(msg, "connection closed before server preface received") || strings.Contains(msg, "error reading server preface")):
		return fmt.Sprintf("the server at %s closed the connection at once: if it serves TLS (serve --tls-cert), pass --tls-ca with the CA that signed its certificate, or --tls if the system trusts it (CAIRN_TLS_CA, CAIRN_TLS)", f.server)
	case !f.tlsOn():
		return ""
	case strings.Contains(msg, "first record does not look like a TLS handshake"):
		return fmt.Sprintf("the server at %s does not serve TLS: drop --tls, --tls-ca and --tls-client-* (and their CAIRN_TLS_* twins), or start it with --tls-cert and --tls-key", f.server)
	case strings.Contains(msg, "x509: certificate signed by unknown authority"):
		if f.tlsCA == "" {
			return fmt.Sprintf("the certificate of the server at %s is not signed by a CA the system trusts: pass --tls-ca (CAIRN_TLS_CA) with the CA that signed it", f.server)
		}
		return fmt.Sprintf("the certificate of the server at %s is not signed by a CA in --tls-ca %s", f.server, f.tlsCA)
	case strings.Contains(msg, "x509:"):
		return fmt.Sprintf("the certificate of the server at %s does not verify: check that it names the host in --server and has not expired", f.server)
	case f.certUnsigned.Load():
		return fmt.Sprintf("the server at %s requires a client certificate signed by a CA in its --tls-client-ca, and --tls-client-cert %s is not", f.server, f.tlsClientCert)
	case f.certRequested.Load():
		return fmt.Sprintf("the server at %s requires a client certificate (serve --tls-client-ca): pass --tls-client-cert and --tls-client-key (CAIRN_TLS_CLIENT_CERT, CAIRN_TLS_CLIENT_KEY)", f.server)
	case f.tlsClientCert != "" && (strings.Contains(msg, "bad certificate") || strings.Contains(msg, "unknown certificate authority")):
		return fmt.Sprintf("the server at %s refused the client certificate %s: it is not signed by a CA in the server's --tls-client-ca", f.server, f.tlsClientCert)
	case f.tlsClientCert != "" && (strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset") || strings.Contains(msg, "EOF")):
		return fmt.Sprintf("the server at %s closed the connection after the TLS handshake: did it refuse the client certificate %s? it must be signed by a CA in the server's --tls-client-ca", f.server, f.tlsClientCert)
	}
	return ""
}

// layerFail is fail for an operation on layer d: a missing layer gets a
// plain message naming the layer and the server.
func (f *clientFlags) layerFail(d digest.Digest, err error) error {
	if errors.Is(err, client.ErrNotFound) {
		return &exitError{code: exitNotFound, err: fmt.Errorf("layer %s not found on %s", d, f.server)}
	}
	return f.fail(err)
}

// plural returns "1 chunk", "2 chunks".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// printJSON writes v as indented JSON on stdout.
func (f *clientFlags) printJSON(v any) error {
	enc := json.NewEncoder(f.a.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// progress returns a progress callback for total bytes (total < 0:
// unknown) and a function that finishes the bar. Without a terminal on
// stderr, or with --no-progress, both do nothing.
func (f *clientFlags) progress(total int64, desc string) (func(done int64), func()) {
	file, ok := f.a.stderr.(*os.File)
	if f.noProgress || !ok || !term.IsTerminal(int(file.Fd())) {
		return nil, func() {}
	}
	bar := progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(file),
		progressbar.OptionSetDescription(desc),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowTotalBytes(true),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionShowCount(),
		progressbar.OptionClearOnFinish(),
		progressbar.OptionUseIECUnits(true),
		progressbar.OptionSpinnerType(14),
	)
	return func(done int64) { _ = bar.Set64(done) }, func() { _ = bar.Finish() }
}

// note prints a line for people on stderr.
func (f *clientFlags) note(format string, args ...any) {
	fmt.Fprintf(f.a.stderr, format+"\n", args...)
}

// parseDigest validates a digest given on the command line; what names it
// (a flag, an argument) goes into the message.
func parseDigest(what, s string) (digest.Digest, error) {
	d, err := digest.Parse(s)
	if err != nil {
		return "", fmt.Errorf("%s %q is not a digest (want sha256:<64 hex digits>): %v", what, s, err)
	}
	return d, nil
}

// parseOptionalDigest is parseDigest with "" allowed (meaning none).
func parseOptionalDigest(what, s string) (digest.Digest, error) {
	if s == "" {
		return "", nil
	}
	return parseDigest(what, s)
}

// humanBytes formats a byte count in IEC units for people ("4.0 MiB",
// "494 KiB"); the counts the client reports are int64.
func humanBytes(n int64) string {
	return humanize.IBytes(uint64(max(n, 0)))
}

// closeQuietly closes c, for readers whose close error cannot matter.
func closeQuietly(c io.Closer) { _ = c.Close() }
