package client

import (
	"fmt"

	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
)

// ChunkDigest returns the identifier of a chunk: the BLAKE3 of its
// uncompressed bytes, as "blake3:<hex>" (package chunkid, which the server
// uses too: if the two disagreed, no chunk would ever be found and every
// commit would fail).
func ChunkDigest(data []byte) digest.Digest { return chunkid.Of(data) }

// verifyChunk checks that data hashes to id.
func verifyChunk(id digest.Digest, data []byte) error {
	want, err := chunkid.Parse(string(id))
	if err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidArgument, err)
	}
	if got := chunkid.Sum(data); got != want {
		return fmt.Errorf("%w: chunk %s: got %s", ErrDataLoss, id, got)
	}
	return nil
}
