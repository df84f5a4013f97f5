package chunks

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/klauspost/compress/zstd"
)

// Frames: compaction rewrites cold packs into frames of several
// consecutive chunks compressed together at a stronger level (pack codec
// 2). A chunk in a frame is read by decoding its frame and slicing it; a
// reader of a whole layer decodes each frame once for all of its chunks.
//
// FrameTarget, 4 MiB of chunk bytes, and zstd's best level: on a corpus of
// five releases of a Go project (bench/density, bench/RESULTS.md "Issue
// 17") the only setting that stored under 0.8× of per-chunk frames at the
// fastest level; 2 MiB stored 2.4 % more and halved the decode of a
// single-chunk read (about 1 ms against 2 ms).
const FrameTarget = pack.MaxFrameSize

// CompactLevel is the zstd level of frames written by compaction.
const CompactLevel = zstd.SpeedBestCompression

// decodeFrame decodes the frame record rec, which ci (one of its chunks'
// entries) names, into a pooled buffer the caller gives back with
// PutFrame. Anything wrong is ErrDataLoss.
func (s *Store) decodeFrame(id chunkid.ID, ci index.ChunkInfo, rec []byte) (*[]byte, []byte, error) {
	size, frame, payload, err := pack.ParseHeader(rec)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: chunk %s: %w", cerr.ErrDataLoss, id, err)
	}
	if !frame || size != ci.Frame {
		return nil, nil, fmt.Errorf("%w: chunk %s: record holds %d bytes (frame %v), the index says a frame of %d", cerr.ErrDataLoss, id, size, frame, ci.Frame)
	}
	bp := getBuf(&s.framePool, int(size)+decodeSlack, pack.MaxFrameSize+decodeSlack)
	data, err := s.dec.DecodeAll(payload, (*bp)[:0:size+decodeSlack])
	if errors.Is(err, zstd.ErrDecoderClosed) {
		s.framePool.Put(bp)
		return nil, nil, cerr.ErrClosed
	}
	if err != nil || int64(len(data)) != size {
		s.framePool.Put(bp)
		return nil, nil, fmt.Errorf("%w: chunk %s: decompress frame: got %d bytes of %d: %v", cerr.ErrDataLoss, id, len(data), size, err)
	}
	s.frames.Add(1)
	s.frameBytes.Add(size)
	return bp, data, nil
}

// sliceChunk copies chunk id out of its decoded frame into a pooled data
// buffer and verifies it.
func (s *Store) sliceChunk(id chunkid.ID, ci index.ChunkInfo, frame []byte) (*[]byte, []byte, error) {
	if ci.InFrame < 0 || ci.InFrame+ci.Size > int64(len(frame)) {
		return nil, nil, fmt.Errorf("%w: chunk %s: bytes %d to %d of a frame of %d", cerr.ErrDataLoss, id, ci.InFrame, ci.InFrame+ci.Size, len(frame))
	}
	bp := s.GetData(int(ci.Size))
	data := append((*bp)[:0], frame[ci.InFrame:ci.InFrame+ci.Size]...)
	if chunkid.Sum(data) != id {
		s.dataPool.Put(bp)
		return nil, nil, fmt.Errorf("%w: chunk %s fails verification", cerr.ErrDataLoss, id)
	}
	return bp, data, nil
}

// A Compactor writes chunks, in the order given, into new packs of frames
// of about FrameTarget chunk bytes each at CompactLevel. It is not safe
// for concurrent use; one compaction runs at a time.
type Compactor struct {
	s   *Store
	enc *zstd.Encoder

	raw    []byte       // the frame being filled: chunk bytes back to back
	inRaw  []pack.Entry // its chunks (Off, Stored, Frame set when it closes)
	from   []index.Move // and where each was read from (To unset)
	buf    []byte       // the pack being filled: its records
	table  []pack.Entry
	moves  []index.Move
	target int // pack target

	// Read and Written count chunk bytes given and pack bytes written.
	Read, Written int64
}

// NewCompactor returns a compactor writing packs of about the store's
// pack target.
func (s *Store) NewCompactor() (*Compactor, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(CompactLevel), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(pack.MaxFrameSize), zstd.WithEncoderCRC(false))
	if err != nil {
		return nil, fmt.Errorf("zstd: %w", err)
	}
	return &Compactor{s: s, enc: enc, target: s.packTarget}, nil
}

// Close releases the encoder.
func (c *Compactor) Close() { c.enc.Close() }

// A Written is a pack a Compactor stored: the moves that point the index
// at its copies (index.DB.MoveChunks) and its size. The pack is held (see
// leases) until Release is called, which the caller does once the moves
// are in the index.
type Written struct {
	Pack    pack.ID
	Moves   []index.Move
	Bytes   int64
	Release func()
}

// Add appends chunk id, whose verified bytes are data and whose copy the
// index names at from, to the frame being filled. It returns the pack it
// stored, if the frame filled the pack.
func (c *Compactor) Add(ctx context.Context, id chunkid.ID, data []byte, from index.ChunkInfo) (*Written, error) {
	var w *Written
	if len(c.raw) > 0 && (len(c.raw)+len(data) > FrameTarget || len(c.inRaw) == maxFrameChunks) {
		var err error
		if w, err = c.closeFrame(ctx, false); err != nil {
			return nil, err
		}
	}
	c.inRaw = append(c.inRaw, pack.Entry{ID: id, Size: int64(len(data)), InFrame: int64(len(c.raw))})
	c.from = append(c.from, index.Move{ID: id, From: from.Pack, FromOff: from.Off, FromInFrame: from.InFrame})
	c.raw = append(c.raw, data...)
	c.Read += int64(len(data))
	return w, nil
}

