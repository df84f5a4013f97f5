package client

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
)

// A push of a layer the server holds, from a seekable reader, asks about
// the first chunks, hashes the rest and asks for the layer: no chunk
// sent, no commit, one FindMissingChunks.
func TestPushStoredLayerSendsNothing(t *testing.T) {
	ctx := context.Background()
	f := newFakeServer()
	c := startFake(t, f)
	data := randomBytes(20, 20<<20)
	first, err := c.Push(ctx, bytes.NewReader(data), PushOptions{})
	if err != nil {
		t.Fatal(err)
	}
	finds, commits, put := f.findCalls, f.commits, f.putBytes
	var progress int64
	res, err := c.Push(ctx, bytes.NewReader(data), PushOptions{Progress: func(n int64) { progress = n }})
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest != digest.FromBytes(data) || res.ChunksSent != 0 || res.ChunksTotal != first.ChunksTotal {
		t.Errorf("re-push: %+v; want the layer, %d chunks, none sent", res, first.ChunksTotal)
	}
	if f.commits != commits || f.putBytes != put || f.findCalls != finds+1 {
		t.Errorf("re-push made %d commits, sent %d bytes, asked %d times; want 0, 0, 1",
			f.commits-commits, f.putBytes-put, f.findCalls-finds)
	}
	if progress != int64(len(data)) {
		t.Errorf("progress ended at %d of %d", progress, len(data))
	}
	// From a reader that cannot seek, the usual push: it commits again.
	if _, err := c.Push(ctx, io.MultiReader(bytes.NewReader(data)), PushOptions{}); err != nil || f.commits != commits+1 {
		t.Errorf("push from a pipe: %v, %d commits; want the usual push", err, f.commits-commits)
	}
}

// A layer that starts like a stored one but is not stored is pushed as
// usual after the probe, from where the reader was, whole and right.
func TestPushProbeRewinds(t *testing.T) {
	ctx := context.Background()
	f := newFakeServer()
	c := startFake(t, f)
	base := randomBytes(21, 12<<20)
	if _, err := c.Push(ctx, bytes.NewReader(base), PushOptions{}); err != nil {
		t.Fatal(err)
	}
	longer := append(bytes.Clone(base), randomBytes(22, 3<<20)...)
	r := bytes.NewReader(append([]byte("skip"), longer...))
	r.Seek(4, io.SeekStart) // the layer starts where the reader is
	res, err := c.Push(ctx, r, PushOptions{ExpectedDigest: digest.FromBytes(longer), Size: int64(len(longer))})
	if err != nil {
		t.Fatal(err)
	}
	if res.Digest != digest.FromBytes(longer) || res.ChunksSent == 0 {
		t.Errorf("push of a longer layer: %+v", res)
	}
	if got := f.content(res.Digest.String()); !bytes.Equal(got, longer) {
		t.Errorf("stored %d bytes, want the %d pushed", len(got), len(longer))
	}
	// And a wrong expected digest still fails, with nothing committed.
	commits := f.commits
	if _, err := c.Push(ctx, bytes.NewReader(base), PushOptions{ExpectedDigest: digest.FromString("other")}); err == nil || f.commits != commits {
		t.Errorf("push of a stored layer under a wrong digest: %v, %d commits", err, f.commits-commits)
	}
}
