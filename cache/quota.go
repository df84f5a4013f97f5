package cache

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
)

// The quota (GCOptions.MaxSize). When the packs hold more bytes than the
// quota, a collection first evicts roots, least recently used first, until
// the bytes they alone hold, as estimated, bring the store under it; the
// rest of the run (gc_roots.go, then gc.go) then takes what they held.
//
// The roots it evicts:
//   - a tagged manifest of a repository, with its tags (unless KeepTags
//     matches one): last used when it was last pushed or pulled;
//   - a layer no tag reaches that the gRPC API pushed or a step record
//     names, with those step records: last used when it was last pulled,
//     pushed or hit through a step.
//
// Deduplication means deleting a root frees only what nothing else holds:
// a layer's estimate is the stored bytes of the chunks all of whose
// references are its own; a manifest's, its own bytes and those of the
// blobs only it references (and nothing else roots). The estimate is
// conservative where roots share chunks (neither counts them), so a run
// may evict a little more than needed. What was used within the grace
// period is never collected: a store written faster than that can stay
// over its quota until the grace period has passed.

// evictable is one root the quota may evict.
type evictable struct {
	used     time.Time
	layer    digest.Digest   // a layer, or
	manifest *taggedManifest // a tagged manifest
}

// evict runs the quota's part of a collection.
func (c *Cache) evict(ctx context.Context, gen uint64, opts GCOptions, rep *GCReport) error {
	if opts.MaxSize <= 0 {
		return nil // the plan reports StoredBytes from its own listing
	}
	var stored int64
	if err := c.store.List(ctx, pack.Prefix, func(info backend.Info) error {
		if _, ok := pack.IDFromKey(info.Key); ok {
			stored += info.Size
		}
		return nil
	}); err != nil {
		return backendErr("list packs", err)
	}
	rep.StoredBytes = stored
	if stored <= opts.MaxSize {
		return nil
	}
	if err := c.step(ctx, gen, c.idx.Flush); err != nil { // last reads and hits
		return err
	}
	// What must go is what layers reference beyond the quota: the rest
	// of the packs' bytes is dead already (evicted by an earlier run and
	// kept for the grace period, or waiting for a rewrite), and counting
	// it would evict again what is on its way out.
	var live int64
	if err := c.step(ctx, gen, func() error {
		s, err := c.idx.Stats(ctx)
		live = s.ReferencedBytes
		return err
	}); err != nil {
		return err
	}
	r, err := c.markRegistry(ctx, gen, opts, &GCReport{Start: rep.Start})
	if err != nil {
		return err
	}
	// Nor what only the registry holds and nothing reaches: the
	// collection takes it once its grace period is over.
	var pending int64
	pendingRefs := map[chunkid.ID]int64{} // the references those layers hold
	unreached, err := c.unreached(ctx, gen, opts, r)
	if err != nil {
		return err
	}
	for _, d := range unreached {
		if err := c.step(ctx, gen, func() error {
			lr, _, err := c.idx.Layer(d)
			if err != nil {
				return err
			}
			lr.ChunkRefs(func(e index.RecipeEntry) { pendingRefs[e.ID]++ })
			return nil
		}); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
	}
	// A chunk goes with them if all its references are theirs (a gzip
	// blob nothing reaches and its content layer share every chunk:
	// counted layer by layer, neither would free any).
	if pending, err = c.freedWith(ctx, gen, pendingRefs); err != nil {
		return err
	}
	need := live - pending - opts.MaxSize
	if need <= 0 {
		return nil
	}
	stepUse, err := c.stepUse(ctx, gen)
	if err != nil {
		return err
	}
	var cands []evictable
	for i := range r.tagged {
		m := &r.tagged[i]
		if opts.KeepTags != nil && slices.ContainsFunc(m.tags, opts.KeepTags.MatchString) {
			continue
		}
		if r.refs[m.d] > 0 {
			continue // a child of a manifest that stays: its link must too
		}
		var used time.Time
		err := c.step(ctx, gen, func() (err error) {
			used, err = c.idx.LastUse(m.d)
			return err
		})
		if errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil {
			return err
		}
		cands = append(cands, evictable{used: used, manifest: m})
	}
	var after digest.Digest
	for more := true; more; {
		var page []index.LayerEntry
		if err := c.step(ctx, gen, func() (err error) {
			page, more, err = c.idx.ListLayers(after, MaxPageSize)
			return err
		}); err != nil {
			return err
		}
		for _, e := range page {
			d := e.Record.Digest
			after = d
			if r.reached[d] {
				continue
			}
			used, named := stepUse[d]
			if !named {
				var un bool
				if err := c.step(ctx, gen, func() (err error) {
					un, err = c.idx.Unrooted(d)
					return err
				}); err != nil {
					return err
				}
				if un {
					continue // not a root: the collection decides
				}
			}
			used = latest(used, e.Accessed, e.Record.Created)
			cands = append(cands, evictable{used: used, layer: d})
		}
	}
	slices.SortFunc(cands, func(a, b evictable) int { return a.used.Compare(b.used) })
	// What was used within the grace period is never evicted.
	cutoff := rep.Start.Add(-opts.grace())
	cands = slices.DeleteFunc(cands, func(e evictable) bool { return e.used.After(cutoff) })
	for _, e := range cands {
		if rep.EvictedBytes >= need {
			break
		}
		var est int64
		err := c.step(ctx, gen, func() (err error) {
			if e.layer != "" {
				est, err = c.exclusiveBytes(e.layer, pendingRefs)
				return err
			}
			est, err = c.manifestExclusive(e.manifest, r, pendingRefs)
			return err
		})
		if err != nil {
			return err
		}
		if opts.DryRun {
			rep.EvictedBytes += est
			if e.layer != "" {
				rep.EvictedLayers++
			} else {
				rep.EvictedManifests++
			}
			continue
		}
		if e.layer != "" {
			// Checked again where it is deleted: used since the cutoff
			// (a step recorded, a manifest PUT naming it), it stays.
			var deleted bool
			err = c.step(ctx, gen, func() (err error) {
				deleted, err = c.removeLayer(ctx, e.layer, func() ([]digest.Digest, bool, error) {
					return c.idx.DeleteUnused(e.layer, cutoff, c.isPinned)
				})
				return err
			})
			if err == nil && !deleted {
				continue
			}
			if err == nil {
				rep.EvictedLayers++
			}
		} else {
			var unlinked bool
			err = c.step(ctx, gen, func() (err error) {
				unlinked, err = c.evictManifest(ctx, e.manifest, cutoff)
				return err
			})
			if err == nil && !unlinked {
				continue
			}
			if err == nil {
				rep.EvictedManifests++
			}
		}
		switch {
		case errors.Is(err, ErrNotFound): // gone meanwhile
		case err != nil:
			return err
		default:
			rep.EvictedBytes += est
		}
	}
	c.log.Info("cache: over quota: evicted least recently used roots", "stored bytes", stored, "quota", opts.MaxSize,
		"layers", rep.EvictedLayers, "manifests", rep.EvictedManifests, "estimated bytes", rep.EvictedBytes)
	return nil
}

