// Package index is cairn's Badger schema: the keys and value encodings of
// the index, reference-count transactions (including commits too big for
// one transaction), and the batching of hit counts and access times. It is
// the only package that imports Badger.
//
// Keys:
//
//	v/format                            Format: Open refuses others
//	c/<32 raw bytes of the chunk hash>  ChunkInfo
//	l/<layer digest string>             LayerRecord
//	a/<layer digest string>             last access, varint Unix nanoseconds
//	k/<step key digest string>          step record (opaque to this package)
//	h/<step key digest string>          Hits
//	q/<32 raw bytes of the chunk hash>  when the chunk was quarantined (see quarantine.go)
//	s/<layer digest>/<step key>         empty: step records by the layer they name
//	v/steps-by-layer                    empty: s/ entries exist for every step
//	g/<16 bytes of a pack ID>           when the pack was marked for deletion (see gc.go)
//	z/<8 bytes of a feature>            a compacted pack holding a chunk with it (see hints.go)
//
// Changing an encoding in this file is a format change: the golden vectors
// in testdata must change with it.
package index

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
)

// Index keys.
var (
	idxChunk  = []byte("c/")
	idxLayer  = []byte("l/")
	idxStep   = []byte("k/")
	idxHits   = []byte("h/")
	idxAccess = []byte("a/")
	// idxQuarantine marks chunks with no good copy: see quarantine.go.
	idxQuarantine = []byte("q/")
	idxStepLayer  = []byte("s/")
	idxPending    = []byte("g/")
	// idxStepLayerMarker says that every step record has its s/ entry
	// (records written before s/ existed get theirs at Open).
	idxStepLayerMarker = []byte("v/steps-by-layer")
	// idxFormat holds Format: an index written by another version of the
	// formats is refused with a clear error, not misread.
	idxFormat = []byte("v/format")
)

// Format names the index and backend formats of this version: chunks in
// packs of format 2, whose entries may name a place in a frame (3); 2 was
// chunks named by BLAKE3 in packs of one record per chunk, which this
// version reads as they are (Open marks such an index 3, so that a cairn of
// format 2 refuses it rather than misread a compacted entry); 1 was one
// backend object per chunk, named by SHA-256.
const (
	Format         = "cairn-index-3"
	formatUpgraded = "cairn-index-2"
)

func chunkKey(id chunkid.ID) []byte {
	return append(append(make([]byte, 0, 2+len(id)), idxChunk...), id[:]...)
}
func layerKey(d digest.Digest) []byte {
	return append(append(make([]byte, 0, 2+len(d)), idxLayer...), d...)
}
func accessKey(d digest.Digest) []byte {
	return append(append(make([]byte, 0, 2+len(d)), idxAccess...), d...)
}
func stepKey(key digest.Digest) []byte { return append(append([]byte(nil), idxStep...), key...) }
func hitsKey(key digest.Digest) []byte { return append(append([]byte(nil), idxHits...), key...) }

// ChunkInfo is the value under c/<id>: where the chunk's record is (pack,
// offset, length) and, if the record is a frame of several chunks, where
// in the frame; its uncompressed size, the reference count and when the
// entry was last touched. Refs counts recipe entries of committed layers
// naming the chunk: a chunk that appears three times in one layer holds
// three references. An entry with refs 0 is a chunk that is durable in the
// backend but that no committed layer uses (uploaded ahead of a commit, or
// left by a delete). Added is when the index learnt of the chunk or a
// commit last referenced it: the garbage collector spares entries touched
// within its grace period.
type ChunkInfo struct {
	Size   int64 // uncompressed bytes
	Stored int64 // bytes of the record (header and compressed payload)
	Refs   int64
	Added  int64 // Unix seconds
	Pack   pack.ID
	Off    int64 // of the record in the pack
	// Frame is the uncompressed size of the frame the record holds, 0 if
	// it holds this chunk alone; InFrame is the chunk's offset in it.
	InFrame, Frame int64
}

// Entry returns the pack table entry ci describes.
func (ci ChunkInfo) Entry(id chunkid.ID) pack.Entry {
	return pack.Entry{ID: id, Off: ci.Off, Stored: ci.Stored, Size: ci.Size, InFrame: ci.InFrame, Frame: ci.Frame}
}

