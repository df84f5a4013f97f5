// Package pack is the stored format of chunks: chunk records (a fixed
// header and one zstd frame) gathered into pack objects with a table of
// contents and a footer, so that what a pack holds can be learnt from its
// last bytes alone. It writes and reads that format and nothing else: where
// a chunk is, and whether anything still uses it, is the index's business.
//
// Changing anything in this file is a format change: the golden vectors in
// testdata must change with it.
package pack

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"strings"

	"github.com/cairnbuild/cairn/chunkid"
)

// MaxChunkSize is the largest chunk a record holds.
const MaxChunkSize = 4 << 20

// Prefix is where packs live in the backend.
const Prefix = "packs/"

// ID names a pack object: 16 random bytes. Packs are not named by their
// content: hashing every pack again would cost a pass over all stored
// bytes, and each chunk in it is verified by its own hash anyway.
type ID [16]byte

func (p ID) String() string { return hex.EncodeToString(p[:]) }

// IDSize is the length of an ID in bytes.
const IDSize = len(ID{})

// NewID returns a fresh random pack name.
func NewID() ID {
	var p ID
	rand.Read(p[:]) // never fails (crypto/rand)
	return p
}

// Key is where pack p lives: packs/<first 2 hex>/<32 hex>. The fan-out
// keeps directories of the fs backend small.
func Key(p ID) string {
	h := p.String()
	return Prefix + h[:2] + "/" + h
}

// IDFromKey parses a key written by Key.
func IDFromKey(key string) (ID, bool) {
	var p ID
	rest, ok := strings.CutPrefix(key, Prefix)
	if !ok || len(rest) != 3+2*len(p) || rest[2] != '/' || rest[:2] != rest[3:5] {
		return p, false
	}
	_, err := hex.Decode(p[:], []byte(rest[3:]))
	return p, err == nil
}

// Records (inside a pack): a fixed header, then the payload, one zstd
// frame. A record holds one chunk (codec 1, written by pushes), or a frame
// of several consecutive chunks (codec 2, written by compaction): their
// bytes back to back, which the pack's table slices.
//
//	offset size
//	0      4    magic "CRNC"
//	4      1    format version (1)
//	5      1    hash algorithm of the chunk ID (2 = BLAKE3)
//	6      1    codec of the payload (1 = one chunk, 2 = a frame of chunks)
//	7      1    reserved, 0
//	8      8    uncompressed size of the payload, little-endian
const (
	chunkMagic      = "CRNC"
	chunkVersion    = 1
	chunkHashBLAKE3 = 2 // 1 was SHA-256, before packs
	codecZstd       = 1
	codecZstdFrame  = 2
	// HeaderSize is the size of a record's header.
	HeaderSize = 16
)

// MaxFrameSize bounds the uncompressed bytes of a frame record: what one
// read of a single chunk may have to decode.
const MaxFrameSize = 4 << 20

// PutHeader writes the header of a record of one chunk of size
// uncompressed bytes into b[:HeaderSize].
func PutHeader(b []byte, size int) { putHeader(b, codecZstd, size) }

// PutFrameHeader writes the header of a frame record of size uncompressed
// bytes (its chunks' sizes summed) into b[:HeaderSize].
func PutFrameHeader(b []byte, size int) { putHeader(b, codecZstdFrame, size) }

func putHeader(b []byte, codec byte, size int) {
	copy(b, chunkMagic)
	b[4], b[5], b[6], b[7] = chunkVersion, chunkHashBLAKE3, codec, 0
	binary.LittleEndian.PutUint64(b[8:16], uint64(size))
}

// ParseHeader checks a record's header and returns the uncompressed size
// of its payload, whether it is a frame of several chunks, and the
// payload.
func ParseHeader(rec []byte) (size int64, frame bool, payload []byte, err error) {
	if len(rec) < HeaderSize || string(rec[:4]) != chunkMagic {
		return 0, false, nil, errors.New("not a chunk record (bad magic)")
	}
	if rec[4] != chunkVersion || rec[5] != chunkHashBLAKE3 || (rec[6] != codecZstd && rec[6] != codecZstdFrame) {
		return 0, false, nil, fmt.Errorf("unsupported chunk format: version %d, hash %d, codec %d", rec[4], rec[5], rec[6])
	}
	frame = rec[6] == codecZstdFrame
	s := binary.LittleEndian.Uint64(rec[8:16])
	if s < 1 || s > MaxChunkSize || (frame && s > MaxFrameSize) {
		return 0, false, nil, fmt.Errorf("chunk header claims %d bytes", s)
	}
	return int64(s), frame, rec[HeaderSize:], nil
}

