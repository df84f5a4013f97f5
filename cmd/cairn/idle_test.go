package main

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/cairnbuild/cairn/client"
	"github.com/cairnbuild/cairn/cmd/internal/testserver"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
	"github.com/cairnbuild/cairn/server"
)

// randomLayer returns n incompressible bytes from a seeded generator.
func randomLayer(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// holdOnlySlot takes the only transfer slot of the server at addr with a
// pull of d that stops reading after its first message (which the server
// sends once the call holds the slot); the slot stays taken until the test
// ends (the server's send idle timeout is a minute).
func holdOnlySlot(t *testing.T, addr string, d digest.Digest) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(64<<10), grpc.WithInitialConnWindowSize(64<<10))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	stream, err := cairnv1.NewLayerServiceClient(conn).PullLayer(ctx, &cairnv1.PullLayerRequest{Digest: d.String()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("first message of the pull holding the slot: %v", err)
	}
}

// TestIdleTimeout: a pull or push that a busy server keeps waiting (its
// only transfer slot is taken by a stalled reader) says on stderr what it
// waits for, then gives up after --idle-timeout with an error that names
// it and the flag; a pulled file is not left behind.
func TestIdleTimeout(t *testing.T) {
	addr := testserver.Start(t, server.Options{MaxTransfers: 1})
	env := map[string]string{"CAIRN_SERVER": addr}
	layer := randomLayer(3, 6<<20) // six messages: more than the stalled reader's window
	c, err := client.Dial(context.Background(), addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Push(context.Background(), bytes.NewReader(layer), client.PushOptions{}); err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(layer)
	holdOnlySlot(t, addr, d)

	dir := t.TempDir()
	out := filepath.Join(dir, "layer.tar")
	other := filepath.Join(dir, "other.tar")
	if err := os.WriteFile(other, randomLayer(4, 2<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, what string
		args       []string
	}{
		{"pull", "pulling " + d.String(), []string{"pull", d.String(), "-o", out}},
		{"push", "sending chunks", []string{"push", other}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// --timeout only bounds a watchdog that never fires.
			r := runClientCLI(t, env, nil, append(tt.args, "--idle-timeout", "400ms", "--timeout", "20s")...)
			if r.code != exitFailure {
				t.Fatalf("exit %d, want %d\nstderr: %s", r.code, exitFailure, r.stderr)
			}
			for _, want := range []string{
				"cairn: waiting for the server: no data for 200ms while " + tt.what + "\n",
				"no data from the server for 400ms while " + tt.what,
				"raise --idle-timeout",
			} {
				if !strings.Contains(r.stderr, want) {
					t.Errorf("stderr does not say %q:\n%s", want, r.stderr)
				}
			}
		})
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("the failed pull left %s behind (%v)", out, err)
	}
}
