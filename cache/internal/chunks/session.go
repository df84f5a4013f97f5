package chunks

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
)

// Chunks are stored in packs: each push (or chunk upload stream) gathers
// its new chunks, compressed, into a buffer and writes it as one backend
// object when it reaches the pack target or the push ends. One object per
// chunk cost more than the chunking, hashing and compressing together on
// the fs backend (creating a file and two fsyncs for every 64 KiB stored;
// bench/RESULTS.md), and S3 bills and throttles per request.
//
// A pack is written whole before any index entry names it: a crash leaves
// at most a pack that no index entry names, whose chunks Reindex finds.

// packsInFlight bounds the packs of one session held in memory at once:
// one filling while the others are written. Workers that need a new pack
// wait for a write to finish, so a slow backend slows the push.
const packsInFlight = 3

// A Session is one push's or one upload stream's view of chunk storage:
// the flights it joined (concurrent sessions needing the same new chunk
// store it once), the leases it holds and the packs it writes. Ensure is
// safe for concurrent use; Flush and Close come after the last Ensure
// returns.
type Session struct {
	s   *Store
	ctx context.Context // pack writes run under it, whoever starts them
	// indexed: write index entries (no references) for each pack as it
	// lands, for upload streams; a push instead adds its chunks to the
	// index with the layer, in one transaction.
	indexed bool

	heldMu sync.Mutex
	held   map[chunkid.ID]*flight
	known  map[chunkid.ID]index.ChunkInfo // chunks the session's commit may need that the index may lack
	leased map[chunkid.ID]struct{}
	packs  map[pack.ID]struct{} // packs the session holds (see leases)
	// committed: a commit referenced the leased chunks (and touched
	// them); Close need not touch them again.
	committed bool

	packMu sync.Mutex
	cur    *openPack     // the pack being filled, if any
	tokens chan struct{} // one per pack in memory
	writes sync.WaitGroup

	errMu sync.Mutex
	err   error // the first failed pack write
}

// openPack is a pack being filled or written.
type openPack struct {
	id      pack.ID
	buf     *[]byte
	entries []pack.Entry
	flights []*flight
}

// NewSession starts a session whose pack writes run under ctx. indexed:
// index each pack's chunks (with no references) as soon as it is written,
// for uploads that commit later; otherwise the chunks reach the index with
// the commit (Known).
func (s *Store) NewSession(ctx context.Context, indexed bool) *Session {
	return &Session{s: s, ctx: ctx, indexed: indexed,
		held: make(map[chunkid.ID]*flight), known: make(map[chunkid.ID]index.ChunkInfo),
		leased: make(map[chunkid.ID]struct{}), packs: make(map[pack.ID]struct{}),
		tokens: make(chan struct{}, packsInFlight)}
}

// lease takes the session's lease on id, once per chunk.
func (ss *Session) lease(id chunkid.ID) {
	ss.heldMu.Lock()
	_, ok := ss.leased[id]
	if !ok {
		ss.leased[id] = struct{}{}
	}
	ss.heldMu.Unlock()
	if !ok {
		ss.s.leases.take(id)
	}
}