// MaxRecordSize bounds the record of size uncompressed bytes: the header
// and a zstd frame, which never exceeds its input by more than a few bytes
// per 128 KiB block (the encoder falls back to raw blocks); twice the size
// plus 1 KiB is far above that and still bounds what a reader allocates.
func MaxRecordSize(size uint64) uint64 { return HeaderSize + 2*size + 1024 }

// Packs: records back to back, then a table of contents, then a fixed
// footer.
//
//	records    records (header and payload), from offset 0
//	table      count entries of EntrySize bytes (version 2):
//	             32  chunk hash
//	              8  offset of the record in the pack, little-endian
//	              4  length of the record (header and payload)
//	              4  uncompressed size of the chunk
//	              4  offset of the chunk in its frame's uncompressed bytes
//	              4  uncompressed size of the frame (0: the record holds
//	                 this chunk alone)
//	           version 1 entries (read, no longer written) are the first
//	           48 bytes of these: every record holds one chunk.
//	footer     16 bytes:
//	              4  magic "CRNP"
//	              1  format version (2; 1 is still read)
//	              1  hash algorithm of the chunk IDs (2 = BLAKE3)
//	              2  reserved, 0
//	              4  count of entries
//	              4  CRC-32C of the table
//
// A pack holds at most MaxChunks entries. Records lie in table order,
// without gaps, and end where the table starts; the chunks of one frame
// have consecutive entries naming the same record, in the order of their
// bytes in the frame, which they fill exactly.
const (
	packMagic    = "CRNP"
	packVersion  = 2
	packVersion1 = 1
	// EntrySize is the size of one table entry.
	EntrySize  = len(chunkid.ID{}) + 24
	entrySize1 = len(chunkid.ID{}) + 16
	// FooterSize is the size of the footer.
	FooterSize = 16
	// MaxChunks bounds the entries of one pack.
	MaxChunks = 4096
)

// Entry is one entry of a pack's table.
type Entry struct {
	ID      chunkid.ID
	Off     int64 // of the record in the pack
	Stored  int64 // bytes of the record: header and compressed payload
	Size    int64 // uncompressed bytes of the chunk
	InFrame int64 // offset of the chunk in its frame's uncompressed bytes
	Frame   int64 // uncompressed bytes of the frame; 0: a record of one chunk
}

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// AppendTable appends the table and footer for entries to b, in the
// current version.
func AppendTable(b []byte, entries []Entry) []byte {
	return appendTable(b, entries, packVersion)
}

func appendTable(b []byte, entries []Entry, version byte) []byte {
	start := len(b)
	for _, e := range entries {
		b = append(b, e.ID[:]...)
		b = binary.LittleEndian.AppendUint64(b, uint64(e.Off))
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Stored))
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Size))
		if version >= 2 {
			b = binary.LittleEndian.AppendUint32(b, uint32(e.InFrame))
			b = binary.LittleEndian.AppendUint32(b, uint32(e.Frame))
		}
	}
	sum := crc32.Checksum(b[start:], crc32c)
	b = append(b, packMagic...)
	b = append(b, version, chunkHashBLAKE3, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	return binary.LittleEndian.AppendUint32(b, sum)
}

