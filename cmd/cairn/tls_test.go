package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/internal/tlsfiles"
	"github.com/cairnbuild/cairn/internal/tlsfiles/tlstest"
)

func TestInsecureExposure(t *testing.T) {
	for _, tc := range []struct {
		addr      string
		tls, auth bool
		want      string // "" : no warning
	}{
		{"127.0.0.1:7070", false, false, ""},
		{"[::1]:7070", false, false, ""},
		{"localhost:7070", false, false, ""},
		{"127.0.0.2:5000", false, false, ""},
		{"0.0.0.0:7070", false, false, "without TLS or authentication"},
		{"[::]:7070", false, false, "without TLS or authentication"},
		{":7070", false, false, "without TLS or authentication"},
		{"10.1.2.3:7070", false, false, "without TLS or authentication"},
		{"cairn.internal:7070", false, false, "without TLS or authentication"},
		{"10.1.2.3:7070", true, false, "without authentication"},
		{"10.1.2.3:7070", false, true, "without TLS:"},
		{"10.1.2.3:7070", true, true, ""},
	} {
		got := insecureExposure(tc.addr, tc.tls, tc.auth)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("insecureExposure(%q, tls %v, auth %v) = %q, want %q", tc.addr, tc.tls, tc.auth, got, tc.want)
		}
		if got != "" && !strings.Contains(got, tc.addr) {
			t.Errorf("the warning %q does not name the address %s", got, tc.addr)
		}
	}
}

// tlsFiles is a CA, a server pair for 127.0.0.1 and a client pair, as
// files in a temporary directory.
type tlsFiles struct {
	dir, ca, cert, key, clientCert, clientKey string
}

func newTLSFiles(t *testing.T) tlsFiles {
	t.Helper()
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "cairn test CA")
	f := tlsFiles{dir: dir, ca: ca.WriteCA(t, dir, "ca")}
	f.cert, f.key = ca.Server(t, "cairn", "127.0.0.1").Write(t, dir, "server")
	f.clientCert, f.clientKey = ca.Client(t, "builder").Write(t, dir, "client")
	return f
}

func TestServeTLSConfigErrors(t *testing.T) {
	f := newTLSFiles(t)
	junk := filepath.Join(f.dir, "junk")
	if err := os.WriteFile(junk, []byte("junk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{"--tls-cert", f.cert}, "--tls-cert needs --tls-key"},
		{"key without cert", []string{"--tls-key", f.key}, "--tls-key needs --tls-cert"},
		{"client CA without cert", []string{"--tls-client-ca", f.ca}, "--tls-client-ca needs --tls-cert"},
		{"mismatched pair", []string{"--tls-cert", f.cert, "--tls-key", f.clientKey}, "private key does not match public key"},
		{"missing cert file", []string{"--tls-cert", filepath.Join(f.dir, "none.crt"), "--tls-key", f.key}, "none.crt"},
		{"client CA without certificates", []string{"--tls-cert", f.cert, "--tls-key", f.key, "--tls-client-ca", junk}, "holds no PEM certificate"},
		{"zero reload interval", []string{"--tls-cert", f.cert, "--tls-key", f.key, "--tls-reload-interval", "0s"}, "--tls-reload-interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			a := &app{stdin: strings.NewReader(""), stdout: io.Discard, stderr: &stderr, getenv: func(string) string { return "" }}
			args := append([]string{"serve", "--data", t.TempDir(), "--listen", "127.0.0.1:0", "--registry-listen", "127.0.0.1:0"}, tc.args...)
			if code := run(context.Background(), a, args); code != exitFailure {
				t.Errorf("exit code %d, want %d", code, exitFailure)
			}
			if !strings.Contains(stderr.String(), tc.want) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tc.want)
			}
		})
	}
}

