package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/chunks"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
)

// Compaction: pushes store each chunk as its own zstd frame at the fastest
// level (the ingest tier), which keeps pushes at their speed and a single
// chunk cheap to read. Once a pack is cold (no entry in it touched within
// GCOptions.CompactAge), a collection rewrites its live chunks into frames
// of several consecutive chunks at zstd's best level (the compacted tier,
// chunks.FrameTarget and chunks.CompactLevel say why those), with the
// collector's rewriting machinery: the dead entries go first (in the
// fence), each moved entry moves only if it still names the copy that was
// read (index.DB.MoveChunks), and the old pack is only marked, to be
// deleted after the second grace period, once no entry names it. Packs are
// taken oldest first, so that chunks written together, consecutive in the
// layers that brought them, share frames. Its CPU is bounded by
// GCOptions.CompactPace.
//
// A crash leaves at worst a new pack that no entry names (an orphan,
// marked and deleted later) or an old pack still named by entries that
// did not move (compacted by a later run): every entry names a whole copy
// at every moment.

// Defaults of the compaction's options.
const (
	// DefaultCompactAge is how long a pack's chunks must go untouched
	// before the background collection compacts it: hot layers keep the
	// cheaper reads of records of one chunk.
	DefaultCompactAge = 6 * time.Hour
	// DefaultCompactPace: the background compaction takes at most a
	// quarter of a core (it compresses at about 25 MB/s a core, so about
	// 6 MB/s of chunks; see bench/RESULTS.md "Issue 17").
	DefaultCompactPace = 0.25
)

// compactPlan notes, per pack, what the plan needs to pick packs to
// compact: whether any entry names a frame in it (then it is compacted
// already) and the newest touch of its entries.
type compactPlan struct {
	framed bool
	newest int64
}

// oldPack is a pack being compacted whose live chunks were all given to
// the compactor: it is marked once no entry names it.
type oldPack struct {
	id    pack.ID
	table []pack.Entry
}

// compact rewrites the live chunks of plans' packs into frames, in the
// order given, and marks the old packs once no entry names them.
func (c *Cache) compact(ctx context.Context, gen uint64, plans []PackPlan, cutoff int64, pace float64, rep *GCReport) error {
	cp, err := c.chunks.NewCompactor()
	if err != nil {
		return err
	}
	defer cp.Close()
	var waiting []oldPack
	// stored points the index at a pack the compactor wrote and marks
	// the old packs no entry names any more.
	stored := func(w *chunks.Written) error {
		if w == nil {
			return nil
		}
		defer w.Release()
		rep.CompactWritten += w.Bytes
		rep.FreedBytes -= w.Bytes
		err := c.step(ctx, gen, func() error {
			n, err := c.idx.MoveChunks(w.Pack, w.Moves)
			rep.MovedChunks += int64(n)
			return err
		})
		if err != nil {
			return err
		}
		return c.markCompacted(ctx, gen, &waiting, false, rep)
	}
	for i := range plans {
		pp := &plans[i]
		began := time.Now()
		old, err := c.compactPack(ctx, gen, cp, pp, cutoff, stored, rep)
		if err != nil {
			return err
		}
		if old != nil {
			waiting = append(waiting, *old)
		}
		if err := rest(ctx, time.Since(began), pace); err != nil {
			return err
		}
	}
	w, err := cp.Flush(ctx)
	if err != nil {
		return err
	}
	if err := stored(w); err != nil {
		return err
	}
	rep.CompactRead += cp.Read
	return c.markCompacted(ctx, gen, &waiting, true, rep)
}

