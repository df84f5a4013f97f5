package cache

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/chunks"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
)

// Garbage collection of chunks and packs.
//
// What is live: every chunk a committed layer references (its reference
// count is above zero), every chunk touched within the grace period (found
// by a push or FindMissingChunks, uploaded ahead of a commit, leased by a
// session that ended), and every chunk leased now (a session may be about
// to reference it). The rest is dead. Layers themselves are deleted by
// cairn rm (and by the quota and retention rules, which come later); their
// chunks become dead when nothing else references them.
//
// A collection plans, then executes (restic's prune): the plan is pure,
// and says which packs go (wholly dead), which are rewritten (their live
// records copied into a new pack, when dead bytes are at least
// RewriteRatio of the pack), and which packs no entry names (orphans of
// failed pushes, packs emptied by a rewrite) are marked, or deleted after
// the second grace period since their mark. Execution re-checks each
// decision where it acts:
//
//   - entries are deleted inside the chunk store's fence (no lease can be
//     taken meanwhile), only if still unreferenced, untouched since the
//     cutoff, unleased, and still in the pack planned;
//   - a pack object is deleted only if no session holds it (a push that
//     wrote it or learnt of it may still make an entry name it) and, after
//     that, no index entry names it (its table says which chunks to ask);
//   - a rewrite moves an entry only if it still names the old copy, and
//     the old pack is only marked: a reader may have looked a chunk up in
//     it just before the move, so it goes after the second grace period.
//
// A crash at any point leaves at worst a pack no entry names (an orphan,
// marked and deleted by a later run) or an entry whose chunk is gone only
// if it was dead: nothing live is ever lost.

// Defaults of GCOptions.
const (
	DefaultGCGrace     = time.Hour
	DefaultPackGrace   = 15 * time.Minute
	DefaultRewriteRate = 0.5
	// DefaultBackgroundPace: the background collection's walk takes 15 %
	// of a core: 5–7 s per million chunks on this machine, and pushes and
	// pulls keep about 0.9× of their speed (BenchmarkPullDuringGC; at a
	// quarter of a core pushes kept 0.63×).
	DefaultBackgroundPace = 0.15
)

// gcPage is how many chunk entries one step of the walk reads, in one
// read transaction, under the cache's lock. A variable for the tests.
var gcPage = 10000

// GCOptions qualify a collection.
type GCOptions struct {
	// Grace: an unreferenced chunk touched within it is kept. 0 means
	// DefaultGCGrace, a positive value is at least MinGCGrace; negative
	// means none (tests, and an operator who knows no push is under way).
	Grace time.Duration
	// PackGrace is how long a marked pack waits before it is deleted. 0
	// means DefaultPackGrace; negative means none.
	PackGrace time.Duration
	// RewriteRatio: a pack whose dead bytes are at least this share of
	// its records is rewritten. 0 means DefaultRewriteRate; above 1 turns
	// rewriting off.
	RewriteRatio float64
	// Pace, if between 0 and 1, is the share of one core the walk of the
	// index may take: it rests between pages so that pushes and pulls
	// keep their speed (a full-speed walk halved them on two cores). The
	// background collection uses DefaultBackgroundPace; 0 means no rest.
	Pace float64
	// StepMaxAge, if positive, deletes the step records neither recorded
	// nor hit within it (a retention rule: a cache entry no build has
	// used for that long), before the chunks are collected.
	StepMaxAge time.Duration
	// UntaggedMaxAge: a manifest no tag reaches is kept this long after
	// its last push or pull (0 means DefaultUntaggedMaxAge, negative
	// none); then it, and what only it reached, is collected.
	UntaggedMaxAge time.Duration
	// MaxSize, if positive, is the quota: when the packs hold more bytes,
	// the least recently used roots are evicted (quota.go) until the
	// bytes they alone hold, as estimated, bring the store under it;
	// then the collection takes them.
	MaxSize int64
	// KeepTags: tags it matches are never evicted by the quota (nil:
	// any tag may be).
	KeepTags *regexp.Regexp
	// CompactAge, if positive, compacts (compact.go) the packs of the
	// ingest tier none of whose entries was touched within it.
	CompactAge time.Duration
	// CompactPace, if between 0 and 1, is the share of one core the
	// compaction may take (it rests between packs); 0 means no rest.
	CompactPace float64
	// CompactMax bounds the pack bytes one collection compacts, oldest
	// first (the rest waits for the next): 0 means DefaultCompactMax,
	// negative no bound.
	CompactMax int64
	// DryRun plans and reports, and changes nothing.
	DryRun bool
}

