package cache

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/cairnbuild/cairn/chunkid"
	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

// Invariant 3 under load: every front writes while collections run back to
// back with a grace period of two seconds, and afterwards everything live
// pulls back with its digest: the API's layers, every tag's whole closure,
// every step's layer. The writers are randomized (seeded, the seed
// logged): server-side API pushes, client-side chunk uploads and commits,
// registry monolithic pushes, chunked upload sessions, manifest PUTs that
// move tags, step records, and HEADs. A writer told to push again (a blob
// or chunk the collection took between an existence answer given before
// it started and the commit: what the grace period is for) does, as
// clients do; nothing committed and live may ever go.
func TestGCRacesEveryFront(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	defer func(g time.Duration) { minGCGrace = g }(minGCGrace)
	minGCGrace = 0
	c.chunks.SetPackTarget(256 << 10)
	opts := GCOptions{Grace: 2 * time.Second, PackGrace: -1, UntaggedMaxAge: -1, RewriteRatio: 0.3, CompactAge: time.Nanosecond}
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rounds := scale(60, 12)

	var (
		mu      sync.Mutex
		api     []digest.Digest              // layers pushed through the API: roots
		tagged  = map[string]digest.Digest{} // repo:tag -> manifest
		stepped []digest.Digest              // layers step records name
	)
	// shared holds blobs several writers push: deduplicated bytes whose
	// roots come and go.
	shared := [][]byte{randomData(seed, 300<<10), randomData(seed+1, 300<<10)}
	blob := func(r *rand.Rand, i int) []byte {
		if r.IntN(3) == 0 {
			return shared[r.IntN(len(shared))]
		}
		b := randomData(r.Uint64(), 64<<10+r.IntN(256<<10))
		if r.IntN(2) == 0 { // half of it shared with a shared blob: chunks in common
			copy(b, shared[0][:min(len(b), 128<<10)])
		}
		return append(b, byte(i))
	}
	// retry runs fn until it does not fail with one of the errors that
	// tell a client to push again.
	retry := func(what string, fn func() error) {
		for attempt := 0; ; attempt++ {
			err := fn()
			if err == nil {
				return
			}
			if attempt > 20 || !(isErr(err, ErrFailedPrecondition) || isErr(err, ErrNotFound)) {
				t.Errorf("%s: %v", what, err)
				return
			}
		}
	}
	writers := map[string]func(r *rand.Rand, i int){
		"api push": func(r *rand.Rand, i int) {
			d := push(t, c, blob(r, i)).Digest
			mu.Lock()
			api = append(api, d)
			mu.Unlock()
		},
		"chunk upload": func(r *rand.Rand, i int) {
			b := blob(r, i)
			var refs []ChunkRef
			var ids []chunkid.ID
			for off := 0; off < len(b); off += 64 << 10 {
				ch := b[off:min(off+64<<10, len(b))]
				refs = append(refs, ChunkRef{ID: chunkid.Sum(ch), Size: int64(len(ch))})
				ids = append(ids, chunkid.Sum(ch))
			}
			d := digest.FromBytes(b)
			retry("chunk upload", func() error {
				missing, err := c.MissingChunks(ctx, ids)
				if err != nil {
					return err
				}
				up := c.NewChunkUpload(ctx)
				for _, id := range missing {
					for j, ref := range refs {
						if ref.ID == id {
							if err := up.Put(ctx, id, b[j*64<<10:j*64<<10+int(ref.Size)]); err != nil {
								return err
							}
							break
						}
					}
				}
				if err := up.Close(); err != nil {
					return err
				}
				_, err = c.Commit(ctx, d, "", refs)
				return err
			})
			mu.Lock()
			api = append(api, d)
			mu.Unlock()
		},
		"registry": func(r *rand.Rand, i int) {
			repo := fmt.Sprintf("app%d", r.IntN(2))
			tag := fmt.Sprintf("t%d", r.IntN(3))
			layer, cfg := blob(r, i), []byte(fmt.Sprintf(`{"n":%d}`, r.Uint64()))
			m := imageManifest(t, cfg, layer)
			retry("registry push", func() error {
				for _, b := range [][]byte{layer, cfg} {
					d := digest.FromBytes(b)
					if _, err := c.StatBlob(ctx, repo, d); err == nil {
						continue // a HEAD says it is there: not pushed again
					}
					if r.IntN(2) == 0 {
						if _, err := c.PushBlob(ctx, repo, bytes.NewReader(b), d, int64(len(b))); err != nil {
							return err
						}
						continue
					}
					u, err := c.StartUpload(ctx, "")
					if err != nil {
						return err
					}
					if _, err := u.Write(ctx, bytes.NewReader(b), 0); err != nil {
						return err
					}
					if _, err := c.CommitUpload(ctx, repo, u, d); err != nil {
						return err
					}
				}
				mu.Lock()
				defer mu.Unlock()
				// Under the lock, so that the record of the tag and the tag
				// agree.
				if _, err := c.PutManifest(ctx, repo, tag, ociManifestType, bytes.NewReader(m), 0); err != nil {
					return err
				}
				tagged[repo+":"+tag] = digest.FromBytes(m)
				return nil
			})
		},
		"step": func(r *rand.Rand, i int) {
			b := blob(r, i)
			d := digest.FromBytes(b)
			retry("step", func() error {
				if _, err := c.PushBlob(ctx, "steps", bytes.NewReader(b), d, int64(len(b))); err != nil {
					return err
				}
				_, err := c.RecordStep(ctx, "", stepkey.Step{Instruction: fmt.Sprintf("RUN step %d %d", i, r.Uint64())},
					&LayerRef{Digest: d, Size: int64(len(b)), MediaType: DefaultMediaType}, nil)
				return err
			})
			mu.Lock()
			stepped = append(stepped, d)
			mu.Unlock()
		},
	}

	stop := make(chan struct{})
	var gcWG sync.WaitGroup
	runs, compacted := 0, int64(0)
	gcWG.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			rep, err := c.GC(ctx, opts)
			if err != nil {
				t.Errorf("collection: %v", err)
				return
			}
			runs++
			compacted += rep.CompactedPacks
		}
	})
	var wg sync.WaitGroup
	k := uint64(0)
	for name, w := range writers {
		k++
		r := rand.New(rand.NewPCG(seed, k))
		wg.Go(func() {
			for i := range rounds {
				if t.Failed() {
					return
				}
				w(r, i)
				_ = name
			}
		})
	}
	wg.Wait()
	close(stop)
	gcWG.Wait()
	t.Logf("%d collections (%d packs compacted) beside %d rounds of %d writers", runs, compacted, rounds, len(writers))
	if compacted == 0 {
		t.Error("no collection compacted a pack: compaction did not race the writers")
	}

	check := func(when string) {
		t.Helper()
		for _, d := range append(append([]digest.Digest(nil), api...), stepped...) {
			if got := pullDigest(t, c, d); got != d {
				t.Fatalf("%s: layer %s reads back as %q", when, d, got)
			}
		}
		for ref, md := range tagged {
			repo, tag, _ := bytes.Cut([]byte(ref), []byte(":"))
			mi, err := c.StatManifest(ctx, string(repo), string(tag))
			if err != nil || mi.Digest != md {
				t.Fatalf("%s: %s resolves to %s (%v), want %s", when, ref, mi.Digest, err, md)
			}
			if got := pullDigest(t, c, md); got != md {
				t.Fatalf("%s: manifest %s reads back as %q", when, md, got)
			}
			for _, r := range mi.Refs {
				if _, err := c.StatBlob(ctx, string(repo), r.Digest); err != nil {
					t.Fatalf("%s: %s: blob %s: %v", when, ref, r.Digest, err)
				}
				if got := pullDigest(t, c, r.Digest); got != r.Digest {
					t.Fatalf("%s: %s: blob %s reads back as %q", when, ref, r.Digest, got)
				}
			}
		}
	}
	check("after the race")
	// What is left of the dead goes now: the live stays.
	for range 2 {
		if _, err := c.GC(ctx, GCOptions{Grace: -1, PackGrace: -1, UntaggedMaxAge: -1}); err != nil {
			t.Fatal(err)
		}
	}
	check("after a collection with no grace")
	checkRefcounts(t, c)
	checkIndexBacked(t, c, store)
	if err := c.Reindex(ctx); err != nil {
		t.Fatal(err)
	}
	check("after a reindex")
	checkRefcounts(t, c)
}
