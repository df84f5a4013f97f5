package index

import (
	"fmt"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/dgraph-io/badger/v4"
)

// Chunk reads c/<id>; found is false if the index has no such chunk or
// no good copy of it (quarantined: ci then names the bad copy).
func (tx *Tx) Chunk(id chunkid.ID) (ci ChunkInfo, found bool, err error) {
	ci, found, err = getChunk(tx.txn, id)
	if found && tx.x.Quarantined(id) {
		found = false
	}
	return ci, found, err
}

func getChunk(txn *badger.Txn, id chunkid.ID) (ci ChunkInfo, found bool, err error) {
	found, err = get(txn, chunkKey(id), func(v []byte) (err error) {
		ci, err = DecodeChunkInfo(v)
		return err
	})
	if err != nil {
		return ChunkInfo{}, false, fmt.Errorf("chunk %s: %w", id, err)
	}
	return ci, found, nil
}

// Chunk reports whether the index knows chunk id (and so the backend holds
// a good copy of it, as far as anyone has seen), and where.
func (x *DB) Chunk(id chunkid.ID) (ci ChunkInfo, found bool, err error) {
	err = x.View("look up chunk", func(tx *Tx) (err error) {
		ci, found, err = tx.Chunk(id)
		return err
	})
	return ci, found, err
}

// Chunks looks up every id in one transaction: infos[i] and found[i]
// answer ids[i].
func (x *DB) Chunks(ids []chunkid.ID) (infos []ChunkInfo, found []bool, err error) {
	infos, found = make([]ChunkInfo, len(ids)), make([]bool, len(ids))
	err = x.View("look up chunks", func(tx *Tx) error {
		for i, id := range ids {
			var err error
			if infos[i], found[i], err = tx.Chunk(id); err != nil {
				return err
			}
		}
		return nil
	})
	return infos, found, err
}

// AddChunks adds entries, with no references, for the chunks of pack p
// just written, unless the index has them (from another pack). A
// quarantined chunk takes its new copy from p and is healed.
func (x *DB) AddChunks(p pack.ID, entries []pack.Entry) error {
	now := time.Now().Unix()
	var healed []chunkid.ID
	err := x.update("index chunks", func(txn *badger.Txn) error {
		healed = healed[:0]
		for _, e := range entries {
			ci := ChunkInfo{Size: e.Size, Stored: e.Stored, Added: now, Pack: p, Off: e.Off, InFrame: e.InFrame, Frame: e.Frame}
			old, ok, err := getChunk(txn, e.ID)
			if err != nil {
				return err
			}
			if ok {
				if old.Size != e.Size || (old.Pack == p && old.Off == e.Off && old.InFrame == e.InFrame) {
					continue
				}
				if q, err := x.quarantinedIn(txn, e.ID); err != nil {
					return err
				} else if !q {
					continue
				}
				if h, err := heal(txn, e.ID, ci, now); err != nil {
					return err
				} else if h {
					healed = append(healed, e.ID)
				}
				continue
			}
			if err := txn.Set(chunkKey(e.ID), ci.Encode()); err != nil {
				return err
			}
		}
		return nil
	})
	x.syncQuarantine(healed...)
	return err
}

// ForEachChunk calls fn for every chunk entry, in key order, in one
// read-only transaction. It is for checks over the whole index (tests,
// the collector); fn must not call back into the index.
func (x *DB) ForEachChunk(fn func(id chunkid.ID, ci ChunkInfo) error) error {
	return x.View("walk chunks", func(tx *Tx) error {
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxChunk})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix(idxChunk); it.Next() {
			id, ci, err := chunkItem(it.Item())
			if err != nil {
				return err
			}
			if err := fn(id, ci); err != nil {
				return err
			}
		}
		return nil
	})
}

// chunkItem decodes the chunk entry an iterator is at.
func chunkItem(item *badger.Item) (id chunkid.ID, ci ChunkInfo, err error) {
	k := item.Key()
	if len(k) != len(idxChunk)+len(id) {
		return id, ci, fmt.Errorf("%w: bad chunk key %x", cerr.ErrDataLoss, k)
	}
	copy(id[:], k[len(idxChunk):])
	if err := item.Value(func(v []byte) (err error) {
		ci, err = DecodeChunkInfo(v)
		return err
	}); err != nil {
		return id, ci, fmt.Errorf("chunk %s: %w", id, err)
	}
	return id, ci, nil
}

