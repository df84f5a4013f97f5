package cache

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/opencontainers/go-digest"
)

// The layer-level collection: what the registry front stored and nothing
// reaches any more. It runs before the chunk-level collection (gc.go), so
// that the chunks of the layers it deletes are reclaimed in the same run.
//
// Roots are layers pushed through the gRPC API (until cairn rm or the
// quota evicts them), step records, and, per repository, tagged manifests,
// manifests used (pushed or pulled) within UntaggedMaxAge, and manifests
// whose bytes are themselves a root. The closure follows a manifest's
// references (child manifests, config and layer blobs) and referrers (a
// signature whose subject is reached is reached). A layer only the
// registry holds (index.LayerRecord.Unrooted) that the closure misses, no
// step record names, and no one created, touched or read within the
// grace period is deleted with its links; the deleting transaction checks
// all of that again (index.DB.DeleteUnreached), and every existence answer
// touches the layer in the transaction that sees it, so a concurrent HEAD,
// mount, manifest PUT or push either sees the layer gone or keeps it.

// DefaultUntaggedMaxAge is how long a manifest no tag reaches stays by
// default, counted from its last push or pull: BuildKit's cache exports
// leave the previous manifest untagged on every export, and a day covers
// a pull that resolved the tag just before it moved.
const DefaultUntaggedMaxAge = 24 * time.Hour

func (o GCOptions) untaggedMaxAge() time.Duration {
	switch {
	case o.UntaggedMaxAge == 0:
		return DefaultUntaggedMaxAge
	case o.UntaggedMaxAge < 0:
		return 0
	}
	return o.UntaggedMaxAge
}

// gcRepoPage is how many repositories one read transaction lists.
const gcRepoPage = 1000

// reach is the registry's side of a collection's mark: the digests the
// closure reaches, and the repositories that link each layer.
type reach struct {
	reached map[digest.Digest]bool
	links   map[digest.Digest][]string
	// For the quota: every tagged manifest, and how many reached
	// manifests reference each digest.
	tagged []taggedManifest
	refs   map[digest.Digest]int
}

// taggedManifest is a manifest of a repository and the tags naming it.
type taggedManifest struct {
	repo string
	d    digest.Digest
	tags []string
	refs []index.Ref
}

// markRegistry computes the closure of every repository's roots.
func (c *Cache) markRegistry(ctx context.Context, gen uint64, opts GCOptions, rep *GCReport) (*reach, error) {
	r := &reach{reached: map[digest.Digest]bool{}, links: map[digest.Digest][]string{}, refs: map[digest.Digest]int{}}
	untaggedCutoff := rep.Start.Add(-opts.untaggedMaxAge())
	var last string
	for more := true; more; {
		var repos []string
		if err := c.step(ctx, gen, func() (err error) {
			repos, more, err = c.idx.Repos(last, gcRepoPage)
			return err
		}); err != nil {
			return nil, err
		}
		for _, repo := range repos {
			last = repo
			if err := c.markRepo(ctx, gen, repo, untaggedCutoff, r, rep); err != nil {
				return nil, err
			}
		}
	}
	return r, nil
}

func (c *Cache) markRepo(ctx context.Context, gen uint64, repo string, untaggedCutoff time.Time, r *reach, rep *GCReport) error {
	manifests := map[digest.Digest]index.ManifestRecord{}
	var tags []index.TagEntry
	err := c.step(ctx, gen, func() (err error) {
		if tags, _, err = c.idx.Tags(repo, "", 0); err != nil {
			return err
		}
		return c.idx.RepoLinks(repo, func(d digest.Digest) error {
			r.links[d] = append(r.links[d], repo)
			return nil
		}, func(d digest.Digest, mr index.ManifestRecord) error {
			if ls := r.links[d]; len(ls) == 0 || ls[len(ls)-1] != repo {
				r.links[d] = append(ls, repo)
			}
			manifests[d] = mr
			return nil
		})
	})
	if err != nil {
		return err
	}
	reached := map[digest.Digest]bool{}
	var queue []digest.Digest
	add := func(d digest.Digest) {
		if !reached[d] {
			reached[d] = true
			queue = append(queue, d)
		}
	}
	for _, t := range tags {
		add(t.Digest)
	}
	// Untagged manifests: kept while young, or while their bytes are a
	// root of their own.
	for d := range manifests {
		if reached[d] {
			continue
		}
		var young bool
		err := c.step(ctx, gen, func() error {
			used, err := c.idx.LastUse(d)
			if errors.Is(err, ErrNotFound) {
				return nil // the layer is gone: nothing to keep
			} else if err != nil {
				return err
			}
			if used.After(untaggedCutoff) {
				young = true
				return nil
			}
			un, err := c.idx.Unrooted(d)
			young = !un
			return err
		})
		if err != nil {
			return err
		}
		if young {
			add(d)
		}
	}
	// References, then referrers of what is reached, until neither adds.
	for len(queue) > 0 {
		for len(queue) > 0 {
			d := queue[0]
			queue = queue[1:]
			for _, ref := range manifests[d].Refs {
				add(ref.Digest)
			}
		}
		for d, mr := range manifests {
			if !reached[d] && mr.Subject != "" && reached[mr.Subject] {
				add(d)
			}
		}
	}
	for d := range manifests {
		if !reached[d] {
			rep.UntaggedManifests++ // untagged, old, and no manifest kept reaches it
		}
	}
	for d := range reached {
		r.reached[d] = true
		for _, ref := range manifests[d].Refs {
			r.refs[ref.Digest]++
		}
	}
	byDigest := map[digest.Digest]int{}
	for _, t := range tags {
		i, ok := byDigest[t.Digest]
		if !ok {
			i = len(r.tagged)
			byDigest[t.Digest] = i
			r.tagged = append(r.tagged, taggedManifest{repo: repo, d: t.Digest, refs: manifests[t.Digest].Refs})
		}
		r.tagged[i].tags = append(r.tagged[i].tags, t.Tag)
	}
	return nil
}

