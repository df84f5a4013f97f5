package client

import (
	"context"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// ImageInfo is one tag of a repository on the server's OCI registry front
// (cairn serve --registry-listen), and the manifest it names.
type ImageInfo struct {
	Repository string        `json:"repository"`
	Tag        string        `json:"tag"`
	Digest     digest.Digest `json:"digest"` // the manifest's
	MediaType  string        `json:"media_type"`
	// Size is the bytes of the manifest and everything it references
	// (child manifests of an index followed), each distinct blob once, as
	// pushed.
	Size int64 `json:"size"`
	// StoredSize is what those blobs take stored, compressed; chunks
	// shared with other layers or images are counted in full, so the sum
	// over images exceeds what the server stores (Stats has that).
	StoredSize int64 `json:"stored_size"`
	// Missing counts the references the server does not hold (platforms
	// never pushed, foreign layers), left out of the sizes; 0 for an image
	// that can be pulled whole.
	Missing int `json:"missing"`
}

// maxImagesPages bounds the pages Images follows, so that a server whose
// tokens never end cannot keep it looping: 100 000 pages of at least one
// repository each is far beyond any registry cairn serves.
const maxImagesPages = 100_000

// Images returns every tagged image on the server's registry front, one
// entry per tag, ordered by repository and tag. It follows ListImages'
// pages; the server sums each image's sizes when asked, so on a large
// registry this takes a while.
func (c *Client) Images(ctx context.Context) ([]ImageInfo, error) {
	all := []ImageInfo{}
	token := ""
	for range maxImagesPages {
		page, next, err := c.ListImages(ctx, token, 0)
		if err != nil {
			return nil, err
		}
		all = append(all, page...)
		if next == "" {
			return all, nil
		}
		token = next
	}
	return nil, &Error{Op: "list images", Message: fmt.Sprintf("the server sent more than %d pages", maxImagesPages), kind: ErrServer}
}

// ListImages returns one page of the tagged images and the token of the
// next page ("" after the last). A page holds whole repositories: at least
// one, more while it holds fewer than pageSize images, so it may hold more
// than pageSize (pageSize <= 0: the server's default, 100; at most 1000).
func (c *Client) ListImages(ctx context.Context, pageToken string, pageSize int) ([]ImageInfo, string, error) {
	resp, err := c.registry.ListImages(ctx, &cairnv1.ListImagesRequest{
		PageToken: pageToken,
		PageSize:  int32(min(max(pageSize, 0), 1000)),
	})
	if err != nil {
		return nil, "", wrapErr("list images", err)
	}
	out := make([]ImageInfo, 0, len(resp.GetImages()))
	for _, img := range resp.GetImages() {
		out = append(out, ImageInfo{
			Repository: img.GetRepository(),
			Tag:        img.GetTag(),
			Digest:     digest.Digest(img.GetDigest()),
			MediaType:  img.GetMediaType(),
			Size:       img.GetSizeBytes(),
			StoredSize: img.GetStoredSizeBytes(),
			Missing:    int(img.GetMissingCount()),
		})
	}
	return out, resp.GetNextPageToken(), nil
}

// DeleteImage removes an image from repository repo of the registry front.
// ref is a tag, to remove that tag alone (its manifest stays, reachable by
// digest and its other tags), or a manifest digest ("sha256:..."), to
// remove the manifest and every tag of repo that names it. A tag, manifest
// or repository the server does not hold is ErrNotFound; a malformed name
// is ErrInvalidArgument. Blobs stay while anything else references them.
func (c *Client) DeleteImage(ctx context.Context, repo, ref string) error {
	// The image as people write it: repo:tag, or repo@digest (a tag
	// never holds a ':').
	op := "delete image " + repo + ":" + ref
	if strings.Contains(ref, ":") {
		op = "delete image " + repo + "@" + ref
	}
	// The registry's name grammar is the server's to check: only what
	// cannot be a name at all is caught here.
	switch {
	case repo == "":
		return &Error{Op: op, Message: "no repository given", kind: ErrInvalidArgument}
	case ref == "":
		return &Error{Op: op, Message: "no tag or digest given", kind: ErrInvalidArgument}
	}
	_, err := c.registry.DeleteImage(ctx, &cairnv1.DeleteImageRequest{Repository: repo, Reference: ref})
	return wrapErr(op, err)
}