func (o GCOptions) grace() time.Duration {
	switch {
	case o.Grace == 0:
		return DefaultGCGrace
	case o.Grace < 0:
		return 0
	}
	return max(o.Grace, minGCGrace)
}

// minGCGrace is MinGCGrace; tests that run a quota's workload in seconds
// lower it (layers' touches hold at any grace period, see
// index.DB.SetCollecting; chunks found by a server-side push are leased).
var minGCGrace = MinGCGrace

// MinGCGrace is the shortest grace period GCOptions.Grace gives (but
// none): an existence answer touches a chunk only if its last touch is a
// minute old (index.DB.Touch), so a shorter period could take a chunk that
// a push was just told is there.
const MinGCGrace = 3 * time.Minute

func (o GCOptions) packGrace() time.Duration {
	switch {
	case o.PackGrace == 0:
		return DefaultPackGrace
	case o.PackGrace < 0:
		return 0
	}
	return o.PackGrace
}

func (o GCOptions) ratio() float64 {
	if o.RewriteRatio <= 0 {
		return DefaultRewriteRate
	}
	return o.RewriteRatio
}

// PackPlan is one pack the plan acts on.
type PackPlan struct {
	Pack       pack.ID
	Size       int64 // the pack object's bytes
	LiveBytes  int64 // stored bytes of the live records the index names in it
	DeadBytes  int64 // the rest of its records' bytes: dead, or named by no entry
	LiveChunks int
	DeadChunks int
	dead       []chunkid.ID
	compactPlan
}

// GCReport is a collection's plan and what its execution did.
type GCReport struct {
	Start    time.Time
	Duration time.Duration
	DryRun   bool

	// The plan.
	Packs        int64 // packs in the blob store
	Chunks       int64 // index entries
	LiveChunks   int64
	DeadChunks   int64
	YoungChunks  int64 // unreferenced, but touched within the grace period: kept
	Delete       []PackPlan
	Rewrite      []PackPlan
	Compact      []PackPlan // cold packs of the ingest tier: compacted, oldest first
	Orphans      []pack.ID  // no entry names them: marked now
	Due          []pack.ID  // marked over PackGrace ago, still unnamed: deleted now
	Waiting      int        // marked packs whose second grace period runs
	PlannedBytes int64      // what the plan frees: deleted packs' bytes and rewritten packs' dead bytes

	// Step records neither recorded nor hit within StepMaxAge: deleted
	// (counted only, on a dry run).
	StaleSteps int64

	// The layer-level collection (gc_roots.go): layers only the registry
	// holds that nothing reaches, the manifests among all linked ones that
	// no tag reaches and are past UntaggedMaxAge, and the layers deleted.
	UnreachedLayers   int64
	UntaggedManifests int64
	DeletedLayers     int64

	// The quota (quota.go): the packs' bytes when the run began, and the
	// roots evicted (layers with their step records, manifests with their
	// tags), with the bytes they alone held, as estimated.
	StoredBytes      int64
	EvictedLayers    int64
	EvictedManifests int64
	EvictedBytes     int64

	// The execution.
	DeletedPacks   int64
	RewrittenPacks int64
	MarkedPacks    int64
	DeletedChunks  int64
	MovedChunks    int64
	// The compaction: old packs read, the bytes of the chunks they held
	// and of the packs written.
	CompactedPacks int64
	// RecompactedPacks: of CompactedPacks, compacted packs taken again
	// because new chunks resemble some of theirs (hints, compact.go),
	// within what the cold packs left of CompactMax.
	RecompactedPacks int64
	CompactRead      int64
	CompactWritten   int64
	// DeletedBytes: bytes of the packs deleted.
	DeletedBytes int64
	// FreedBytes: bytes of the packs deleted, less those of the packs
	// the rewrites wrote (a rewritten pack's bytes count when a later run
	// deletes it, after the second grace period).
	FreedBytes int64
	Skipped    []string // what the plan said and the execution did not do, and why

	// recompactable: the compacted packs the plan leaves alone, which
	// compaction takes again if the hints say new chunks resemble theirs;
	// recompacted: those it took (within what the cold packs left of
	// CompactMax, hintBudget).
	recompactable map[pack.ID]PackPlan
	recompacted   map[pack.ID]bool
	hintBudget    int64 // what the cold packs left of CompactMax
}

