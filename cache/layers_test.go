package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/cairnbuild/cairn/backend/backendtest"
	"github.com/cairnbuild/cairn/backend/mem"
	"github.com/cairnbuild/cairn/cache/internal/chunks"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunker"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
)

// clientChunks cuts data as a client would and returns the recipe and the
// chunks' bytes.
func clientChunks(t *testing.T, data []byte) ([]ChunkRef, [][]byte) {
	t.Helper()
	ch, err := chunker.New(bytes.NewReader(data), chunker.V1, nil)
	if err != nil {
		t.Fatal(err)
	}
	var refs []ChunkRef
	var parts [][]byte
	for {
		c, err := ch.Next()
		if err == io.EOF {
			return refs, parts
		}
		if err != nil {
			t.Fatal(err)
		}
		b := bytes.Clone(c.Data)
		refs = append(refs, ChunkRef{ID: chunkid.Sum(b), Size: int64(len(b))})
		parts = append(parts, b)
	}
}

func TestClientSideChunking(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	shared := genData(10, 2<<20)
	first := push(t, c, shared)

	data := append(bytes.Clone(shared), genData(11, 1<<20)...)
	d := digest.FromBytes(data)
	refs, parts := clientChunks(t, data)
	ids := make([]chunkID, len(refs))
	for i, r := range refs {
		ids[i] = r.ID
	}
	missing, err := c.MissingChunks(ctx, ids)
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) == 0 || len(missing) == len(ids) {
		t.Fatalf("%d of %d chunks missing; want the shared prefix present and the tail missing", len(missing), len(ids))
	}
	// Commit before the upload names a missing chunk.
	if _, err := c.Commit(ctx, d, "", refs); !errors.Is(err, ErrFailedPrecondition) || !strings.Contains(err.Error(), missing[0].String()) {
		t.Fatalf("Commit before upload: %v, want ErrFailedPrecondition naming %s", err, missing[0])
	}
	// A chunk that does not match its digest is refused.
	if err := c.PutChunk(ctx, refs[0].ID, []byte("not it")); !errors.Is(err, ErrDigestMismatch) || !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("PutChunk of wrong bytes: %v, want ErrDigestMismatch", err)
	}
	isMissing := map[chunkID]bool{}
	for _, m := range missing {
		isMissing[m] = true
	}
	for i, r := range refs {
		if isMissing[r.ID] {
			if err := c.PutChunk(ctx, r.ID, parts[i]); err != nil {
				t.Fatal(err)
			}
		}
	}
	if m, err := c.MissingChunks(ctx, ids); err != nil || len(m) != 0 {
		t.Fatalf("after upload: %d missing, %v", len(m), err)
	}
	// A recipe in the wrong order does not hash to the digest.
	swapped := append([]ChunkRef(nil), refs...)
	swapped[0], swapped[1] = swapped[1], swapped[0]
	if _, err := c.Commit(ctx, d, "", swapped); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("Commit of a reordered recipe: %v, want ErrDigestMismatch", err)
	}
	if _, err := c.Stat(ctx, d); !errors.Is(err, ErrNotFound) {
		t.Fatalf("layer visible after a failed commit: %v", err)
	}
	info, err := c.Commit(ctx, d, "application/vnd.oci.image.layer.v1.tar+zstd", refs)
	if err != nil {
		t.Fatal(err)
	}
	if info.Digest != d || info.Size != int64(len(data)) || info.Chunks != len(refs) {
		t.Errorf("Commit = %+v", info)
	}
	if got := pullDigest(t, c, d); got != d {
		t.Errorf("pulled %s, want %s", got, d)
	}
	b, err := c.ReadChunk(ctx, refs[len(refs)-1].ID)
	if err != nil || !bytes.Equal(b, parts[len(parts)-1]) {
		t.Errorf("ReadChunk: %d bytes, %v", len(b), err)
	}
	// The server-side push of the same bytes finds every chunk and the layer.
	if again := push(t, c, data); again.Created != info.Created {
		t.Errorf("push of a committed layer made a new record")
	}
	// Refcounts: the shared prefix chunks are referenced by both layers.
	checkRefcounts(t, c)
	_ = first
}

