package cache

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// getChunk reads c/<id>; ok is false if the index has no such chunk.
func getChunk(txn *badger.Txn, id chunkID) (ci chunkInfo, ok bool, err error) {
	item, err := txn.Get(chunkIdxKey(id))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return chunkInfo{}, false, nil
	}
	if err != nil {
		return chunkInfo{}, false, err
	}
	err = item.Value(func(v []byte) error {
		ci, err = decodeChunkInfo(v)
		return err
	})
	return ci, err == nil, err
}

// lookupChunk reports whether the index knows chunk id (and so the backend
// holds it).
func (c *Cache) lookupChunk(id chunkID) (chunkInfo, bool, error) {
	var (
		ci chunkInfo
		ok bool
	)
	err := c.db.View(func(txn *badger.Txn) (err error) {
		ci, ok, err = getChunk(txn, id)
		return err
	})
	return ci, ok, indexErr("look up chunk", err)
}

// getLayer reads l/<d>; a missing layer is ErrNotFound.
func getLayer(txn *badger.Txn, d digest.Digest) (*layerRecord, error) {
	item, err := txn.Get(layerIdxKey(d))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return nil, fmt.Errorf("layer %s: %w", d, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	var lr *layerRecord
	err = item.Value(func(v []byte) error {
		lr, err = decodeLayerRecord(d, v)
		return err
	})
	return lr, err
}

// getAccess reads a/<d>, zero if never recorded.
func getAccess(txn *badger.Txn, d digest.Digest) (time.Time, error) {
	item, err := txn.Get(accessIdxKey(d))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, err
	}
	var t time.Time
	err = item.Value(func(v []byte) error {
		ns, n := binary.Varint(v)
		if n <= 0 {
			return errors.New("corrupt access time")
		}
		t = time.Unix(0, ns).UTC()
		return nil
	})
	return t, err
}

func encodeTime(t time.Time) []byte { return binary.AppendVarint(nil, t.UnixNano()) }

// maxTxnChunks is the most distinct chunks whose references one index
// transaction updates along with a layer record. 16 MiB memtables allow
// transactions of 2.4 MiB, about 24 000 such updates; 16 000 leaves room.
// 16 000 chunks of 256 KiB is a 4 GiB layer: larger ones commit in steps
// (commitLayerBig).
const maxTxnChunks = 16000

