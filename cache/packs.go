package cache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// Chunks are stored in packs: each push (or chunk upload stream) gathers
// its new chunks, compressed, into a buffer and writes it as one backend
// object when it reaches packTarget bytes or the push ends. One object per
// chunk cost more than the chunking, hashing and compressing together on
// the fs backend (creating a file and two fsyncs for every 64 KiB stored;
// bench/RESULTS.md), and S3 bills and throttles per request.
//
// A pack is written whole before any index entry names it, like a chunk
// object was: a crash leaves at most a pack that no index entry names,
// whose chunks Reindex finds.

// packTarget is the size at which a pack is written; it ends up at most one
// chunk record larger. 4 MiB: see BenchmarkPackSize for the fs backend; on
// S3 a 4 MiB PUT already runs at the backend's streaming rate
// (backend/s3 BenchmarkMinIO), and fewer requests cost less.
const packTarget = 4 << 20

// packsInFlight bounds the packs of one session held in memory at once:
// one filling while the others are written. Workers that need a new pack
// wait for a write to finish, so a slow backend slows the push.
const packsInFlight = 3

// A chunkSession is one push's or one upload stream's view of chunk
// storage: the flights it joined (concurrent sessions needing the same new
// chunk store it once) and the packs it writes.
type chunkSession struct {
	c   *Cache
	ctx context.Context // pack writes run under it, whoever starts them
	// indexed: write index entries (no references) for each pack as it
	// lands, for upload streams; a push instead adds its chunks to the
	// index with the layer, in one transaction.
	indexed bool

	heldMu sync.Mutex
	held   map[chunkID]*flight
	known  map[chunkID]chunkInfo // chunks the session's commit may need that the index may lack

	packMu sync.Mutex
	cur    *openPack     // the pack being filled, if any
	tokens chan struct{} // one per pack in memory
	writes sync.WaitGroup

	errMu sync.Mutex
	err   error // the first failed pack write
}

// openPack is a pack being filled or written.
type openPack struct {
	id      packID
	buf     *[]byte
	entries []packEntry
	flights []*flight
}

func (c *Cache) newSession(ctx context.Context, indexed bool) *chunkSession {
	return &chunkSession{c: c, ctx: ctx, indexed: indexed,
		held: make(map[chunkID]*flight), known: make(map[chunkID]chunkInfo),
		tokens: make(chan struct{}, packsInFlight)}
}