// Fit closes the frame being filled unless n more bytes of chunks fit in
// it (or it is empty), so that the next n bytes share a frame. It returns
// the pack it stored, if closing the frame filled the pack.
func (c *Compactor) Fit(ctx context.Context, n int64) (*Written, error) {
	if len(c.raw) == 0 || int64(len(c.raw))+n <= FrameTarget {
		return nil, nil
	}
	return c.closeFrame(ctx, false)
}

// Flush stores what was added and not yet stored, if anything.
func (c *Compactor) Flush(ctx context.Context) (*Written, error) {
	if len(c.raw) == 0 && len(c.table) == 0 {
		return nil, nil
	}
	return c.closeFrame(ctx, true)
}

// closeFrame compresses the frame being filled into the pack being
// filled, and stores the pack if it reached the target (or always).
func (c *Compactor) closeFrame(ctx context.Context, store bool) (*Written, error) {
	if len(c.raw) > 0 {
		off := int64(len(c.buf))
		var hdr [pack.HeaderSize]byte
		pack.PutFrameHeader(hdr[:], len(c.raw))
		c.buf = append(c.buf, hdr[:]...)
		c.buf = c.enc.EncodeAll(c.raw, c.buf)
		stored := int64(len(c.buf)) - off
		for i, e := range c.inRaw {
			e.Off, e.Stored, e.Frame = off, stored, int64(len(c.raw))
			c.table = append(c.table, e)
			m := c.from[i]
			m.To = e
			c.moves = append(c.moves, m)
		}
		c.raw, c.inRaw, c.from = c.raw[:0], c.inRaw[:0], c.from[:0]
	}
	if len(c.table) == 0 || (!store && len(c.buf) < c.target && len(c.table) <= pack.MaxChunks-maxFrameChunks) {
		return nil, nil
	}
	sealed, err := pack.Seal(c.buf, c.table)
	if err != nil {
		return nil, err
	}
	p := pack.NewID()
	c.s.leases.holdPack(p)
	w := &Written{Pack: p, Moves: c.moves, Bytes: int64(len(sealed)), Release: func() { c.s.leases.releasePacks([]pack.ID{p}) }}
	c.buf, c.table, c.moves = sealed[:0], nil, nil
	if err := c.s.store.Put(ctx, pack.Key(p), bytes.NewReader(sealed), int64(len(sealed))); err != nil {
		w.Release()
		return nil, cerr.Backend("write pack "+p.String(), err)
	}
	c.Written += w.Bytes
	return w, nil
}

// maxFrameChunks bounds the chunks of one frame (small chunks, the ends of
// streams, could otherwise fill a pack's table in one frame).
const maxFrameChunks = 1024

// DecodeRecords decodes recs, whose records are in body (a pack read
// whole), and calls fn with each chunk's verified bytes, which live until
// fn returns. A frame is decoded once for its neighbouring chunks. A bad
// record is quarantined (condemn) and skipped; an error of fn stops.
func (s *Store) DecodeRecords(body []byte, recs []Record, fn func(r Record, data []byte) error) error {
	for k := 0; k < len(recs); {
		r := recs[k]
		n := 1
		for r.CI.Frame != 0 && k+n < len(recs) && recs[k+n].CI.Off == r.CI.Off && recs[k+n].CI.Stored == r.CI.Stored {
			n++
		}
		group := recs[k : k+n]
		k += n
		if r.CI.Off < 0 || r.CI.Off+r.CI.Stored > int64(len(body)) {
			for _, g := range group {
				_ = s.condemn(g.ID, g.CI, errOutside(g))
			}
			continue
		}
		rec := body[r.CI.Off : r.CI.Off+r.CI.Stored]
		if r.CI.Frame == 0 {
			bp, data, err := s.decodeRecord(r.ID, r.CI, rec)
			if s.condemn(r.ID, r.CI, err) != nil {
				continue
			}
			err = fn(r, data)
			s.dataPool.Put(bp)
			if err != nil {
				return err
			}
			continue
		}
		fp, frame, err := s.decodeFrame(r.ID, r.CI, rec)
		if err != nil {
			for _, g := range group {
				_ = s.condemn(g.ID, g.CI, err)
			}
			continue
		}
		for _, g := range group {
			if g.CI.Frame != r.CI.Frame || g.CI.InFrame < 0 || g.CI.InFrame+g.CI.Size > int64(len(frame)) {
				_ = s.condemn(g.ID, g.CI, fmt.Errorf("%w: chunk %s: bytes %d to %d of a frame of %d", cerr.ErrDataLoss, g.ID, g.CI.InFrame, g.CI.InFrame+g.CI.Size, len(frame)))
				continue
			}
			data := frame[g.CI.InFrame : g.CI.InFrame+g.CI.Size]
			if chunkid.Sum(data) != g.ID {
				_ = s.condemn(g.ID, g.CI, fmt.Errorf("%w: chunk %s fails verification", cerr.ErrDataLoss, g.ID))
				continue
			}
			if err := fn(g, data); err != nil {
				s.framePool.Put(fp)
				return err
			}
		}
		s.framePool.Put(fp)
	}
	return nil
}
