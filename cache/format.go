package cache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/opencontainers/go-digest"
)

// This file holds every stored format: backend object keys and bodies, and
// index keys and values. Changing any of them is a format change.

// chunkID is a chunk's content hash (SHA-256 of its uncompressed bytes).
type chunkID [sha256.Size]byte

func (id chunkID) digest() digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(id[:]))
}

func (id chunkID) String() string { return string(id.digest()) }

// ChunkDigest returns the digest clients must name a chunk by: SHA-256 of its
// uncompressed bytes. SHA-256 over BLAKE3: zstd is about 80 % of ingest CPU,
// so BLAKE3 would save under 10 % (MEASUREMENTS.md and BenchmarkChunkHash),
// while SHA-256 is in every client's standard library, has SHA-NI here and
// is what OCI digests already use. Chunk objects record the algorithm in
// their header, so it can change later.
func ChunkDigest(data []byte) digest.Digest {
	return chunkID(sha256.Sum256(data)).digest()
}

// parseChunkID validates a chunk digest from a caller.
func parseChunkID(d digest.Digest) (chunkID, error) {
	var id chunkID
	if err := d.Validate(); err != nil {
		return id, fmt.Errorf("%w: chunk digest %q: %w", ErrInvalidArgument, d, err)
	}
	if d.Algorithm() != digest.SHA256 {
		return id, fmt.Errorf("%w: chunk digest %q: algorithm %q not supported, chunks are named by sha256", ErrInvalidArgument, d, d.Algorithm())
	}
	if _, err := hex.Decode(id[:], []byte(d.Encoded())); err != nil {
		return id, fmt.Errorf("%w: chunk digest %q: %w", ErrInvalidArgument, d, err)
	}
	return id, nil
}

// parseLayerDigest validates a layer digest from a caller. Only sha256 is
// accepted: the cache computes layer digests while streaming and stores
// them under layers/<alg>/, so sha512 could be added without a format change.
func parseLayerDigest(d digest.Digest) error {
	if err := d.Validate(); err != nil {
		return fmt.Errorf("%w: layer digest %q: %w", ErrInvalidArgument, d, err)
	}
	if d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("%w: layer digest %q: algorithm %q not supported (sha256 only)", ErrInvalidArgument, d, d.Algorithm())
	}
	return nil
}

// Backend layout. Keep "where does X live" in these functions only: packing
// several chunks into one object later changes chunkKey and nothing else.
const (
	chunkPrefix = "chunks/"
	layerPrefix = "layers/"
	stepPrefix  = "steps/"
)

// chunkKey is where chunk id lives: chunks/<first 2 hex>/<64 hex>. The fan-out
// keeps directories of the fs backend small.
func chunkKey(id chunkID) string {
	h := hex.EncodeToString(id[:])
	return chunkPrefix + h[:2] + "/" + h
}

// chunkIDFromKey parses a key written by chunkKey.
func chunkIDFromKey(key string) (chunkID, bool) {
	var id chunkID
	rest, ok := strings.CutPrefix(key, chunkPrefix)
	if !ok || len(rest) != 3+2*len(id) || rest[2] != '/' || rest[:2] != rest[3:5] {
		return id, false
	}
	_, err := hex.Decode(id[:], []byte(rest[3:]))
	return id, err == nil
}

// layerKey is where a layer's manifest lives: layers/<alg>/<hex>.
func layerKey(d digest.Digest) string {
	return layerPrefix + string(d.Algorithm()) + "/" + d.Encoded()
}

// stepObjectKey is where a step record lives: steps/<hex of the key>.
func stepObjectKey(key digest.Digest) string { return stepPrefix + key.Encoded() }

// Chunk objects: a fixed header, then the payload.
//
//	offset size
//	0      4    magic "CRNC"
//	4      1    format version (1)
//	5      1    hash algorithm of the chunk ID (1 = SHA-256)
//	6      1    codec of the payload (1 = one zstd frame)
//	7      1    reserved, 0
//	8      8    uncompressed size, little-endian
const (
	chunkMagic      = "CRNC"
	chunkVersion    = 1
	chunkHashSHA256 = 1
	codecZstd       = 1
	chunkHeaderSize = 16
)

