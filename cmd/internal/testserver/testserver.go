// Package testserver runs a real cairn server for the commands' tests: the
// mem backend, Badger on disk in a temp dir, gRPC on a TCP port of
// 127.0.0.1, stopped when the test ends.
package testserver

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/server"
)

// Start runs a server with opts and returns its address.
func Start(t testing.TB, opts server.Options) string {
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
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-served
		c.Close()
	})
	return lis.Addr().String()
}