// commitLayer makes lr visible and adds its chunk references, in one
// transaction. stored gives the object size of every chunk of the recipe
// that the index may not hold yet (uploaded by this push); chunks already
// indexed keep their entry. If the layer is already committed (a concurrent
// push of the same bytes won), nothing changes and the committed record is
// returned.
func (c *Cache) commitLayer(lr *layerRecord, stored map[chunkID]chunkInfo) (*layerRecord, error) {
	counts := make(map[chunkID]int64, len(lr.recipe))
	for _, e := range lr.recipe {
		counts[e.id]++
	}
	if len(counts) > maxTxnChunks {
		return c.commitLayerBig(lr, stored, counts)
	}
	var result *layerRecord
	err := c.update("commit layer "+string(lr.digest), func(txn *badger.Txn) error {
		result = nil
		if old, err := getLayer(txn, lr.digest); err == nil {
			result = old
			return nil
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		storedTotal, err := addRefs(txn, counts, stored, nil)
		if err != nil {
			return err
		}
		lr.stored = storedTotal
		result = lr
		return putLayer(txn, lr)
	})
	return result, err
}

// addRefs adds counts[id] references to each chunk of ids (all of counts if
// ids is nil) and returns their stored bytes, each counted per reference.
func addRefs(txn *badger.Txn, counts map[chunkID]int64, stored map[chunkID]chunkInfo, ids []chunkID) (int64, error) {
	var total int64
	add := func(id chunkID, n int64) error {
		ci, ok, err := getChunk(txn, id)
		if err != nil {
			return err
		}
		if !ok {
			if ci, ok = stored[id]; !ok {
				// Only a bug gets here: every chunk was either found in
				// the index or uploaded by this push.
				return fmt.Errorf("%w: chunk %s is neither indexed nor uploaded", ErrFailedPrecondition, id)
			}
			ci.refs, ci.added = 0, time.Now().Unix()
		}
		ci.refs += n
		total += ci.stored * n
		return txn.Set(chunkIdxKey(id), ci.encode())
	}
	if ids == nil {
		for id, n := range counts {
			if err := add(id, n); err != nil {
				return 0, err
			}
		}
		return total, nil
	}
	for _, id := range ids {
		if err := add(id, counts[id]); err != nil {
			return 0, err
		}
	}
	return total, nil
}

func putLayer(txn *badger.Txn, lr *layerRecord) error {
	if err := txn.Set(layerIdxKey(lr.digest), lr.encode()); err != nil {
		return err
	}
	return txn.Set(accessIdxKey(lr.digest), encodeTime(lr.created))
}

// commitLayerBig commits a layer with more distinct chunks than one
// transaction holds: the references first, maxTxnChunks per transaction,
// then the layer record. A crash in between leaves reference counts too
// high, never too low: chunks are kept longer, none is lost, and Reindex
// makes the counts exact again. Big commits run one at a time.
func (c *Cache) commitLayerBig(lr *layerRecord, stored map[chunkID]chunkInfo, counts map[chunkID]int64) (*layerRecord, error) {
	c.bigCommit.Lock()
	defer c.bigCommit.Unlock()
	op := "commit layer " + string(lr.digest)
	var old *layerRecord
	err := c.db.View(func(txn *badger.Txn) (err error) {
		old, err = getLayer(txn, lr.digest)
		return err
	})
	if err == nil {
		return old, nil
	} else if !errors.Is(err, ErrNotFound) {
		return nil, indexErr(op, err)
	}
	ids := make([]chunkID, 0, len(counts))
	for id := range counts {
		ids = append(ids, id)
	}
	var storedTotal int64
	for start := 0; start < len(ids); start += maxTxnChunks {
		batch := ids[start:min(start+maxTxnChunks, len(ids))]
		var n int64
		err := c.update(op, func(txn *badger.Txn) (err error) {
			n, err = addRefs(txn, counts, stored, batch)
			return err
		})
		if err != nil {
			c.undoRefs(ids[:start], counts)
			return nil, err
		}
		storedTotal += n
	}
	lr.stored = storedTotal
	var result *layerRecord
	err = c.update(op, func(txn *badger.Txn) error {
		if old, err := getLayer(txn, lr.digest); err == nil {
			result = old // committed meanwhile, from another recipe
			return nil
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		result = lr
		return putLayer(txn, lr)
	})
	if err != nil || result != lr {
		c.undoRefs(ids, counts)
	}
	return result, err
}

// undoRefs takes back references that a failed big commit added. If it
// fails too, the counts stay too high, which is safe.
func (c *Cache) undoRefs(ids []chunkID, counts map[chunkID]int64) {
	if err := c.dropRefs(ids, counts); err != nil {
		c.log.Warn("cache: reference counts too high until the next reindex", "err", err)
	}
}

// dropRefs removes counts[id] references from each chunk of ids,
// maxTxnChunks per transaction.
func (c *Cache) dropRefs(ids []chunkID, counts map[chunkID]int64) error {
	for start := 0; start < len(ids); start += maxTxnChunks {
		batch := ids[start:min(start+maxTxnChunks, len(ids))]
		err := c.update("drop references", func(txn *badger.Txn) error {
			for _, id := range batch {
				if err := dropRef(txn, id, counts[id]); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func dropRef(txn *badger.Txn, id chunkID, n int64) error {
	ci, ok, err := getChunk(txn, id)
	if err != nil {
		return err
	}
	if !ok || ci.refs < n {
		return fmt.Errorf("%w: chunk %s has %d references, want to drop %d", ErrDataLoss, id, ci.refs, n)
	}
	ci.refs -= n
	return txn.Set(chunkIdxKey(id), ci.encode())
}

// recordAccess notes that layer d was read; the flusher writes it.
func (c *Cache) recordAccess(d digest.Digest, t time.Time) {
	c.pendMu.Lock()
	c.pendAccess[d] = t
	c.pendMu.Unlock()
}

// flushPending writes pending hit counts and access times in one
// transaction. Entries for layers or steps deleted meanwhile are dropped.
func (c *Cache) flushPending() error {
	c.pendMu.Lock()
	hits, access := c.pendHits, c.pendAccess
	if len(hits) == 0 && len(access) == 0 {
		c.pendMu.Unlock()
		return nil
	}
	c.pendHits, c.pendAccess = make(map[digest.Digest]hitDelta), make(map[digest.Digest]time.Time)
	c.pendMu.Unlock()

	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return ErrClosed
	}
	return c.update("flush hits", func(txn *badger.Txn) error {
		for d, t := range access {
			if _, err := txn.Get(layerIdxKey(d)); errors.Is(err, badger.ErrKeyNotFound) {
				continue
			} else if err != nil {
				return err
			}
			if err := txn.Set(accessIdxKey(d), encodeTime(t)); err != nil {
				return err
			}
		}
		for key, h := range hits {
			if _, err := txn.Get(stepIdxKey(key)); errors.Is(err, badger.ErrKeyNotFound) {
				continue
			} else if err != nil {
				return err
			}
			old, err := getHits(txn, key)
			if err != nil {
				return err
			}
			old.n += h.n
			if h.last.After(old.last) {
				old.last = h.last
			}
			if err := txn.Set(hitsIdxKey(key), old.encode()); err != nil {
				return err
			}
		}
		return nil
	})
}

func (h hitDelta) encode() []byte {
	return binary.AppendVarint(binary.AppendUvarint(nil, h.n), h.last.UnixNano())
}

// getHits reads h/<key>, zero if the step was never hit.
func getHits(txn *badger.Txn, key digest.Digest) (hitDelta, error) {
	item, err := txn.Get(hitsIdxKey(key))
	if errors.Is(err, badger.ErrKeyNotFound) {
		return hitDelta{}, nil
	}
	if err != nil {
		return hitDelta{}, err
	}
	var h hitDelta
	err = item.Value(func(v []byte) error {
		n, k := binary.Uvarint(v)
		if k <= 0 {
			return errors.New("corrupt hit count")
		}
		last, k2 := binary.Varint(v[k:])
		if k2 <= 0 {
			return errors.New("corrupt hit count")
		}
		h = hitDelta{n: n, last: time.Unix(0, last).UTC()}
		return nil
	})
	return h, err
}
