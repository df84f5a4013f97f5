package index

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/dgraph-io/badger/v4"
)

// Quarantine: a chunk whose stored record fails verification (or whose
// pack is gone) is quarantined under q/<id>, in the same step that found
// it. Its entry c/<id> stays, with its reference count and the location of
// the bad copy, but everything that asks whether the index holds the
// chunk hears "no": Touch (FindMissingChunks), Chunk and Chunks (a
// session's dedup check, a commit's check that its chunks were uploaded),
// so the next push that has the chunk stores a good copy. Storing one
// (AddChunks, or a commit whose session wrote it) moves the entry to the
// new location and lifts the quarantine. A layer is damaged while any of
// its chunks is quarantined; it is whole again as soon as the last one is
// healed, without anything naming the layer.
//
// The set of quarantined ids is also kept in memory (it is small: a
// healthy store has none), so that the hot paths pay one atomic load.

// quarantine mirrors the q/ keys.
type quarantine struct {
	n   atomic.Int64 // len(ids), for the fast path
	mu  sync.RWMutex
	ids map[chunkid.ID]time.Time
	// syncMu serialises the re-reads that bring ids up to date after a
	// transaction that may have changed a q/ key: the last re-read of an
	// id sees the last commit, whatever order the commits' re-reads ran.
	syncMu sync.Mutex
}

func quarantineKey(id chunkid.ID) []byte {
	return append(append(make([]byte, 0, 2+len(id)), idxQuarantine...), id[:]...)
}

// loadQuarantine reads the q/ keys into x.q, at Open and after a rebuild's
// drop.
func (x *DB) loadQuarantine() error {
	ids := make(map[chunkid.ID]time.Time)
	err := x.View("read quarantine", func(tx *Tx) error {
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxQuarantine})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix(idxQuarantine); it.Next() {
			id, err := quarantinedID(it.Item().Key())
			if err != nil {
				return err
			}
			var t time.Time
			if err := it.Item().Value(func(v []byte) (err error) { t, err = decodeTime(v); return err }); err != nil {
				return fmt.Errorf("quarantined chunk %s: %w", id, err)
			}
			ids[id] = t
		}
		return nil
	})
	if err != nil {
		return err
	}
	x.q.mu.Lock()
	x.q.ids = ids
	x.q.n.Store(int64(len(ids)))
	x.q.mu.Unlock()
	return nil
}

func quarantinedID(k []byte) (chunkid.ID, error) {
	var id chunkid.ID
	if len(k) != len(idxQuarantine)+len(id) {
		return id, fmt.Errorf("%w: bad quarantine key %x", cerr.ErrDataLoss, k)
	}
	copy(id[:], k[len(idxQuarantine):])
	return id, nil
}

// Quarantined reports whether chunk id is quarantined.
func (x *DB) Quarantined(id chunkid.ID) bool {
	if x.q.n.Load() == 0 {
		return false
	}
	x.q.mu.RLock()
	_, ok := x.q.ids[id]
	x.q.mu.RUnlock()
	return ok
}

// QuarantinedChunks returns the quarantined chunks and when each was
// quarantined.
func (x *DB) QuarantinedChunks() map[chunkid.ID]time.Time {
	x.q.mu.RLock()
	defer x.q.mu.RUnlock()
	out := make(map[chunkid.ID]time.Time, len(x.q.ids))
	for id, t := range x.q.ids {
		out[id] = t
	}
	return out
}

// DamagedChunks returns the distinct chunks of lr (content and tar meta)
// that are quarantined: none for a whole layer.
func (x *DB) DamagedChunks(lr *LayerRecord) []chunkid.ID {
	if x.q.n.Load() == 0 {
		return nil
	}
	x.q.mu.RLock()
	defer x.q.mu.RUnlock()
	var out []chunkid.ID
	seen := map[chunkid.ID]bool{}
	lr.ChunkRefs(func(e RecipeEntry) {
		if _, bad := x.q.ids[e.ID]; bad && !seen[e.ID] {
			seen[e.ID] = true
			out = append(out, e.ID)
		}
	})
	return out
}

