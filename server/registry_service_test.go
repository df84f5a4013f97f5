package server

import (
	"bytes"
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"

	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// pushBlob stores data as a blob of repo, as the registry front does.
func pushBlob(t *testing.T, c *cache.Cache, repo string, data []byte) v1.Descriptor {
	t.Helper()
	d := digest.FromBytes(data)
	if _, err := c.PushBlob(context.Background(), repo, bytes.NewReader(data), d, int64(len(data))); err != nil {
		t.Fatalf("PushBlob %s into %s: %v", d, repo, err)
	}
	return v1.Descriptor{MediaType: v1.MediaTypeImageLayer, Digest: d, Size: int64(len(data))}
}

// putManifest stores m in repo under each of refs (a tag; none: by digest
// only) and returns its descriptor.
func putManifest(t *testing.T, c *cache.Cache, repo string, m any, mediaType string, refs ...string) v1.Descriptor {
	t.Helper()
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromBytes(b)
	if len(refs) == 0 {
		refs = []string{d.String()}
	}
	for _, ref := range refs {
		if _, err := c.PutManifest(context.Background(), repo, ref, mediaType, bytes.NewReader(b), 0); err != nil {
			t.Fatalf("PutManifest %s:%s: %v", repo, ref, err)
		}
	}
	return v1.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
}

// pushImage stores a one-platform image (a config and the given layers) in
// repo under tags and returns its manifest's descriptor and the bytes of
// the image: manifest, config and each distinct layer.
func pushImage(t *testing.T, c *cache.Cache, repo string, tags []string, layers ...[]byte) (v1.Descriptor, int64) {
	t.Helper()
	config := pushBlob(t, c, repo, []byte(`{"architecture":"amd64","os":"linux","rootfs":{"type":"layers"},"note":"`+repo+`"}`))
	config.MediaType = v1.MediaTypeImageConfig
	m := v1.Manifest{MediaType: v1.MediaTypeImageManifest, Config: config, Layers: []v1.Descriptor{}}
	m.SchemaVersion = 2
	size := config.Size
	seen := map[digest.Digest]bool{}
	for _, l := range layers {
		desc := pushBlob(t, c, repo, l)
		m.Layers = append(m.Layers, desc)
		if !seen[desc.Digest] {
			size += desc.Size
			seen[desc.Digest] = true
		}
	}
	desc := putManifest(t, c, repo, m, v1.MediaTypeImageManifest, tags...)
	return desc, size + desc.Size
}

// listAll follows ListImages' pages with pageSize and returns the images
// and the number of pages.
func listAll(t *testing.T, e *env, pageSize int32) ([]*cairnv1.Image, int) {
	t.Helper()
	reg := cairnv1.NewRegistryServiceClient(e.conn)
	var all []*cairnv1.Image
	pages := 0
	for token := ""; ; {
		resp, err := reg.ListImages(context.Background(), &cairnv1.ListImagesRequest{PageToken: token, PageSize: pageSize})
		if err != nil {
			t.Fatalf("ListImages (page %d): %v", pages+1, err)
		}
		pages++
		all = append(all, resp.GetImages()...)
		if token = resp.GetNextPageToken(); token == "" {
			return all, pages
		}
		if pages > 100 {
			t.Fatal("ListImages does not end")
		}
	}
}

func imageNames(imgs []*cairnv1.Image) []string {
	var names []string
	for _, img := range imgs {
		names = append(names, img.GetRepository()+":"+img.GetTag())
	}
	return names
}

// TestListImages checks one entry per tag, in repository and tag order,
// with the sizes the cache sums, across pages of whole repositories, and
// that untagged manifests are left out.
func TestListImages(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	reg := cairnv1.NewRegistryServiceClient(e.conn)

	resp, err := reg.ListImages(ctx, &cairnv1.ListImagesRequest{})
	if err != nil {
		t.Fatalf("ListImages of an empty server: %v", err)
	}
	if len(resp.GetImages()) != 0 || resp.GetNextPageToken() != "" {
		t.Errorf("ListImages of an empty server = %v, want nothing", resp)
	}

	base := randomData(1, 300<<10)
	app, appSize := pushImage(t, e.cache, "team/app", []string{"v1", "latest"}, base, randomData(2, 100<<10))
	pushImage(t, e.cache, "team/app", nil, randomData(3, 10<<10)) // untagged
	lib, libSize := pushImage(t, e.cache, "other/lib", []string{"1.0"}, base, base)
	// A multi-platform index with one platform pushed and a blob child
	// (BuildKit's legacy cache does that) never pushed.
	child, childSize := pushImage(t, e.cache, "multi", nil, randomData(4, 50<<10))
	index := v1.Index{MediaType: v1.MediaTypeImageIndex, Manifests: []v1.Descriptor{child, {
		MediaType: "application/vnd.buildkit.cacheconfig.v0", Digest: digest.FromString("never pushed"), Size: 10,
	}}}
	index.SchemaVersion = 2
	idx := putManifest(t, e.cache, "multi", index, v1.MediaTypeImageIndex, "x")

	want := []*cairnv1.Image{
		{Repository: "multi", Tag: "x", Digest: idx.Digest.String(), MediaType: v1.MediaTypeImageIndex,
			SizeBytes: idx.Size + childSize, MissingCount: 1},
		{Repository: "other/lib", Tag: "1.0", Digest: lib.Digest.String(), MediaType: v1.MediaTypeImageManifest, SizeBytes: libSize},
		{Repository: "team/app", Tag: "latest", Digest: app.Digest.String(), MediaType: v1.MediaTypeImageManifest, SizeBytes: appSize},
		{Repository: "team/app", Tag: "v1", Digest: app.Digest.String(), MediaType: v1.MediaTypeImageManifest, SizeBytes: appSize},
	}
	fromCache, next, err := e.cache.Images(ctx, "", 0)
	if err != nil || next != "" {
		t.Fatalf("cache.Images: %v, next %q", err, next)
	}
	got, pages := listAll(t, e, 0)
	if pages != 1 || len(got) != len(want) || len(fromCache) != len(want) {
		t.Fatalf("ListImages = %v in %d pages, want %v in one", imageNames(got), pages, imageNames(want))
	}
	for i, img := range got {
		if img.GetStoredSizeBytes() <= 0 || img.GetStoredSizeBytes() != fromCache[i].StoredSize {
			t.Errorf("%s: stored %d bytes, want the cache's %d (> 0)", imageNames(got)[i], img.GetStoredSizeBytes(), fromCache[i].StoredSize)
		}
		w := proto.Clone(want[i]).(*cairnv1.Image)
		w.StoredSizeBytes = img.GetStoredSizeBytes()
		if !proto.Equal(img, w) {
			t.Errorf("image %d = %v, want %v", i, img, w)
		}
	}

	// Pages hold whole repositories: a page size of 1 gives one per
	// repository, team/app's two tags together.
	paged, pages := listAll(t, e, 1)
	if pages != 3 || !slices.Equal(imageNames(paged), imageNames(got)) {
		t.Errorf("with page size 1: %v in %d pages, want %v in 3", imageNames(paged), pages, imageNames(got))
	}
	paged, pages = listAll(t, e, 2)
	if pages != 2 || !slices.Equal(imageNames(paged), imageNames(got)) {
		t.Errorf("with page size 2: %v in %d pages, want %v in 2", imageNames(paged), pages, imageNames(got))
	}
}

func TestListImagesBadInput(t *testing.T) {
	e := newEnv(t, Options{})
	reg := cairnv1.NewRegistryServiceClient(e.conn)
	ctx := context.Background()
	_, err := reg.ListImages(ctx, &cairnv1.ListImagesRequest{PageSize: -1})
	wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "page_size")
	for _, token := range []string{"!!not base64", "QUJD"} { // the second decodes to "ABC", no repository name
		_, err = reg.ListImages(ctx, &cairnv1.ListImagesRequest{PageToken: token})
		wantStatus(t, err, codes.InvalidArgument, cairnv1.ReasonInvalidArgument, "page_token")
	}
}