// Bytes is the chunk's share of stored bytes: its record's, or, in a
// frame, the frame record's in proportion to the chunk's size. Accounts
// of stored bytes add shares, so that a frame counts once.
func (ci ChunkInfo) Bytes() int64 {
	if ci.Frame == 0 {
		return ci.Stored
	}
	return ci.Stored * ci.Size / ci.Frame
}

// Encode returns the stored form: uvarints size, stored, refs, added,
// offset, then the 16 bytes of the pack name, then for a chunk in a frame
// the uvarints offset in the frame and frame size (entries written before
// frames end at the pack name, and still read).
func (ci ChunkInfo) Encode() []byte {
	b := make([]byte, 0, 7*binary.MaxVarintLen64+len(ci.Pack))
	b = binary.AppendUvarint(b, uint64(ci.Size))
	b = binary.AppendUvarint(b, uint64(ci.Stored))
	b = binary.AppendUvarint(b, uint64(ci.Refs))
	b = binary.AppendUvarint(b, uint64(ci.Added))
	b = binary.AppendUvarint(b, uint64(ci.Off))
	b = append(b, ci.Pack[:]...)
	if ci.Frame != 0 {
		b = binary.AppendUvarint(b, uint64(ci.InFrame))
		b = binary.AppendUvarint(b, uint64(ci.Frame))
	}
	return b
}

// DecodeChunkInfo parses Encode's output. Anything malformed is
// ErrDataLoss: readers size buffers and slice packs by these fields.
func DecodeChunkInfo(b []byte) (ChunkInfo, error) {
	var v [7]uint64
	bad := fmt.Errorf("%w: corrupt chunk index entry", cerr.ErrDataLoss)
	for i := range 5 {
		x, n := binary.Uvarint(b)
		if n <= 0 {
			return ChunkInfo{}, bad
		}
		v[i], b = x, b[n:]
	}
	if len(b) < pack.IDSize {
		return ChunkInfo{}, bad
	}
	var p pack.ID
	copy(p[:], b)
	b = b[pack.IDSize:]
	if len(b) > 0 {
		for i := 5; i < 7; i++ {
			x, n := binary.Uvarint(b)
			if n <= 0 {
				return ChunkInfo{}, bad
			}
			v[i], b = x, b[n:]
		}
		if v[6] == 0 || v[6] > pack.MaxFrameSize || v[5] > v[6] || v[0] > v[6]-v[5] {
			return ChunkInfo{}, bad
		}
	}
	record := max(v[0], v[6]) // what the record holds uncompressed
	if v[0] < 1 || v[0] > pack.MaxChunkSize || v[1] < pack.HeaderSize || v[1] > pack.MaxRecordSize(record) ||
		v[2] > math.MaxInt64 || v[3] > math.MaxInt64 || v[4] > math.MaxInt64-v[1] || len(b) != 0 {
		return ChunkInfo{}, bad
	}
	ci := ChunkInfo{Size: int64(v[0]), Stored: int64(v[1]), Refs: int64(v[2]), Added: int64(v[3]), Off: int64(v[4]),
		Pack: p, InFrame: int64(v[5]), Frame: int64(v[6])}
	return ci, nil
}

// RecipeEntry is one chunk of a layer, in order.
type RecipeEntry struct {
	ID   chunkid.ID
	Size int64
}

// LayerRecord is the value under l/<digest>.
type LayerRecord struct {
	Digest    digest.Digest
	Size      int64
	Stored    int64
	MediaType string
	Created   time.Time
	Recipe    []RecipeEntry
	// Rebuild, if set, is the stored encoder spec of a blob kept as its
	// uncompressed content: Recipe (and Tar) are that content (RawSize
	// bytes), and the spec's encoder turns it back into the Size bytes of
	// the blob.
	Rebuild []byte
	// Tar, if set, says the content is a tar stored split (package
	// tarsplit): Recipe holds the files' contents, Tar.Meta everything
	// else, and the two join into Tar.Size bytes.
	Tar *TarLayout
	// Unrooted: only the registry front holds the layer (see roots.go).
	// Not part of the encoded record: the index keeps it as u/<digest>,
	// the layer's manifest in the backend as a field.
	Unrooted bool
}