// ensure makes chunk id (whose bytes are data, already verified) durable
// unless the index or a flight already has it. When it returns nil the
// chunk is in the index, in known, or in a pack of this session that
// flush will write.
func (s *chunkSession) ensure(ctx context.Context, id chunkID, data []byte) error {
	if _, ok, err := s.c.lookupChunk(id); err != nil || ok {
		return err
	}
	for {
		f, leader := s.join(id)
		if !leader {
			if f.owner == s {
				return nil // an earlier occurrence in this session writes it
			}
			if p := s.c.flights.want(f); p != nil {
				p.owner.seal(p.pack) // do not wait for its pack to fill
			}
			select {
			case <-f.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if f.err == nil {
				if s.indexed { // its writer may be a push, which indexes with its commit
					return s.c.indexChunks([]packEntry{{id: id}}, []chunkInfo{f.info})
				}
				s.noteKnown(id, f.info)
				return nil
			}
			continue // its writer failed (cancelled?): write it ourselves
		}
		// Recheck: a session that committed this chunk may have just left.
		if ci, ok, err := s.c.lookupChunk(id); err != nil || ok {
			s.leaderFailed(id, f, ci, err)
			return err
		}
		return s.write(ctx, id, data, f)
	}
}

// leaderFailed finishes flight f, which this session leads, before its
// chunk reached a pack. A failure also fails the session: a repeat of the
// chunk in this session returned nil, counting on this write.
func (s *chunkSession) leaderFailed(id chunkID, f *flight, ci chunkInfo, err error) {
	if err != nil {
		s.setErr(fmt.Errorf("chunk %s: %w", id, err))
	}
	s.c.flights.finish(id, f, ci, err)
}

// write compresses data into the current pack, which it writes if that
// makes it full or another session waits for the chunk.
func (s *chunkSession) write(ctx context.Context, id chunkID, data []byte, f *flight) error {
	bp := s.c.getComp(len(data))
	defer s.c.compPool.Put(bp)
	rec := (*bp)[:chunkHeaderSize]
	putChunkHeader(rec, len(data))
	rec = s.c.enc.EncodeAll(data, rec)
	*bp = rec[:0]

	s.packMu.Lock()
	p := s.cur
	if p == nil {
		select {
		case s.tokens <- struct{}{}:
		case <-ctx.Done():
			s.packMu.Unlock()
			s.leaderFailed(id, f, chunkInfo{}, ctx.Err())
			return ctx.Err()
		}
		p = &openPack{id: newPackID(), buf: s.c.getPackBuf(len(rec))}
		s.cur = p
	}
	off := int64(len(*p.buf))
	*p.buf = append(*p.buf, rec...)
	p.entries = append(p.entries, packEntry{id: id, off: off, stored: int64(len(rec)), size: int64(len(data))})
	p.flights = append(p.flights, f)
	full := len(*p.buf) >= s.c.packTarget || len(p.entries) == maxPackChunks
	if full {
		s.cur = nil
		s.writes.Add(1)
	}
	s.packMu.Unlock()

	wanted := s.c.flights.placed(f, p)
	if full {
		return s.writePack(p)
	}
	if wanted {
		s.seal(p)
	}
	return nil
}

// seal writes p now if it is still the pack being filled: another session
// waits for a chunk in it.
func (s *chunkSession) seal(p *openPack) {
	s.packMu.Lock()
	if s.cur != p {
		s.packMu.Unlock()
		return // full or flushed already: on its way
	}
	s.cur = nil
	s.writes.Add(1)
	s.packMu.Unlock()
	s.writePack(p)
}

// writePack stores p, then (for an indexed session) indexes its chunks, and
// finishes its flights either way.
func (s *chunkSession) writePack(p *openPack) error {
	defer s.writes.Done()
	defer func() {
		s.c.packPool.Put(p.buf)
		<-s.tokens
	}()
	err := s.failed()
	if err == nil {
		body := appendPackTable(*p.buf, p.entries)
		*p.buf = body[:0]
		if err = s.c.store.Put(s.ctx, packKey(p.id), bytes.NewReader(body), int64(len(body))); err != nil {
			err = backendErr("write pack "+p.id.String(), err)
		}
	}
	infos := make([]chunkInfo, len(p.entries))
	for i, e := range p.entries {
		infos[i] = chunkInfo{size: e.size, stored: e.stored, pack: p.id, off: e.off}
	}
	if err == nil && s.indexed {
		err = s.c.indexChunks(p.entries, infos)
	}
	if err != nil {
		s.setErr(err)
	} else {
		s.heldMu.Lock()
		for i, e := range p.entries {
			s.known[e.id] = infos[i]
		}
		s.heldMu.Unlock()
	}
	for i, e := range p.entries {
		s.c.flights.finish(e.id, p.flights[i], infos[i], err)
	}
	return err
}

// getPackBuf returns a buffer for a pack whose first record has n bytes:
// room for the pack target, one more record of the largest chunk, and the
// largest table.
func (c *Cache) getPackBuf(n int) *[]byte {
	tail := chunkHeaderSize + c.enc.MaxEncodedSize(c.params.Max) + maxPackChunks*packEntrySize + packFooterSize
	return getBuf(&c.packPool, max(c.packTarget, n)+tail, c.packTarget+tail)
}

// indexChunks adds index entries, with no references, for the chunks of a
// pack just written, unless the index has them (from another pack).
func (c *Cache) indexChunks(entries []packEntry, infos []chunkInfo) error {
	now := time.Now().Unix()
	return c.update("index chunks", func(txn *badger.Txn) error {
		for i, e := range entries {
			if _, ok, err := getChunk(txn, e.id); err != nil || ok {
				if err != nil {
					return err
				}
				continue
			}
			ci := infos[i]
			ci.added = now
			if err := txn.Set(chunkIdxKey(e.id), ci.encode()); err != nil {
				return err
			}
		}
		return nil
	})
}

// flush writes the pack being filled and waits for every pack write of the
// session. Call it once no ensure is running; nil means every chunk ensure
// accepted is durable.
func (s *chunkSession) flush() error {
	s.packMu.Lock()
	p := s.cur
	s.cur = nil
	if p != nil {
		s.writes.Add(1)
	}
	s.packMu.Unlock()
	if p != nil {
		s.writePack(p)
	}
	s.writes.Wait()
	return s.failed()
}

// close ends the session: a pack still being filled is dropped (its
// flights fail, so waiting sessions write those chunks themselves) and the
// session leaves its flights. Call it once no ensure is running, after
// flush or instead of it.
func (s *chunkSession) close() {
	s.setErr(errSessionClosed)
	s.flush()
	s.c.flights.leave(s)
}

var errSessionClosed = errors.New("cache: chunk session ended before its chunks were written")

func (s *chunkSession) failed() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.err
}

