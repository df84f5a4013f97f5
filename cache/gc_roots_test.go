package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/cairnbuild/cairn/stepkey"
	"github.com/opencontainers/go-digest"
)

// The layer-level collection: what only the registry holds goes once
// nothing reaches it; roots and their closure stay.

const ociManifestType = "application/vnd.oci.image.manifest.v1+json"

// imageManifest is an OCI image manifest of config and layers.
func imageManifest(t testing.TB, config []byte, layers ...[]byte) []byte {
	t.Helper()
	desc := func(b []byte, mt string) map[string]any {
		return map[string]any{"mediaType": mt, "digest": digest.FromBytes(b), "size": len(b)}
	}
	var ls []any
	for _, l := range layers {
		ls = append(ls, desc(l, "application/vnd.oci.image.layer.v1.tar"))
	}
	b, err := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": ociManifestType,
		"config": desc(config, "application/vnd.oci.image.config.v1+json"), "layers": ls})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func pushRepoBlob(t testing.TB, c *Cache, repo string, b []byte) digest.Digest {
	t.Helper()
	d := digest.FromBytes(b)
	if _, err := c.PushBlob(t.Context(), repo, bytes.NewReader(b), d, int64(len(b))); err != nil {
		t.Fatal(err)
	}
	return d
}

func putManifest(t testing.TB, c *Cache, repo, ref string, b []byte) digest.Digest {
	t.Helper()
	if _, err := c.PutManifest(t.Context(), repo, ref, ociManifestType, bytes.NewReader(b), 0); err != nil {
		t.Fatal(err)
	}
	return digest.FromBytes(b)
}

// present reports whether layer d is committed.
func present(t testing.TB, c *Cache, d digest.Digest) bool {
	t.Helper()
	_, err := c.Stat(t.Context(), d)
	if err != nil && !isErr(err, ErrNotFound) {
		t.Fatal(err)
	}
	return err == nil
}

func wantLayers(t testing.TB, c *Cache, want map[string]bool, names map[string]digest.Digest) {
	t.Helper()
	for name, d := range names {
		if got := present(t, c, d); got != want[name] {
			t.Errorf("layer %s present = %v, want %v", name, got, want[name])
		}
	}
}

func TestGCUnreachedRegistryLayers(t *testing.T) {
	c, store := newCache(t)
	ctx := t.Context()
	blob := func(name string) []byte {
		return append([]byte(name+" "), genData(uint64(len(name))*7+uint64(name[0]), 300<<10)...)
	}
	config, a, b, loose, f := blob("config"), blob("a"), blob("b"), blob("loose"), blob("f")
	names := map[string]digest.Digest{}
	for name, l := range map[string][]byte{"config": config, "a": a, "b": b, "loose": loose, "f": f} {
		names[name] = pushRepoBlob(t, c, "r", l)
	}
	m1 := imageManifest(t, config, a, b)
	names["m1"] = putManifest(t, c, "r", "v1", m1)
	grpc := blob("grpc")
	names["grpc"] = push(t, c, grpc).Digest // a root: pushed through the API
	stepped := blob("stepped")
	names["stepped"] = pushRepoBlob(t, c, "r", stepped)
	recordStepFor(t, c, names["stepped"])
	both := blob("both")
	names["both"] = pushRepoBlob(t, c, "r", both)
	push(t, c, both) // the API pushes it too: now a root

	opts := now
	opts.UntaggedMaxAge = -1
	dry := opts
	dry.DryRun = true
	rep, err := c.GC(ctx, dry)
	if err != nil {
		t.Fatal(err)
	}
	if rep.UnreachedLayers != 2 || rep.DeletedLayers != 0 { // loose, f
		t.Errorf("dry run: %d unreached, %d deleted; want 2, 0", rep.UnreachedLayers, rep.DeletedLayers)
	}
	rep, err = c.GC(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"config": true, "a": true, "b": true, "m1": true, "grpc": true, "stepped": true, "both": true}
	wantLayers(t, c, want, names)
	if rep.DeletedLayers != 2 {
		t.Errorf("deleted %d layers, want 2", rep.DeletedLayers)
	}
	if _, err := c.StatBlob(ctx, "r", names["loose"]); !isErr(err, ErrNotFound) {
		t.Errorf("a collected blob: HEAD says %v, want not found", err)
	}

	// The tag moves to m2: m1 is untagged (and past UntaggedMaxAge), and
	// a, which only m1 referenced, goes with it; b stays with m2.
	names["f"] = pushRepoBlob(t, c, "r", f)
	m2 := imageManifest(t, config, b, f)
	names["m2"] = putManifest(t, c, "r", "v1", m2)
	if rep, err = c.GC(ctx, opts); err != nil {
		t.Fatal(err)
	}
	want = map[string]bool{"config": true, "b": true, "f": true, "m2": true, "grpc": true, "stepped": true, "both": true}
	wantLayers(t, c, want, names)
	if rep.UntaggedManifests != 1 {
		t.Errorf("%d untagged manifests past their age, want 1", rep.UntaggedManifests)
	}
	if _, _, err := c.OpenManifest(ctx, "r", string(names["m1"])); !isErr(err, ErrNotFound) {
		t.Errorf("a collected manifest: GET says %v, want not found", err)
	}
	for _, name := range []string{"config", "b", "f"} {
		if _, err := c.StatBlob(ctx, "r", names[name]); err != nil {
			t.Errorf("blob %s of the tagged manifest: %v", name, err)
		}
	}
	checkRefcounts(t, c)
	checkIndexBacked(t, c, store)

	// Reindex keeps who is a root: after it, the same collection
	// deletes nothing more, and the untagged-but-young rule holds.
	if err := c.Reindex(ctx); err != nil {
		t.Fatal(err)
	}
	if rep, err = c.GC(ctx, opts); err != nil || rep.DeletedLayers != 0 {
		t.Fatalf("after a reindex: deleted %d layers (%v), want 0", rep.DeletedLayers, err)
	}
	wantLayers(t, c, want, names)
	if err := c.DeleteManifest(ctx, "r", "v1"); err != nil {
		t.Fatal(err)
	}
	young := opts
	young.UntaggedMaxAge = 0 // a day: m2 was pushed just now
	if rep, err = c.GC(ctx, young); err != nil || rep.DeletedLayers != 0 {
		t.Fatalf("a young untagged manifest: deleted %d layers (%v), want 0", rep.DeletedLayers, err)
	}
}

