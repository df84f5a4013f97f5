package cache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/chunks"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/cache/internal/resemble"
	"github.com/cairnbuild/cairn/chunkid"
)

// Compaction: pushes store each chunk as its own zstd frame at the fastest
// level (the ingest tier), which keeps pushes at their speed and a single
// chunk cheap to read. Once a pack is cold (no entry in it touched within
// GCOptions.CompactAge), a collection rewrites its live chunks into frames
// of about 4 MiB at zstd's best level (the compacted tier,
// chunks.FrameTarget and chunks.CompactLevel say why those), chunks that
// resemble each other (package resemble: versions of the same content) in
// the same frame, with the collector's rewriting machinery: the dead
// entries go first (in the fence), each moved entry moves only if it still
// names the copy that was read (index.DB.MoveChunks), and the old pack is
// only marked, to be deleted after the second grace period, once no entry
// names it. Packs are taken oldest first. Compacted packs whose chunks the
// new ones resemble (the index's hints, index/hints.go) are taken again
// with them, so that a new version joins its older versions' frames
// although those were compacted in an earlier run. Its CPU is bounded by
// GCOptions.CompactPace, its work by GCOptions.CompactMax.
//
// A crash leaves at worst a new pack that no entry names (an orphan,
// marked and deleted later) or an old pack still named by entries that
// did not move (compacted by a later run): every entry names a whole copy
// at every moment.