// TarLayout is the meta stream of a tar stored split.
type TarLayout struct {
	Size int64
	Meta []RecipeEntry
}

// RawSize is the number of bytes the record's chunks make: Size, or for a
// rebuilt blob the size of its uncompressed content.
func (lr *LayerRecord) RawSize() int64 {
	if lr.Tar != nil {
		return lr.Tar.Size
	}
	var n int64
	for _, e := range lr.Recipe {
		n += e.Size
	}
	return n
}

// ChunkRefs calls fn with every chunk the record references: the recipe's,
// then a split tar's meta chunks.
func (lr *LayerRecord) ChunkRefs(fn func(RecipeEntry)) {
	for _, e := range lr.Recipe {
		fn(e)
	}
	if lr.Tar != nil {
		for _, e := range lr.Tar.Meta {
			fn(e)
		}
	}
}

// Record versions: 1 is a plain layer; 2 adds the rebuild spec (uvarint
// length, bytes) after the media type; 3 is a split tar, rebuilt or not.
const (
	layerRecordVersion   = 1
	rebuiltRecordVersion = 2
	tarRecordVersion     = 3
)

// MaxRebuildSpec is the largest rebuild spec a record holds: a blob whose
// spec (mostly its gzip header's fields) is larger is stored as it came.
const MaxRebuildSpec = 4 << 10

// Encode returns the stored form: version 1, uvarints size, stored, media
// type length, the media type, varint created (Unix ns), uvarint count,
// then per chunk its 32 hash bytes and uvarint size. A rebuilt blob's is
// version 2, with the spec's length and bytes after the media type. A
// split tar's is version 3: after the media type a flags byte (1: rebuilt,
// then the spec as in version 2), and after the recipe the tar's size and
// the meta chunks (count, then hash and size each).
//
// A spec over MaxRebuildSpec is a caller's bug, and Encode panics rather
// than write a record that would not decode.
func (lr *LayerRecord) Encode() []byte {
	if len(lr.Rebuild) > MaxRebuildSpec {
		panic(fmt.Sprintf("index: a rebuild spec of %d bytes, over %d", len(lr.Rebuild), MaxRebuildSpec))
	}
	n := len(lr.Recipe)
	if lr.Tar != nil {
		n += len(lr.Tar.Meta)
	}
	b := make([]byte, 0, 80+len(lr.MediaType)+len(lr.Rebuild)+n*(len(chunkid.ID{})+3))
	switch {
	case lr.Tar != nil:
		b = append(b, tarRecordVersion)
	case lr.Rebuild != nil:
		b = append(b, rebuiltRecordVersion)
	default:
		b = append(b, layerRecordVersion)
	}
	b = binary.AppendUvarint(b, uint64(lr.Size))
	b = binary.AppendUvarint(b, uint64(lr.Stored))
	b = binary.AppendUvarint(b, uint64(len(lr.MediaType)))
	b = append(b, lr.MediaType...)
	if lr.Tar != nil {
		var flags byte
		if lr.Rebuild != nil {
			flags |= 1
		}
		b = append(b, flags)
	}
	if lr.Rebuild != nil {
		b = binary.AppendUvarint(b, uint64(len(lr.Rebuild)))
		b = append(b, lr.Rebuild...)
	}
	b = binary.AppendVarint(b, lr.Created.UnixNano())
	b = appendRecipe(b, lr.Recipe)
	if lr.Tar != nil {
		b = binary.AppendUvarint(b, uint64(lr.Tar.Size))
		b = appendRecipe(b, lr.Tar.Meta)
	}
	return b
}

func appendRecipe(b []byte, r []RecipeEntry) []byte {
	b = binary.AppendUvarint(b, uint64(len(r)))
	for _, e := range r {
		b = append(b, e.ID[:]...)
		b = binary.AppendUvarint(b, uint64(e.Size))
	}
	return b
}

