package client

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/cairnbuild/cairn/internal/tlsfiles"
	"github.com/cairnbuild/cairn/internal/tlsfiles/tlstest"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// TestWithTLS: a Client dialled WithTLS talks to a TLS server whose
// certificate chains to its CA, with a client certificate where the server
// requires one; without the CA, or without the certificate, the call fails
// as unavailable and says why.
func TestWithTLS(t *testing.T) {
	dir := t.TempDir()
	ca := tlstest.NewCA(t, "cairn test CA")
	caFile := ca.WriteCA(t, dir, "ca")
	certFile, keyFile := ca.Server(t, "cairn", "127.0.0.1").Write(t, dir, "server")
	clientCertFile, clientKeyFile := ca.Client(t, "builder").Write(t, dir, "client")

	start := func(clientCA string) string {
		ts, err := tlsfiles.NewServer(tlsfiles.Options{CertFile: certFile, KeyFile: keyFile, ClientCAFile: clientCA})
		if err != nil {
			t.Fatal(err)
		}
		s := grpc.NewServer(grpc.Creds(credentials.NewTLS(ts.Config())))
		cairnv1.RegisterLayerServiceServer(s, newFakeServer())
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go s.Serve(lis)
		t.Cleanup(s.Stop)
		return lis.Addr().String()
	}
	stats := func(addr string, o tlsfiles.ClientOptions) error {
		cfg, err := tlsfiles.Client(o)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := Dial(ctx, addr, WithTLS(cfg))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_, err = c.Stats(ctx)
		return err
	}

	addr := start("")
	if err := stats(addr, tlsfiles.ClientOptions{CAFile: caFile}); err != nil {
		t.Fatalf("with the CA: %v", err)
	}
	err := stats(addr, tlsfiles.ClientOptions{})
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "certificate signed by unknown authority") {
		t.Errorf("without the CA: %v, want ErrUnavailable naming the unknown authority", err)
	}

	mtls := start(caFile)
	if err := stats(mtls, tlsfiles.ClientOptions{CAFile: caFile, CertFile: clientCertFile, KeyFile: clientKeyFile}); err != nil {
		t.Fatalf("mTLS with a client certificate: %v", err)
	}
	if err := stats(mtls, tlsfiles.ClientOptions{CAFile: caFile}); !errors.Is(err, ErrUnavailable) {
		t.Errorf("mTLS without a client certificate: %v, want ErrUnavailable", err)
	} else {
		t.Logf("mTLS without a client certificate: %v", err)
	}
}

// A token does not go over a plaintext connection unless the caller says
// the server is on loopback.
func TestWithTokenNeedsTLS(t *testing.T) {
	if c, err := Dial(t.Context(), "127.0.0.1:1", WithToken("cairn_x")); err == nil {
		c.Close()
		t.Fatal("WithToken over plaintext: Dial succeeded, want an error")
	}
	c, err := Dial(t.Context(), "127.0.0.1:1", WithTokenOverPlaintext("cairn_x"))
	if err != nil {
		t.Fatalf("WithTokenOverPlaintext: %v", err)
	}
	c.Close()
}
