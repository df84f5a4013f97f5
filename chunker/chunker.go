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

// V1 is cairn's stored chunking format: the V1 gear table and boundary rule
// with these sizes. 256 KiB average: on the bench corpus (a Debian base and
// five releases of a Go module, see bench/RESULTS.md) 16 KiB chunks stored
// 12 % fewer bytes but needed 13.6 times as many objects, and S3 bills and
// throttles per request.
//
// The whole rule, for reimplementing it elsewhere: gear[b] is the first 8
// bytes, little-endian, of SHA-256("cairnv1" || b). For a chunk starting at
// offset 0, fp = 0 at offset Min, and for each byte x at offset i ≥ Min,
// fp = fp<<1 + gear[x] (mod 2^64); the chunk ends after byte i if fp&M == 0,
// where M is k one bits ending at bit 62, k = log2(Avg)+2 while i < Avg and
// log2(Avg)-2 after; else it ends at Max or at the end of the stream.
// testdata/golden-v1.txt holds the boundaries of 32 MiB of seeded input.
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

// gear is the V1 gear table. Deriving it from SHA-256 of a fixed label (and
// not from a random literal) lets anyone rebuild it; the golden vectors and
// TestGearTable pin it.
var gear = func() (t [256]uint64) {
	for i := range t {
		h := sha256.Sum256([]byte{'c', 'a', 'i', 'r', 'n', 'v', '1', byte(i)})
		t[i] = binary.LittleEndian.Uint64(h[:8])
	}
	return t
}()

// gearLS is gear shifted left by one, for the two-bytes-per-step loop of the
// 2020 FastCDC paper: (fp<<2)+gearLS[b] is the one-byte fingerprint shifted
// left by one, so testing it against mask<<1 is the one-byte test.
var gearLS = func() (t [256]uint64) {
	for i := range t {
		t[i] = gear[i] << 1
	}
	return t
}()

// mask returns n one bits ending at bit 62. The top bits of a gear
// fingerprint depend on the most bytes (bit k sees the last k+1 bytes), so
// the mask sits as high as it can; bit 63 stays out so that mask<<1 loses
// nothing and the two-bytes-per-step loop cuts exactly where the one-byte
// rule does.
func mask(n int) uint64 {
	if n <= 0 {
		return 0
	}
	return (uint64(1)<<n - 1) << (63 - n)
}

// masks returns the normalized-chunking masks (level 2): a stricter one (two
// more bits) before Avg and a looser one (two fewer bits) after it.
func (p Params) masks() (small, large uint64) {
	b := bits.TrailingZeros(uint(p.Avg))
	return mask(b + 2), mask(b - 2)
}

// Cut returns the length of the first chunk of data: a content-defined
// boundary, or min(len(data), p.Max) if there is none. The caller must hand
// over at least p.Max bytes unless data is the end of the stream, or the cut
// is not the one a longer view would give. p must be valid.
//
// The V1 rule: the fingerprint starts at zero at offset p.Min and rolls one
// byte at a time as fp = fp<<1 + gear[b]; the chunk ends after the first
// byte at which fp&mask is zero, with the small mask before p.Avg and the
// large one from p.Avg on, and at p.Max at the latest.
func Cut(data []byte, p Params) int {
	small, large := p.masks()
	if n, _ := cut(data, p, small, large, p.Min, 0); n >= 0 {
		return n
	}
	return len(data)
}

// cut finds the end of the chunk that starts data, resuming at offset i
// with fingerprint fp (p.Min and 0 for a fresh chunk). It returns the
// chunk's length, or -1 and the fingerprint after the last byte when data
// ends before both a boundary and p.Max; the cut then depends on bytes not
// seen yet, and resuming at max(p.Min, len(data)) with that fingerprint on a
// longer view continues where this call stopped.
func cut(data []byte, p Params, small, large uint64, i int, fp uint64) (int, uint64) {
	n := min(len(data), p.Max)
	if mid := min(p.Avg, n); i < mid {
		var j int
		if j, fp = scan(data[:mid], i, fp, small, &gear, &gearLS); j >= 0 {
			return j, 0
		}
		i = mid
	}
	if i < n {
		var j int
		if j, fp = scan(data[:n], i, fp, large, &gear, &gearLS); j >= 0 {
			return j, 0
		}
	}
	if n == p.Max {
		return n, 0
	}
	return -1, fp
}