func (s *chunkSession) setErr(err error) {
	s.errMu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.errMu.Unlock()
}

func (s *chunkSession) noteKnown(id chunkID, ci chunkInfo) {
	s.heldMu.Lock()
	s.known[id] = ci
	s.heldMu.Unlock()
}

// knownChunks returns the chunks this session wrote or waited for.
func (s *chunkSession) knownChunks() map[chunkID]chunkInfo {
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	return s.known
}

// flights dedups concurrent writes of the same new chunk: the first
// session to need it writes it, later ones wait and reuse the result. A
// finished flight stays in the map while any session that used it is
// still open, so a session that starts later also skips the write: the
// chunk is durable, and its index entry arrives with the first commit.
type flights struct {
	mu sync.Mutex
	m  map[chunkID]*flight
}

type flight struct {
	done    chan struct{}
	info    chunkInfo // set before done closes
	err     error
	holders int

	// Guarded by flights.mu.
	owner  *chunkSession // the session writing it
	pack   *openPack     // the owner's pack holding it, once compressed
	wanted bool          // another session waits: write its pack at once
}

// packRef is a pack and the session that writes it.
type packRef struct {
	owner *chunkSession
	pack  *openPack
}

// join returns the flight for id, starting one (leader true) that s owns if
// none is under way.
func (s *chunkSession) join(id chunkID) (f *flight, leader bool) {
	fs := &s.c.flights
	fs.mu.Lock()
	defer fs.mu.Unlock()
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	f, ok := fs.m[id]
	if !ok {
		f = &flight{done: make(chan struct{}), owner: s}
		fs.m[id] = f
		leader = true
	}
	if old := s.held[id]; old != f {
		if old != nil {
			old.holders-- // a failed flight, already out of the map
		}
		f.holders++
		s.held[id] = f
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
func (fs *flights) finish(id chunkID, f *flight, ci chunkInfo, err error) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	f.info, f.err = ci, err
	f.pack = nil
	if err != nil && fs.m[id] == f {
		delete(fs.m, id)
	}
	close(f.done)
}

// leave drops s from every flight it joined.
func (fs *flights) leave(s *chunkSession) {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	s.heldMu.Lock()
	defer s.heldMu.Unlock()
	for id, f := range s.held {
		f.holders--
		if f.holders == 0 && fs.m[id] == f {
			delete(fs.m, id)
		}
	}
	s.held = nil
}