// TestDeleteImage checks that a tag goes alone and a digest takes its
// manifest and every tag naming it, with the registry counts of GetStats
// following.
func TestDeleteImage(t *testing.T) {
	e := newEnv(t, Options{})
	ctx := context.Background()
	reg := cairnv1.NewRegistryServiceClient(e.conn)
	app, _ := pushImage(t, e.cache, "team/app", []string{"v1", "v2", "latest"}, randomData(1, 1000))
	pushImage(t, e.cache, "team/app", []string{"old"}, randomData(2, 1000))
	pushImage(t, e.cache, "other", []string{"1"}, randomData(3, 1000))

	stats := func() (int64, int64, int64) {
		t.Helper()
		st, err := e.layers.GetStats(ctx, &cairnv1.GetStatsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		want, err := e.cache.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.GetRepositoryCount() != want.Repositories || st.GetTagCount() != want.Tags || st.GetManifestCount() != want.Manifests {
			t.Errorf("GetStats = %v, want the cache's %+v", st, want)
		}
		return st.GetRepositoryCount(), st.GetTagCount(), st.GetManifestCount()
	}
	if r, tags, m := stats(); r != 2 || tags != 5 || m != 3 {
		t.Errorf("before: %d repositories, %d tags, %d manifests; want 2, 5, 3", r, tags, m)
	}

	if _, err := reg.DeleteImage(ctx, &cairnv1.DeleteImageRequest{Repository: "team/app", Reference: "v2"}); err != nil {
		t.Fatalf("DeleteImage by tag: %v", err)
	}
	got, _ := listAll(t, e, 0)
	if want := []string{"other:1", "team/app:latest", "team/app:old", "team/app:v1"}; !slices.Equal(imageNames(got), want) {
		t.Errorf("after deleting tag v2: %v, want %v", imageNames(got), want)
	}
	if _, err := reg.DeleteImage(ctx, &cairnv1.DeleteImageRequest{Repository: "team/app", Reference: "v2"}); err == nil {
		t.Error("deleting tag v2 twice succeeded")
	} else {
		wantStatus(t, err, codes.NotFound, cairnv1.ReasonNotFound, "")
	}
	if r, tags, m := stats(); r != 2 || tags != 4 || m != 3 {
		t.Errorf("after deleting a tag: %d repositories, %d tags, %d manifests; want 2, 4, 3", r, tags, m)
	}

	if _, err := reg.DeleteImage(ctx, &cairnv1.DeleteImageRequest{Repository: "team/app", Reference: app.Digest.String()}); err != nil {
		t.Fatalf("DeleteImage by digest: %v", err)
	}
	got, _ = listAll(t, e, 0)
	if want := []string{"other:1", "team/app:old"}; !slices.Equal(imageNames(got), want) {
		t.Errorf("after deleting the manifest of v1 and latest: %v, want %v", imageNames(got), want)
	}
	if r, tags, m := stats(); r != 2 || tags != 2 || m != 2 {
		t.Errorf("after deleting a manifest: %d repositories, %d tags, %d manifests; want 2, 2, 2", r, tags, m)
	}
	_, err := reg.DeleteImage(ctx, &cairnv1.DeleteImageRequest{Repository: "team/app", Reference: app.Digest.String()})
	wantStatus(t, err, codes.NotFound, cairnv1.ReasonNotFound, "")
	_, err = reg.DeleteImage(ctx, &cairnv1.DeleteImageRequest{Repository: "nosuch/repo", Reference: "v1"})
	wantStatus(t, err, codes.NotFound, cairnv1.ReasonNotFound, "")

	// The deleted manifest's layer stays while the layer store holds it:
	// reclaiming blobs is not DeleteImage's job.
	if _, err := e.layers.StatLayer(ctx, &cairnv1.StatLayerRequest{Digest: digest.FromBytes(randomData(1, 1000)).String()}); err != nil {
		t.Errorf("the deleted image's layer: %v, want it still stored", err)
	}
}

func TestDeleteImageBadInput(t *testing.T) {
	e := newEnv(t, Options{})
	reg := cairnv1.NewRegistryServiceClient(e.conn)
	ctx := context.Background()
	sha384 := "sha384:" + strings.Repeat("a", 96)
	for _, tc := range []struct {
		repo, ref     string
		reason, field string
	}{
		{"", "v1", cairnv1.ReasonInvalidArgument, "repository"},
		{"Team/App", "v1", cairnv1.ReasonInvalidArgument, "repository"},
		{"team//app", "v1", cairnv1.ReasonInvalidArgument, "repository"},
		{strings.Repeat("a", 256), "v1", cairnv1.ReasonInvalidArgument, "repository"},
		{"team/app", "", cairnv1.ReasonInvalidArgument, "reference"},
		{"team/app", "-v1", cairnv1.ReasonInvalidArgument, "reference"},
		{"team/app", "v1/x", cairnv1.ReasonInvalidArgument, "reference"},
		{"team/app", strings.Repeat("t", 129), cairnv1.ReasonInvalidArgument, "reference"},
		{"team/app", "sha256:abc", cairnv1.ReasonInvalidDigest, "reference"},
		{"team/app", "v1:x", cairnv1.ReasonInvalidDigest, "reference"},
		{"team/app", sha384, cairnv1.ReasonInvalidArgument, "reference"}, // a digest, of an algorithm the store does not keep
	} {
		_, err := reg.DeleteImage(ctx, &cairnv1.DeleteImageRequest{Repository: tc.repo, Reference: tc.ref})
		t.Run(clip(tc.repo)+" "+clip(tc.ref), func(t *testing.T) {
			wantStatus(t, err, codes.InvalidArgument, tc.reason, tc.field)
		})
	}
}
