package cache

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"strings"
	"time"

	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
)

// This file holds every stored format: backend object keys and bodies, and
// index keys and values. Changing any of them is a format change.

// chunkID is a chunk's content hash; package chunkid says which and why.
type chunkID = chunkid.ID

// ChunkDigest returns the digest clients must name a chunk by (see package
// chunkid: BLAKE3 of its uncompressed bytes, chosen by measurement). Chunk
// records and pack tables record the algorithm.
func ChunkDigest(data []byte) digest.Digest { return chunkid.Of(data) }

// parseChunkID validates a chunk digest from a caller (package chunkid); a
// mistake is an ErrInvalidArgument that says which.
func parseChunkID(d digest.Digest) (chunkID, error) {
	id, err := chunkid.Parse(string(d))
	if err != nil {
		return id, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
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

// Backend layout. Keep "where does X live" in these functions only.
const (
	packPrefix  = "packs/"
	layerPrefix = "layers/"
	stepPrefix  = "steps/"
)

// packID names a pack object: 16 random bytes. Packs are not named by
// their content: hashing every pack again would cost a pass over all
// stored bytes, and each chunk in it is verified by its own hash anyway.
type packID [16]byte

func (p packID) String() string { return hex.EncodeToString(p[:]) }

const packIDSize = len(packID{})

// newPackID returns a fresh random pack name.
func newPackID() packID {
	var p packID
	rand.Read(p[:]) // never fails (crypto/rand)
	return p
}

// packKey is where pack p lives: packs/<first 2 hex>/<32 hex>. The fan-out
// keeps directories of the fs backend small.
func packKey(p packID) string {
	h := p.String()
	return packPrefix + h[:2] + "/" + h
}

// packIDFromKey parses a key written by packKey.
func packIDFromKey(key string) (packID, bool) {
	var p packID
	rest, ok := strings.CutPrefix(key, packPrefix)
	if !ok || len(rest) != 3+2*len(p) || rest[2] != '/' || rest[:2] != rest[3:5] {
		return p, false
	}
	_, err := hex.Decode(p[:], []byte(rest[3:]))
	return p, err == nil
}

// layerKey is where a layer's manifest lives: layers/<alg>/<hex>.
func layerKey(d digest.Digest) string {
	return layerPrefix + string(d.Algorithm()) + "/" + d.Encoded()
}

// stepObjectKey is where a step record lives: steps/<hex of the key>.
func stepObjectKey(key digest.Digest) string { return stepPrefix + key.Encoded() }

// Chunk records (one per chunk, inside a pack): a fixed header, then the
// payload.
//
//	offset size
//	0      4    magic "CRNC"
//	4      1    format version (1)
//	5      1    hash algorithm of the chunk ID (2 = BLAKE3)
//	6      1    codec of the payload (1 = one zstd frame)
//	7      1    reserved, 0
//	8      8    uncompressed size, little-endian
const (
	chunkMagic      = "CRNC"
	chunkVersion    = 1
	chunkHashBLAKE3 = 2 // 1 was SHA-256, before packs
	codecZstd       = 1
	chunkHeaderSize = 16
)

// putChunkHeader writes the header for a chunk of size uncompressed bytes.
func putChunkHeader(b []byte, size int) {
	copy(b, chunkMagic)
	b[4], b[5], b[6], b[7] = chunkVersion, chunkHashBLAKE3, codecZstd, 0
	binary.LittleEndian.PutUint64(b[8:16], uint64(size))
}

// parseChunkHeader checks a chunk record's header and returns the
// uncompressed size and the payload.
func parseChunkHeader(obj []byte) (size int64, payload []byte, err error) {
	if len(obj) < chunkHeaderSize || string(obj[:4]) != chunkMagic {
		return 0, nil, errors.New("not a chunk record (bad magic)")
	}
	if obj[4] != chunkVersion || obj[5] != chunkHashBLAKE3 || obj[6] != codecZstd {
		return 0, nil, fmt.Errorf("unsupported chunk format: version %d, hash %d, codec %d", obj[4], obj[5], obj[6])
	}
	s := binary.LittleEndian.Uint64(obj[8:16])
	if s > MaxChunkSize {
		return 0, nil, fmt.Errorf("chunk header claims %d bytes", s)
	}
	return int64(s), obj[chunkHeaderSize:], nil
}

// maxRecordSize bounds the record of a chunk of size bytes: the header and
// a zstd frame, which never exceeds its input by more than a few bytes per
// 128 KiB block (the encoder falls back to raw blocks); twice the size plus
// 1 KiB is far above that and still bounds what a reader allocates.
func maxRecordSize(size uint64) uint64 { return chunkHeaderSize + 2*size + 1024 }

// Packs: chunk records back to back, then a table of contents, then a
// fixed footer, so that Reindex learns what a pack holds from its last
// bytes alone.
//
//	records    chunk records (header and payload), from offset 0
//	table      count entries of packEntrySize bytes:
//	             32  chunk hash
//	              8  offset of the record in the pack, little-endian
//	              4  length of the record (header and payload)
//	              4  uncompressed size
//	footer     16 bytes:
//	              4  magic "CRNP"
//	              1  format version (1)
//	              1  hash algorithm of the chunk IDs (2 = BLAKE3)
//	              2  reserved, 0
//	              4  count of entries
//	              4  CRC-32C of the table
//
// A pack holds at most maxPackChunks records; records lie in table order,
// without gaps, and end where the table starts.
const (
	packMagic      = "CRNP"
	packVersion    = 1
	packEntrySize  = len(chunkID{}) + 16
	packFooterSize = 16
	maxPackChunks  = 4096
)

// packEntry is one record of a pack's table.
type packEntry struct {
	id     chunkID
	off    int64 // of the record in the pack
	stored int64 // bytes of the record: header and compressed payload
	size   int64 // uncompressed bytes
}

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// appendPackTable appends the table and footer for entries to b.
func appendPackTable(b []byte, entries []packEntry) []byte {
	start := len(b)
	for _, e := range entries {
		b = append(b, e.id[:]...)
		b = binary.LittleEndian.AppendUint64(b, uint64(e.off))
		b = binary.LittleEndian.AppendUint32(b, uint32(e.stored))
		b = binary.LittleEndian.AppendUint32(b, uint32(e.size))
	}
	sum := crc32.Checksum(b[start:], crc32c)
	b = append(b, packMagic...)
	b = append(b, packVersion, chunkHashBLAKE3, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	return binary.LittleEndian.AppendUint32(b, sum)
}

// parsePackFooter checks the footer of a pack of packSize bytes and returns
// how many entries its table has.
func parsePackFooter(footer []byte, packSize int64) (int, error) {
	if len(footer) != packFooterSize || string(footer[:4]) != packMagic {
		return 0, errors.New("not a pack (bad magic)")
	}
	if footer[4] != packVersion || footer[5] != chunkHashBLAKE3 {
		return 0, fmt.Errorf("unsupported pack format: version %d, hash %d", footer[4], footer[5])
	}
	n := int64(binary.LittleEndian.Uint32(footer[8:12]))
	if n > maxPackChunks || packFooterSize+n*int64(packEntrySize) > packSize {
		return 0, fmt.Errorf("pack footer claims %d chunks in %d bytes", n, packSize)
	}
	return int(n), nil
}

// parsePackTable checks a pack's table against the footer's checksum and
// the pack's size: records in order, without gaps, ending at the table.
func parsePackTable(table, footer []byte, packSize int64) ([]packEntry, error) {
	n := len(table) / packEntrySize
	if len(table)%packEntrySize != 0 || int(binary.LittleEndian.Uint32(footer[8:12])) != n {
		return nil, errors.New("pack table has the wrong length")
	}
	if crc32.Checksum(table, crc32c) != binary.LittleEndian.Uint32(footer[12:16]) {
		return nil, errors.New("pack table fails its checksum")
	}
	end := packSize - int64(len(table)) - packFooterSize
	entries := make([]packEntry, n)
	var next int64
	for i := range entries {
		b := table[i*packEntrySize:]
		e := &entries[i]
		copy(e.id[:], b)
		b = b[len(e.id):]
		e.off = int64(binary.LittleEndian.Uint64(b))
		e.stored = int64(binary.LittleEndian.Uint32(b[8:]))
		e.size = int64(binary.LittleEndian.Uint32(b[12:]))
		if e.off != next || e.stored < chunkHeaderSize || e.size <= 0 || e.size > MaxChunkSize || uint64(e.stored) > maxRecordSize(uint64(e.size)) {
			return nil, fmt.Errorf("pack table entry %d: offset %d, %d bytes stored, size %d", i, e.off, e.stored, e.size)
		}
		next = e.off + e.stored
	}
	if next != end {
		return nil, fmt.Errorf("pack records end at %d, the table starts at %d", next, end)
	}
	return entries, nil
}

// Index keys; doc.go lists them.
var (
	idxChunk  = []byte("c/")
	idxLayer  = []byte("l/")
	idxStep   = []byte("k/")
	idxHits   = []byte("h/")
	idxAccess = []byte("a/")
	// idxFormat holds indexFormat: an index written by another version of
	// the formats is refused with a clear error, not misread.
	idxFormat = []byte("v/format")
)

// indexFormat names the index and backend formats of this version: chunks
// named by BLAKE3, in packs (2); 1 was one backend object per chunk, named
// by SHA-256.
const indexFormat = "cairn-index-2"

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

// chunkInfo is the index value under c/<id>: where the chunk's record is
// (pack, offset, length), its uncompressed size, the reference count and
// when the entry was made. refs counts recipe entries of committed layers
// naming the chunk: a chunk that appears three times in one layer holds
// three references. An entry with refs 0 is a chunk that is durable in the
// backend but that no committed layer uses (uploaded ahead of a commit, or
// left by a delete); added lets the garbage collector give uploads ahead of
// a commit a grace period.
type chunkInfo struct {
	size   int64 // uncompressed bytes
	stored int64 // bytes of the chunk record (header and compressed payload)
	refs   int64
	added  int64 // Unix seconds when the index learnt of the chunk
	pack   packID
	off    int64 // of the record in the pack
}

func (ci chunkInfo) encode() []byte {
	b := make([]byte, 0, 5*binary.MaxVarintLen64+len(ci.pack))
	b = binary.AppendUvarint(b, uint64(ci.size))
	b = binary.AppendUvarint(b, uint64(ci.stored))
	b = binary.AppendUvarint(b, uint64(ci.refs))
	b = binary.AppendUvarint(b, uint64(ci.added))
	b = binary.AppendUvarint(b, uint64(ci.off))
	return append(b, ci.pack[:]...)
}

func decodeChunkInfo(b []byte) (chunkInfo, error) {
	var v [5]uint64
	for i := range v {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return chunkInfo{}, fmt.Errorf("%w: corrupt chunk index entry", ErrDataLoss)
		}
		v[i], b = x, b[n:]
	}
	// Every field is checked: readers size buffers and slice packs by them.
	if v[0] < 1 || v[0] > MaxChunkSize || v[1] < chunkHeaderSize || v[1] > maxRecordSize(v[0]) ||
		v[2] > math.MaxInt64 || v[3] > math.MaxInt64 || v[4] > math.MaxInt64-v[1] || len(b) != packIDSize {
		return chunkInfo{}, fmt.Errorf("%w: corrupt chunk index entry", ErrDataLoss)
	}
	ci := chunkInfo{size: int64(v[0]), stored: int64(v[1]), refs: int64(v[2]), added: int64(v[3]), off: int64(v[4])}
	copy(ci.pack[:], b)
	return ci, nil
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
		if b == nil || lr.recipe[i].size < 1 || lr.recipe[i].size > MaxChunkSize {
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
	ChunkHash string          `json:"chunkHash"` // "blake3"
	Chunks    []manifestChunk `json:"chunks"`
}

type manifestChunk struct {
	Digest string `json:"d"` // hex of the chunk hash
	Size   int64  `json:"s"`
}

const manifestVersion = 1

func (lr *layerRecord) manifest() ([]byte, error) {
	m := layerManifest{Version: manifestVersion, Digest: lr.digest, Size: lr.size, MediaType: lr.mediaType,
		Created: lr.created, ChunkHash: string(chunkid.Algorithm), Chunks: make([]manifestChunk, len(lr.recipe))}
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
	if m.Version != manifestVersion || m.ChunkHash != string(chunkid.Algorithm) {
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