// GC runs a collection (see the comment above GCOptions). It runs beside
// pushes and pulls, takes the cache's lock one step at a time, and stops
// if a Reindex overtakes it; one collection runs at a time.
func (c *Cache) GC(ctx context.Context, opts GCOptions) (GCReport, error) {
	if err := c.begin(ctx); err != nil {
		return GCReport{}, fmt.Errorf("cache: gc: %w", err)
	}
	c.end()
	select {
	case c.gcToken <- struct{}{}:
	case <-ctx.Done():
		return GCReport{}, fmt.Errorf("cache: gc: %w", ctx.Err())
	}
	defer func() { <-c.gcToken }()
	ctx, cancel := c.untilClose(ctx)
	defer cancel()
	rep := GCReport{Start: time.Now(), DryRun: opts.DryRun}
	err := c.gc(ctx, opts, &rep)
	rep.Duration = time.Since(rep.Start)
	c.countGC(rep, err)
	if err != nil {
		return rep, fmt.Errorf("cache: gc: %w", err)
	}
	c.log.Info("cache: collected garbage", "dry run", opts.DryRun, "duration", rep.Duration.Round(time.Millisecond),
		"packs deleted", rep.DeletedPacks, "packs rewritten", rep.RewrittenPacks, "packs marked", rep.MarkedPacks,
		"chunks deleted", rep.DeletedChunks, "chunks moved", rep.MovedChunks, "freed bytes", rep.FreedBytes,
		"packs compacted", rep.CompactedPacks, "of them again", rep.RecompactedPacks, "compacted chunk bytes", rep.CompactRead, "compacted pack bytes", rep.CompactWritten,
		"planned bytes", rep.PlannedBytes, "skipped", len(rep.Skipped))
	return rep, nil
}

// GCStats count what collections did since Open, for metrics.
type GCStats struct {
	Runs, Failures int64
	FreedBytes     int64
	// DeletedBytes only grows: the bytes of the packs deleted (FreedBytes
	// goes down in a run that compacts or rewrites more than it deletes).
	DeletedBytes                 int64
	DeletedPacks, RewrittenPacks int64
	DeletedChunks                int64
	// Compaction: packs compacted, the chunk bytes they held and the
	// bytes of the packs written for them.
	CompactedPacks, CompactRead, CompactWritten int64
	LastDuration                                time.Duration
	LastEnd                                     time.Time
}

func (c *Cache) countGC(rep GCReport, err error) {
	if rep.DryRun {
		return
	}
	c.gcMu.Lock()
	defer c.gcMu.Unlock()
	s := &c.gcStats
	s.Runs++
	if err != nil {
		s.Failures++
	}
	s.FreedBytes += rep.FreedBytes
	s.DeletedBytes += rep.DeletedBytes
	s.DeletedPacks += rep.DeletedPacks
	s.RewrittenPacks += rep.RewrittenPacks
	s.DeletedChunks += rep.DeletedChunks
	s.CompactedPacks += rep.CompactedPacks
	s.CompactRead += rep.CompactRead
	s.CompactWritten += rep.CompactWritten
	s.LastDuration, s.LastEnd = rep.Duration, rep.Start.Add(rep.Duration)
}

// GCStats returns what collections did since Open.
func (c *Cache) GCStats() GCStats {
	c.gcMu.Lock()
	defer c.gcMu.Unlock()
	return c.gcStats
}