func latest(ts ...time.Time) time.Time {
	var t time.Time
	for _, u := range ts {
		if u.After(t) {
			t = u
		}
	}
	return t
}

// stepUse maps every layer a step record names to the last time one of
// them was recorded or hit.
func (c *Cache) stepUse(ctx context.Context, gen uint64) (map[digest.Digest]time.Time, error) {
	use := map[digest.Digest]time.Time{}
	var after digest.Digest
	for more := true; more; {
		err := c.step(ctx, gen, func() (err error) {
			more, err = c.idx.StepPage(after, "", MaxPageSize, func(key digest.Digest, v []byte, h index.Hits) error {
				after = key
				rec, err := unmarshalStep(v)
				if err != nil || rec.Layer == nil {
					return nil // cairn verify's to report; not a root of any layer
				}
				use[rec.Layer.Digest] = latest(use[rec.Layer.Digest], rec.Created, h.Last)
				return nil
			})
			return err
		})
		if err != nil {
			return nil, err
		}
	}
	return use, nil
}

// exclusiveBytes estimates what deleting layer d frees: the stored bytes of
// its chunks that no other layer references, not counting the references
// of layers the collection takes anyway (pending: the content layer of a
// gzip blob the registry stored shares every chunk with the blob, and
// goes once nothing reaches it).
func (c *Cache) exclusiveBytes(d digest.Digest, pending map[chunkid.ID]int64) (int64, error) {
	lr, _, err := c.idx.Layer(d)
	if err != nil {
		return 0, err
	}
	counts := map[chunkid.ID]int64{}
	lr.ChunkRefs(func(e index.RecipeEntry) { counts[e.ID]++ })
	ids := make([]chunkid.ID, 0, len(counts))
	for id := range counts {
		ids = append(ids, id)
	}
	infos, found, err := c.idx.Chunks(ids)
	if err != nil {
		return 0, err
	}
	var n int64
	for i, id := range ids {
		if found[i] && infos[i].Refs-pending[id] <= counts[id] {
			n += infos[i].Bytes()
		}
	}
	return n, nil
}