// Quarantine marks chunk id as having no good copy, if its entry still
// names the copy at (the pack and offset a read found bad): a copy stored
// meanwhile by a push is not condemned for the old one's fault. It reports
// whether this call quarantined the chunk.
func (x *DB) Quarantine(id chunkid.ID, at ChunkInfo) (bool, error) {
	var did bool
	err := x.update("quarantine chunk", func(txn *badger.Txn) error {
		did = false
		ci, ok, err := getChunk(txn, id)
		if err != nil || !ok || ci.Pack != at.Pack || ci.Off != at.Off {
			return err
		}
		if q, err := has(txn, quarantineKey(id)); err != nil || q {
			return err
		}
		did = true
		return txn.Set(quarantineKey(id), encodeTime(time.Now()))
	})
	x.syncQuarantine(id)
	return did && err == nil, err
}

// heal gives quarantined chunk id the copy ci (keeping its reference
// count) and lifts the quarantine, inside txn. It reports whether it did:
// not if id is not quarantined, nor if ci is the condemned copy itself (a
// session that found it in a finished flight, or a rebuild that listed
// its pack first).
func heal(txn *badger.Txn, id chunkid.ID, ci ChunkInfo, now int64) (bool, error) {
	q, err := has(txn, quarantineKey(id))
	if err != nil || !q {
		return false, err
	}
	old, ok, err := getChunk(txn, id)
	if err != nil {
		return false, err
	}
	if ok && old.Pack == ci.Pack && old.Off == ci.Off {
		return false, nil
	}
	if ok {
		ci.Refs = old.Refs
	} else {
		ci.Refs = 0
	}
	ci.Added = now
	if err := txn.Set(chunkKey(id), ci.Encode()); err != nil {
		return false, err
	}
	return true, txn.Delete(quarantineKey(id))
}

// syncQuarantine brings the in-memory set up to date for ids after a
// transaction that may have quarantined or healed them.
func (x *DB) syncQuarantine(ids ...chunkid.ID) {
	if len(ids) == 0 {
		return
	}
	x.q.syncMu.Lock()
	defer x.q.syncMu.Unlock()
	state := make(map[chunkid.ID]*time.Time, len(ids))
	err := x.View("read quarantine", func(tx *Tx) error {
		for _, id := range ids {
			var t time.Time
			found, err := get(tx.txn, quarantineKey(id), func(v []byte) (err error) { t, err = decodeTime(v); return err })
			if err != nil {
				return err
			}
			if found {
				state[id] = &t
			} else {
				state[id] = nil
			}
		}
		return nil
	})
	if err != nil {
		x.log.Warn("cache: read quarantine; reading it whole", "err", err)
		if err := x.loadQuarantine(); err != nil {
			x.log.Error("cache: the quarantine in memory may be stale until a restart", "err", err)
		}
		return
	}
	x.q.mu.Lock()
	for id, t := range state {
		if t == nil {
			delete(x.q.ids, id)
		} else {
			x.q.ids[id] = *t
		}
	}
	x.q.n.Store(int64(len(x.q.ids)))
	x.q.mu.Unlock()
}

// quarantinedIn reports whether id is quarantined as txn sees it: the q/
// key, read in the transaction so that a concurrent Quarantine or heal
// conflicts with it. The in-memory set answers alone when it is empty:
// a Quarantine commits before its id joins the set, so a transaction that
// starts after the set was empty may miss one still committing, and then
// behaves as if it had run just before it.
func (x *DB) quarantinedIn(txn *badger.Txn, id chunkid.ID) (bool, error) {
	if x.q.n.Load() == 0 {
		return false, nil
	}
	return has(txn, quarantineKey(id))
}

// QuarantinedAt returns the copies of the quarantined chunks that were
// condemned: a rebuild re-applies the quarantine to what it indexes from
// the same pack and offset.
func (x *DB) QuarantinedAt() (map[chunkid.ID]ChunkInfo, error) {
	ids := x.QuarantinedChunks()
	out := make(map[chunkid.ID]ChunkInfo, len(ids))
	err := x.View("read quarantine", func(tx *Tx) error {
		for id := range ids {
			if ci, ok, err := getChunk(tx.txn, id); err != nil {
				return err
			} else if ok {
				out[id] = ci
			}
		}
		return nil
	})
	return out, err
}
