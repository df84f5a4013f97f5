package cache

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/chunks"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
)

// VerifyOptions qualify a Verify.
type VerifyOptions struct {
	// Rate bounds the bytes read from the backend per second; 0 means no
	// bound. The background scrub sets one so that serving is unaffected.
	Rate int64
	// Progress, if set, is called after each pack.
	Progress func(VerifyReport)
}

// VerifyReport is what a Verify found.
type VerifyReport struct {
	Packs      int64 // packs read whole
	ReadBytes  int64 // bytes read from the backend
	Chunks     int64 // chunk records decoded and checked against their hash
	Newly      int64 // chunks quarantined while the run went (by it, or by reads meanwhile)
	Orphans    int64 // records in packs that no index entry names (the collector's)
	Quarantine []chunkid.ID
	Damaged    []digest.Digest // layers with quarantined chunks
	Steps      []digest.Digest // step records whose layer is damaged
	Problems   []string        // unreadable tables, tables that disagree with the index
}

// maxVerifyPack bounds the pack Verify reads whole into memory: far above
// a pack cairn writes (PackTarget plus one record and the table).
const maxVerifyPack = 64 << 20

// Verify reads every pack of the backend once, whole (one GET on S3),
// checks its table, and decodes and verifies every record that an index
// entry names there; then checks, with ranged reads of their records, the
// index entries that no pack table vouched for (their pack is gone, its
// table is unreadable, or the pack was written after the listing). Every
// chunk found bad, or whose pack is gone, is quarantined, as a read would
// (the next push that has it heals it). The report lists the quarantined
// chunks, the damaged layers and the steps that name them.
//
// Verify runs online, alongside pushes and pulls: what it condemns is
// condemned only if the index still names the copy it read.
func (c *Cache) Verify(ctx context.Context, opts VerifyOptions) (VerifyReport, error) {
	if err := c.begin(ctx); err != nil {
		return VerifyReport{}, fmt.Errorf("cache: verify: %w", err)
	}
	c.end()
	ctx, cancel := c.untilClose(ctx)
	defer cancel()
	rep, err := c.verify(ctx, opts)
	if err != nil {
		return rep, fmt.Errorf("cache: verify: %w", err)
	}
	return rep, nil
}

// errRebuilt ends a Verify that a Reindex overtook: what it checked was
// checked against an index that no longer exists.
var errRebuilt = fmt.Errorf("%w: the index was rebuilt while the store was verified: verify again", ErrFailedPrecondition)

// step runs fn under the shared lock, as every operation does. A Verify
// takes the lock one step at a time (a pack, a record, the walk of the
// index), never for its whole run: a Reindex waiting for the exclusive lock
// would otherwise hold every other call up behind it for hours. A Reindex
// between two steps ends the Verify (errRebuilt).
func (c *Cache) step(ctx context.Context, gen uint64, fn func() error) error {
	if err := c.begin(ctx); err != nil {
		return err
	}
	defer c.end()
	if c.rebuilds.Load() != gen {
		return errRebuilt
	}
	return fn()
}

