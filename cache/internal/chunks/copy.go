package chunks

import (
	"bytes"
	"context"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
)

// Record is a chunk record to copy: the chunk and its index entry, which
// names its place in the old pack.
type Record struct {
	ID chunkid.ID
	CI index.ChunkInfo
}

// CopyRecords writes recs, whose bytes are in body (the old pack, whole),
// into a new pack, as they are (no recompression), and returns the new
// pack's ID and size with a move per record copied, for
// index.DB.MoveChunks. Each
// record is verified first: a bad one is quarantined (condemn) and left
// behind. The new pack is held (see leases) until release is called,
// which the caller does once the moves are in the index. With nothing to
// copy, the ID is zero and no pack is written.
func (s *Store) CopyRecords(ctx context.Context, body []byte, recs []Record) (p pack.ID, moves []index.Move, written int64, release func(), err error) {
	release = func() {}
	var buf []byte
	var entries []pack.Entry
	for _, r := range recs {
		if r.CI.Off < 0 || r.CI.Off+r.CI.Stored > int64(len(body)) {
			_ = s.condemn(r.ID, r.CI, errOutside(r))
			continue
		}
		rec := body[r.CI.Off : r.CI.Off+r.CI.Stored]
		if s.CheckRecord(r.ID, r.CI, rec) != nil {
			continue
		}
		e := pack.Entry{ID: r.ID, Off: int64(len(buf)), Stored: r.CI.Stored, Size: r.CI.Size}
		buf = append(buf, rec...)
		entries = append(entries, e)
		moves = append(moves, index.Move{ID: r.ID, From: r.CI.Pack, FromOff: r.CI.Off, To: e})
		if len(entries) == pack.MaxChunks {
			break // the rest waits for the next collection
		}
	}
	if len(entries) == 0 {
		return pack.ID{}, nil, 0, release, nil
	}
	sealed, err := pack.Seal(buf, entries)
	if err != nil {
		return pack.ID{}, nil, 0, release, err
	}
	p = pack.NewID()
	s.leases.holdPack(p)
	release = func() { s.leases.releasePacks([]pack.ID{p}) }
	if err := s.store.Put(ctx, pack.Key(p), bytes.NewReader(sealed), int64(len(sealed))); err != nil {
		release()
		return pack.ID{}, nil, 0, func() {}, cerr.Backend("write pack "+p.String(), err)
	}
	return p, moves, int64(len(sealed)), release, nil
}

func errOutside(r Record) error {
	return &outsideErr{r}
}

type outsideErr struct{ r Record }

func (e *outsideErr) Error() string {
	return "chunk " + e.r.ID.String() + ": its record lies outside its pack"
}

func (e *outsideErr) Unwrap() error { return cerr.ErrDataLoss }