// checkRefcounts recomputes every chunk's references from the layer records
// and compares them with the index.
func checkRefcounts(t *testing.T, c *Cache) {
	t.Helper()
	want := map[chunkID]int64{}
	got := map[chunkID]int64{}
	token := ""
	for {
		page, next, err := c.List(t.Context(), token, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range page {
			lr, _, err := c.idx.Layer(l.Digest)
			if err != nil {
				t.Fatal(err)
			}
			lr.ChunkRefs(func(e index.RecipeEntry) { want[e.ID]++ })
		}
		if token = next; token == "" {
			break
		}
	}
	err := c.idx.ForEachChunk(func(id chunkID, ci chunkInfo) error {
		got[id] = ci.Refs
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for id, n := range want {
		if _, ok := got[id]; !ok {
			t.Fatalf("chunk %s of a layer is not indexed", id)
		}
		if got[id] != n {
			t.Errorf("chunk %s: %d references, want %d", id, got[id], n)
		}
	}
	// Chunks no layer uses hold no references.
	for id, n := range got {
		if _, ok := want[id]; !ok && n != 0 {
			t.Errorf("chunk %s is in no layer but has %d references", id, n)
		}
	}
}

func TestListDelete(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	common := genData(20, 1<<20)
	var ds []digest.Digest
	for i := range 7 {
		data := append(bytes.Clone(common), genData(uint64(30+i), 200<<10)...)
		ds = append(ds, push(t, c, data).Digest)
	}
	seen := map[digest.Digest]bool{}
	token, pages := "", 0
	for {
		page, next, err := c.List(ctx, token, 3)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		for _, l := range page {
			if seen[l.Digest] {
				t.Errorf("%s listed twice", l.Digest)
			}
			seen[l.Digest] = true
		}
		if token = next; token == "" {
			break
		}
	}
	if len(seen) != 7 || pages != 3 {
		t.Errorf("List: %d layers in %d pages, want 7 in 3", len(seen), pages)
	}
	if _, _, err := c.List(ctx, "!!", 3); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("List with a bad token: %v", err)
	}
	checkRefcounts(t, c)
	before, _ := c.Stats(ctx)
	for _, d := range ds[:4] {
		if err := c.Delete(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Delete(ctx, ds[0]); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Delete: %v, want ErrNotFound", err)
	}
	if _, err := store.Stat(ctx, layerKey(ds[0])); err == nil {
		t.Errorf("manifest of a deleted layer is still in the backend")
	}
	checkRefcounts(t, c)
	c.idx.RunValueLogGC() // the deleted recipes' space; nothing to rewrite this small, but it must not fail
	after, _ := c.Stats(ctx)
	if after.Layers != 3 || after.Chunks != before.Chunks {
		t.Errorf("Stats after delete: %+v (before %+v); chunks stay for GC", after, before)
	}
	for _, d := range ds[4:] {
		if got := pullDigest(t, c, d); got != d {
			t.Errorf("layer %s after deleting its siblings: pulled %s", d, got)
		}
	}
	// Every chunk of the deleted layers' private tails has no references.
	var zero int
	if err := c.idx.ForEachChunk(func(_ chunkID, ci chunkInfo) error {
		if ci.Refs == 0 {
			zero++
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if zero == 0 {
		t.Errorf("no chunk lost its references after deleting 4 layers")
	}
}

// Invariant 4: bad input gets a clear error and changes nothing.
func TestBadInput(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	data := genData(40, 2<<20)
	d := digest.FromBytes(data)
	for _, tc := range []struct {
		reason string
		r      io.Reader
		opts   PushOptions
		want   error
	}{
		{"wrong expected digest", bytes.NewReader(data), PushOptions{Size: -1, Expected: digest.FromString("other")}, ErrDigestMismatch},
		{"truncated stream (declared size)", bytes.NewReader(data[:len(data)-1]), PushOptions{Size: int64(len(data)), Expected: d}, ErrInvalidArgument},
		{"stream longer than declared", bytes.NewReader(data), PushOptions{Size: int64(len(data)) - 10}, ErrInvalidArgument},
		{"truncated stream (unexpected EOF)", io.MultiReader(bytes.NewReader(data[:1<<20]), errReader{io.ErrUnexpectedEOF}), PushOptions{Size: -1}, ErrInvalidArgument},
		{"unknown digest algorithm", bytes.NewReader(data), PushOptions{Size: -1, Expected: "md5:d41d8cd98f00b204e9800998ecf8427e"}, ErrInvalidArgument},
		{"malformed digest", bytes.NewReader(data), PushOptions{Size: -1, Expected: "sha256:abc"}, ErrInvalidArgument},
		{"negative size", bytes.NewReader(data), PushOptions{Size: -2}, ErrInvalidArgument},
	} {
		_, err := c.Push(ctx, tc.r, tc.opts)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.reason, err, tc.want)
		}
	}
	refs, parts := clientChunks(t, data)
	for i, r := range refs {
		if err := c.PutChunk(ctx, r.ID, parts[i]); err != nil {
			t.Fatal(err)
		}
	}
	bigChunk := make([]byte, MaxChunkSize+1)
	for _, tc := range []struct {
		reason string
		call   func() error
		want   error
	}{
		{"commit: unknown algorithm", func() error {
			_, err := c.Commit(ctx, "sha384:"+digest.Digest(strings.Repeat("a", 96)), "", refs)
			return err
		}, ErrInvalidArgument},
		{"commit: chunk size wrong", func() error {
			bad := append([]ChunkRef(nil), refs...)
			bad[0].Size++
			_, err := c.Commit(ctx, d, "", bad)
			return err
		}, ErrInvalidArgument},
		{"commit: zero chunk size", func() error {
			bad := append([]ChunkRef(nil), refs...)
			bad[0].Size = 0
			_, err := c.Commit(ctx, d, "", bad)
			return err
		}, ErrInvalidArgument},
		{"commit: chunk missing from the list", func() error {
			_, err := c.Commit(ctx, d, "", refs[1:])
			return err
		}, ErrDigestMismatch},
		{"put chunk: too large", func() error { return c.PutChunk(ctx, chunkid.Sum(bigChunk), bigChunk) }, ErrInvalidArgument},
		{"put chunk: empty", func() error { return c.PutChunk(ctx, chunkid.Sum(nil), nil) }, ErrInvalidArgument},
		{"put chunk: wrong id", func() error { return c.PutChunk(ctx, chunkid.Sum([]byte("y")), []byte("x")) }, ErrDigestMismatch},
		{"missing chunks: too many", func() error { _, err := c.MissingChunks(ctx, make([]chunkID, MaxChunkList+1)); return err }, ErrInvalidArgument},
		{"open: malformed digest", func() error { _, _, err := c.Open(ctx, "nope", 0, -1); return err }, ErrInvalidArgument},
		{"open: unknown layer", func() error { _, _, err := c.Open(ctx, digest.FromString("x"), 0, -1); return err }, ErrNotFound},
		{"stat: unknown layer", func() error { _, err := c.Stat(ctx, digest.FromString("x")); return err }, ErrNotFound},
		{"read chunk: unknown", func() error { _, err := c.ReadChunk(ctx, chunkid.Sum([]byte("x"))); return err }, ErrNotFound},
	} {
		if err := tc.call(); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.reason, err, tc.want)
		}
	}
	st, err := c.Stats(ctx)
	if err != nil || st.Layers != 0 || st.ReferencedBytes != 0 || st.Steps != 0 {
		t.Errorf("after bad input: %+v, %v; want no layer, step or reference", st, err)
	}
	// No pack was left behind: every pack holds chunks the commit cases
	// uploaded (indexed, with no references). A push refused before its
	// first pack filled writes none.
	named := map[string]bool{}
	if err := c.idx.ForEachChunk(func(_ chunkID, ci chunkInfo) error { named[packKey(ci.Pack)] = true; return nil }); err != nil {
		t.Fatal(err)
	}
	orphans := 0
	store.List(ctx, packPrefix, func(bi backendInfo) error {
		if !named[bi.Key] {
			orphans++
		}
		return nil
	})
	if orphans != 0 {
		t.Errorf("bad input left %d packs that no index entry names", orphans)
	}
	n := 0
	store.List(ctx, layerPrefix, func(bi backendInfo) error { n++; return nil })
	if n != 0 {
		t.Errorf("%d manifests in the backend after bad input", n)
	}
	// And the good push still works.
	info := push(t, c, data)
	// A push of a committed layer with its digest only verifies the stream,
	// and still refuses bad input.
	again, err := c.Push(ctx, bytes.NewReader(data), PushOptions{Size: int64(len(data)), Expected: d})
	if err != nil || again != info {
		t.Errorf("push of a committed layer: %+v, %v; want %+v", again, err, info)
	}
	if _, err := c.Push(ctx, bytes.NewReader(flip(data, 5)), PushOptions{Size: -1, Expected: d}); !errors.Is(err, ErrDigestMismatch) {
		t.Errorf("push of other bytes under a committed digest: %v, want ErrDigestMismatch", err)
	}
	if _, err := c.Push(ctx, bytes.NewReader(data[:100]), PushOptions{Size: int64(len(data)), Expected: d}); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("truncated push of a committed layer: %v, want ErrInvalidArgument", err)
	}
	checkRefcounts(t, c)
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// A corrupted or missing chunk is ErrDataLoss, never wrong bytes.
func TestDataLoss(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	data := genData(50, 3<<20)
	info := push(t, c, data)
	refs, _ := c.Chunks(ctx, info.Digest)
	id, ci := chunkLocation(t, c, refs[1].ID)
	var orig []byte
	rewritePack(t, store, ci, func(b []byte) []byte { orig = b; return b })
	at := func(i int64) int { return int(ci.Off + i) }

	// A well-formed record of other content, of the same size, in a pack
	// of its own, for an index entry pointing at the wrong record.
	other := otherChunk(c, refs[1].Size)
	otherPack := pack.NewID()
	otherBody := pack.AppendTable(bytes.Clone(other), []packEntry{{ID: chunkid.Sum(genData(99, int(refs[1].Size))), Stored: int64(len(other)), Size: refs[1].Size}})
	if err := store.Put(ctx, packKey(otherPack), bytes.NewReader(otherBody), int64(len(otherBody))); err != nil {
		t.Fatal(err)
	}
	setEntry := func(e chunkInfo) {
		if err := c.idx.SetChunkValue(id, e.Encode()); err != nil {
			t.Fatal(err)
		}
	}
	wrong := ci
	wrong.Pack, wrong.Off, wrong.Stored = otherPack, 0, int64(len(other))

	for _, tc := range []struct {
		reason string
		pack   []byte    // the pack's bytes; nil deletes it
		entry  chunkInfo // the index entry
	}{
		{"flipped payload byte", flip(orig, at(ci.Stored-5)), ci},
		{"flipped header size", flip(orig, at(9)), ci},
		{"bad magic", flip(orig, at(0)), ci},
		{"truncated pack", orig[:at(ci.Stored/2)], ci},
		{"record of other content", orig, wrong},
		{"missing pack", nil, ci},
	} {
		rewritePack(t, store, ci, func([]byte) []byte { return tc.pack })
		setEntry(tc.entry)
		rc, _, err := c.Open(ctx, info.Digest, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc)
		rc.Close()
		if !errors.Is(err, ErrDataLoss) {
			t.Errorf("%s: read error %v, want ErrDataLoss", tc.reason, err)
		}
		if !bytes.Equal(got, data[:len(got)]) || int64(len(got)) > refs[0].Size {
			t.Errorf("%s: %d bytes came back before the error; want at most the good first chunk", tc.reason, len(got))
		}
		if _, err := c.ReadChunk(ctx, refs[1].ID); !errors.Is(err, ErrDataLoss) {
			t.Errorf("%s: ReadChunk: %v, want ErrDataLoss", tc.reason, err)
		}
		// The read quarantined the chunk: the layer shows as damaged,
		// the chunk as missing, and a push of the same bytes heals it.
		if st, err := c.Stat(ctx, info.Digest); err != nil || st.DamagedChunks == 0 {
			t.Errorf("%s: Stat after the read: %+v, %v; want damaged chunks", tc.reason, st, err)
		}
		if missing, err := c.MissingChunks(ctx, []chunkid.ID{refs[1].ID}); err != nil || len(missing) != 1 {
			t.Errorf("%s: MissingChunks = %v, %v; want the quarantined chunk", tc.reason, missing, err)
		}
		// A truncated pack damages the chunks after this one too, and a
		// read finds them one window at a time: each push heals what was
		// found, each read finds more, until the layer is whole.
		for round := 1; ; round++ {
			// (The failed read's read-ahead may still be quarantining
			// chunks while the push runs: the push can end damaged.)
			if healed := push(t, c, data); healed.Digest != info.Digest {
				t.Errorf("%s: re-push: %+v", tc.reason, healed)
			}
			rc, _, err := c.Open(ctx, info.Digest, 0, -1)
			if err != nil {
				t.Fatal(err)
			}
			got, err := io.ReadAll(rc)
			rc.Close()
			if err == nil {
				if !bytes.Equal(got, data) {
					t.Fatalf("%s: healed layer reads back other bytes", tc.reason)
				}
				break
			}
			if !errors.Is(err, ErrDataLoss) || round == len(refs) {
				t.Fatalf("%s: read after %d re-pushes: %v", tc.reason, round, err)
			}
		}
		if st, err := c.Stat(ctx, info.Digest); err != nil || st.DamagedChunks != 0 {
			t.Errorf("%s: Stat after healing: %+v, %v", tc.reason, st, err)
		}
		if tc.pack == nil {
			if err := store.Put(ctx, packKey(ci.Pack), bytes.NewReader(orig), int64(len(orig))); err != nil {
				t.Fatal(err)
			}
		}
	}
	checkRefcounts(t, c)
}

func flip(b []byte, i int) []byte {
	b = bytes.Clone(b)
	b[i] ^= 0x40
	return b
}

// otherChunk is a well-formed chunk record of size bytes of other content.
func otherChunk(c *Cache, size int64) []byte {
	data := genData(99, int(size))
	obj := make([]byte, chunkHeaderSize)
	pack.PutHeader(obj, len(data))
	enc, _ := chunks.NewEncoder(1)
	defer enc.Close()
	return enc.EncodeAll(data, obj)
}

// A corrupt chunk index entry is ErrDataLoss for readers, never a panic or
// an allocation of whatever it claims.
func TestCorruptChunkEntry(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	data := genData(133, 2<<20)
	info := push(t, c, data)
	refs, _ := c.Chunks(ctx, info.Digest)
	id, ci := chunkLocation(t, c, refs[0].ID)
	raw := func(v ...uint64) []byte {
		var b []byte
		for _, x := range v {
			b = binary.AppendUvarint(b, x)
		}
		return append(b, ci.Pack[:]...)
	}
	size, stored, off := uint64(ci.Size), uint64(ci.Stored), uint64(ci.Off)
	for _, tc := range []struct {
		reason string
		value  []byte
	}{
		{"negative stored", raw(size, 1<<63+5, 1, 0, off)},
		{"huge stored", raw(size, 1<<40, 1, 0, off)},
		{"stored below a header", raw(size, 3, 1, 0, off)},
		{"zero size", raw(0, stored, 1, 0, off)},
		{"size over the limit", raw(MaxChunkSize+1, stored, 1, 0, off)},
		{"offset overflowing", raw(size, stored, 1, 0, 1<<63-2)},
		{"short pack name", raw(size, stored, 1, 0, off)[:10]},
	} {
		if err := c.idx.SetChunkValue(id, tc.value); err != nil {
			t.Fatal(err)
		}
		rc, _, err := c.Open(ctx, info.Digest, 0, -1)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.ReadAll(rc)
		rc.Close()
		if !errors.Is(err, ErrDataLoss) {
			t.Errorf("%s: pull: %v, want ErrDataLoss", tc.reason, err)
		}
		if _, err := c.ReadChunk(ctx, refs[0].ID); !errors.Is(err, ErrDataLoss) {
			t.Errorf("%s: ReadChunk: %v, want ErrDataLoss", tc.reason, err)
		}
	}
}

// ChunkUpload.Close returns nil only if every chunk a Put accepted is
// stored. Here a repeat of chunk x is accepted because an earlier Put in
// the same upload leads x's write; that Put is then cancelled while it
// waits for a pack slot (all are busy with slow writes), so Close must
// report the loss.
func TestUploadCloseReportsLostChunk(t *testing.T) {
	gate := make(chan struct{})
	blocked := make(chan struct{}, 16) // a pack write reached the gate
	store := &backendtest.Faulty{Store: mem.New(), Fail: func(op backendtest.Op, key string, _ int) error {
		if op == backendtest.OpPut {
			blocked <- struct{}{}
			<-gate
		}
		return nil
	}}
	c := openCache(t, t.TempDir(), store)
	c.chunks.SetPackTarget(1)         // every chunk fills its pack
	waiting := make(chan chunkID, 16) // a Put waits for a pack slot
	c.chunks.SetHooks(chunks.Hooks{WaitSlot: func(id chunkID) { waiting <- id }})
	ctx := t.Context()
	u := c.NewChunkUpload(ctx)
	var wg sync.WaitGroup
	for i := range 3 { // packsInFlight in package chunks: every pack slot busy with a blocked write
		d := randomData(uint64(200+i), 1000)
		wg.Go(func() {
			if err := u.Put(ctx, chunkid.Sum(d), d); err != nil {
				t.Errorf("put %d: %v", i, err)
			}
		})
	}
	for range 3 {
		<-blocked
	}
	x := randomData(300, 1000)
	ctx1, cancel1 := context.WithCancel(ctx)
	err1 := make(chan error, 1)
	go func() { err1 <- u.Put(ctx1, chunkid.Sum(x), x) }() // leads x, waits for a slot
	if id := <-waiting; id != chunkid.Sum(x) {
		t.Fatalf("%s waits for a slot, want x", id)
	}
	if err := u.Put(ctx, chunkid.Sum(x), x); err != nil {
		t.Fatalf("repeat of x: %v", err)
	}
	cancel1()
	<-err1
	close(gate)
	wg.Wait()
	err := u.Close()
	id := chunkid.Sum(x)
	// x's only write was cancelled: it is not stored, and Close says so.
	if _, ok, _ := c.lookupChunk(id); ok || err == nil {
		t.Fatalf("chunk x stored: %v; Close: %v; want x lost and Close to report it", ok, err)
	}
}
