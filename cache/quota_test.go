package cache

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// The quota: a workload that writes five times the quota of evolving
// layers through both fronts (API pushes, registry blobs and tagged
// manifests) while collections with the quota run beside it. The store
// ends within 10 % of the quota, every layer that is left pulls back
// whole, the most recently used roots are still there, and a tag the
// keep pattern protects survives however old it is.
func TestGCQuotaUnderLoad(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	const (
		layerSize = 512 << 10
		quota     = 8 << 20
		rounds    = 5 * quota / layerSize / 2 // each round writes two layers' worth
	)
	// A grace period of a second: longer than a push takes from
	// its blobs to its manifest, far shorter than the workload.
	defer func(g time.Duration) { minGCGrace = g }(minGCGrace)
	minGCGrace = 0
	opts := GCOptions{Grace: time.Second, PackGrace: -1, UntaggedMaxAge: -1, MaxSize: quota, KeepTags: regexp.MustCompile(`^(?:stable)$`)}

	// A protected tag, written first: the least recently used root of all.
	stable := randomData(9999, layerSize)
	stableCfg := []byte(`{"stable":true}`)
	pushRepoBlob(t, c, "app", stable)
	pushRepoBlob(t, c, "app", stableCfg)
	putManifest(t, c, "app", "stable", imageManifest(t, stableCfg, stable))

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var gcErr error
	runs := 0
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := c.GC(ctx, opts); err != nil {
				gcErr = err
				return
			}
			runs++
		}
	})
	var tags []string
	var apiDigests []digest.Digest
	for i := range rounds {
		// Through the API: a layer that evolves (a new one every round).
		l := randomData(uint64(i), layerSize)
		apiDigests = append(apiDigests, push(t, c, l).Digest)
		// Through the registry: a blob and its config, tagged.
		b := randomData(uint64(1000+i), layerSize)
		cfg := []byte(fmt.Sprintf(`{"round":%d}`, i))
		tag := fmt.Sprintf("r%d", i)
		pushRepoBlob(t, c, "app", b)
		pushRepoBlob(t, c, "app", cfg)
		putManifest(t, c, "app", tag, imageManifest(t, cfg, b))
		tags = append(tags, tag)
	}
	close(stop)
	wg.Wait()
	if gcErr != nil {
		t.Fatal(gcErr)
	}
	opts.Grace = -1 // the writers are done: what is dead goes now
	rep, err := c.GC(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.GC(ctx, opts); err != nil { // the packs the last run marked
		t.Fatal(err)
	}
	_, stored := countPacks(t, store)
	t.Logf("%d collections beside the writes; stored %d bytes, quota %d; last run evicted %d layers, %d manifests",
		runs, stored, quota, rep.EvictedLayers, rep.EvictedManifests)
	if stored > quota*11/10 {
		t.Errorf("the store holds %d bytes, over 110 %% of its quota %d", stored, quota)
	}
	if stored < quota/2 {
		t.Errorf("the store holds %d bytes, evicted far below its quota %d", stored, quota)
	}
	// The most recent roots of both fronts are there and whole.
	for _, d := range apiDigests[len(apiDigests)-2:] {
		if got := pullDigest(t, c, d); got != d {
			t.Errorf("a recent layer %s reads back as %s", d, got)
		}
	}
	for _, tag := range append(tags[len(tags)-2:], "stable") {
		mi, err := c.StatManifest(ctx, "app", tag)
		if err != nil {
			t.Fatalf("tag %s: %v", tag, err)
		}
		for _, ref := range mi.Refs {
			if got := pullDigest(t, c, ref.Digest); got != ref.Digest {
				t.Errorf("tag %s: blob %s reads back as %s", tag, ref.Digest, got)
			}
		}
	}
	// Whatever is left is whole.
	layers, _, err := c.List(ctx, "", 1000)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		if got := pullDigest(t, c, l.Digest); got != l.Digest {
			t.Errorf("layer %s reads back as %s", l.Digest, got)
		}
	}
	checkRefcounts(t, c)
	checkIndexBacked(t, c, store)
}

// A gzip blob the registry stored is kept as its content, which is also a
// layer of its own (its diffID) over the same chunks until the collection
// takes it: the quota's estimate of what evicting the image frees counts
// those chunks all the same.
func TestQuotaEstimateOfAGzipImage(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(randomData(77, 2<<20))
	zw.Close()
	layer := gz.Bytes()
	cfg := []byte(`{"gzip":true}`)
	pushRepoBlob(t, c, "app", layer)
	pushRepoBlob(t, c, "app", cfg)
	putManifest(t, c, "app", "v1", imageManifest(t, cfg, layer))
	rep, err := c.GC(ctx, GCOptions{Grace: -1, PackGrace: -1, MaxSize: 1, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.EvictedManifests != 1 || rep.EvictedBytes < 2<<20 {
		t.Errorf("evicting the image: %d manifests, %d bytes estimated; want 1 and the layer's 2 MiB", rep.EvictedManifests, rep.EvictedBytes)
	}
}

// What the collection is about to take counts as gone: an untagged gzip
// image (its blob and the blob's content layer share every chunk) frees
// its bytes in this run, so a store over its quota by no more than that
// evicts nothing.
func TestQuotaCountsWhatTheCollectionTakes(t *testing.T) {
	c, _ := newCache(t)
	ctx := t.Context()
	image := func(seed uint64, tag string) {
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(randomData(seed, 1<<20))
		zw.Close()
		cfg := []byte(fmt.Sprintf(`{"seed":%d}`, seed))
		pushRepoBlob(t, c, "app", gz.Bytes())
		pushRepoBlob(t, c, "app", cfg)
		putManifest(t, c, "app", tag, imageManifest(t, cfg, gz.Bytes()))
	}
	image(81, "old")
	image(82, "new")
	if err := c.DeleteManifest(ctx, "app", "old"); err != nil { // the tag only
		t.Fatal(err)
	}
	rep, err := c.GC(ctx, GCOptions{Grace: -1, PackGrace: -1, UntaggedMaxAge: -1, MaxSize: 1<<20 + 64<<10, DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	if rep.EvictedManifests != 0 || rep.EvictedLayers != 0 {
		t.Errorf("planned to evict %d manifests and %d layers (%d bytes); the untagged image's 1 MiB was enough",
			rep.EvictedManifests, rep.EvictedLayers, rep.EvictedBytes)
	}
}