// recordStepFor records a step whose layer is d.
func recordStepFor(t testing.TB, c *Cache, d digest.Digest) {
	t.Helper()
	info, err := c.Stat(t.Context(), d)
	if err != nil {
		t.Fatal(err)
	}
	s := stepkey.Step{Instruction: fmt.Sprintf("RUN make %s", d)}
	if _, err := c.RecordStep(t.Context(), "", s, &LayerRef{Digest: d, Size: info.Size, MediaType: DefaultMediaType}, nil); err != nil {
		t.Fatal(err)
	}
}

// Every existence answer given after the plan keeps what it answered for:
// a HEAD, a mount, a manifest PUT naming the blob, a push of the same
// bytes (registry or API). Each runs in the hook between the plan and the
// deletions, on a layer the plan chose.
func TestGCSparesLayersAnsweredAfterThePlan(t *testing.T) {
	answers := map[string]func(c *Cache, d digest.Digest, b []byte) error{
		"head": func(c *Cache, d digest.Digest, _ []byte) error {
			_, err := c.StatBlob(context.Background(), "r", d)
			return err
		},
		"mount": func(c *Cache, d digest.Digest, _ []byte) error {
			_, err := c.MountBlob(context.Background(), "other", "r", d)
			return err
		},
		"registry push": func(c *Cache, d digest.Digest, b []byte) error {
			_, err := c.PushBlob(context.Background(), "r", bytes.NewReader(b), d, int64(len(b)))
			return err
		},
		"api push": func(c *Cache, d digest.Digest, b []byte) error {
			_, err := c.Push(context.Background(), bytes.NewReader(b), PushOptions{Expected: d, Size: int64(len(b))})
			return err
		},
		"manifest put": func(c *Cache, d digest.Digest, b []byte) error {
			_, err := c.PutManifest(context.Background(), "r", "t", ociManifestType,
				bytes.NewReader(imageManifest(t, b)), 0)
			return err
		},
	}
	for name, answer := range answers {
		t.Run(name, func(t *testing.T) {
			c, _ := newCache(t)
			b := genData(91, 200<<10)
			d := pushRepoBlob(t, c, "r", b)
			var answerErr error
			planned := false
			c.gcHooks.LayersPlanned = func(candidates []digest.Digest) {
				planned = len(candidates) == 1 && candidates[0] == d
				answerErr = answer(c, d, b)
			}
			opts := now
			opts.UntaggedMaxAge = -1
			rep, err := c.GC(t.Context(), opts)
			if err != nil || answerErr != nil {
				t.Fatal(err, answerErr)
			}
			if !planned || rep.DeletedLayers != 0 {
				t.Errorf("planned %v, deleted %d layers; want planned and kept", planned, rep.DeletedLayers)
			}
			checkLive(t, c, b)
			if _, err := c.StatBlob(t.Context(), "r", d); err != nil {
				t.Errorf("the blob answered for: %v", err)
			}
		})
	}
}