// ParseFooter checks the footer of a pack of packSize bytes and returns how
// many entries its table has and how many bytes the table takes (it ends
// where the footer starts).
func ParseFooter(footer []byte, packSize int64) (count, tableSize int, err error) {
	if len(footer) != FooterSize || string(footer[:4]) != packMagic {
		return 0, 0, errors.New("not a pack (bad magic)")
	}
	if (footer[4] != packVersion && footer[4] != packVersion1) || footer[5] != chunkHashBLAKE3 {
		return 0, 0, fmt.Errorf("unsupported pack format: version %d, hash %d", footer[4], footer[5])
	}
	n := int64(binary.LittleEndian.Uint32(footer[8:12]))
	if n > MaxChunks || FooterSize+n*int64(entrySize(footer[4])) > packSize {
		return 0, 0, fmt.Errorf("pack footer claims %d chunks in %d bytes", n, packSize)
	}
	return int(n), int(n) * entrySize(footer[4]), nil
}

func entrySize(version byte) int {
	if version == packVersion1 {
		return entrySize1
	}
	return EntrySize
}

// ParseTable checks a pack's table against the footer's checksum and the
// pack's size: records in order, without gaps, ending at the table, and
// frames filled exactly by their chunks.
func ParseTable(table, footer []byte, packSize int64) ([]Entry, error) {
	if len(footer) != FooterSize {
		return nil, errors.New("pack table has the wrong length")
	}
	es := entrySize(footer[4])
	n := len(table) / es
	if len(table)%es != 0 || int(binary.LittleEndian.Uint32(footer[8:12])) != n {
		return nil, errors.New("pack table has the wrong length")
	}
	if crc32.Checksum(table, crc32c) != binary.LittleEndian.Uint32(footer[12:16]) {
		return nil, errors.New("pack table fails its checksum")
	}
	end := packSize - int64(len(table)) - FooterSize
	entries := make([]Entry, n)
	var next int64
	for i := range entries {
		b := table[i*es:]
		e := &entries[i]
		copy(e.ID[:], b)
		b = b[len(e.ID):]
		e.Off = int64(binary.LittleEndian.Uint64(b))
		e.Stored = int64(binary.LittleEndian.Uint32(b[8:]))
		e.Size = int64(binary.LittleEndian.Uint32(b[12:]))
		if es == EntrySize {
			e.InFrame = int64(binary.LittleEndian.Uint32(b[16:]))
			e.Frame = int64(binary.LittleEndian.Uint32(b[20:]))
		}
		if err := checkEntry(entries[:i], *e, next); err != nil {
			return nil, fmt.Errorf("pack table entry %d: %w", i, err)
		}
		next = e.Off + e.Stored
	}
	if n > 0 {
		if last := entries[n-1]; last.Frame != 0 && last.InFrame+last.Size != last.Frame {
			return nil, fmt.Errorf("pack table entry %d: the frame of %d bytes ends at %d", n-1, last.Frame, last.InFrame+last.Size)
		}
	}
	if next != end {
		return nil, fmt.Errorf("pack records end at %d, the table starts at %d", next, end)
	}
	return entries, nil
}

// checkEntry checks e, which follows prev, whose records end at next.
func checkEntry(prev []Entry, e Entry, next int64) error {
	bad := func() error {
		return fmt.Errorf("offset %d, %d bytes stored, size %d, at %d of a frame of %d", e.Off, e.Stored, e.Size, e.InFrame, e.Frame)
	}
	if e.Stored < HeaderSize || e.Size <= 0 || e.Size > MaxChunkSize || e.Frame < 0 || e.Frame > MaxFrameSize {
		return bad()
	}
	if e.Frame == 0 {
		if e.InFrame != 0 || uint64(e.Stored) > MaxRecordSize(uint64(e.Size)) {
			return bad()
		}
	} else if e.InFrame+e.Size > e.Frame || uint64(e.Stored) > MaxRecordSize(uint64(e.Frame)) {
		return bad()
	}
	var p *Entry
	if len(prev) > 0 {
		p = &prev[len(prev)-1]
	}
	if p != nil && p.Frame != 0 && p.InFrame+p.Size != p.Frame {
		// The previous chunk does not end its frame: e must follow it in
		// the same frame.
		if e.Off != p.Off || e.Stored != p.Stored || e.Frame != p.Frame || e.InFrame != p.InFrame+p.Size {
			return fmt.Errorf("%w: the frame at %d is not filled by its chunks", bad(), p.Off)
		}
		return nil
	}
	if e.Off != next || e.InFrame != 0 {
		return bad()
	}
	return nil
}