func (c *Cache) gc(ctx context.Context, opts GCOptions, rep *GCReport) error {
	gen := c.rebuilds.Load()
	if opts.StepMaxAge > 0 {
		if err := c.dropStaleSteps(ctx, gen, rep.Start.Add(-opts.StepMaxAge), opts.DryRun, rep); err != nil {
			return err
		}
	}
	// From here on, an existence answer about a layer this run could
	// take writes its touch (see index.DB.SetCollecting).
	c.idx.SetCollecting(rep.Start.Add(-opts.grace()))
	defer c.idx.SetCollecting(time.Time{})
	if err := c.evict(ctx, gen, opts, rep); err != nil {
		return err
	}
	if err := c.collectUnreached(ctx, gen, opts, rep); err != nil {
		return err
	}
	cutoff := rep.Start.Add(-opts.grace()).Unix()
	if err := c.plan(ctx, gen, opts, cutoff, rep); err != nil {
		return err
	}
	if opts.DryRun {
		return nil
	}
	if c.gcHooks.Planned != nil {
		c.gcHooks.Planned(rep)
	}
	for i := range rep.Delete {
		if err := c.step(ctx, gen, func() error { return c.deletePack(ctx, &rep.Delete[i], cutoff, rep) }); err != nil {
			return err
		}
	}
	var reframe []PackPlan // rewrites of compacted packs: compacted again
	for i := range rep.Rewrite {
		if rep.Rewrite[i].framed {
			reframe = append(reframe, rep.Rewrite[i])
			continue
		}
		if err := c.step(ctx, gen, func() error { return c.rewritePack(ctx, &rep.Rewrite[i], cutoff, rep) }); err != nil {
			return err
		}
	}
	if len(rep.Orphans) > 0 {
		if err := c.step(ctx, gen, func() error { return c.idx.MarkPending(rep.Orphans, rep.Start) }); err != nil {
			return err
		}
		rep.MarkedPacks += int64(len(rep.Orphans))
	}
	for _, p := range rep.Due {
		if err := c.step(ctx, gen, func() error { return c.dropMarked(ctx, p, rep) }); err != nil {
			return err
		}
	}
	// Last, as it is the slowest (a budget bounds it): what frees space
	// comes first.
	if len(reframe) > 0 || len(rep.Compact) > 0 {
		if err := c.compact(ctx, gen, append(reframe, rep.Compact...), cutoff, opts, rep); err != nil {
			return err
		}
	}
	rep.recompactable, rep.recompacted = nil, nil
	return nil
}