// Ensure makes chunk id (whose bytes are data, already verified) durable
// unless the index or a flight already has it. When it returns nil the
// chunk is in the index, in Known, or in a pack of this session that Flush
// will write; and the session holds a lease on it until Close.
func (ss *Session) Ensure(ctx context.Context, id chunkid.ID, data []byte) error {
	ss.lease(id) // before the lookup: see leases
	if _, ok, err := ss.s.idx.Chunk(id); err != nil || ok {
		return err
	}
	for {
		f, leader := ss.join(id)
		if !leader {
			if f.owner == ss {
				return nil // an earlier occurrence in this session writes it
			}
			if p := ss.s.flights.want(f); p != nil {
				p.owner.seal(p.pack) // do not wait for its pack to fill
			}
			select {
			case <-f.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if f.err == nil && ss.s.condemned(id, f.info) {
				// A finished flight whose copy a read has since found
				// bad: drop it and store the chunk again.
				ss.s.flights.drop(id, f)
				continue
			}
			if f.err == nil {
				if ss.indexed { // its writer may be a push, which indexes with its commit
					return ss.s.idx.AddChunks(f.info.Pack, []pack.Entry{{ID: id, Off: f.info.Off, Stored: f.info.Stored, Size: f.info.Size}})
				}
				ss.noteKnown(id, f.info)
				return nil
			}
			continue // its writer failed (cancelled?): write it ourselves
		}
		// Recheck: a session that committed this chunk may have just left.
		if ci, ok, err := ss.s.idx.Chunk(id); err != nil || ok {
			ss.leaderFailed(id, f, ci, err)
			return err
		}
		return ss.write(ctx, id, data, f)
	}
}

// leaderFailed finishes flight f, which this session leads, before its
// chunk reached a pack. A failure also fails the session: a repeat of the
// chunk in this session returned nil, counting on this write.
func (ss *Session) leaderFailed(id chunkid.ID, f *flight, ci index.ChunkInfo, err error) {
	if err != nil {
		ss.setErr(fmt.Errorf("chunk %s: %w", id, err))
	}
	ss.s.flights.finish(id, f, ci, err)
}

// write compresses data into the current pack, which it writes if that
// makes it full or another session waits for the chunk.
func (ss *Session) write(ctx context.Context, id chunkid.ID, data []byte, f *flight) error {
	st := ss.s
	bp := st.getComp(len(data))
	defer st.compPool.Put(bp)
	rec := (*bp)[:pack.HeaderSize]
	pack.PutHeader(rec, len(data))
	rec = st.enc.EncodeAll(data, rec)
	*bp = rec[:0]

	ss.packMu.Lock()
	p := ss.cur
	if p == nil {
		select {
		case ss.tokens <- struct{}{}:
		default:
			if h := st.hooks.WaitSlot; h != nil {
				h(id)
			}
			select {
			case ss.tokens <- struct{}{}:
			case <-ctx.Done():
				ss.packMu.Unlock()
				ss.leaderFailed(id, f, index.ChunkInfo{}, ctx.Err())
				return ctx.Err()
			}
		}
		p = &openPack{id: pack.NewID(), buf: st.getPackBuf(len(rec))}
		ss.cur = p
	}
	off := int64(len(*p.buf))
	*p.buf = append(*p.buf, rec...)
	p.entries = append(p.entries, pack.Entry{ID: id, Off: off, Stored: int64(len(rec)), Size: int64(len(data))})
	p.flights = append(p.flights, f)
	full := len(*p.buf) >= st.packTarget || len(p.entries) == pack.MaxChunks
	if full {
		ss.cur = nil
		ss.writes.Add(1)
	}
	ss.packMu.Unlock()

	wanted := st.flights.placed(f, p)
	if full {
		return ss.writePack(p)
	}
	if wanted {
		ss.seal(p)
	}
	return nil
}

// seal writes p now if it is still the pack being filled: another session
// waits for a chunk in it.
func (ss *Session) seal(p *openPack) {
	ss.packMu.Lock()
	if ss.cur != p {
		ss.packMu.Unlock()
		return // full or flushed already: on its way
	}
	ss.cur = nil
	ss.writes.Add(1)
	ss.packMu.Unlock()
	ss.writePack(p)
}

// writePack seals and stores p, then (for an indexed session) indexes its
// chunks, and finishes its flights either way.
func (ss *Session) writePack(p *openPack) error {
	st := ss.s
	defer ss.writes.Done()
	defer func() {
		st.packPool.Put(p.buf)
		<-ss.tokens
	}()
	err := ss.failed()
	if err == nil {
		ss.holdPack(p.id) // before it may exist: until the session ends
		var body []byte
		body, err = pack.Seal(*p.buf, p.entries)
		if err == nil {
			*p.buf = body[:0]
			if err = st.store.Put(ss.ctx, pack.Key(p.id), bytes.NewReader(body), int64(len(body))); err != nil {
				err = cerr.Backend("write pack "+p.id.String(), err)
			}
		}
	}
	infos := make([]index.ChunkInfo, len(p.entries))
	for i, e := range p.entries {
		infos[i] = index.ChunkInfo{Size: e.Size, Stored: e.Stored, Pack: p.id, Off: e.Off}
	}
	if err == nil && ss.indexed {
		err = st.idx.AddChunks(p.id, p.entries)
	}
	if err != nil {
		ss.setErr(err)
	} else {
		ss.heldMu.Lock()
		for i, e := range p.entries {
			ss.known[e.ID] = infos[i]
		}
		ss.heldMu.Unlock()
	}
	for i, e := range p.entries {
		st.flights.finish(e.ID, p.flights[i], infos[i], err)
	}
	return err
}

// Flush writes the pack being filled and waits for every pack write of the
// session. Call it once no Ensure is running; nil means every chunk Ensure
// accepted is durable.
func (ss *Session) Flush() error {
	ss.packMu.Lock()
	p := ss.cur
	ss.cur = nil
	if p != nil {
		ss.writes.Add(1)
	}
	ss.packMu.Unlock()
	if p != nil {
		ss.writePack(p)
	}
	ss.writes.Wait()
	return ss.failed()
}

// Committed tells the session that a commit referenced its chunks.
func (ss *Session) Committed() {
	ss.heldMu.Lock()
	ss.committed = true
	ss.heldMu.Unlock()
}

// Close ends the session: a pack still being filled is dropped (its
// flights fail, so waiting sessions write those chunks themselves), the
// session leaves its flights and releases its leases. Unless a commit
// referenced them, the leased chunks are touched first, so that their
// entries say when they were last leased (a client may commit them soon).
// Call it once no Ensure is running, after Flush (and the commit) or
// instead of them.
func (ss *Session) Close() {
	ss.setErr(errSessionClosed)
	ss.Flush()
	ss.s.flights.leave(ss)
	ss.heldMu.Lock()
	ids := make([]chunkid.ID, 0, len(ss.leased))
	for id := range ss.leased {
		ids = append(ids, id)
	}
	ss.leased = nil
	packs := make([]pack.ID, 0, len(ss.packs))
	for p := range ss.packs {
		packs = append(packs, p)
	}
	ss.packs = map[pack.ID]struct{}{}
	committed := ss.committed
	ss.heldMu.Unlock()
	defer ss.s.leases.releasePacks(packs) // after the leases: see leases
	if !committed && len(ids) > 0 {
		if _, err := ss.s.idx.Touch(ids); err != nil {
			ss.s.log.Warn("cache: touch leased chunks", "chunks", len(ids), "err", err)
		}
	}
	ss.s.leases.release(ids)
}

var errSessionClosed = errors.New("cache: chunk session ended before its chunks were written")

func (ss *Session) failed() error {
	ss.errMu.Lock()
	defer ss.errMu.Unlock()
	return ss.err
}

func (ss *Session) setErr(err error) {
	ss.errMu.Lock()
	if ss.err == nil {
		ss.err = err
	}
	ss.errMu.Unlock()
}

func (ss *Session) noteKnown(id chunkid.ID, ci index.ChunkInfo) {
	ss.holdPack(ci.Pack) // the commit may name it
	ss.heldMu.Lock()
	ss.known[id] = ci
	ss.heldMu.Unlock()
}

// holdPack holds pack p for the collector's fence until Close, once.
func (ss *Session) holdPack(p pack.ID) {
	ss.heldMu.Lock()
	_, ok := ss.packs[p]
	if !ok {
		ss.packs[p] = struct{}{}
	}
	ss.heldMu.Unlock()
	if !ok {
		ss.s.leases.holdPack(p)
	}
}

// Known returns the chunks this session wrote or waited for: the entries a
// commit adds for chunks the index may lack.
func (ss *Session) Known() map[chunkid.ID]index.ChunkInfo {
	ss.heldMu.Lock()
	defer ss.heldMu.Unlock()
	return ss.known
}

// flights dedups concurrent writes of the same new chunk: the first
// session to need it writes it, later ones wait and reuse the result. A
// finished flight stays in the map while any session that used it is
// still open, so a session that starts later also skips the write: the
// chunk is durable, and its index entry arrives with the first commit.
type flights struct {
	mu     sync.Mutex
	m      map[chunkid.ID]*flight
	leases *leases // a finished flight in m holds its pack (see leases)
}

type flight struct {
	done    chan struct{}
	info    index.ChunkInfo // set before done closes
	err     error
	holders int

	// Guarded by flights.mu.
	owner  *Session  // the session writing it
	pack   *openPack // the owner's pack holding it, once compressed
	wanted bool      // another session waits: write its pack at once
	// holding: the flight holds info.Pack while it is in the map, since
	// a session that joins it may make an entry name that pack.
	holding bool
}

// forget takes f, which is in the map under id, out of it; fs.mu is held.
func (fs *flights) forget(id chunkid.ID, f *flight) {
	delete(fs.m, id)
	if f.holding {
		f.holding = false
		fs.leases.releasePacks([]pack.ID{f.info.Pack})
	}
}

// packRef is a pack and the session that writes it.
type packRef struct {
	owner *Session
	pack  *openPack
}

// join returns the flight for id, starting one (leader true) that ss owns
// if none is under way.
func (ss *Session) join(id chunkid.ID) (f *flight, leader bool) {
	fs := &ss.s.flights
	fs.mu.Lock()
	defer fs.mu.Unlock()
	ss.heldMu.Lock()
	defer ss.heldMu.Unlock()
	f, ok := fs.m[id]
	if !ok {
		f = &flight{done: make(chan struct{}), owner: ss}
		fs.m[id] = f
		leader = true
	}
	if old := ss.held[id]; old != f {
		if old != nil {
			old.holders-- // a failed flight, already out of the map
		}
		f.holders++
		ss.held[id] = f
	}
	return f, leader
}

// want marks f as awaited and returns the pack holding it, if it is in one
// yet; the caller seals that pack. A flight not in a pack yet is sealed by
// its writer when it gets there (placed).
func (fs *flights) want(f *flight) *packRef {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f.wanted = true
	if f.pack == nil {
		return nil
	}
	return &packRef{owner: f.owner, pack: f.pack}
}

// placed records that f's chunk is in pack p of its owner and reports
// whether another session waits for it.
func (fs *flights) placed(f *flight, p *openPack) (wanted bool) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f.pack = p
	return f.wanted
}

