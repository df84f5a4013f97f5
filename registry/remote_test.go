package registry_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func ref(t testing.TB, s string) name.Reference {
	t.Helper()
	r, err := name.ParseReference(s, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// sameImage checks that got has want's manifest and every layer's bytes.
func sameImage(t *testing.T, want, got v1.Image) {
	t.Helper()
	wd, _ := want.Digest()
	gd, err := got.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if wd != gd {
		t.Fatalf("image digest %s, want %s", gd, wd)
	}
	wl, _ := want.Layers()
	gl, err := got.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i := range wl {
		wdg, _ := wl[i].Digest()
		rc, err := gl[i].Compressed()
		if err != nil {
			t.Fatal(err)
		}
		h := v1.Hash{}
		b, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		h, _, _ = v1.SHA256(bytesReader(b))
		if h != wdg {
			t.Fatalf("layer %d hashes to %s, want %s", i, h, wdg)
		}
	}
}

// TestRemoteRoundTrip pushes images and an index with go-containerregistry's
// remote package (the library crane, ko and kaniko use) and reads them back.
func TestRemoteRoundTrip(t *testing.T) {
	tr := newTestRegistry(t)
	img, err := random.Image(3<<20, 3)
	if err != nil {
		t.Fatal(err)
	}
	r := ref(t, tr.host+"/cache/app:main")
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	got, err := remote.Image(r)
	if err != nil {
		t.Fatal(err)
	}
	sameImage(t, img, got)

	// HEAD of the manifest: digest and size (containerd needs both).
	desc, err := remote.Head(r)
	if err != nil {
		t.Fatal(err)
	}
	if wd, _ := img.Digest(); desc.Digest != wd {
		t.Fatalf("HEAD digest %s, want %s", desc.Digest, wd)
	}

	// An index of two images, one of them already there.
	img2, _ := random.Image(1<<20, 2)
	idx := mutate.AppendManifests(empty.Index,
		mutate.IndexAddendum{Add: img}, mutate.IndexAddendum{Add: img2})
	ri := ref(t, tr.host+"/cache/app:multi")
	if err := remote.WriteIndex(ri, idx); err != nil {
		t.Fatal(err)
	}
	gi, err := remote.Index(ri)
	if err != nil {
		t.Fatal(err)
	}
	im, err := gi.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 {
		t.Fatalf("index has %d manifests", len(im.Manifests))
	}
	child, err := gi.Image(im.Manifests[1].Digest)
	if err != nil {
		t.Fatal(err)
	}
	sameImage(t, img2, child)

	// Tags and catalog.
	tags, err := remote.List(r.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(tags) != 2 || tags[0] != "main" || tags[1] != "multi" {
		t.Fatalf("tags %v", tags)
	}
	reg, _ := name.NewRegistry(tr.host, name.Insecure)
	repos, err := remote.Catalog(context.Background(), reg)
	if err != nil {
		t.Fatal(err)
	}
	if len(repos) != 1 || repos[0] != "cache/app" {
		t.Fatalf("catalog %v", repos)
	}

	// Copy to another repository: go-containerregistry mounts the blobs.
	r2 := ref(t, tr.host+"/other/app:copy")
	if err := remote.Write(r2, got); err != nil {
		t.Fatal(err)
	}
	got2, err := remote.Image(r2)
	if err != nil {
		t.Fatal(err)
	}
	sameImage(t, img, got2)

	// Delete the tag's manifest: gone, and so is the tag.
	d, _ := img.Digest()
	if err := remote.Delete(ref(t, tr.host+"/cache/app@"+d.String())); err != nil {
		t.Fatal(err)
	}
	_, err = remote.Image(r)
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusNotFound {
		t.Fatalf("after delete: %v", err)
	}
	if _, err := remote.Image(r2); err != nil {
		t.Fatalf("the copy in another repository: %v", err)
	}
	_ = types.OCIManifestSchema1
}
