package main

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache"
	"github.com/cairnbuild/cairn/server"
)

// startTestServer runs a real server (mem backend, Badger on disk in a
// temp dir) on a TCP port of 127.0.0.1 and returns its address, for
// `cairn-bench load` to drive (as cmd/cairn's tests have their own).
func startTestServer(t *testing.T) string {
	t.Helper()
	c, err := cache.Open(context.Background(), cache.Options{Dir: t.TempDir(), Backend: mem.New()})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(c, server.Options{})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
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
