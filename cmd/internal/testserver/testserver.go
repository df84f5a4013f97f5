// Package testserver runs a real cairn server for the commands' tests: the
// mem backend, Badger on disk in a temp dir, gRPC on a TCP port of
// 127.0.0.1, stopped when the test ends. StartWithRegistry also serves the
// OCI registry front over the same cache, as `cairn serve` does, so that a
// test can push images with a registry client and see them through gRPC.
package testserver

import (
	"context"
	"net"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/registry"
	"github.com/cairnbuild/cairn/server"
)

// Start runs a server with opts and returns its address.
func Start(t testing.TB, opts server.Options) string {
	t.Helper()
	addr, _ := start(t, opts, false)
	return addr
}

// StartWithRegistry runs a server with opts and the registry API over the
// same cache, and returns the gRPC address and the registry's host:port
// (plain HTTP; registry clients talk plain HTTP to 127.0.0.1 by
// themselves, or with their "insecure" option).
func StartWithRegistry(t testing.TB, opts server.Options) (addr, registryAddr string) {
	t.Helper()
	return start(t, opts, true)
}

func start(t testing.TB, opts server.Options, withRegistry bool) (addr, registryAddr string) {
	t.Helper()
	c, err := cache.Open(context.Background(), cache.Options{Dir: t.TempDir(), Backend: mem.New()})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(c, opts)
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	var reg *httptest.Server
	if withRegistry {
		reg = httptest.NewServer(registry.New(c, registry.Options{}))
		registryAddr = reg.Listener.Addr().String()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		if reg != nil {
			reg.Close() // waits for the requests in flight, before the cache closes
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
		c.Close()
	})
	return lis.Addr().String(), registryAddr
}