// TestServeTLS runs `cairn serve` with TLS and client certificates, the
// files given by environment twins, and the client commands against it.
func TestServeTLS(t *testing.T) {
	f := newTLSFiles(t)
	log, listen, _, stop := startServe(t, map[string]string{"CAIRN_TLS_CERT": f.cert, "CAIRN_TLS_KEY": f.key, "CAIRN_TLS_CLIENT_CA": f.ca},
		"--data", t.TempDir(), "--listen", "127.0.0.1:0", "--grace-period", "1s")
	defer stop()
	defer func() {
		if t.Failed() {
			t.Logf("serve log:\n%s", log)
		}
	}()
	line := log.String()
	reg := regexp.MustCompile(`registry=https://(\S+)/v2/`).FindStringSubmatch(line)
	if !strings.Contains(line, `tls="on, client certificates required"`) || reg == nil {
		t.Fatalf("the start-up line does not say TLS and https:\n%s", line)
	}
	if strings.Contains(line, "exposed") {
		t.Errorf("a warning about exposure on loopback:\n%s", line)
	}

	env := map[string]string{"CAIRN_SERVER": listen}
	withCert := []string{"--tls-ca", f.ca, "--tls-client-cert", f.clientCert, "--tls-client-key", f.clientKey}
	if r := runClientCLI(t, env, nil, append([]string{"stat"}, withCert...)...); r.code != exitOK {
		t.Fatalf("stat over mTLS: exit %d: %s", r.code, r.stderr)
	}
	// The client's twins: CAIRN_TLS_CA and CAIRN_TLS_CLIENT_*.
	twins := map[string]string{"CAIRN_SERVER": listen, "CAIRN_TLS_CA": f.ca, "CAIRN_TLS_CLIENT_CERT": f.clientCert, "CAIRN_TLS_CLIENT_KEY": f.clientKey}
	if r := runClientCLI(t, twins, nil, "stat"); r.code != exitOK {
		t.Fatalf("stat over mTLS, files from the twins: exit %d: %s", r.code, r.stderr)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"plaintext", nil, "if it serves TLS"},
		{"no CA", []string{"--tls"}, "pass --tls-ca"},
		{"no client certificate", []string{"--tls-ca", f.ca}, "requires a client certificate"},
		{"half a client pair", []string{"--tls-ca", f.ca, "--tls-client-cert", f.clientCert}, "--tls-client-cert and --tls-client-key go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runClientCLI(t, map[string]string{"CAIRN_SERVER": listen, "CAIRN_TIMEOUT": "20s"}, nil, append([]string{"stat"}, tc.args...)...)
			if r.code != exitFailure || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 saying %q", r.code, r.stderr, tc.want)
			}
		})
	}

	// The registry port: TLS with the same files.
	cfg, err := tlsfiles.Client(tlsfiles.ClientOptions{CAFile: f.ca, CertFile: f.clientCert, KeyFile: f.clientKey})
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}
	resp, err := hc.Get("https://" + reg[1] + "/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	// HTTP/1.1 even to a client that offers HTTP/2 (see runServe).
	if resp.StatusCode != http.StatusOK || resp.ProtoMajor != 1 {
		t.Errorf("GET /v2/ over TLS: %s %s, want 200 over HTTP/1.1", resp.Proto, resp.Status)
	}
	noCert := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: cfg.RootCAs}}}
	if resp, err := noCert.Get("https://" + reg[1] + "/v2/"); err == nil {
		resp.Body.Close()
		t.Errorf("GET /v2/ without a client certificate: %s", resp.Status)
	}
}

// TestClientTLSAgainstPlainServer: --tls against a server without TLS
// says the server does not serve it.
func TestClientTLSAgainstPlainServer(t *testing.T) {
	f := newTLSFiles(t)
	addr := startTestServer(t)
	r := runClientCLI(t, map[string]string{"CAIRN_SERVER": addr, "CAIRN_TIMEOUT": "20s"}, nil, "stat", "--tls-ca", f.ca)
	if r.code != exitFailure || !strings.Contains(r.stderr, "does not serve TLS") {
		t.Errorf("exit %d, stderr %q; want exit 1 saying the server does not serve TLS", r.code, r.stderr)
	}
}