// compactPack gives the live chunks of pp's pack to cp, storing the packs
// cp fills, and returns the old pack to mark once no entry names it (nil
// if there is nothing to do with it).
func (c *Cache) compactPack(ctx context.Context, gen uint64, cp *chunks.Compactor, pp *PackPlan, cutoff int64,
	stored func(*chunks.Written) error, rep *GCReport) (*oldPack, error) {
	if err := c.step(ctx, gen, func() error { _, err := c.dropDead(pp, cutoff, rep); return err }); err != nil {
		return nil, err
	}
	body, table, ok, err := c.readPack(ctx, pp, rep)
	if err != nil || !ok {
		return nil, err
	}
	recs, err := c.namedRecords(ctx, gen, pp.Pack, table)
	if err != nil {
		return nil, err
	}
	err = c.chunks.DecodeRecords(body, recs, func(r chunks.Record, data []byte) error {
		w, err := cp.Add(ctx, r.ID, data, pp.Pack, r.CI)
		if err != nil {
			return err
		}
		return stored(w)
	})
	if err != nil {
		return nil, err
	}
	rep.CompactedPacks++
	return &oldPack{id: pp.Pack, table: table}, nil
}

// readPack reads pp's pack whole and parses its table. A pack that is gone,
// short or unreadable is skipped (ok false), with the reason in rep.
func (c *Cache) readPack(ctx context.Context, pp *PackPlan, rep *GCReport) (body []byte, table []pack.Entry, ok bool, err error) {
	body = make([]byte, pp.Size)
	rc, err := c.store.Open(ctx, pack.Key(pp.Pack), 0, pp.Size)
	if errors.Is(err, backend.ErrNotFound) {
		rep.Skipped = append(rep.Skipped, fmt.Sprintf("pack %s: gone", pp.Pack))
		return nil, nil, false, nil
	} else if err != nil {
		return nil, nil, false, backendErr("read pack", err)
	}
	_, err = io.ReadFull(rc, body)
	rc.Close()
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		rep.Skipped = append(rep.Skipped, fmt.Sprintf("pack %s: shorter than listed: kept; cairn verify checks its records", pp.Pack))
		return nil, nil, false, nil
	} else if err != nil {
		return nil, nil, false, backendErr("read pack", err)
	}
	table, err = pack.Parse(body)
	if err != nil {
		rep.Skipped = append(rep.Skipped, fmt.Sprintf("pack %s: %v: kept; cairn verify checks its records", pp.Pack, err))
		return nil, nil, false, nil
	}
	return body, table, true, nil
}

// namedRecords returns the records of table, pack p's, that index entries
// name there, in table order.
func (c *Cache) namedRecords(ctx context.Context, gen uint64, p pack.ID, table []pack.Entry) ([]chunks.Record, error) {
	ids := make([]chunkid.ID, len(table))
	for i, e := range table {
		ids[i] = e.ID
	}
	var recs []chunks.Record
	err := c.step(ctx, gen, func() error {
		infos, found, err := c.idx.Chunks(ids)
		if err != nil {
			return err
		}
		for i, e := range table {
			ci := infos[i]
			if found[i] && ci.Pack == p && ci.Off == e.Off && ci.InFrame == e.InFrame {
				recs = append(recs, chunks.Record{ID: e.ID, CI: ci})
			}
		}
		return nil
	})
	return recs, err
}

// markCompacted marks the packs of waiting that no entry names any more
// and keeps the others waiting; at the end (last), those still named are
// reported (a later run compacts what did not move).
func (c *Cache) markCompacted(ctx context.Context, gen uint64, waiting *[]oldPack, last bool, rep *GCReport) error {
	var still []oldPack
	var unnamed []pack.ID
	err := c.step(ctx, gen, func() error {
		for _, o := range *waiting {
			named, err := c.idx.Names(o.id, o.table)
			if err != nil {
				return err
			}
			if named {
				still = append(still, o)
			} else {
				unnamed = append(unnamed, o.id)
			}
		}
		if len(unnamed) == 0 {
			return nil
		}
		return c.idx.MarkPending(unnamed, time.Now())
	})
	if err != nil {
		return err
	}
	rep.MarkedPacks += int64(len(unnamed))
	*waiting = still
	if last {
		for _, o := range still {
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("pack %s: compacted, but entries still name it (quarantined or busy chunks): kept", o.id))
		}
	}
	return nil
}