// putChunkHeader writes the header for a chunk of size uncompressed bytes.
func putChunkHeader(b []byte, size int) {
	copy(b, chunkMagic)
	b[4], b[5], b[6], b[7] = chunkVersion, chunkHashSHA256, codecZstd, 0
	binary.LittleEndian.PutUint64(b[8:16], uint64(size))
}

// parseChunkHeader checks a chunk object's header and returns the
// uncompressed size and the payload.
func parseChunkHeader(obj []byte) (size int64, payload []byte, err error) {
	if len(obj) < chunkHeaderSize || string(obj[:4]) != chunkMagic {
		return 0, nil, errors.New("not a chunk object (bad magic)")
	}
	if obj[4] != chunkVersion || obj[5] != chunkHashSHA256 || obj[6] != codecZstd {
		return 0, nil, fmt.Errorf("unsupported chunk format: version %d, hash %d, codec %d", obj[4], obj[5], obj[6])
	}
	s := binary.LittleEndian.Uint64(obj[8:16])
	if s > MaxChunkSize {
		return 0, nil, fmt.Errorf("chunk header claims %d bytes", s)
	}
	return int64(s), obj[chunkHeaderSize:], nil
}

// Index keys; doc.go lists them.
var (
	idxChunk  = []byte("c/")
	idxLayer  = []byte("l/")
	idxStep   = []byte("k/")
	idxHits   = []byte("h/")
	idxAccess = []byte("a/")
)

func chunkIdxKey(id chunkID) []byte {
	return append(append(make([]byte, 0, 2+len(id)), idxChunk...), id[:]...)
}
func layerIdxKey(d digest.Digest) []byte {
	return append(append(make([]byte, 0, 2+len(d)), idxLayer...), d...)
}
func accessIdxKey(d digest.Digest) []byte {
	return append(append(make([]byte, 0, 2+len(d)), idxAccess...), d...)
}
func stepIdxKey(key digest.Digest) []byte { return append(append([]byte(nil), idxStep...), key...) }
func hitsIdxKey(key digest.Digest) []byte { return append(append([]byte(nil), idxHits...), key...) }

// chunkInfo is the index value under c/<id>: sizes, the reference count
// and when the entry was made. refs counts recipe entries of committed
// layers naming the chunk: a chunk that appears three times in one layer
// holds three references. An entry with refs 0 is a chunk that is durable
// in the backend but that no committed layer uses (uploaded ahead of a
// commit, or left by a delete); added lets the garbage collector give
// uploads ahead of a commit a grace period.
type chunkInfo struct {
	size   int64 // uncompressed bytes
	stored int64 // bytes of the chunk object (header and compressed payload)
	refs   int64
	added  int64 // Unix seconds when the index learnt of the chunk
}

func (ci chunkInfo) encode() []byte {
	b := make([]byte, 0, 4*binary.MaxVarintLen64)
	b = binary.AppendUvarint(b, uint64(ci.size))
	b = binary.AppendUvarint(b, uint64(ci.stored))
	b = binary.AppendUvarint(b, uint64(ci.refs))
	return binary.AppendUvarint(b, uint64(ci.added))
}

func decodeChunkInfo(b []byte) (chunkInfo, error) {
	var v [4]uint64
	for i := range v {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return chunkInfo{}, errors.New("corrupt chunk index entry")
		}
		v[i], b = x, b[n:]
	}
	return chunkInfo{size: int64(v[0]), stored: int64(v[1]), refs: int64(v[2]), added: int64(v[3])}, nil
}

// recipeEntry is one chunk of a layer, in order.
type recipeEntry struct {
	id   chunkID
	size int64
}

// layerRecord is the index value under l/<digest>.
type layerRecord struct {
	digest    digest.Digest
	size      int64
	stored    int64
	mediaType string
	created   time.Time
	recipe    []recipeEntry
}

const layerRecordVersion = 1