// DecodeLayerRecord parses Encode's output for layer d; anything malformed
// is ErrDataLoss.
func DecodeLayerRecord(d digest.Digest, b []byte) (*LayerRecord, error) {
	bad := fmt.Errorf("%w: corrupt index record for layer %s", cerr.ErrDataLoss, d)
	if len(b) == 0 || b[0] < layerRecordVersion || b[0] > tarRecordVersion {
		return nil, bad
	}
	version := b[0]
	rebuilt, split := version == rebuiltRecordVersion, version == tarRecordVersion
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
	lr := &LayerRecord{Digest: d}
	lr.Size = int64(uv())
	lr.Stored = int64(uv())
	mtLen := uv()
	if b == nil || uint64(len(b)) < mtLen {
		return nil, bad
	}
	lr.MediaType, b = string(b[:mtLen]), b[mtLen:]
	if split {
		if len(b) < 1 || b[0]&^1 != 0 {
			return nil, bad
		}
		rebuilt, b = b[0]&1 != 0, b[1:]
	}
	if rebuilt {
		specLen := uv()
		if b == nil || specLen == 0 || specLen > MaxRebuildSpec || uint64(len(b)) < specLen {
			return nil, bad
		}
		lr.Rebuild, b = append([]byte(nil), b[:specLen]...), b[specLen:]
	}
	created, n := binary.Varint(b)
	if n <= 0 {
		return nil, bad
	}
	b = b[n:]
	lr.Created = time.Unix(0, created).UTC()
	readRecipe := func() ([]RecipeEntry, int64, bool) {
		count := uv()
		if b == nil || count > uint64(len(b))/uint64(len(chunkid.ID{})+1) {
			return nil, 0, false
		}
		r := make([]RecipeEntry, count)
		var total int64
		for i := range r {
			if len(b) < len(chunkid.ID{}) {
				return nil, 0, false
			}
			copy(r[i].ID[:], b)
			b = b[len(chunkid.ID{}):]
			r[i].Size = int64(uv())
			if b == nil || r[i].Size < 1 || r[i].Size > pack.MaxChunkSize {
				return nil, 0, false
			}
			total += r[i].Size
		}
		return r, total, true
	}
	var total int64
	var ok bool
	if lr.Recipe, total, ok = readRecipe(); !ok {
		return nil, bad
	}
	raw := total
	if split {
		lr.Tar = &TarLayout{Size: int64(uv())}
		var meta int64
		if b == nil {
			return nil, bad
		}
		if lr.Tar.Meta, meta, ok = readRecipe(); !ok || lr.Tar.Size < 0 || total+meta < lr.Tar.Size || total > lr.Tar.Size {
			return nil, bad
		}
		raw = lr.Tar.Size
	}
	if len(b) != 0 || (lr.Rebuild == nil && raw != lr.Size) || lr.Size < 0 || lr.Stored < 0 {
		return nil, bad
	}
	return lr, nil
}

// Hits is the value under h/<key>: how often a step record was returned,
// and when last.
type Hits struct {
	N    uint64
	Last time.Time
}

// Encode returns uvarint count, varint last (Unix ns).
func (h Hits) Encode() []byte {
	return binary.AppendVarint(binary.AppendUvarint(nil, h.N), h.Last.UnixNano())
}

// DecodeHits parses Encode's output.
func DecodeHits(v []byte) (Hits, error) {
	n, k := binary.Uvarint(v)
	if k <= 0 {
		return Hits{}, fmt.Errorf("%w: corrupt hit count", cerr.ErrDataLoss)
	}
	last, k2 := binary.Varint(v[k:])
	if k2 <= 0 || k+k2 != len(v) {
		return Hits{}, fmt.Errorf("%w: corrupt hit count", cerr.ErrDataLoss)
	}
	return Hits{N: n, Last: time.Unix(0, last).UTC()}, nil
}

func encodeTime(t time.Time) []byte { return binary.AppendVarint(nil, t.UnixNano()) }

func decodeTime(v []byte) (time.Time, error) {
	ns, n := binary.Varint(v)
	if n <= 0 || n != len(v) {
		return time.Time{}, fmt.Errorf("%w: corrupt access time", cerr.ErrDataLoss)
	}
	return time.Unix(0, ns).UTC(), nil
}
