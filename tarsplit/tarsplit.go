// Package tarsplit splits a tar stream into its file contents and
// everything else, and joins the two back into the exact original bytes.
//
// A tar header (512 bytes, holding the file's modification time) sits in
// front of every file. Chunks cut from the tar as it is carry those headers,
// so the same files tarred again by another build, with new timestamps,
// share almost no chunks. Split the stream instead: the content stream holds
// the file contents back to back, nothing else, and deduplicates whatever
// the headers say; the meta stream holds every other byte (headers, PAX and
// GNU extension records, padding, the end-of-archive marker, anything after
// it) with the lengths that interleave the two.
//
// The split never fails on bad input. Every byte read goes to exactly one
// of the two streams, in order, and what archive/tar cannot parse (a corrupt
// header, a truncated archive, trailing garbage) goes to the meta stream as
// it is; so Join always gives back the original bytes. The meta stream's
// format:
//
//	version byte (1), then records until its end:
//	  uvarint m, m bytes of meta, uvarint c (c bytes of content follow in the tar)
//
// Bytes consumed by archive/tar.Reader.Next are meta, bytes consumed while
// an entry's data is read are content: the raw bytes of the archive, also
// for sparse files (their data fragments, not the expanded file).
package tarsplit

import (
	"archive/tar"
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// Version is the meta stream's format.
const Version = 1

// maxMetaRecord bounds a meta record's bytes: a longer run of meta (trailing
// data, or a big PAX record) is cut into several records with no content
// between them, so the splitter holds at most this much.
const maxMetaRecord = 1 << 20

// LooksLikeTar says whether block, the first 512 bytes of a stream, is a tar
// header: its checksum field matches, as archive/tar checks it.
func LooksLikeTar(block []byte) bool {
	if len(block) < 512 {
		return false
	}
	field := string(block[148:156])
	// The field is octal, NUL or space terminated, possibly space padded.
	end := len(field)
	for i, ch := range field {
		if ch == 0 || (ch == ' ' && i > 0 && field[i-1] != ' ') {
			end = i
			break
		}
	}
	s := field[:end]
	for len(s) > 0 && s[0] == ' ' {
		s = s[1:]
	}
	want, err := strconv.ParseUint(s, 8, 32)
	if err != nil || s == "" {
		return false
	}
	var unsigned, signed int64
	for i, b := range block[:512] {
		if i >= 148 && i < 156 {
			b = ' '
		}
		unsigned += int64(b)
		signed += int64(int8(b))
	}
	return uint64(unsigned) == want || signed >= 0 && uint64(signed) == want
}

// Splitter reads a tar stream and yields its file contents (Read), while
// it writes the meta stream to the writer it was given. Read returns io.EOF
// after the whole input is consumed and the meta stream written; Close
// flushes nothing more, it only reports a meta write error.
type Splitter struct {
	src     io.Reader
	meta    *bufio.Writer
	tr      *tar.Reader
	content bool   // the source is being read for an entry's data
	pending []byte // content bytes read from the source, not yet returned
	buf     []byte // pending's storage, reused
	srcErr  error  // the source's own failure (not EOF)
	rec     []byte // the meta record being built
	nCont   int64  // content bytes since the record's meta ended
	inData  bool   // an entry's data is being read
	done    bool
	err     error
	scratch []byte

	MetaBytes, ContentBytes int64 // written so far

	// OnEntry, if set, is called when an entry's data is about to be read:
	// its offset in the content stream and its size in the archive. The
	// next bytes Read returns are that entry's first.
	OnEntry func(offset, size int64)
}

// NewSplitter splits r; the meta stream goes to meta.
func NewSplitter(r io.Reader, meta io.Writer) *Splitter {
	s := &Splitter{meta: bufio.NewWriterSize(meta, 64<<10), scratch: make([]byte, 256<<10), buf: make([]byte, 0, 256<<10)}
	s.pending = s.buf[:0]
	s.src = r
	s.tr = tar.NewReader(classifier{s})
	if err := s.meta.WriteByte(Version); err != nil {
		s.err = err
	}
	return s
}

// classifier is what archive/tar reads: the source, each byte recorded as
// meta or content by the phase it is read in.
type classifier struct{ s *Splitter }

func (c classifier) Read(p []byte) (int, error) {
	s := c.s
	n, err := s.src.Read(p)
	if err != nil && err != io.EOF && s.srcErr == nil {
		s.srcErr = err
	}
	if n > 0 {
		if s.content {
			s.pending = append(s.pending, p[:n]...)
			s.nCont += int64(n)
		} else {
			s.addMeta(p[:n])
		}
	}
	return n, err
}

// addMeta appends meta bytes. Meta that follows content closes the record
// before it; a record that grows past maxMetaRecord is closed with no
// content.
func (s *Splitter) addMeta(p []byte) {
	if s.nCont > 0 {
		s.flush()
	}
	for len(p) > 0 {
		k := min(len(p), maxMetaRecord-len(s.rec))
		s.rec = append(s.rec, p[:k]...)
		p = p[k:]
		if len(s.rec) == maxMetaRecord {
			s.flush()
		}
	}
}

// flush writes the record: its meta, then the count of content bytes that
// followed it.
func (s *Splitter) flush() {
	var b [binary.MaxVarintLen64]byte
	s.write(b[:binary.PutUvarint(b[:], uint64(len(s.rec)))])
	s.write(s.rec)
	s.write(b[:binary.PutUvarint(b[:], uint64(s.nCont))])
	s.MetaBytes += int64(len(s.rec))
	s.ContentBytes += s.nCont
	s.rec, s.nCont = s.rec[:0], 0
}

func (s *Splitter) write(p []byte) {
	if s.err == nil {
		_, s.err = s.meta.Write(p)
	}
}

// Read returns the next bytes of the content stream.
func (s *Splitter) Read(p []byte) (int, error) {
	for len(s.pending) == 0 {
		if s.err != nil {
			return 0, s.err
		}
		if s.done {
			return 0, io.EOF
		}
		s.step()
	}
	n := copy(p, s.pending)
	s.pending = s.pending[n:]
	if len(s.pending) == 0 {
		s.pending = s.buf[:0]
	}
	return n, nil
}

// step advances the tar reader once: into the next entry, or through a
// piece of the current entry's data, or, once the archive ends or stops
// parsing, through the rest of the source as meta.
func (s *Splitter) step() {
	if s.inData {
		s.content = true
		_, err := s.tr.Read(s.scratch)
		s.content = false
		if err == io.EOF {
			s.inData = false
		} else if err != nil {
			s.rest()
		}
		return
	}
	hdr, err := s.tr.Next()
	switch {
	case err == nil && sparse(hdr):
		// archive/tar expands a sparse file's holes as it reads it, and
		// a header may claim an exabyte of holes: read the rest of the
		// stream as meta rather than the expanded file.
		s.rest()
	case err == nil:
		s.inData = true
		if s.OnEntry != nil && hdr.Size > 0 {
			s.OnEntry(s.ContentBytes+s.nCont, hdr.Size)
		}
	case errors.Is(err, io.EOF):
		s.rest()
	default:
		s.rest()
	}
}

// sparse says whether hdr is a sparse file (GNU old format, or PAX GNU.sparse
// records).
func sparse(hdr *tar.Header) bool {
	if hdr.Typeflag == tar.TypeGNUSparse {
		return true
	}
	for k := range hdr.PAXRecords {
		if strings.HasPrefix(k, "GNU.sparse.") {
			return true
		}
	}
	return false
}

// rest reads what remains of the source as meta (after the archive's end,
// or where the tar reader stopped parsing: the bytes are kept all the
// same), ends the meta stream and the split.
func (s *Splitter) rest() {
	var readErr error
	if s.srcErr != nil {
		readErr = s.srcErr
	}
	for readErr == nil {
		var n int
		n, readErr = s.src.Read(s.scratch)
		if n > 0 {
			s.addMeta(s.scratch[:n])
		}
	}
	if readErr != io.EOF {
		if s.err == nil {
			s.err = fmt.Errorf("tarsplit: read: %w", readErr) // the source itself failed
		}
		return
	}
	if len(s.rec) > 0 || s.nCont > 0 {
		s.flush()
	}
	if s.err == nil {
		s.err = s.meta.Flush()
	}
	s.done = true
}

// Join writes the tar that a meta stream and its content stream were split
// from. content is asked for exactly the bytes the meta stream says, in
// order; a meta stream that is malformed, or a content stream that ends
// early or runs long, is an error.
func Join(w io.Writer, meta, content io.Reader) (int64, error) {
	j, err := NewJoiner(meta, func(int64) (io.Reader, error) { return content, nil })
	if err != nil {
		return 0, err
	}
	n, err := io.Copy(w, j)
	if err != nil {
		return n, err
	}
	var one [1]byte
	if k, _ := content.Read(one[:]); k > 0 {
		return n, fmt.Errorf("%w: content left over after the tar", ErrFormat)
	}
	return n, nil
}

// ErrFormat is a meta stream that does not parse, or that does not match
// its content stream.
var ErrFormat = errors.New("tarsplit: malformed meta stream")

// Joiner reads the tar back from a meta stream and a content stream.
type Joiner struct {
	meta      *bufio.Reader
	open      func(offset int64) (io.Reader, error)
	content   io.Reader
	metaLeft  int64 // meta bytes of the current record still to give
	needCount bool  // the record's content count is next in the meta stream
	contLeft  int64 // content bytes of the current record still to give
	contOff   int64 // content bytes passed so far
	skip      int64 // tar bytes still to skip (a read from an offset)
	err       error
}

// NewJoiner reads the tar from meta, opening the content stream on the
// first content byte (open gets the offset, 0 here).
func NewJoiner(meta io.Reader, open func(offset int64) (io.Reader, error)) (*Joiner, error) {
	return NewJoinerAt(meta, open, 0)
}

// NewJoinerAt is NewJoiner for the tar from offset on: the meta stream is
// read from its start (it is small beside the content), and the content
// stream is opened at the offset that matches, never read before it.
func NewJoinerAt(meta io.Reader, open func(offset int64) (io.Reader, error), offset int64) (*Joiner, error) {
	br := bufio.NewReaderSize(meta, 64<<10)
	v, err := br.ReadByte()
	if err != nil {
		return nil, formatErr("no version byte", err)
	}
	if v != Version {
		return nil, fmt.Errorf("%w: version %d", ErrFormat, v)
	}
	return &Joiner{meta: br, open: open, skip: offset}, nil
}

// NewJoinerFrom is NewJoinerAt started at a checkpoint cp at or before
// offset: meta is the meta stream from cp.Meta on (no version byte), and
// the join skips only the meta between cp and offset. A range read near the
// end of a tar of many small files would otherwise read, verify and
// decompress megabytes of headers before its first byte. cp must come from
// Checkpoints over the same meta stream: the Joiner cannot tell a
// checkpoint that falls inside a record from one that does not.
func NewJoinerFrom(meta io.Reader, open func(offset int64) (io.Reader, error), cp Checkpoint, offset int64) (*Joiner, error) {
	if offset < cp.Tar || cp.Meta < 1 || cp.Content < 0 {
		return nil, fmt.Errorf("tarsplit: join from offset %d at checkpoint %+v", offset, cp)
	}
	return &Joiner{meta: bufio.NewReaderSize(meta, 64<<10), open: open, contOff: cp.Content, skip: offset - cp.Tar}, nil
}

// Read fills p across as many records as fit: a read per file header or
// small file would cost more than the join itself.
func (j *Joiner) Read(p []byte) (int, error) {
	total := 0
	for total < len(p) {
		n, err := j.read1(p[total:])
		total += n
		if err != nil {
			if err == io.EOF && total > 0 {
				return total, nil
			}
			return total, err
		}
	}
	return total, nil
}

// read1 gives bytes of one record's meta or content.
func (j *Joiner) read1(p []byte) (int, error) {
	if j.err != nil {
		return 0, j.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	for {
		switch {
		case j.metaLeft > 0:
			if j.skip > 0 {
				k := min(j.skip, j.metaLeft)
				if _, err := j.meta.Discard(int(k)); err != nil {
					return 0, j.fail(formatErr("meta ends inside a record", err))
				}
				j.skip -= k
				j.metaLeft -= k
				continue
			}
			n, err := j.meta.Read(p[:min(int64(len(p)), j.metaLeft)])
			j.metaLeft -= int64(n)
			if n == 0 && err != nil {
				return 0, j.fail(formatErr("meta ends inside a record", err))
			}
			return n, nil
		case j.needCount:
			c, err := readContentLen(j.meta)
			if err != nil {
				return 0, j.fail(err)
			}
			j.contLeft, j.needCount = c, false
		case j.contLeft > 0:
			if j.skip > 0 {
				k := min(j.skip, j.contLeft)
				j.skip -= k
				j.contLeft -= k
				j.contOff += k
				continue
			}
			if j.content == nil {
				c, err := j.open(j.contOff)
				if err != nil {
					return 0, j.fail(err)
				}
				j.content = c
			}
			n, err := j.content.Read(p[:min(int64(len(p)), j.contLeft)])
			j.contLeft -= int64(n)
			j.contOff += int64(n)
			if err == io.EOF && j.contLeft > 0 && n == 0 {
				return 0, j.fail(fmt.Errorf("%w: the content stream ends %d bytes early", ErrFormat, j.contLeft))
			}
			if err != nil && err != io.EOF {
				return n, j.fail(err)
			}
			if n > 0 {
				return n, nil
			}
		default:
			m, err := readMetaLen(j.meta)
			if err == io.EOF {
				if j.skip > 0 {
					return 0, j.fail(fmt.Errorf("%w: offset past the end of the tar", ErrFormat))
				}
				j.err = io.EOF
				return 0, io.EOF
			}
			if err != nil {
				return 0, j.fail(err)
			}
			j.metaLeft, j.needCount = m, true
		}
	}
}

// ContentRead is how many bytes of the content stream the join has passed
// (read or skipped): at the tar's end, the content stream's whole length.
func (j *Joiner) ContentRead() int64 { return j.contOff }

// readMetaLen reads a record's first field, the length of its meta: io.EOF
// as it is where the meta stream ends between records (its proper end),
// ErrFormat for a length that is not a uvarint or exceeds maxMetaRecord.
func readMetaLen(r io.ByteReader) (int64, error) {
	m, err := readUvarint(r)
	if err == io.EOF {
		return 0, io.EOF
	}
	if err != nil {
		return 0, formatErr("bad record length", err)
	}
	if m > maxMetaRecord {
		return 0, fmt.Errorf("%w: record length %d", ErrFormat, m)
	}
	return int64(m), nil
}

// maxContentRecord bounds a record's content count: far beyond any tar, and
// small enough that the running sums of a join (offsets in the tar and in
// the content stream) cannot overflow for a meta stream of sane length.
const maxContentRecord = 1 << 62

// readContentLen reads a record's last field, the count of content bytes
// that follow its meta in the tar.
func readContentLen(r io.ByteReader) (int64, error) {
	c, err := readUvarint(r)
	if err != nil {
		return 0, formatErr("bad content length", err)
	}
	if c > maxContentRecord {
		return 0, fmt.Errorf("%w: content length %d", ErrFormat, c)
	}
	return int64(c), nil
}

// errOverflow is a uvarint of more than 64 bits: formatErr makes it
// ErrFormat.
var errOverflow = errors.New("a uvarint overflows 64 bits")

// readUvarint is binary.ReadUvarint with an error of its own for a uvarint
// that overflows, so that formatErr can tell that malformed meta stream
// from the reader's own failure (binary.ReadUvarint's is unexported).
func readUvarint(r io.ByteReader) (uint64, error) {
	var x uint64
	var s uint
	for i := range binary.MaxVarintLen64 {
		b, err := r.ReadByte()
		if err != nil {
			if i > 0 && err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		if b < 0x80 {
			if i == binary.MaxVarintLen64-1 && b > 1 {
				return 0, errOverflow
			}
			return x | uint64(b)<<s, nil
		}
		x |= uint64(b&0x7f) << s
		s += 7
	}
	return 0, errOverflow
}

// formatErr is a meta stream that ends too soon (ErrFormat), or the meta
// stream's own reader failing, passed on as it is: a backend that is
// unavailable is not a malformed stream.
func formatErr(what string, err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF || err == errOverflow {
		return fmt.Errorf("%w: %s: %v", ErrFormat, what, err)
	}
	return fmt.Errorf("tarsplit: %s: %w", what, err)
}

func (j *Joiner) fail(err error) error {
	j.err = err
	return err
}

// Checkpoint is a place where a join can start: the start of a record (its
// meta length), as offsets in the tar, in the meta stream as stored (the
// version byte is its offset 0) and in the content stream.
type Checkpoint struct {
	Tar, Meta, Content int64
}

// Checkpoints walks a whole meta stream, version byte first, without its
// content, and returns where a join can start: the stream's start, the
// first record boundary at least every meta bytes after the previous
// checkpoint, and last the stream's end (whose Tar and Content are the
// tar's and the content stream's lengths). They are spaced by meta bytes,
// not tar bytes, because meta is what a join from a checkpoint must read to
// reach an offset: content before the offset is skipped unread.
//
// The walk is as strict as a Joiner: a meta stream a Joiner would refuse
// is ErrFormat here too (as is one whose tar would be longer than 2^62
// bytes, which no content stream could fill), and the meta reader's own
// failure is passed on.
func Checkpoints(meta io.Reader, every int64) ([]Checkpoint, error) {
	r := &countingReader{br: bufio.NewReaderSize(meta, 64<<10)}
	v, err := r.ReadByte()
	if err != nil {
		return nil, formatErr("no version byte", err)
	}
	if v != Version {
		return nil, fmt.Errorf("%w: version %d", ErrFormat, v)
	}
	every = max(every, 1)
	at := Checkpoint{Meta: r.n}
	points := []Checkpoint{at}
	for {
		at.Meta = r.n
		if at.Meta-points[len(points)-1].Meta >= every {
			points = append(points, at)
		}
		m, err := readMetaLen(r)
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		if err := r.discard(m); err != nil {
			return nil, formatErr("meta ends inside a record", err)
		}
		c, err := readContentLen(r)
		if err != nil {
			return nil, err
		}
		if at.Tar+m+c > maxContentRecord || at.Content+c > maxContentRecord {
			return nil, fmt.Errorf("%w: a tar of more than %d bytes", ErrFormat, int64(maxContentRecord))
		}
		at.Tar += m + c
		at.Content += c
	}
	if points[len(points)-1] != at {
		points = append(points, at)
	}
	return points, nil
}

// countingReader counts the bytes read from a meta stream: a record's
// fields are uvarints that need not be of minimal length, so their length
// is what was read, not what their values would encode to.
type countingReader struct {
	br *bufio.Reader
	n  int64
}

func (r *countingReader) ReadByte() (byte, error) {
	b, err := r.br.ReadByte()
	if err == nil {
		r.n++
	}
	return b, err
}

func (r *countingReader) discard(k int64) error {
	d, err := r.br.Discard(int(k))
	r.n += int64(d)
	return err
}