func (lr *layerRecord) encode() []byte {
	b := make([]byte, 0, 64+len(lr.mediaType)+len(lr.recipe)*(len(chunkID{})+3))
	b = append(b, layerRecordVersion)
	b = binary.AppendUvarint(b, uint64(lr.size))
	b = binary.AppendUvarint(b, uint64(lr.stored))
	b = binary.AppendUvarint(b, uint64(len(lr.mediaType)))
	b = append(b, lr.mediaType...)
	b = binary.AppendVarint(b, lr.created.UnixNano())
	b = binary.AppendUvarint(b, uint64(len(lr.recipe)))
	for _, e := range lr.recipe {
		b = append(b, e.id[:]...)
		b = binary.AppendUvarint(b, uint64(e.size))
	}
	return b
}

func decodeLayerRecord(d digest.Digest, b []byte) (*layerRecord, error) {
	bad := fmt.Errorf("%w: corrupt index record for layer %s", ErrDataLoss, d)
	if len(b) == 0 || b[0] != layerRecordVersion {
		return nil, bad
	}
	b = b[1:]
	uv := func() uint64 {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			b = nil
			return 0
		}
		b = b[n:]
		return x
	}
	lr := &layerRecord{digest: d}
	lr.size = int64(uv())
	lr.stored = int64(uv())
	mtLen := uv()
	if uint64(len(b)) < mtLen {
		return nil, bad
	}
	lr.mediaType, b = string(b[:mtLen]), b[mtLen:]
	created, n := binary.Varint(b)
	if n <= 0 {
		return nil, bad
	}
	b = b[n:]
	lr.created = time.Unix(0, created).UTC()
	count := uv()
	if count > uint64(len(b))/uint64(len(chunkID{})+1) {
		return nil, bad
	}
	lr.recipe = make([]recipeEntry, count)
	for i := range lr.recipe {
		if len(b) < len(chunkID{}) {
			return nil, bad
		}
		copy(lr.recipe[i].id[:], b)
		b = b[len(chunkID{}):]
		lr.recipe[i].size = int64(uv())
		if b == nil {
			return nil, bad
		}
	}
	return lr, nil
}

// layerManifest is a layer's backend object, layers/<alg>/<hex>: everything
// Reindex needs to restore the layer. JSON, so that an operator can read it.
type layerManifest struct {
	Version   int             `json:"version"`
	Digest    digest.Digest   `json:"digest"`
	Size      int64           `json:"size"`
	MediaType string          `json:"mediaType"`
	Created   time.Time       `json:"created"`
	ChunkHash string          `json:"chunkHash"` // "sha256"
	Chunks    []manifestChunk `json:"chunks"`
}

type manifestChunk struct {
	Digest string `json:"d"` // hex of the chunk hash
	Size   int64  `json:"s"`
}

const manifestVersion = 1

func (lr *layerRecord) manifest() ([]byte, error) {
	m := layerManifest{Version: manifestVersion, Digest: lr.digest, Size: lr.size, MediaType: lr.mediaType,
		Created: lr.created, ChunkHash: "sha256", Chunks: make([]manifestChunk, len(lr.recipe))}
	for i, e := range lr.recipe {
		m.Chunks[i] = manifestChunk{Digest: hex.EncodeToString(e.id[:]), Size: e.size}
	}
	return json.Marshal(m)
}

func parseManifest(b []byte) (*layerRecord, error) {
	var m layerManifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	if m.Version != manifestVersion || m.ChunkHash != "sha256" {
		return nil, fmt.Errorf("unsupported manifest version %d, chunk hash %q", m.Version, m.ChunkHash)
	}
	if err := parseLayerDigest(m.Digest); err != nil {
		return nil, err
	}
	lr := &layerRecord{digest: m.Digest, size: m.Size, mediaType: m.MediaType, created: m.Created.UTC(),
		recipe: make([]recipeEntry, len(m.Chunks))}
	var total int64
	for i, c := range m.Chunks {
		if len(c.Digest) != 2*len(chunkID{}) || c.Size <= 0 || c.Size > MaxChunkSize {
			return nil, fmt.Errorf("bad chunk %d", i)
		}
		if _, err := hex.Decode(lr.recipe[i].id[:], []byte(c.Digest)); err != nil {
			return nil, fmt.Errorf("bad chunk %d: %w", i, err)
		}
		lr.recipe[i].size = c.Size
		total += c.Size
	}
	if total != m.Size {
		return nil, fmt.Errorf("chunks add up to %d bytes, manifest says %d", total, m.Size)
	}
	return lr, nil
}
