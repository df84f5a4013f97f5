package backendtest

import (
	"encoding/binary"
	"errors"
	"io"
)

// Pattern is a seeded, reproducible, random-access stream of pseudo-random
// bytes: byte i of the stream depends only on the seed and i. It lets tests
// stream objects far larger than memory and check any range of what comes
// back without keeping a copy.
type Pattern struct {
	Seed uint64
}

// ReadAt fills p with the stream's bytes starting at off. It never fails.
func (g Pattern) ReadAt(p []byte, off int64) (int, error) {
	n := len(p)
	i := off
	// Unaligned head.
	for len(p) > 0 && i%8 != 0 {
		p[0] = g.byteAt(i)
		p, i = p[1:], i+1
	}
	for len(p) >= 8 {
		binary.LittleEndian.PutUint64(p, g.word(uint64(i)/8))
		p, i = p[8:], i+8
	}
	for len(p) > 0 {
		p[0] = g.byteAt(i)
		p, i = p[1:], i+1
	}
	return n, nil
}

// Bytes returns n bytes of the stream from offset 0.
func (g Pattern) Bytes(n int) []byte {
	b := make([]byte, n)
	g.ReadAt(b, 0)
	return b
}

// Reader returns a reader over the first size bytes of the stream. It
// implements io.ReadSeeker, so decorators that retry Put can rewind it.
func (g Pattern) Reader(size int64) *PatternReader {
	return &PatternReader{g: g, size: size}
}

func (g Pattern) byteAt(i int64) byte {
	return byte(g.word(uint64(i)/8) >> (8 * (uint64(i) % 8)))
}

// word is splitmix64 of the word index: cheap, random access, and good
// enough that no chunker or compressor finds structure in it.
func (g Pattern) word(idx uint64) uint64 {
	z := g.Seed + (idx+1)*0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// PatternReader reads a prefix of a Pattern. It holds no buffer, so a
// 256 MiB object costs no memory on the producing side.
type PatternReader struct {
	g    Pattern
	size int64
	off  int64
}

// Read implements io.Reader.
func (r *PatternReader) Read(p []byte) (int, error) {
	if r.off >= r.size {
		return 0, io.EOF
	}
	if rem := r.size - r.off; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, _ := r.g.ReadAt(p, r.off)
	r.off += int64(n)
	return n, nil
}

// Seek implements io.Seeker.
func (r *PatternReader) Seek(offset int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
	case io.SeekCurrent:
		offset += r.off
	case io.SeekEnd:
		offset += r.size
	default:
		return 0, errBadWhence
	}
	if offset < 0 {
		return 0, errNegativeSeek
	}
	r.off = offset
	return offset, nil
}

var (
	errBadWhence    = errors.New("backendtest: invalid whence")
	errNegativeSeek = errors.New("backendtest: negative position")
)
