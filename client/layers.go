package client

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"

	cairnv1 "github.com/cairnbuild/cairn/proto/cairn/v1"
)

// Stat returns a layer's info; a missing layer is ErrNotFound.
func (c *Client) Stat(ctx context.Context, d digest.Digest) (LayerInfo, error) {
	if err := checkDigest("stat", d); err != nil {
		return LayerInfo{}, err
	}
	resp, err := c.layers.StatLayer(ctx, &cairnv1.StatLayerRequest{Digest: d.String()})
	if err != nil {
		return LayerInfo{}, wrapErr("stat "+d.String(), err)
	}
	return layerInfo(resp.GetLayer()), nil
}

// List returns a page of the stored layers and the token of the next page
// ("" after the last). pageSize <= 0 means the server's default (100).
func (c *Client) List(ctx context.Context, pageToken string, pageSize int) ([]LayerInfo, string, error) {
	resp, err := c.layers.ListLayers(ctx, &cairnv1.ListLayersRequest{
		PageSize:  int32(min(max(pageSize, 0), 1000)),
		PageToken: pageToken,
	})
	if err != nil {
		return nil, "", wrapErr("list layers", err)
	}
	out := make([]LayerInfo, 0, len(resp.GetLayers()))
	for _, l := range resp.GetLayers() {
		out = append(out, layerInfo(l))
	}
	return out, resp.GetNextPageToken(), nil
}

// Delete removes a layer; a missing layer is ErrNotFound. The step
// records that name it are deleted with it.
func (c *Client) Delete(ctx context.Context, d digest.Digest) error {
	if err := checkDigest("delete", d); err != nil {
		return err
	}
	_, err := c.layers.DeleteLayer(ctx, &cairnv1.DeleteLayerRequest{Digest: d.String()})
	return wrapErr("delete "+d.String(), err)
}

// checkDigest validates a digest before it goes on the wire, so that a
// typo gets a local, precise error.
func checkDigest(op string, d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return &Error{Op: op, Message: fmt.Sprintf("%q is not a digest (want sha256:<64 hex digits>): %v", d, err), kind: ErrInvalidArgument}
	}
	return nil
}

func layerInfo(l *cairnv1.Layer) LayerInfo {
	info := LayerInfo{
		Digest:     digest.Digest(l.GetDigest()),
		Size:       l.GetSizeBytes(),
		StoredSize: l.GetStoredSizeBytes(),
		MediaType:  l.GetMediaType(),
		Chunks:     int(l.GetChunkCount()),

		DamagedChunks: int(l.GetDamagedChunkCount()),
	}
	if t := l.GetCreateTime(); t != nil {
		info.Created = t.AsTime()
	}
	if t := l.GetAccessTime(); t != nil {
		info.Accessed = t.AsTime()
	}
	return info
}
