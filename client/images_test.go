package client

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// fakeImages returns n repositories of tags tags each, in the server's
// order, every tag of a repository naming the same manifest.
func fakeImages(repos, tags int) []*cairnv1.Image {
	var out []*cairnv1.Image
	for r := range repos {
		d := digest.FromString(fmt.Sprint("manifest ", r)).String()
		for tag := range tags {
			out = append(out, &cairnv1.Image{
				Repository: fmt.Sprintf("team/repo%03d", r), Tag: fmt.Sprintf("v%02d", tag), Digest: d,
				MediaType: "application/vnd.oci.image.manifest.v1+json", SizeBytes: int64(1000 + r), StoredSizeBytes: int64(500 + r),
				MissingCount: int64(r % 2),
			})
		}
	}
	return out
}

func names(imgs []ImageInfo) []string {
	var out []string
	for _, img := range imgs {
		out = append(out, img.Repository+":"+img.Tag)
	}
	return out
}

// TestImagesFollowsPages checks that Images returns every image, in the
// server's order, from as many ListImages calls as there are pages.
func TestImagesFollowsPages(t *testing.T) {
	ctx := context.Background()
	f := newFakeServer()
	c := startFake(t, f)

	imgs, err := c.Images(ctx)
	if err != nil || imgs == nil || len(imgs) != 0 {
		t.Fatalf("Images of an empty registry = %v, %v; want an empty list", imgs, err)
	}

	f.mu.Lock()
	f.images = fakeImages(70, 3) // 210 images: pages of 34 repositories (102 images)
	f.imagePageSizes = nil
	f.mu.Unlock()
	imgs, err = c.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 210 {
		t.Fatalf("Images returned %d images, want 210", len(imgs))
	}
	for i, img := range f.images {
		want := ImageInfo{Repository: img.GetRepository(), Tag: img.GetTag(), Digest: digest.Digest(img.GetDigest()),
			MediaType: img.GetMediaType(), Size: img.GetSizeBytes(), StoredSize: img.GetStoredSizeBytes(), Missing: int(img.GetMissingCount())}
		if imgs[i] != want {
			t.Fatalf("image %d = %+v, want %+v", i, imgs[i], want)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.imagePageSizes) != 3 {
		t.Errorf("Images made %d ListImages calls, want 3 (one per page)", len(f.imagePageSizes))
	}
}

func TestListImagesPageSize(t *testing.T) {
	ctx := context.Background()
	f := newFakeServer()
	f.images = fakeImages(5, 2)
	c := startFake(t, f)
	for _, size := range []int{-5, 0, 3, 1000, 5000} {
		if _, _, err := c.ListImages(ctx, "", size); err != nil {
			t.Fatalf("ListImages(page size %d): %v", size, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if want := []int32{0, 0, 3, 1000, 1000}; !slices.Equal(f.imagePageSizes, want) {
		t.Errorf("page sizes sent %v, want %v (negative: the default, above 1000: 1000)", f.imagePageSizes, want)
	}
}

func TestListImagesBadToken(t *testing.T) {
	f := newFakeServer()
	f.images = fakeImages(2, 2)
	c := startFake(t, f)
	if _, _, err := c.ListImages(context.Background(), "garbage", 0); !errors.Is(err, ErrInvalidArgument) {
		t.Errorf("ListImages with a bad token: %v, want ErrInvalidArgument", err)
	}
}

func TestDeleteImage(t *testing.T) {
	ctx := context.Background()
	f := newFakeServer()
	f.images = fakeImages(2, 3)
	c := startFake(t, f)

	if err := c.DeleteImage(ctx, "team/repo000", "v01"); err != nil {
		t.Fatalf("DeleteImage by tag: %v", err)
	}
	if err := c.DeleteImage(ctx, "team/repo001", f.images[3].GetDigest()); err != nil {
		t.Fatalf("DeleteImage by digest: %v", err)
	}
	imgs, err := c.Images(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"team/repo000:v00", "team/repo000:v02"}; !slices.Equal(names(imgs), want) {
		t.Errorf("after deleting a tag and a manifest: %v, want %v", names(imgs), want)
	}

	err = c.DeleteImage(ctx, "team/repo000", "v01")
	if !errors.Is(err, ErrNotFound) {
		t.Errorf("deleting a tag twice: %v, want ErrNotFound", err)
	}
	var ce *Error
	if !errors.As(err, &ce) || ce.Op != "delete image team/repo000:v01" || ce.Code != codes.NotFound {
		t.Errorf("error %#v, want an *Error naming team/repo000:v01 with code NotFound", err)
	}
	d := digest.FromString("x").String()
	if err := c.DeleteImage(ctx, "team/repo000", d); err == nil || err.Error() != "delete image team/repo000@"+d+": team/repo000: "+d+" not found" {
		t.Errorf("deleting an unknown digest: %v, want it named repo@digest", err)
	}

	// Nothing to send: refused here, without a call.
	for _, tc := range [][2]string{{"", "v1"}, {"team/app", ""}} {
		if err := c.DeleteImage(ctx, tc[0], tc[1]); !errors.Is(err, ErrInvalidArgument) {
			t.Errorf("DeleteImage(%q, %q): %v, want ErrInvalidArgument", tc[0], tc[1], err)
		}
	}
}

// TestStatsRegistryCounts checks that Stats carries the registry front's
// counts.
func TestStatsRegistryCounts(t *testing.T) {
	f := newFakeServer()
	f.images = fakeImages(4, 3)
	c := startFake(t, f)
	st, err := c.Stats(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Repositories != 4 || st.Tags != 12 || st.Manifests != 4 {
		t.Errorf("Stats = %+v, want 4 repositories, 12 tags, 4 manifests", st)
	}
}