// finish ends a flight. A failed flight leaves the map at once, so the next
// session to need the chunk writes it again.
func (fs *flights) finish(id chunkid.ID, f *flight, ci index.ChunkInfo, err error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f.info, f.err = ci, err
	f.pack = nil
	if err != nil && fs.m[id] == f {
		delete(fs.m, id)
	}
	if err == nil && fs.m[id] == f && fs.leases != nil {
		f.holding = true
		fs.leases.holdPack(ci.Pack)
	}
	close(f.done)
}

// drop takes finished flight f out of the map, so that the next session
// to need the chunk writes it again.
func (fs *flights) drop(id chunkid.ID, f *flight) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if fs.m[id] == f {
		fs.forget(id, f)
	}
}

// condemned reports whether ci is the copy of chunk id that a read found
// bad (the chunk is quarantined and the index still names that copy).
func (s *Store) condemned(id chunkid.ID, ci index.ChunkInfo) bool {
	if !s.idx.Quarantined(id) {
		return false
	}
	bad, _, err := s.idx.Chunk(id)
	return err == nil && bad.Pack == ci.Pack && bad.Off == ci.Off
}

// leave drops ss from every flight it joined.
func (fs *flights) leave(ss *Session) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	ss.heldMu.Lock()
	defer ss.heldMu.Unlock()
	for id, f := range ss.held {
		f.holders--
		if f.holders == 0 && fs.m[id] == f {
			fs.forget(id, f)
		}
	}
	ss.held = nil
}