// Defaults of the compaction's options.
const (
	// DefaultCompactAge is how long a pack's chunks must go untouched
	// (a push that stores or finds a chunk touches it; pulls do not)
	// before the background collection compacts it: what builds push
	// again keeps the cheaper reads of records of one chunk a while.
	DefaultCompactAge = 6 * time.Hour
	// DefaultCompactMax bounds the pack bytes one collection compacts:
	// at the background pace (about 10 MB/s of chunks, 5 of packs) about
	// a quarter of an hour, so that a store compacted for the first time
	// is done over many collections, each of which also frees space.
	DefaultCompactMax = 4 << 30
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

// oldPack is a pack being compacted: it is marked once no entry names it.
type oldPack struct {
	id    pack.ID
	table []pack.Entry
}

// compactBatchChunks bounds the chunks one pass of compaction reads
// before it writes: it holds a few hundred bytes for each (about 100 MB
// for 200 000 chunks, 50 GiB of chunks of the default sizes, far more than
// a collection's budget), and chunks only share frames with chunks of the
// same pass.
var compactBatchChunks = 200000

// compactMax is CompactMax resolved: 0 is the default, negative no bound.
func (o GCOptions) compactMax() int64 {
	switch {
	case o.CompactMax == 0:
		return DefaultCompactMax
	case o.CompactMax < 0:
		return math.MaxInt64
	}
	return o.CompactMax
}

// compactBudget returns the packs of plans (oldest first) within the
// run's budget.
func (o GCOptions) compactBudget(plans []PackPlan) []PackPlan {
	budget := o.compactMax()
	var n int
	for n < len(plans) && (n == 0 || budget >= plans[n].Size) {
		budget -= plans[n].Size
		n++
	}
	return plans[:n]
}

// compact rewrites the live chunks of plans' packs into frames, batch by
// batch, and marks the old packs once no entry names them. A batch is read
// twice: once to sketch each live chunk (package resemble), then, in the
// order the sketches give, to write chunks that resemble each other into
// the same frames.
func (c *Cache) compact(ctx context.Context, gen uint64, plans []PackPlan, cutoff int64, opts GCOptions, rep *GCReport) error {
	for len(plans) > 0 {
		n, count := 0, 0
		for n < len(plans) && (n == 0 || count+plans[n].LiveChunks+plans[n].DeadChunks <= compactBatchChunks) {
			count += plans[n].LiveChunks + plans[n].DeadChunks
			n++
		}
		if err := c.compactBatch(ctx, gen, plans[:n], cutoff, opts, rep); err != nil {
			return err
		}
		plans = plans[n:]
	}
	return nil
}

// compactItem is a live chunk of a batch: where it is now.
type compactItem struct{ rec chunks.Record }

// hintFeatures is how many of a chunk's features go into the hints: two
// keys of the index per compacted chunk.
const hintFeatures = 2

// batch is what the first pass of a compaction holds: the live chunks it
// found, their sketches and sizes, and the packs they came from.
type batch struct {
	items    []compactItem
	sketches []resemble.Sketch
	sizes    []int64
	olds     []oldPack
}

// then returns a batch of b's chunks followed by next's.
func (b batch) then(next batch) batch {
	return batch{items: append(b.items, next.items...), sketches: append(b.sketches, next.sketches...),
		sizes: append(b.sizes, next.sizes...), olds: append(b.olds, next.olds...)}
}

// sketchPack drops pp's dead entries, reads its pack and adds its live
// chunks to b, with their sketches; ok is false if the pack could not be
// read (gone, short, unreadable: rep says why).
func (c *Cache) sketchPack(ctx context.Context, gen uint64, pp *PackPlan, cutoff int64, pace float64, b *batch, rep *GCReport) (ok bool, err error) {
	began := time.Now()
	if err := c.step(ctx, gen, func() error { _, err := c.dropDead(pp, cutoff, rep); return err }); err != nil {
		return false, err
	}
	body, table, ok, err := c.readPack(ctx, pp, rep)
	if err != nil || !ok {
		return false, err
	}
	recs, err := c.namedRecords(ctx, gen, pp.Pack, table)
	if err != nil {
		return false, err
	}
	err = c.chunks.DecodeRecords(body, recs, func(r chunks.Record, data []byte) error {
		b.items = append(b.items, compactItem{rec: r})
		b.sketches = append(b.sketches, resemble.Of(data))
		b.sizes = append(b.sizes, r.CI.Size)
		return nil
	})
	if err != nil {
		return false, err
	}
	b.olds = append(b.olds, oldPack{id: pp.Pack, table: table})
	rep.CompactedPacks++
	return true, rest(ctx, time.Since(began), pace)
}

func (c *Cache) compactBatch(ctx context.Context, gen uint64, plans []PackPlan, cutoff int64, opts GCOptions, rep *GCReport) error {
	pace := opts.CompactPace
	var b batch
	inBatch := map[pack.ID]bool{}
	for i := range plans {
		inBatch[plans[i].Pack] = true
		if _, err := c.sketchPack(ctx, gen, &plans[i], cutoff, pace, &b, rep); err != nil {
			return err
		}
	}
	// Compacted packs holding chunks that the new ones resemble (the
	// hints of their first features) are compacted again with them, and
	// go first: older versions, then the new ones that join them.
	var features []uint64
	for _, s := range b.sketches {
		for _, f := range s[:hintFeatures] {
			if f != 0 {
				features = append(features, f)
			}
		}
	}
	var hits map[pack.ID]int
	err := c.step(ctx, gen, func() (err error) {
		hits, err = c.idx.Hints(features)
		return err
	})
	if err != nil && !errors.Is(err, errRebuilt) && ctx.Err() == nil {
		// Hints only make frames denser: the run goes on without.
		c.log.Warn("cache: compaction: cannot read its hints", "err", err)
	} else if err != nil {
		return err
	}
	// The packs most of the new chunks' features name first, within what
	// the cold packs left of the budget and the pass's bound on chunks.
	var hinted []PackPlan
	for p := range hits {
		if pp, ok := rep.recompactable[p]; ok && !inBatch[p] && !rep.recompacted[p] {
			hinted = append(hinted, pp)
		}
	}
	slices.SortFunc(hinted, func(a, b PackPlan) int {
		if hits[a.Pack] != hits[b.Pack] {
			return cmp.Compare(hits[b.Pack], hits[a.Pack])
		}
		return comparePacks(a.Pack, b.Pack)
	})
	chunksIn := len(b.items)
	var taken []PackPlan
	for _, pp := range hinted {
		if pp.Size > rep.hintBudget || chunksIn+pp.LiveChunks+pp.DeadChunks > compactBatchChunks {
			continue
		}
		rep.hintBudget -= pp.Size
		chunksIn += pp.LiveChunks + pp.DeadChunks
		if rep.recompacted == nil {
			rep.recompacted = map[pack.ID]bool{}
		}
		rep.recompacted[pp.Pack] = true
		taken = append(taken, pp)
	}
	// Older chunks first: the new ones join their groups.
	slices.SortStableFunc(taken, func(a, b PackPlan) int { return cmp.Compare(a.newest, b.newest) })
	var old batch
	for i := range taken {
		ok, err := c.sketchPack(ctx, gen, &taken[i], cutoff, pace, &old, rep)
		if err != nil {
			return err
		}
		if ok {
			rep.RecompactedPacks++
		}
	}
	b = old.then(b)
	items, sketches, sizes, olds := b.items, b.sketches, b.sizes, b.olds
	order := resemble.Order(sketches, sizes, chunks.FrameTarget)
	hints := make(map[chunkid.ID][hintFeatures]uint64, len(items))
	for i, it := range items {
		hints[it.rec.ID] = [hintFeatures]uint64(sketches[i][:hintFeatures])
	}
	sketches, sizes = nil, nil

	cp, err := c.chunks.NewCompactor()
	if err != nil {
		return err
	}
	defer cp.Close()
	// stored points the index at a pack the compactor wrote, then rests
	// for the pace.
	began := time.Now()
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
			if err != nil {
				return err
			}
			var features []uint64
			for _, m := range w.Moves {
				for _, f := range hints[m.ID] {
					if f != 0 {
						features = append(features, f)
					}
				}
			}
			if err := c.idx.SetHints(w.Pack, features); err != nil {
				// Hints only make later compactions denser.
				c.log.Warn("cache: compaction: cannot write its hints", "pack", w.Pack.String(), "err", err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		err = rest(ctx, time.Since(began), pace)
		began = time.Now()
		return err
	}
	// add reads chunk it from its old copy and gives it to the compactor.
	add := func(it compactItem) error {
		var bp *[]byte
		var data []byte
		err := c.step(ctx, gen, func() (err error) {
			bp, data, err = c.chunks.ReadRecord(ctx, it.rec.ID, it.rec.CI)
			return err
		})
		if errors.Is(err, ErrDataLoss) {
			return nil // quarantined by the read; a push heals it
		} else if err != nil {
			return err
		}
		w, err := cp.Add(ctx, it.rec.ID, data, it.rec.CI)
		c.chunks.PutData(bp)
		if err != nil {
			return err
		}
		return stored(w)
	}
	for _, g := range order {
		var size int64
		for _, i := range g {
			size += items[i].rec.CI.Size
		}
		// A group that would not fit in the frame being filled starts
		// the next one: resembling chunks compress together only inside
		// one frame.
		w, err := cp.Fit(ctx, size)
		if err != nil {
			return err
		}
		if err := stored(w); err != nil {
			return err
		}
		for _, i := range g {
			if err := add(items[i]); err != nil {
				return err
			}
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
	return c.markCompacted(ctx, gen, olds, rep)
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

// markCompacted marks the packs of olds that no entry names any more;
// those still named are reported (a later run compacts what did not
// move).
func (c *Cache) markCompacted(ctx context.Context, gen uint64, olds []oldPack, rep *GCReport) error {
	var unnamed []pack.ID
	err := c.step(ctx, gen, func() error {
		for _, o := range olds {
			named, err := c.idx.Names(o.id, o.table)
			if err != nil {
				return err
			}
			if named {
				rep.Skipped = append(rep.Skipped, fmt.Sprintf("pack %s: compacted, but entries still name it (quarantined or busy chunks): kept", o.id))
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
	return nil
}

// FrameStats returns how many frames reads decoded since Open, and their
// uncompressed bytes: over the bytes read, what reads of the compacted
// tier pay for sharing frames.
func (c *Cache) FrameStats() (frames, bytes int64) { return c.chunks.FrameStats() }