// ChunkPage calls fn for up to n chunk entries in key order, those after
// after (from the first if start), in one read-only transaction, and
// returns the last id it visited and whether entries follow. A walk in
// pages holds no transaction for long: the collector walks the index
// this way, paced, beside the pushes.
func (x *DB) ChunkPage(after chunkid.ID, start bool, n int, fn func(id chunkid.ID, ci ChunkInfo) error) (last chunkid.ID, more bool, err error) {
	last = after
	err = x.View("walk chunks", func(tx *Tx) error {
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxChunk})
		defer it.Close()
		if start {
			it.Rewind()
		} else {
			it.Seek(chunkKey(after))
			if it.ValidForPrefix(idxChunk) && string(it.Item().Key()) == string(chunkKey(after)) {
				it.Next()
			}
		}
		for k := 0; it.ValidForPrefix(idxChunk); it.Next() {
			if k == n {
				more = true
				return nil
			}
			id, ci, err := chunkItem(it.Item())
			if err != nil {
				return err
			}
			if err := fn(id, ci); err != nil {
				return err
			}
			last = id
			k++
		}
		return nil
	})
	return last, more, err
}

// SetChunkValue writes value under c/<id> as it is. It exists for tests
// that plant corrupt or misleading entries; nothing else calls it.
func (x *DB) SetChunkValue(id chunkid.ID, value []byte) error {
	return x.update("set chunk", func(txn *badger.Txn) error { return txn.Set(chunkKey(id), value) })
}

// DeleteChunks removes the entries of ids whose reference count is zero
// and for which keep returns false, in one transaction, and returns the
// ids removed. keep is asked inside the transaction, after the entry was
// read, so a caller can fence it against concurrent users of the chunks
// (the GC fence: see package chunks).
func (x *DB) DeleteChunks(ids []chunkid.ID, keep func(id chunkid.ID, ci ChunkInfo) bool) ([]chunkid.ID, error) {
	var gone []chunkid.ID
	err := x.update("delete chunks", func(txn *badger.Txn) error {
		gone = gone[:0]
		for _, id := range ids {
			ci, ok, err := getChunk(txn, id)
			if err != nil {
				return err
			}
			if !ok || ci.Refs != 0 || keep(id, ci) {
				continue
			}
			if err := txn.Delete(chunkKey(id)); err != nil {
				return err
			}
			if err := txn.Delete(quarantineKey(id)); err != nil {
				return err
			}
			gone = append(gone, id)
		}
		return nil
	})
	if err == nil {
		x.syncQuarantine(gone...)
	}
	return gone, err
}

// touchAge is how old an entry's Added must be for Touch to rewrite it:
// the grace periods it serves are minutes long, and chunks in use are
// found again and again (a base layer's, by every push on top of it). A
// collector's grace period must be well above it.
const touchAge = 60 // seconds

// Touch looks ids up, in one transaction per MaxTxnChunks, and sets
// Added = now on those that are indexed and were last touched over a
// minute ago: an existence answer (a chunk a push or FindMissingChunks
// found, a chunk a session leased) counts as a use, and the collector
// spares what was used within its grace period. found[i] answers ids[i].
func (x *DB) Touch(ids []chunkid.ID) (found []bool, err error) {
	x.lock.RLock() // not during Close or a rebuild's drop
	defer x.lock.RUnlock()
	if x.closed.Load() {
		return nil, cerr.ErrClosed
	}
	found = make([]bool, len(ids))
	now := time.Now().Unix()
	// While a collection runs, a touch is written whenever the entry is
	// as old as its cutoff (see SetCollecting), a minute or not.
	collecting := x.collectCutoff.Load() / int64(time.Second)
	for start := 0; start < len(ids); start += x.maxTxnChunks() {
		batch := ids[start:min(start+x.maxTxnChunks(), len(ids))]
		err := x.update("touch chunks", func(txn *badger.Txn) error {
			for i, id := range batch {
				ci, ok, err := getChunk(txn, id)
				if err != nil {
					return err
				}
				found[start+i] = ok && !x.Quarantined(id) // asked for again: a push heals it
				if !ok || (now-ci.Added < touchAge && ci.Added > collecting) {
					continue
				}
				ci.Added = now
				if err := txn.Set(chunkKey(id), ci.Encode()); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return found, nil
}
