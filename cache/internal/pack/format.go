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
	// HeaderSize is the size of a chunk record's header.
	HeaderSize = 16
)

// PutHeader writes the header for a chunk of size uncompressed bytes into
// b[:HeaderSize].
func PutHeader(b []byte, size int) {
	copy(b, chunkMagic)
	b[4], b[5], b[6], b[7] = chunkVersion, chunkHashBLAKE3, codecZstd, 0
	binary.LittleEndian.PutUint64(b[8:16], uint64(size))
}

// ParseHeader checks a chunk record's header and returns the uncompressed
// size and the payload.
func ParseHeader(rec []byte) (size int64, payload []byte, err error) {
	if len(rec) < HeaderSize || string(rec[:4]) != chunkMagic {
		return 0, nil, errors.New("not a chunk record (bad magic)")
	}
	if rec[4] != chunkVersion || rec[5] != chunkHashBLAKE3 || rec[6] != codecZstd {
		return 0, nil, fmt.Errorf("unsupported chunk format: version %d, hash %d, codec %d", rec[4], rec[5], rec[6])
	}
	s := binary.LittleEndian.Uint64(rec[8:16])
	if s < 1 || s > MaxChunkSize {
		return 0, nil, fmt.Errorf("chunk header claims %d bytes", s)
	}
	return int64(s), rec[HeaderSize:], nil
}

// MaxRecordSize bounds the record of a chunk of size bytes: the header and
// a zstd frame, which never exceeds its input by more than a few bytes per
// 128 KiB block (the encoder falls back to raw blocks); twice the size plus
// 1 KiB is far above that and still bounds what a reader allocates.
func MaxRecordSize(size uint64) uint64 { return HeaderSize + 2*size + 1024 }

// Packs: chunk records back to back, then a table of contents, then a
// fixed footer.
//
//	records    chunk records (header and payload), from offset 0
//	table      count entries of EntrySize bytes:
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
// A pack holds at most MaxChunks records; records lie in table order,
// without gaps, and end where the table starts.
const (
	packMagic   = "CRNP"
	packVersion = 1
	// EntrySize is the size of one table entry.
	EntrySize = len(chunkid.ID{}) + 16
	// FooterSize is the size of the footer.
	FooterSize = 16
	// MaxChunks bounds the records of one pack.
	MaxChunks = 4096
)

// Entry is one record of a pack's table.
type Entry struct {
	ID     chunkid.ID
	Off    int64 // of the record in the pack
	Stored int64 // bytes of the record: header and compressed payload
	Size   int64 // uncompressed bytes
}

var crc32c = crc32.MakeTable(crc32.Castagnoli)

// AppendTable appends the table and footer for entries to b.
func AppendTable(b []byte, entries []Entry) []byte {
	start := len(b)
	for _, e := range entries {
		b = append(b, e.ID[:]...)
		b = binary.LittleEndian.AppendUint64(b, uint64(e.Off))
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Stored))
		b = binary.LittleEndian.AppendUint32(b, uint32(e.Size))
	}
	sum := crc32.Checksum(b[start:], crc32c)
	b = append(b, packMagic...)
	b = append(b, packVersion, chunkHashBLAKE3, 0, 0)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(entries)))
	return binary.LittleEndian.AppendUint32(b, sum)
}

// ParseFooter checks the footer of a pack of packSize bytes and returns how
// many entries its table has.
func ParseFooter(footer []byte, packSize int64) (int, error) {
	if len(footer) != FooterSize || string(footer[:4]) != packMagic {
		return 0, errors.New("not a pack (bad magic)")
	}
	if footer[4] != packVersion || footer[5] != chunkHashBLAKE3 {
		return 0, fmt.Errorf("unsupported pack format: version %d, hash %d", footer[4], footer[5])
	}
	n := int64(binary.LittleEndian.Uint32(footer[8:12]))
	if n > MaxChunks || FooterSize+n*int64(EntrySize) > packSize {
		return 0, fmt.Errorf("pack footer claims %d chunks in %d bytes", n, packSize)
	}
	return int(n), nil
}

// ParseTable checks a pack's table against the footer's checksum and the
// pack's size: records in order, without gaps, ending at the table.
func ParseTable(table, footer []byte, packSize int64) ([]Entry, error) {
	n := len(table) / EntrySize
	if len(table)%EntrySize != 0 || len(footer) != FooterSize || int(binary.LittleEndian.Uint32(footer[8:12])) != n {
		return nil, errors.New("pack table has the wrong length")
	}
	if crc32.Checksum(table, crc32c) != binary.LittleEndian.Uint32(footer[12:16]) {
		return nil, errors.New("pack table fails its checksum")
	}
	end := packSize - int64(len(table)) - FooterSize
	entries := make([]Entry, n)
	var next int64
	for i := range entries {
		b := table[i*EntrySize:]
		e := &entries[i]
		copy(e.ID[:], b)
		b = b[len(e.ID):]
		e.Off = int64(binary.LittleEndian.Uint64(b))
		e.Stored = int64(binary.LittleEndian.Uint32(b[8:]))
		e.Size = int64(binary.LittleEndian.Uint32(b[12:]))
		if e.Off != next || e.Stored < HeaderSize || e.Size <= 0 || e.Size > MaxChunkSize || uint64(e.Stored) > MaxRecordSize(uint64(e.Size)) {
			return nil, fmt.Errorf("pack table entry %d: offset %d, %d bytes stored, size %d", i, e.Off, e.Stored, e.Size)
		}
		next = e.Off + e.Stored
	}
	if next != end {
		return nil, fmt.Errorf("pack records end at %d, the table starts at %d", next, end)
	}
	return entries, nil
}
