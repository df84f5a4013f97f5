package cache

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/cairnbuild/cairn/recompress"
	"github.com/opencontainers/go-digest"
)

// This file holds the stored formats of the facade: where layer manifests
// and step records live in the backend, and the layer manifest. Packs and
// chunk records are package pack's, index values package index's.
// Changing any of them is a format change: the golden vectors in testdata
// must change with it.

// ChunkDigest returns the digest clients must name a chunk by (see package
// chunkid: BLAKE3 of its uncompressed bytes, chosen by measurement). Chunk
// records and pack tables record the algorithm.
func ChunkDigest(data []byte) digest.Digest { return chunkid.Of(data) }

// ParseLayerDigest validates a layer digest from a caller: well formed,
// and sha256 or sha512 (the registry front accepts both; the cache hashes a
// push with the algorithm of its expected digest and stores manifests under
// layers/<alg>/). A mistake is an ErrInvalidArgument that says which. It checks
// the hex by hand: go-digest's Validate runs a regular expression, which
// cost a tenth of a step lookup's CPU.
func ParseLayerDigest(d digest.Digest) error {
	s := string(d)
	alg, hexPart, ok := cutDigest(s)
	switch {
	case !ok:
		return fmt.Errorf("%w: layer digest %q: %w", ErrInvalidArgument, clip(s), digest.ErrDigestInvalidFormat)
	case alg != string(digest.SHA256) && alg != string(digest.SHA512):
		if digest.Algorithm(alg).Available() {
			return fmt.Errorf("%w: layer digest %q: algorithm %q not supported (sha256 and sha512 only)", ErrInvalidArgument, clip(s), alg)
		}
		return fmt.Errorf("%w: layer digest %q: %w", ErrInvalidArgument, clip(s), digest.ErrDigestUnsupported)
	case len(hexPart) != digest.Algorithm(alg).Size()*2 || !isLowerHex(hexPart):
		return fmt.Errorf("%w: layer digest %q: %w", ErrInvalidArgument, clip(s), digest.ErrDigestInvalidLength)
	}
	return nil
}

func cutDigest(s string) (alg, enc string, ok bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return s[:i], s[i+1:], i > 0
		}
	}
	return "", "", false
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// clip shortens what an error message quotes of a caller's input.
func clip(s string) string {
	if len(s) > 100 {
		return s[:100] + "…"
	}
	return s
}

// Backend layout. Keep "where does X live" in these functions only
// (pack.Key for packs).
const (
	layerPrefix = "layers/"
	stepPrefix  = "steps/"
)

// layerKey is where a layer's manifest lives: layers/<alg>/<hex>.
func layerKey(d digest.Digest) string {
	return layerPrefix + string(d.Algorithm()) + "/" + d.Encoded()
}

// stepObjectKey is where a step record lives: steps/<hex of the key>.
func stepObjectKey(key digest.Digest) string { return stepPrefix + key.Encoded() }

// layerManifest is a layer's backend object, layers/<alg>/<hex>: everything
// Reindex needs to restore the layer. JSON, so that an operator can read it.
type layerManifest struct {
	Version   int             `json:"version"`
	Digest    digest.Digest   `json:"digest"`
	Size      int64           `json:"size"`
	MediaType string          `json:"mediaType"`
	Created   time.Time       `json:"created"`
	ChunkHash string          `json:"chunkHash"` // "blake3"
	Chunks    []manifestChunk `json:"chunks"`
	// Rebuild, on a compressed blob stored as its uncompressed content, is
	// the encoder spec (package recompress) that turns Chunks (which then
	// add up to the content's size, not Size) back into the blob.
	Rebuild json.RawMessage `json:"rebuild,omitempty"`
	// Tar, on a tar stored split (package tarsplit), holds its meta
	// stream's chunks and its size: Chunks are then the files' contents.
	Tar *manifestTar `json:"tar,omitempty"`
	// Unrooted: only the registry front holds the layer, so the garbage
	// collector takes it once no tag, young manifest or step record
	// reaches it (gc_roots.go). Absent on layers pushed through the gRPC
	// API, and on every layer stored before the registry's collection:
	// those are roots.
	Unrooted bool `json:"unrooted,omitempty"`
}

type manifestTar struct {
	Size int64           `json:"size"`
	Meta []manifestChunk `json:"meta"`
}

type manifestChunk struct {
	Digest string `json:"d"` // hex of the chunk hash
	Size   int64  `json:"s"`
}

// Manifest versions: 1, a plain recipe; 2, with `rebuild` or `tar`, so
// that a cairn from before those fields skips such a manifest (and says
// so) instead of restoring a recipe it would misread.
const (
	manifestVersion        = 1
	manifestVersionRebuilt = 2
)