// plan walks the blob store's packs, the index's chunk entries and the
// marked packs, and fills rep's plan. It holds, per pack, a few counters
// and the IDs of its dead chunks: not the whole index.
func (c *Cache) plan(ctx context.Context, gen uint64, opts GCOptions, cutoff int64, rep *GCReport) error {
	sizes := map[pack.ID]int64{}
	if err := c.store.List(ctx, pack.Prefix, func(info backend.Info) error {
		if p, ok := pack.IDFromKey(info.Key); ok {
			sizes[p] = info.Size
		}
		return nil
	}); err != nil {
		return backendErr("list packs", err)
	}
	rep.Packs = int64(len(sizes))
	if !opts.DryRun {
		// Hints naming packs that are gone (compaction's, index/hints.go).
		err := c.step(ctx, gen, func() error {
			_, err := c.idx.PruneHints(gcPage, func(p pack.ID) bool { _, ok := sizes[p]; return ok })
			return err
		})
		if err != nil {
			return err
		}
	}
	if rep.StoredBytes == 0 { // the quota's own listing, if it ran, came first
		for _, n := range sizes {
			rep.StoredBytes += n
		}
	}
	plans := map[pack.ID]*PackPlan{}
	// A frame is live whole if its live chunks fill it (its bytes count
	// once, exactly), else by its live chunks' shares.
	frames := map[frameAt]*frameUse{}
	var marked map[pack.ID]time.Time
	// The walk goes a page at a time, each in its own snapshot: the plan
	// is a little less exact than one snapshot's, and safe all the same,
	// since every action re-checks what it acts on.
	visit := func(id chunkid.ID, ci index.ChunkInfo) error {
		rep.Chunks++
		pp := plans[ci.Pack]
		if pp == nil {
			pp = &PackPlan{Pack: ci.Pack}
			plans[ci.Pack] = pp
		}
		pp.framed = pp.framed || ci.Frame != 0
		pp.newest = max(pp.newest, ci.Added)
		live := true
		switch {
		case ci.Refs > 0:
			rep.LiveChunks++
			pp.LiveChunks++
		case ci.Added > cutoff:
			rep.YoungChunks++
			pp.LiveChunks++
		default: // DeadBytes comes from the pack's size, below
			live = false
			rep.DeadChunks++
			pp.DeadChunks++
			pp.dead = append(pp.dead, id)
		}
		switch {
		case ci.Frame != 0 && live:
			fu := frames[frameAt{ci.Pack, ci.Off}]
			if fu == nil {
				fu = &frameUse{stored: ci.Stored, size: ci.Frame}
				frames[frameAt{ci.Pack, ci.Off}] = fu
			}
			fu.live += ci.Size
			fu.liveBytes += ci.Bytes()
		case live:
			pp.LiveBytes += ci.Stored
		}
		return nil
	}
	var after chunkid.ID
	for first, more := true, true; more; first = false {
		began := time.Now()
		err := c.step(ctx, gen, func() (err error) {
			after, more, err = c.idx.ChunkPage(after, first, gcPage, visit)
			return err
		})
		if err != nil {
			return err
		}
		if err := rest(ctx, time.Since(began), opts.Pace); err != nil {
			return err
		}
	}
	for at, fu := range frames {
		if fu.live == fu.size {
			plans[at.pack].LiveBytes += fu.stored
		} else {
			plans[at.pack].LiveBytes += fu.liveBytes
		}
	}
	err := c.step(ctx, gen, func() (err error) {
		marked, err = c.idx.Pending()
		return err
	})
	if err != nil {
		return err
	}
	var unmark []pack.ID
	for p := range marked {
		_, listed := sizes[p]
		_, named := plans[p]
		if !listed || named {
			unmark = append(unmark, p) // gone, or named again (a reindex)
		}
	}
	for p, size := range sizes {
		pp := plans[p]
		if pp == nil {
			at, ok := marked[p]
			switch {
			case !ok:
				rep.Orphans = append(rep.Orphans, p)
			case rep.Start.Sub(at) >= opts.packGrace():
				rep.Due = append(rep.Due, p)
				rep.PlannedBytes += size
			default:
				rep.Waiting++
			}
			continue
		}
		pp.Size = size
		// Dead bytes are what the live records do not take: dead
		// entries, and records no entry names (duplicates of concurrent
		// pushes, entries an earlier run deleted without taking the
		// pack), which no walk of the index sees.
		pp.DeadBytes = max(size-pack.FooterSize-int64(pp.LiveChunks+pp.DeadChunks)*int64(pack.EntrySize)-pp.LiveBytes, 0)
		switch {
		case pp.LiveChunks == 0:
			rep.Delete = append(rep.Delete, *pp)
			rep.PlannedBytes += size
		case opts.CompactAge > 0 && !pp.framed && pp.newest <= rep.Start.Add(-opts.CompactAge).Unix() && size <= maxVerifyPack:
			// Cold: compaction drops its dead entries and rewrites the
			// live ones (a rewrite first would only copy them twice).
			rep.Compact = append(rep.Compact, *pp)
		case float64(pp.DeadBytes) >= opts.ratio()*float64(pp.DeadBytes+pp.LiveBytes) && size <= maxVerifyPack:
			rep.Rewrite = append(rep.Rewrite, *pp)
			rep.PlannedBytes += pp.DeadBytes
		case opts.CompactAge > 0 && pp.framed && size <= maxVerifyPack && !opts.DryRun:
			// Compacted: compaction may take it again, if new chunks
			// resemble some of its own (hints).
			if rep.recompactable == nil {
				rep.recompactable = map[pack.ID]PackPlan{}
			}
			rep.recompactable[p] = *pp
		}
		pp.dead = nil // the chosen ones have their copy
	}
	// Dead entries naming a pack that is gone: the entries go (live ones
	// are cairn verify's to report).
	for p, pp := range plans {
		if _, listed := sizes[p]; !listed && pp.LiveChunks == 0 {
			rep.Delete = append(rep.Delete, *pp)
		}
	}
	byPack := func(a, b PackPlan) int { return comparePacks(a.Pack, b.Pack) }
	// Oldest first: packs written together hold chunks that were
	// consecutive in their layers, and compaction frames them together.
	slices.SortFunc(rep.Compact, func(a, b PackPlan) int {
		if a.newest != b.newest {
			return cmp.Compare(a.newest, b.newest)
		}
		return comparePacks(a.Pack, b.Pack)
	})
	within := opts.compactBudget(rep.Compact)
	for _, pp := range rep.Compact[len(within):] { // they wait; meanwhile rewritten as usual
		if float64(pp.DeadBytes) >= opts.ratio()*float64(pp.DeadBytes+pp.LiveBytes) {
			rep.Rewrite = append(rep.Rewrite, pp)
			rep.PlannedBytes += pp.DeadBytes
		}
	}
	rep.Compact = within
	rep.hintBudget = opts.compactMax()
	for _, pp := range rep.Compact {
		rep.PlannedBytes += pp.DeadBytes
		rep.hintBudget -= min(pp.Size, rep.hintBudget)
	}
	slices.SortFunc(rep.Delete, byPack)
	slices.SortFunc(rep.Rewrite, byPack)
	slices.SortFunc(rep.Orphans, comparePacks)
	slices.SortFunc(rep.Due, comparePacks)
	if len(unmark) > 0 && !opts.DryRun {
		return c.step(ctx, gen, func() error { return c.idx.Unmark(unmark) })
	}
	return nil
}