// collectUnreached deletes the layers only the registry holds that nothing
// reaches (see the comment at the top of this file).
func (c *Cache) collectUnreached(ctx context.Context, gen uint64, opts GCOptions, rep *GCReport) error {
	if err := c.step(ctx, gen, c.idx.Flush); err != nil { // access times of recent reads
		return err
	}
	r, err := c.markRegistry(ctx, gen, opts, rep)
	if err != nil {
		return err
	}
	candidates, err := c.unreached(ctx, gen, opts, r)
	if err != nil {
		return err
	}
	rep.UnreachedLayers = int64(len(candidates))
	if opts.DryRun {
		return nil
	}
	if c.gcHooks.LayersPlanned != nil {
		c.gcHooks.LayersPlanned(candidates)
	}
	cutoff := rep.Start.Add(-opts.grace())
	for _, d := range candidates {
		if err := c.deleteUnreached(ctx, gen, d, cutoff, r.links[d], rep); err != nil {
			return err
		}
	}
	return nil
}

// unreached lists the unrooted layers r does not reach and no step names.
func (c *Cache) unreached(ctx context.Context, gen uint64, opts GCOptions, r *reach) ([]digest.Digest, error) {
	var candidates []digest.Digest
	var after digest.Digest
	for more := true; more; {
		began := time.Now()
		err := c.step(ctx, gen, func() (err error) {
			after, more, err = c.idx.UnrootedPage(after, gcPage, func(d digest.Digest, stepNamed bool) error {
				if !r.reached[d] && !stepNamed {
					candidates = append(candidates, d)
				}
				return nil
			})
			return err
		})
		if err != nil {
			return nil, err
		}
		if err := rest(ctx, time.Since(began), opts.Pace); err != nil {
			return nil, err
		}
	}
	return candidates, nil
}

// deleteUnreached deletes candidate d, which repos link, if the index
// agrees it is still unreached and old enough (index.DB.DeleteUnreached),
// then its backend objects.
func (c *Cache) deleteUnreached(ctx context.Context, gen uint64, d digest.Digest, cutoff time.Time, repos []string, rep *GCReport) error {
	var deleted bool
	var tags map[string][]string
	err := c.step(ctx, gen, func() (err error) {
		c.deleting.Add(1)
		c.layerSeq.Add(1)
		deleted, tags, err = c.idx.DeleteUnreached(d, cutoff, repos, c.isPinned)
		c.layerSeq.Add(1)
		c.deleting.Add(-1)
		return err
	})
	if err != nil || !deleted {
		return err
	}
	rep.DeletedLayers++
	if c.gcHooks.LayerDeleted != nil {
		c.gcHooks.LayerDeleted(d)
	}
	// The backend's objects after the index: a crash in between leaves
	// objects Reindex skips (a link to a missing layer) or restores as an
	// unrooted layer the next run takes again.
	// A push of the same bytes since the index delete wrote its objects
	// again: those stay. (A push racing these deletes can still lose its
	// manifest object, which only Reindex reads: see the note in #15.)
	del := func(k string) error {
		if err := c.store.Delete(ctx, k); err != nil && !errors.Is(err, backend.ErrNotFound) {
			return backendErr("delete "+k, err)
		}
		return nil
	}
	if _, _, err := c.idx.Layer(d); errors.Is(err, ErrNotFound) && !c.isPinned(d) {
		if err := del(layerKey(d)); err != nil {
			return err
		}
	}
	for _, repo := range slices.Compact(repos) {
		err := func() error {
			defer c.lockRepo(repo).Unlock() // links are written under it
			if ok, err := c.idx.BlobLinked(repo, d); err != nil || ok {
				return err
			}
			if err := del(blobLinkKey(repo, d)); err != nil {
				return err
			}
			if _, err := c.idx.Manifest(repo, d); err == nil || !errors.Is(err, ErrNotFound) {
				return err
			}
			for _, t := range tags[repo] { // tags the index deleted with it
				if got, err := c.idx.Resolve(repo, t); err == nil && got != d {
					continue // pointed elsewhere since
				}
				if err := del(tagKey(repo, t)); err != nil {
					return err
				}
			}
			return del(manifestLinkKey(repo, d))
		}()
		if err != nil {
			return err
		}
	}
	return nil
}