func marshalManifest(lr *index.LayerRecord) ([]byte, error) {
	m := layerManifest{Version: manifestVersion, Digest: lr.Digest, Size: lr.Size, MediaType: lr.MediaType,
		Created: lr.Created, ChunkHash: string(chunkid.Algorithm), Chunks: make([]manifestChunk, len(lr.Recipe)), Rebuild: lr.Rebuild,
		Unrooted: lr.Unrooted}
	for i, e := range lr.Recipe {
		m.Chunks[i] = manifestChunk{Digest: hex.EncodeToString(e.ID[:]), Size: e.Size}
	}
	if lr.Rebuild != nil || lr.Tar != nil {
		m.Version = manifestVersionRebuilt
	}
	if lr.Tar != nil {
		m.Tar = &manifestTar{Size: lr.Tar.Size, Meta: make([]manifestChunk, len(lr.Tar.Meta))}
		for i, e := range lr.Tar.Meta {
			m.Tar.Meta[i] = manifestChunk{Digest: hex.EncodeToString(e.ID[:]), Size: e.Size}
		}
	}
	return json.Marshal(m)
}

// parseChunks reads a manifest's chunk list; total is their bytes.
func parseChunks(cs []manifestChunk) (r []index.RecipeEntry, total int64, err error) {
	r = make([]index.RecipeEntry, len(cs))
	for i, c := range cs {
		if len(c.Digest) != 2*len(chunkid.ID{}) || c.Size <= 0 || c.Size > pack.MaxChunkSize {
			return nil, 0, fmt.Errorf("bad chunk %d", i)
		}
		if _, err := hex.Decode(r[i].ID[:], []byte(c.Digest)); err != nil {
			return nil, 0, fmt.Errorf("bad chunk %d: %w", i, err)
		}
		r[i].Size = c.Size
		total += c.Size
	}
	return r, total, nil
}

func parseManifest(b []byte) (*index.LayerRecord, error) {
	var m layerManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if m.Version != manifestVersion && m.Version != manifestVersionRebuilt || m.ChunkHash != string(chunkid.Algorithm) {
		return nil, fmt.Errorf("unsupported manifest version %d, chunk hash %q", m.Version, m.ChunkHash)
	}
	if (m.Version == manifestVersionRebuilt) != (m.Rebuild != nil || m.Tar != nil) {
		return nil, fmt.Errorf("manifest version %d with rebuild %v and tar %v", m.Version, m.Rebuild != nil, m.Tar != nil)
	}
	if err := ParseLayerDigest(m.Digest); err != nil {
		return nil, err
	}
	lr := &index.LayerRecord{Digest: m.Digest, Size: m.Size, MediaType: m.MediaType, Created: m.Created.UTC(), Unrooted: m.Unrooted}
	if m.Rebuild != nil {
		if len(m.Rebuild) > index.MaxRebuildSpec {
			return nil, fmt.Errorf("a rebuild spec of %d bytes", len(m.Rebuild))
		}
		if _, err := recompress.Unmarshal(m.Rebuild); err != nil {
			return nil, err
		}
		lr.Rebuild = []byte(m.Rebuild)
	}
	var total int64
	var err error
	if lr.Recipe, total, err = parseChunks(m.Chunks); err != nil {
		return nil, err
	}
	raw := total
	if m.Tar != nil {
		meta, metaTotal, err := parseChunks(m.Tar.Meta)
		if err != nil {
			return nil, fmt.Errorf("tar meta: %w", err)
		}
		if total > m.Tar.Size || total+metaTotal < m.Tar.Size {
			return nil, fmt.Errorf("a split tar of %d bytes from %d of content and %d of meta", m.Tar.Size, total, metaTotal)
		}
		lr.Tar = &index.TarLayout{Size: m.Tar.Size, Meta: meta}
		raw = m.Tar.Size
	}
	if raw != m.Size && lr.Rebuild == nil {
		return nil, fmt.Errorf("chunks add up to %d bytes, manifest says %d", raw, m.Size)
	}
	return lr, nil
}

// layerInfo describes lr; DamagedChunks is left to Cache.info.
func layerInfo(lr *index.LayerRecord, accessed time.Time) LayerInfo {
	info := LayerInfo{Digest: lr.Digest, Size: lr.Size, StoredSize: lr.Stored, MediaType: lr.MediaType,
		Chunks: len(lr.Recipe), Created: lr.Created, Accessed: accessed, SplitTar: lr.Tar != nil}
	if lr.Tar != nil {
		info.Chunks += len(lr.Tar.Meta)
	}
	if lr.Rebuild != nil {
		if spec, err := recompress.Unmarshal(lr.Rebuild); err == nil {
			info.Rebuilt = spec.String()
		} else {
			info.Rebuilt = "unreadable spec"
		}
	}
	return info
}

// info describes lr, with its quarantined chunks counted.
func (c *Cache) info(lr *index.LayerRecord, accessed time.Time) LayerInfo {
	info := layerInfo(lr, accessed)
	info.DamagedChunks = len(c.idx.DamagedChunks(lr))
	return info
}