// manifestExclusive estimates what evicting tagged manifest m frees: its
// own bytes, and those of the blobs only it references, that nothing roots.
func (c *Cache) manifestExclusive(m *taggedManifest, r *reach, pending map[chunkid.ID]int64) (int64, error) {
	n, err := c.exclusiveBytes(m.d, pending)
	if errors.Is(err, ErrNotFound) {
		return 0, nil
	} else if err != nil {
		return 0, err
	}
	for _, ref := range m.refs {
		if r.refs[ref.Digest] > 1 {
			continue
		}
		un, err := c.idx.Unrooted(ref.Digest)
		if err != nil || !un {
			if err != nil {
				return 0, err
			}
			continue
		}
		k, err := c.exclusiveBytes(ref.Digest, pending)
		if errors.Is(err, ErrNotFound) {
			continue
		} else if err != nil {
			return 0, err
		}
		n += k
	}
	return n, nil
}

// evictManifest deletes the planned tags of m that still name it and, if
// nothing else keeps it (index.DB.EvictManifest), its link: index first,
// then the backend's objects, under the repository's lock.
func (c *Cache) evictManifest(ctx context.Context, m *taggedManifest, cutoff time.Time) (unlinked bool, err error) {
	defer c.lockRepo(m.repo).Unlock()
	tags, unlinked, err := c.idx.EvictManifest(m.repo, m.d, m.tags, cutoff)
	if err != nil {
		return false, err
	}
	for _, t := range tags {
		if err := c.store.Delete(ctx, tagKey(m.repo, t)); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return unlinked, backendErr("delete tag", err)
		}
	}
	if unlinked {
		if err := c.store.Delete(ctx, manifestLinkKey(m.repo, m.d)); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return true, backendErr("delete manifest link", err)
		}
	}
	return unlinked, nil
}

// freedWith is the stored bytes of the chunks all of whose references refs
// holds: what deleting the layers holding refs frees.
func (c *Cache) freedWith(ctx context.Context, gen uint64, refs map[chunkid.ID]int64) (int64, error) {
	ids := make([]chunkid.ID, 0, len(refs))
	for id := range refs {
		ids = append(ids, id)
	}
	var n int64
	for start := 0; start < len(ids); start += MaxChunkList {
		batch := ids[start:min(start+MaxChunkList, len(ids))]
		err := c.step(ctx, gen, func() error {
			infos, found, err := c.idx.Chunks(batch)
			if err != nil {
				return err
			}
			for i, id := range batch {
				if found[i] && infos[i].Refs <= refs[id] {
					n += infos[i].Bytes()
				}
			}
			return nil
		})
		if err != nil {
			return 0, err
		}
	}
	return n, nil
}