func comparePacks(a, b pack.ID) int { return bytes.Compare(a[:], b[:]) }

// frameAt names a frame record: its pack and offset.
type frameAt struct {
	pack pack.ID
	off  int64
}

// frameUse is what the plan's walk saw of a frame: its record's bytes,
// its uncompressed size, and the size and stored shares of its live
// chunks.
type frameUse struct {
	stored, size    int64
	live, liveBytes int64
}

// dropDead deletes the entries of pp's dead chunks that are still dead,
// inside the fence, and reports whether a session holds pp's pack.
func (c *Cache) dropDead(pp *PackPlan, cutoff int64, rep *GCReport) (held bool, err error) {
	err = c.chunks.FenceGC(func(leased func(chunkid.ID) bool, holds func(pack.ID) bool) error {
		gone, err := c.idx.DeleteChunks(pp.dead, func(id chunkid.ID, ci index.ChunkInfo) bool {
			return leased(id) || ci.Added > cutoff || ci.Pack != pp.Pack
		})
		rep.DeletedChunks += int64(len(gone))
		held = holds(pp.Pack)
		return err
	})
	return held, err
}

// deletePack deletes a wholly dead pack: its dead entries, then, if no
// session holds it and no entry names it, the pack.
func (c *Cache) deletePack(ctx context.Context, pp *PackPlan, cutoff int64, rep *GCReport) error {
	held, err := c.dropDead(pp, cutoff, rep)
	if err != nil || pp.Size == 0 { // 0: the pack was gone already
		return err
	}
	if held {
		rep.Skipped = append(rep.Skipped, fmt.Sprintf("pack %s: a push holds it", pp.Pack))
		return nil
	}
	_, _, err = c.deleteUnnamed(ctx, pp.Pack, pp.Size, rep)
	return err
}

// deleteUnnamed deletes pack p if no index entry names it (its table
// says which chunks to ask about), and reports whether it did. Call it
// after checking, in the fence, that no session holds p: then no entry can
// come to name it. named says an entry names p.
func (c *Cache) deleteUnnamed(ctx context.Context, p pack.ID, size int64, rep *GCReport) (deleted, named bool, err error) {
	table, err := pack.ReadTable(ctx, c.store, pack.Key(p), size)
	if errors.Is(err, ErrDataLoss) {
		rep.Skipped = append(rep.Skipped, fmt.Sprintf("pack %s: its table cannot be read (%v): kept; cairn verify checks what names it", p, err))
		return false, false, nil
	} else if err != nil {
		return false, false, err
	}
	if named, err = c.idx.Names(p, table); err != nil || named {
		if named {
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("pack %s: an entry names it", p))
		}
		return false, named, err
	}
	if c.gcHooks.BeforeDelete != nil {
		c.gcHooks.BeforeDelete(p)
	}
	if err := c.store.Delete(ctx, pack.Key(p)); err != nil && !errors.Is(err, backend.ErrNotFound) {
		return false, false, backendErr("delete pack", err)
	}
	rep.DeletedPacks++
	rep.FreedBytes += size
	rep.DeletedBytes += size
	return true, false, nil
}

