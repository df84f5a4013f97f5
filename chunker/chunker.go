// Package chunker cuts byte streams into content-defined chunks with FastCDC
// (gear rolling hash with normalized chunking), so that an insertion or a
// deletion in a layer moves only the chunk boundaries next to it and the rest
// of the layer deduplicates against what is already stored.
//
// The gear table and the parameters decide every boundary, so they are part
// of cairn's stored format: V1 names them and golden vectors in testdata/
// guard them. The package does no I/O of its own beyond reading the
// io.Reader it is handed.
package chunker

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
)

// Params are the chunk size bounds, in bytes.
type Params struct {
	Min int // no chunk but the last is shorter
	Avg int // the normalization point; must be a power of two
	Max int // no chunk is longer
}

// V1 is cairn's stored chunking format: the V1 gear table with these sizes.
// 256 KiB average: on real layer tars it stored less with zstd than 64 KiB or
// 16 KiB (see bench/RESULTS.md).
var V1 = Params{Min: 64 << 10, Avg: 256 << 10, Max: 1 << 20}

// Limits on Params, so that masks and buffers stay sane.
const (
	MinSizeLimit = 64       // smallest allowed Min
	MaxSizeLimit = 64 << 20 // largest allowed Max
)

// ErrInvalidParams is wrapped by every Params validation error.
var ErrInvalidParams = errors.New("chunker: invalid parameters")

// Validate reports whether p is usable.
func (p Params) Validate() error {
	switch {
	case p.Min < MinSizeLimit:
		return fmt.Errorf("%w: min %d below %d", ErrInvalidParams, p.Min, MinSizeLimit)
	case p.Max > MaxSizeLimit:
		return fmt.Errorf("%w: max %d above %d", ErrInvalidParams, p.Max, MaxSizeLimit)
	case !(p.Min <= p.Avg && p.Avg <= p.Max):
		return fmt.Errorf("%w: want min ≤ avg ≤ max, got %d/%d/%d", ErrInvalidParams, p.Min, p.Avg, p.Max)
	case p.Avg&(p.Avg-1) != 0:
		return fmt.Errorf("%w: avg %d is not a power of two", ErrInvalidParams, p.Avg)
	}
	return nil
}

var gear = func() (t [256]uint64) {
	for i := range t {
		h := sha256.Sum256([]byte{'c', 'a', 'i', 'r', 'n', 'v', '1', byte(i)})
		t[i] = binary.LittleEndian.Uint64(h[:8])
	}
	return t
}()

// masks returns the normalized-chunking masks: a stricter one (two more bits)
// before Avg and a looser one (two fewer bits) after it.
func (p Params) masks() (small, large uint64) {
	b := bits.TrailingZeros(uint(p.Avg))
	top := func(n int) uint64 {
		if n <= 0 {
			return 0
		}
		return ^uint64(0) << (64 - n)
	}
	return top(b + 2), top(b - 2)
}

// Cut returns the length of the first chunk of data: a content-defined
// boundary, or min(len(data), p.Max) if there is none. The caller must hand
// over at least p.Max bytes unless data is the end of the stream, or the cut
// is not the one a longer view would give. p must be valid.
func Cut(data []byte, p Params) int {
	n := len(data)
	if n <= p.Min {
		return n
	}
	if n > p.Max {
		n = p.Max
	}
	mid := p.Avg
	if mid > n {
		mid = n
	}
	small, large := p.masks()
	var fp uint64
	i := p.Min
	for ; i < mid; i++ {
		fp = (fp << 1) + gear[data[i]]
		if fp&small == 0 {
			return i + 1
		}
	}
	for ; i < n; i++ {
		fp = (fp << 1) + gear[data[i]]
		if fp&large == 0 {
			return i + 1
		}
	}
	return n
}

// Chunk is one piece of the stream. Data aliases the Chunker's buffer and is
// valid only until the next call to Next.
type Chunk struct {
	Offset int64
	Data   []byte
}

// Chunker splits a stream into chunks. It is not safe for concurrent use.
type Chunker struct {
	r      io.Reader
	p      Params
	buf    []byte
	start  int // first unread byte in buf
	end    int // end of valid data in buf
	offset int64
	eof    bool
}

// New returns a Chunker reading from r. buf is the caller's buffer and must
// hold at least 2*p.Max bytes; pass nil to have one allocated. No allocation
// happens per chunk.
func New(r io.Reader, p Params, buf []byte) (*Chunker, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	if buf == nil {
		buf = make([]byte, 2*p.Max)
	}
	if len(buf) < 2*p.Max {
		return nil, fmt.Errorf("chunker: buffer of %d bytes, want at least %d", len(buf), 2*p.Max)
	}
	return &Chunker{r: r, p: p, buf: buf}, nil
}

// Reset makes c read a new stream from r, keeping its buffer and parameters.
func (c *Chunker) Reset(r io.Reader) {
	c.r, c.start, c.end, c.offset, c.eof = r, 0, 0, 0, false
}

// Next returns the next chunk, or io.EOF after the last one. Read errors
// other than io.EOF are returned as they are.
func (c *Chunker) Next() (Chunk, error) {
	if c.end-c.start < c.p.Max && !c.eof {
		if err := c.fill(); err != nil {
			return Chunk{}, err
		}
	}
	if c.start == c.end {
		return Chunk{}, io.EOF
	}
	n := Cut(c.buf[c.start:c.end], c.p)
	ch := Chunk{Offset: c.offset, Data: c.buf[c.start : c.start+n]}
	c.start += n
	c.offset += int64(n)
	return ch, nil
}

// fill moves unread bytes to the front and reads until the buffer holds Max
// bytes or the stream ends.
func (c *Chunker) fill() error {
	if c.start > 0 {
		c.end = copy(c.buf, c.buf[c.start:c.end])
		c.start = 0
	}
	for c.end < len(c.buf) && !c.eof {
		n, err := c.r.Read(c.buf[c.end:])
		c.end += n
		if err == io.EOF {
			c.eof = true
		} else if err != nil {
			return err
		}
		if c.end >= c.p.Max {
			break
		}
	}
	return nil
}
