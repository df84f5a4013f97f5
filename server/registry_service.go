package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/cairnbuild/cairn/auth"
	"github.com/cairnbuild/cairn/cache"
	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// registryService implements cairnv1.RegistryService over an ImageStore:
// the images the registry front wrote, for operators. It serves no blob
// or manifest bytes (the registry's own HTTP API does), so it holds no
// transfer slots.
type registryService struct {
	cairnv1.UnimplementedRegistryServiceServer
	images ImageStore
	log    *slog.Logger // audit lines (nil: none)
}

// ListImages implements cairnv1.RegistryServiceServer.
func (s *registryService) ListImages(ctx context.Context, req *cairnv1.ListImagesRequest) (*cairnv1.ListImagesResponse, error) {
	if req.GetPageSize() < 0 {
		return nil, toStatus(fieldErr("page_size", fmt.Errorf("%w: negative page size %d", errInvalidArgument, req.GetPageSize())))
	}
	// The listing shows every repository's images.
	if err := auth.Check(ctx, auth.Read, allNamespaces); err != nil {
		return nil, toStatus(err)
	}
	imgs, next, err := s.images.Images(ctx, req.GetPageToken(), int(req.GetPageSize()))
	if err != nil {
		// The token is the only input the store can find bad.
		var fe *fieldError
		if errors.Is(err, cache.ErrInvalidArgument) && !errors.As(err, &fe) {
			err = fieldErr("page_token", err)
		}
		return nil, toStatus(err)
	}
	resp := &cairnv1.ListImagesResponse{Images: make([]*cairnv1.Image, len(imgs)), NextPageToken: next}
	for i, img := range imgs {
		resp.Images[i] = imageToProto(img)
	}
	return resp, nil
}

// DeleteImage implements cairnv1.RegistryServiceServer. Both fields are
// checked here, against the registry's grammar, so that a typo is named by
// its field rather than reported as whatever the store trips over first.
func (s *registryService) DeleteImage(ctx context.Context, req *cairnv1.DeleteImageRequest) (*cairnv1.DeleteImageResponse, error) {
	repo, ref := req.GetRepository(), req.GetReference()
	if err := checkRepository("repository", repo); err != nil {
		return nil, toStatus(err)
	}
	if err := checkReference("reference", ref); err != nil {
		return nil, toStatus(err)
	}
	if err := auth.Check(ctx, auth.Delete, repo); err != nil {
		audit(ctx, s.log, auth.Delete, "delete image "+repo+":"+ref, repo, err)
		return nil, toStatus(err)
	}
	err := s.images.DeleteManifest(ctx, repo, ref)
	audit(ctx, s.log, auth.Delete, "delete image "+repo+":"+ref, repo, err)
	if err != nil {
		// Past the checks above, bad input is the reference (a digest
		// algorithm the store does not keep, such as sha384).
		var fe *fieldError
		if errors.Is(err, cache.ErrInvalidArgument) && !errors.As(err, &fe) {
			err = fieldErr("reference", err)
		}
		return nil, toStatus(err)
	}
	return &cairnv1.DeleteImageResponse{}, nil
}

// checkRepository validates a repository name from the wire.
func checkRepository(field, repo string) error {
	if repo == "" {
		return fieldErr(field, fmt.Errorf("%w: empty, want a repository name such as team/app", errInvalidArgument))
	}
	if err := cache.ValidRepoName(repo); err != nil {
		return fieldErr(field, fmt.Errorf("%w (want lower-case letters, digits and separators . _ __ - between them, components joined by /, at most %d bytes)",
			err, cache.MaxRepoNameLen))
	}
	return nil
}

// checkReference validates a manifest reference from the wire: a digest
// if it holds a ':' (a tag never does), else a tag.
func checkReference(field, ref string) error {
	if ref == "" {
		return fieldErr(field, fmt.Errorf("%w: empty, want a tag or a manifest digest", errInvalidArgument))
	}
	if strings.Contains(ref, ":") {
		_, err := parseDigest(field, ref, false)
		return err
	}
	if err := cache.ValidTag(ref); err != nil {
		return fieldErr(field, fmt.Errorf("%w (want a tag of 1 to 128 letters, digits, _ . -, not starting with . or -; or a manifest digest sha256:<64 hex>)", err))
	}
	return nil
}

// imageToProto converts a cache.ImageInfo.
func imageToProto(img cache.ImageInfo) *cairnv1.Image {
	return &cairnv1.Image{
		Repository:      img.Repository,
		Tag:             img.Tag,
		Digest:          img.Digest.String(),
		MediaType:       img.MediaType,
		SizeBytes:       img.Size,
		StoredSizeBytes: img.StoredSize,
		MissingCount:    int64(img.Missing),
	}
}
