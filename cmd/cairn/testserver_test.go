package main

import (
	"testing"

	"github.com/cairnbuild/cairn/cmd/internal/testserver"

	"github.com/cairnbuild/cairn/server"
)

// startTestServer runs a real server (mem backend, Badger on disk in a
// temp dir) on a TCP port of 127.0.0.1 and returns its address; the CLI
// tests in this package drive it over the real client.
func startTestServer(t *testing.T) string { return testserver.Start(t, server.Options{}) }