func (c *Cache) verify(ctx context.Context, opts VerifyOptions) (VerifyReport, error) {
	var rep VerifyReport
	gen := c.rebuilds.Load()
	quarantinedBefore := c.chunks.Quarantines()
	var packs []backend.Info
	if err := c.store.List(ctx, pack.Prefix, func(info backend.Info) error {
		if _, ok := pack.IDFromKey(info.Key); ok {
			packs = append(packs, info)
		} else {
			rep.Problems = append(rep.Problems, fmt.Sprintf("%s: not a pack name", info.Key))
		}
		return nil
	}); err != nil {
		return rep, backendErr("list packs", err)
	}
	// vouched[p]: the chunks of pack p checked here, where they are
	// (record offset and offset in the frame, ascending),
	// for the packs whose table could be read.
	vouched := make(map[pack.ID][]chunkAt, len(packs))
	limit := newRateLimit(opts.Rate)
	for _, info := range packs {
		id, _ := pack.IDFromKey(info.Key)
		var res packCheck
		err := c.step(ctx, gen, func() (err error) {
			res, err = c.verifyPack(ctx, id, info)
			return err
		})
		rep.ReadBytes += res.read
		if err != nil {
			return rep, err
		}
		rep.Orphans += res.orphans
		if res.problem != "" {
			rep.Problems = append(rep.Problems, res.problem)
		}
		rep.Packs++
		rep.Chunks += int64(len(res.offs))
		if res.tableOK {
			vouched[id] = res.offs
		}
		if opts.Progress != nil {
			opts.Progress(rep)
		}
		if err := limit.wait(ctx, res.read); err != nil {
			return rep, err
		}
	}
	// Index entries no table vouched for: their pack is gone, its table
	// unreadable, or it was written after the listing.
	type entry struct {
		id chunkid.ID
		ci index.ChunkInfo
	}
	var rest []entry
	err := c.step(ctx, gen, func() error {
		return c.idx.ForEachChunk(func(id chunkid.ID, ci index.ChunkInfo) error {
			if c.idx.Quarantined(id) {
				return nil
			}
			if offs, ok := vouched[ci.Pack]; ok {
				at := chunkAt{ci.Off, ci.InFrame, idPrefix(id)}
				if i := sort.Search(len(offs), func(i int) bool { return !offs[i].less(at) }); i < len(offs) && offs[i] == at {
					return nil
				}
				rep.Problems = append(rep.Problems, fmt.Sprintf("chunk %s: pack %s's table does not list it at %d (%d in the frame)", id, ci.Pack, ci.Off, ci.InFrame))
			}
			rest = append(rest, entry{id, ci})
			return nil
		})
	})
	if err != nil {
		return rep, err
	}
	lost := map[pack.ID]error{} // packs found missing: their other chunks need no read
	for _, e := range rest {
		err := c.step(ctx, gen, func() error {
			if why, ok := lost[e.ci.Pack]; ok {
				_ = c.chunks.Condemn(e.id, e.ci, fmt.Errorf("%w: chunk %s: %w", ErrDataLoss, e.id, why))
				return nil
			}
			bp, _, err := c.chunks.ReadRecord(ctx, e.id, e.ci)
			rep.ReadBytes += e.ci.Stored
			rep.Chunks++
			switch {
			case err == nil:
				c.chunks.PutData(bp)
			case errors.Is(err, backend.ErrNotFound):
				lost[e.ci.Pack] = err // quarantined by ReadRecord
			case errors.Is(err, ErrDataLoss):
				// Quarantined by ReadRecord.
			default:
				return err
			}
			return nil
		})
		if err != nil {
			return rep, err
		}
		if err := limit.wait(ctx, e.ci.Stored); err != nil {
			return rep, err
		}
	}
	rep.Newly = c.chunks.Quarantines() - quarantinedBefore
	err = c.step(ctx, gen, func() error {
		q := c.idx.QuarantinedChunks()
		for id := range q {
			rep.Quarantine = append(rep.Quarantine, id)
		}
		slices.SortFunc(rep.Quarantine, compareIDs)
		if len(q) == 0 {
			return nil
		}
		if err := c.idx.ForEachLayer(func(lr *index.LayerRecord) error {
			if len(c.idx.DamagedChunks(lr)) > 0 {
				rep.Damaged = append(rep.Damaged, lr.Digest)
			}
			return nil
		}); err != nil {
			return err
		}
		for _, d := range rep.Damaged {
			keys, err := c.idx.StepsOf(d)
			if err != nil {
				return err
			}
			rep.Steps = append(rep.Steps, keys...)
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	c.log.Info("cache: verified the store", "packs", rep.Packs, "chunks", rep.Chunks,
		"read bytes", rep.ReadBytes, "quarantined meanwhile", rep.Newly, "quarantined", len(rep.Quarantine),
		"damaged layers", len(rep.Damaged), "problems", len(rep.Problems))
	return rep, nil
}

func compareIDs(a, b chunkid.ID) int { return bytes.Compare(a[:], b[:]) }

// packCheck is what verifyPack found in one pack.
type packCheck struct {
	offs    []chunkAt // where the chunks checked are, ascending
	tableOK bool      // the table was read: it vouches for what it lists
	orphans int64     // records no index entry names here
	read    int64     // bytes read
	problem string    // to report, if any
}

// verifyPack reads pack p whole, checks its table, and checks every record
// that the index names at its place in p (quarantining the bad ones). err
// is only for what stops the whole run (an unavailable backend, a
// cancelled context).
func (c *Cache) verifyPack(ctx context.Context, p pack.ID, info backend.Info) (res packCheck, err error) {
	if info.Size > maxVerifyPack || info.Size < pack.FooterSize {
		res.problem = fmt.Sprintf("pack %s: %d bytes, not a pack cairn writes: its records are checked one by one", p, info.Size)
		return res, nil
	}
	buf := make([]byte, info.Size)
	rc, err := c.store.Open(ctx, info.Key, 0, info.Size)
	if errors.Is(err, backend.ErrNotFound) {
		return res, nil // deleted since the listing: the index pass checks its entries
	} else if err != nil {
		return res, backendErr("read pack", err)
	}
	got, err := io.ReadFull(rc, buf)
	rc.Close()
	res.read = int64(got)
	if err == io.ErrUnexpectedEOF || err == io.EOF {
		res.problem = fmt.Sprintf("pack %s: %d bytes listed, %d read: its records are checked one by one", p, info.Size, got)
		return res, nil
	} else if err != nil {
		return res, backendErr("read pack", err)
	}
	footer := buf[len(buf)-pack.FooterSize:]
	_, tableSize, err := pack.ParseFooter(footer, info.Size)
	if err != nil {
		res.problem = fmt.Sprintf("pack %s: footer: %v: its records are checked one by one", p, err)
		return res, nil
	}
	tableStart := len(buf) - pack.FooterSize - tableSize
	entries, err := pack.ParseTable(buf[tableStart:len(buf)-pack.FooterSize], footer, info.Size)
	if err != nil {
		res.problem = fmt.Sprintf("pack %s: table: %v: its records are checked one by one", p, err)
		return res, nil
	}
	res.tableOK = true
	ids := make([]chunkid.ID, len(entries))
	for i, e := range entries {
		ids[i] = e.ID
	}
	infos, found, err := c.idx.Chunks(ids)
	if err != nil {
		return res, err
	}
	var recs []chunks.Record
	for i, e := range entries {
		ci := infos[i]
		if !found[i] && c.idx.Quarantined(e.ID) {
			continue // condemned already
		}
		if !found[i] || ci.Pack != p || ci.Off != e.Off || ci.InFrame != e.InFrame {
			res.orphans++ // another copy is the indexed one, or none is
			continue
		}
		if ci.Stored != e.Stored || ci.Size != e.Size || ci.Frame != e.Frame {
			res.problem = fmt.Sprintf("pack %s: chunk %s: table says %d bytes stored of %d (frame %d), the index %d of %d (frame %d)",
				p, e.ID, e.Stored, e.Size, e.Frame, ci.Stored, ci.Size, ci.Frame)
		}
		recs = append(recs, chunks.Record{ID: e.ID, CI: ci})
		res.offs = append(res.offs, chunkAt{e.Off, e.InFrame, idPrefix(e.ID)}) // table order is ascending
	}
	// Each record is decoded and verified, a frame once for its chunks;
	// the bad ones are quarantined. A record the index says runs into the
	// table is bad too.
	_ = c.chunks.DecodeRecords(buf[:tableStart], recs, func(chunks.Record, []byte) error { return nil })
	return res, nil
}

// chunkAt is where a chunk is in its pack: its record's offset and its
// offset in the record's frame (0 in a record of one chunk), and which
// chunk (the first 8 bytes of its hash): an entry naming the right record
// but another chunk's place in the frame is not vouched for.
type chunkAt struct {
	off, inFrame int64
	id           uint64
}

func idPrefix(id chunkid.ID) uint64 { return binary.LittleEndian.Uint64(id[:8]) }

func (a chunkAt) less(b chunkAt) bool {
	return a.off < b.off || (a.off == b.off && a.inFrame < b.inFrame)
}

// rateLimit spaces reads so that they average at most rate bytes a second.
type rateLimit struct {
	rate  int64
	start time.Time
	done  int64
}

func newRateLimit(rate int64) *rateLimit { return &rateLimit{rate: rate, start: time.Now()} }

// wait notes n more bytes read and waits until the average is back under
// the rate.
func (l *rateLimit) wait(ctx context.Context, n int64) error {
	if l.rate <= 0 {
		return ctx.Err()
	}
	l.done += n
	due := l.start.Add(time.Duration(float64(l.done) / float64(l.rate) * float64(time.Second)))
	return sleep(ctx, time.Until(due))
}
