package client

import (
	"fmt"

	"github.com/opencontainers/go-digest"
)

// ChunkDigest returns the identifier of a chunk: the SHA-256 of its
// uncompressed bytes, as "sha256:<hex>". It must agree with the server's
// chunk hash, or no chunk would ever be found and every commit would fail.
func ChunkDigest(data []byte) digest.Digest {
	return digest.FromBytes(data)
}

// verifyChunk checks that data hashes to id.
func verifyChunk(id digest.Digest, data []byte) error {
	if err := id.Validate(); err != nil {
		return fmt.Errorf("%w: chunk digest %q: %v", ErrInvalidArgument, id, err)
	}
	if got := id.Algorithm().FromBytes(data); got != id {
		return fmt.Errorf("%w: chunk %s: got %s", ErrDataLoss, id, got)
	}
	return nil
}
