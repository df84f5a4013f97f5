package cache

import (
	"bytes"
	"context"
	"sync"
	"testing"

	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/chunker"
	"github.com/opencontainers/go-digest"
)

// Layers with more chunks than one index transaction holds commit in steps
// (maxTxnChunks per transaction) and delete in steps, with exact reference
// counts, also when two such pushes race.
func TestManyChunks(t *testing.T) {
	if testing.Short() {
		t.Skip("tens of thousands of chunks")
	}
	store := mem.New()
	c, err := Open(context.Background(), Options{Dir: t.TempDir(), Backend: store,
		Chunking: chunker.Params{Min: 64, Avg: 128, Max: 256}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	small := randomData(1, 1<<20)   // under maxTxnChunks
	big := randomData(2, 40000*128) // about 33 000 chunks
	bigToo := append(bytes.Clone(big[:len(big)/2]), randomData(3, len(big)/2)...)
	for _, data := range [][]byte{small, big} {
		info := push(t, c, data)
		t.Logf("%d bytes: %d chunks", len(data), info.Chunks)
		if got := pullDigest(t, c, info.Digest); got != digest.FromBytes(data) {
			t.Fatalf("pulled %s", got)
		}
	}
	// Two big pushes at once, one of them a layer already committed.
	var wg sync.WaitGroup
	for _, data := range [][]byte{big, bigToo} {
		wg.Go(func() {
			if _, err := c.Push(t.Context(), bytes.NewReader(data), PushOptions{Size: -1}); err != nil {
				t.Errorf("concurrent big push: %v", err) // not Fatal: another goroutine
			}
		})
	}
	wg.Wait()
	checkRefcounts(t, c)
	if err := c.Delete(t.Context(), digest.FromBytes(big)); err != nil {
		t.Fatal(err)
	}
	checkRefcounts(t, c)
	if got := pullDigest(t, c, digest.FromBytes(bigToo)); got != digest.FromBytes(bigToo) {
		t.Fatalf("pulled %s", got)
	}
	checkIndexBacked(t, c, store)
}