// scan rolls fp over data[i:] and returns the length of the chunk that ends
// at the first byte where fp&m is zero, or -1 and the fingerprint after the
// last byte. This loop bounds the speed of ingest, so it is written for the
// machine:
//
//   - Two bytes per step, as in the 2020 paper, but with the step's two table
//     values summed off the fingerprint's dependency chain: the chain is one
//     shift-and-add (a single LEA) per two bytes, and the odd byte's check
//     (fp<<2 + gearLS[b0] against m<<1) hangs off it. This beat both the
//     paper's loop (three dependent operations per two bytes) and a four-byte
//     step with more independent work (more instructions) by about 20 % on
//     the tar benchmark.
//   - Four steps per iteration, to spread the loop's own compare and branch.
//   - The tables come in as arguments, nil-checked once before the loop, so
//     that they stay in registers instead of being rematerialized from their
//     symbols on every step; the indexes are written so that the compiler
//     proves them in bounds (check with -gcflags=-d=ssa/check_bce).
func scan(data []byte, i int, fp, m uint64, g, gl *[256]uint64) (int, uint64) {
	mLS := m << 1
	_, _ = g[0], gl[0]
	d := data[i:]
	k := 0
	for ; k < len(d)-7; k += 8 {
		a := gl[d[k]]
		s := a + g[d[k+1]]
		if (fp<<2+a)&mLS == 0 {
			return i + k + 1, 0
		}
		if fp = fp<<2 + s; fp&m == 0 {
			return i + k + 2, 0
		}
		a = gl[d[k+2]]
		s = a + g[d[k+3]]
		if (fp<<2+a)&mLS == 0 {
			return i + k + 3, 0
		}
		if fp = fp<<2 + s; fp&m == 0 {
			return i + k + 4, 0
		}
		a = gl[d[k+4]]
		s = a + g[d[k+5]]
		if (fp<<2+a)&mLS == 0 {
			return i + k + 5, 0
		}
		if fp = fp<<2 + s; fp&m == 0 {
			return i + k + 6, 0
		}
		a = gl[d[k+6]]
		s = a + g[d[k+7]]
		if (fp<<2+a)&mLS == 0 {
			return i + k + 7, 0
		}
		if fp = fp<<2 + s; fp&m == 0 {
			return i + k + 8, 0
		}
	}
	for ; k < len(d); k++ {
		fp = fp<<1 + g[d[k]]
		if fp&m == 0 {
			return i + k + 1, 0
		}
	}
	return -1, fp
}

// Chunk is one piece of the stream. Data aliases the Chunker's buffer and is
// valid only until the next call to Next.
type Chunk struct {
	Offset int64
	Data   []byte
}

// Chunker splits a stream into chunks. It is not safe for concurrent use.
type Chunker struct {
	r            io.Reader
	p            Params
	small, large uint64
	buf          []byte
	start        int // first byte of the next chunk in buf
	end          int // end of valid data in buf
	offset       int64
	eof          bool
	// Where the search for the next chunk's end stopped when the buffer ran
	// out: its offset from start and the fingerprint there.
	resume   int
	resumeFP uint64
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
	small, large := p.masks()
	return &Chunker{r: r, p: p, small: small, large: large, buf: buf, resume: p.Min}, nil
}

// Reset makes c read a new stream from r, keeping its buffer and parameters.
func (c *Chunker) Reset(r io.Reader) {
	c.r, c.start, c.end, c.offset, c.eof = r, 0, 0, 0, false
	c.resume, c.resumeFP = c.p.Min, 0
}

// Next returns the next chunk, or io.EOF after the last one. Read errors
// other than io.EOF are returned as they are; the chunks already returned
// stay valid and a later call to Next reads on.
//
// Next cuts in the bytes it has and reads only when the next boundary lies
// beyond them, resuming the search where it stopped. Refilling only then,
// instead of whenever fewer than Max bytes are left, moves about one chunk
// per buffer to the front instead of most of a buffer per chunk.
func (c *Chunker) Next() (Chunk, error) {
	for {
		avail := c.buf[c.start:c.end]
		n, fp := cut(avail, c.p, c.small, c.large, c.resume, c.resumeFP)
		if n < 0 {
			if !c.eof {
				c.resume, c.resumeFP = max(c.p.Min, len(avail)), fp
				if err := c.fill(); err != nil {
					return Chunk{}, err
				}
				continue
			}
			n = len(avail)
		}
		if n == 0 {
			return Chunk{}, io.EOF
		}
		ch := Chunk{Offset: c.offset, Data: avail[:n:n]}
		c.start += n
		c.offset += int64(n)
		c.resume, c.resumeFP = c.p.Min, 0
		return ch, nil
	}
}

// maxEmptyReads bounds how often a Reader may return no bytes and no error
// in a row before Next gives up with io.ErrNoProgress, as bufio does.
const maxEmptyReads = 100

// fill reads until the chunk being cut has Max bytes, the buffer is full or
// the stream ends. It hands the reader all the free space at once, so a fast
// reader fills the buffer in one call, but stops once Max bytes are in (the
// cut is then certain), so a slow one (a network stream) is not waited on
// for a full buffer. The
// bytes of the chunk are moved to the front only when Max of them would not
// fit behind its start: about once per buffer.
func (c *Chunker) fill() error {
	if c.start+c.p.Max > len(c.buf) {
		c.end = copy(c.buf, c.buf[c.start:c.end])
		c.start = 0
	}
	for empty := 0; c.end-c.start < c.p.Max && !c.eof; {
		n, err := c.r.Read(c.buf[c.end:])
		c.end += n
		switch {
		case err == io.EOF:
			c.eof = true
		case err != nil:
			return err
		case n == 0:
			if empty++; empty >= maxEmptyReads {
				return io.ErrNoProgress
			}
		default:
			empty = 0
		}
	}
	return nil
}