// rewritePack copies the records of pp's pack that entries still name into
// a new pack, moves those entries, and marks the old pack: it goes after
// the second grace period.
func (c *Cache) rewritePack(ctx context.Context, pp *PackPlan, cutoff int64, rep *GCReport) error {
	if _, err := c.dropDead(pp, cutoff, rep); err != nil {
		return err
	}
	body, table, ok, err := c.readPack(ctx, pp, rep)
	if err != nil || !ok {
		return err
	}
	ids := make([]chunkid.ID, len(table))
	for i, e := range table {
		ids[i] = e.ID
	}
	infos, found, err := c.idx.Chunks(ids)
	if err != nil {
		return err
	}
	var recs []chunks.Record
	for i, e := range table {
		if found[i] && infos[i].Pack == pp.Pack && infos[i].Off == e.Off {
			recs = append(recs, chunks.Record{ID: e.ID, CI: infos[i]})
		}
	}
	np, moves, written, release, err := c.chunks.CopyRecords(ctx, body, recs)
	defer release()
	if err != nil {
		return err
	}
	rep.FreedBytes -= written
	if len(moves) > 0 {
		n, err := c.idx.MoveChunks(np, moves)
		rep.MovedChunks += int64(n)
		if err != nil {
			return err
		}
	}
	named, err := c.idx.Names(pp.Pack, table)
	if err != nil {
		return err
	}
	if named {
		rep.Skipped = append(rep.Skipped, fmt.Sprintf("pack %s: rewritten, but entries still name it (quarantined or busy chunks): kept", pp.Pack))
		return nil
	}
	if err := c.idx.MarkPending([]pack.ID{pp.Pack}, time.Now()); err != nil {
		return err
	}
	rep.RewrittenPacks++
	rep.MarkedPacks++
	return nil
}

// dropMarked deletes marked pack p, due, unless a session holds it or an
// entry names it again (then it is unmarked).
func (c *Cache) dropMarked(ctx context.Context, p pack.ID, rep *GCReport) error {
	var held bool
	_ = c.chunks.FenceGC(func(_ func(chunkid.ID) bool, holds func(pack.ID) bool) error {
		held = holds(p)
		return nil
	})
	if held {
		rep.Skipped = append(rep.Skipped, fmt.Sprintf("pack %s: a push holds it", p))
		return nil
	}
	info, err := c.store.Stat(ctx, pack.Key(p))
	if errors.Is(err, backend.ErrNotFound) {
		return c.idx.Unmark([]pack.ID{p})
	} else if err != nil {
		return backendErr("stat pack", err)
	}
	deleted, named, err := c.deleteUnnamed(ctx, p, info.Size, rep)
	if err != nil {
		return err
	}
	if deleted || named {
		return c.idx.Unmark([]pack.ID{p})
	}
	return nil
}

// dropStaleSteps deletes (or, dry, counts) the step records recorded and
// last hit before since, a page at a time. Hits still pending in memory
// are flushed first, so a record hit a moment ago is not taken as stale.
func (c *Cache) dropStaleSteps(ctx context.Context, gen uint64, since time.Time, dry bool, rep *GCReport) error {
	if err := c.step(ctx, gen, c.idx.Flush); err != nil {
		return err
	}
	var after digest.Digest
	for more := true; more; {
		var stale []StepRecord
		err := c.step(ctx, gen, func() (err error) {
			more, err = c.idx.StepPage(after, "", MaxPageSize, func(key digest.Digest, v []byte, h index.Hits) error {
				after = key
				rec, err := unmarshalStep(v)
				if err != nil {
					return nil // cairn verify's to report; the lookup says DATA_LOSS
				}
				if rec.Created.Before(since) && h.Last.Before(since) {
					stale = append(stale, rec)
				}
				return nil
			})
			return err
		})
		if err != nil {
			return err
		}
		rep.StaleSteps += int64(len(stale))
		if dry {
			continue
		}
		for _, rec := range stale {
			if err := c.DeleteStepIn(ctx, rec.Namespace, rec.Key); err != nil && !errors.Is(err, ErrNotFound) {
				return err
			}
		}
	}
	return nil
}

// rest waits so that work that took busy uses at most pace of the time
// (0 or 1 and above: no wait).
func rest(ctx context.Context, busy time.Duration, pace float64) error {
	if pace <= 0 || pace >= 1 {
		return ctx.Err()
	}
	return sleep(ctx, time.Duration(float64(busy)*(1/pace-1)))
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
