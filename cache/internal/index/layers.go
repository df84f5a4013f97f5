package index

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Layer reads l/<d>; a missing layer is ErrNotFound.
func (tx *Tx) Layer(d digest.Digest) (*LayerRecord, error) { return getLayer(tx.txn, d) }

// HasLayer reports whether l/<d> exists.
func (tx *Tx) HasLayer(d digest.Digest) (bool, error) { return has(tx.txn, layerKey(d)) }

func getLayer(txn *badger.Txn, d digest.Digest) (*LayerRecord, error) {
	var lr *LayerRecord
	found, err := get(txn, layerKey(d), func(v []byte) (err error) {
		lr, err = DecodeLayerRecord(d, v)
		return err
	})
	if err == nil && !found {
		err = fmt.Errorf("layer %s: %w", d, cerr.ErrNotFound)
	}
	return lr, err
}

// access reads a/<d>, zero if never recorded.
func (tx *Tx) access(d digest.Digest) (time.Time, error) {
	var t time.Time
	_, err := get(tx.txn, accessKey(d), func(v []byte) (err error) {
		t, err = decodeTime(v)
		return err
	})
	return t, err
}

// Layer returns layer d's record and when it was last read (including
// reads not yet flushed).
func (x *DB) Layer(d digest.Digest) (*LayerRecord, time.Time, error) {
	var (
		lr       *LayerRecord
		accessed time.Time
	)
	err := x.View("layer "+string(d), func(tx *Tx) (err error) {
		if lr, err = tx.Layer(d); err != nil {
			return err
		}
		accessed, err = tx.access(d)
		return err
	})
	if err != nil {
		return nil, time.Time{}, err
	}
	x.pendMu.Lock()
	if t, ok := x.pendAccess[d]; ok && t.After(accessed) {
		accessed = t
	}
	x.pendMu.Unlock()
	return lr, accessed, nil
}

// MaxTxnChunks is the most distinct chunks whose references one index
// transaction updates along with a layer record. 16 MiB memtables allow
// transactions of 2.4 MiB, about 24 000 such updates; 16 000 leaves room.
// 16 000 chunks of 256 KiB is a 4 GiB layer: larger ones commit in steps.
const MaxTxnChunks = 16000

// maxTxnChunks is MaxTxnChunks, or the smaller batch a test set.
func (x *DB) maxTxnChunks() int {
	if n := x.txnChunks.Load(); n > 0 {
		return int(n)
	}
	return MaxTxnChunks
}

// SetMaxTxnChunks makes layers of more than n distinct chunks commit and
// delete in batches of n, as layers of more than MaxTxnChunks do: crash
// tests reach the points between batches without tens of thousands of
// chunks. 0 restores MaxTxnChunks.
func (x *DB) SetMaxTxnChunks(n int) { x.txnChunks.Store(int64(n)) }

// CommitLayer makes lr visible and adds its chunk references, in one
// transaction, and returns the committed record with lr.Stored set. known
// gives the entry of every chunk of the recipe that the index may not hold
// yet (written by the committing session); chunks already indexed keep
// their location. Every chunk's entry is touched (Added = now). If the
// layer is already committed (a concurrent push of the same bytes won),
// nothing changes and the committed record is returned.
func (x *DB) CommitLayer(lr *LayerRecord, known map[chunkid.ID]ChunkInfo) (*LayerRecord, error) {
	counts := make(map[chunkid.ID]int64, len(lr.Recipe))
	lr.ChunkRefs(func(e RecipeEntry) { counts[e.ID]++ })
	if len(counts) > x.maxTxnChunks() {
		return x.commitLayerBig(lr, known, counts)
	}
	var result *LayerRecord
	var healed []chunkid.ID
	defer func() { x.syncQuarantine(healed...) }()
	err := x.update("commit layer "+string(lr.Digest), func(txn *badger.Txn) error {
		result, healed = nil, nil
		if old, err := getLayer(txn, lr.Digest); err == nil {
			result = old
			// A re-push of a damaged layer: the chunks its session
			// stored heal the quarantined ones.
			healed, err = x.healKnown(txn, known)
			return err
		} else if !errors.Is(err, cerr.ErrNotFound) {
			return err
		}
		stored, err := x.addRefs(txn, counts, known, nil, &healed)
		if err != nil {
			return err
		}
		lr.Stored = stored
		result = lr
		return putLayer(txn, lr)
	})
	return result, err
}

// healKnown heals, inside txn, every quarantined chunk that known holds a
// new copy of, and returns them.
func (x *DB) healKnown(txn *badger.Txn, known map[chunkid.ID]ChunkInfo) ([]chunkid.ID, error) {
	if x.q.n.Load() == 0 {
		return nil, nil
	}
	var healed []chunkid.ID
	now := time.Now().Unix()
	for id, ci := range known {
		if q, err := x.quarantinedIn(txn, id); err != nil {
			return nil, err
		} else if !q {
			continue
		}
		if h, err := heal(txn, id, ci, now); err != nil {
			return nil, err
		} else if h {
			healed = append(healed, id)
		}
	}
	return healed, nil
}

// addRefs adds counts[id] references to each chunk of ids (all of counts if
// ids is nil) and returns their stored bytes, each counted per reference.
// A quarantined chunk must come with a new copy in known, which heals it
// (appended to *healed).
func (x *DB) addRefs(txn *badger.Txn, counts map[chunkid.ID]int64, known map[chunkid.ID]ChunkInfo, ids []chunkid.ID, healed *[]chunkid.ID) (int64, error) {
	var total int64
	now := time.Now().Unix()
	add := func(id chunkid.ID, n int64) error {
		ci, ok, err := getChunk(txn, id)
		if err != nil {
			return err
		}
		if ok {
			if q, err := x.quarantinedIn(txn, id); err != nil {
				return err
			} else if q {
				k, has := known[id]
				h := false
				if has {
					if h, err = heal(txn, id, k, now); err != nil {
						return err
					}
				}
				if !h {
					// Found bad after the push looked it up (it did not
					// store it), or its copy is the condemned one: the
					// client pushes again, and that push stores it.
					return fmt.Errorf("%w: chunk %s was found damaged (quarantined) while this push ran: push again", cerr.ErrFailedPrecondition, id)
				}
				*healed = append(*healed, id)
				if ci, _, err = getChunk(txn, id); err != nil {
					return err
				}
			}
		}
		if !ok {
			if ci, ok = known[id]; !ok {
				// Only a bug (or a collector that ignored the fence)
				// gets here: every chunk was either found in the index
				// or written by the committing session.
				return fmt.Errorf("%w: chunk %s is neither indexed nor uploaded", cerr.ErrFailedPrecondition, id)
			}
			ci.Refs = 0
		}
		ci.Refs += n
		ci.Added = now
		total += ci.Bytes() * n
		return txn.Set(chunkKey(id), ci.Encode())
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

func putLayer(txn *badger.Txn, lr *LayerRecord) error {
	if err := txn.Set(layerKey(lr.Digest), lr.Encode()); err != nil {
		return err
	}
	if lr.Unrooted {
		if err := txn.Set(unrootedKey(lr.Digest), nil); err != nil {
			return err
		}
	} else if err := txn.Delete(unrootedKey(lr.Digest)); err != nil {
		return err
	}
	return txn.Set(accessKey(lr.Digest), encodeTime(lr.Created))
}

// commitLayerBig commits a layer with more distinct chunks than one
// transaction holds: the references first, MaxTxnChunks per transaction,
// then the layer record. A crash in between leaves reference counts too
// high, never too low: chunks are kept longer, none is lost, and a rebuild
// makes the counts exact again. Big commits run one at a time.
func (x *DB) commitLayerBig(lr *LayerRecord, known map[chunkid.ID]ChunkInfo, counts map[chunkid.ID]int64) (*LayerRecord, error) {
	x.bigCommit.Lock()
	defer x.bigCommit.Unlock()
	op := "commit layer " + string(lr.Digest)
	var old *LayerRecord
	err := x.View(op, func(tx *Tx) (err error) {
		old, err = tx.Layer(lr.Digest)
		return err
	})
	if err == nil {
		return old, nil
	} else if !errors.Is(err, cerr.ErrNotFound) {
		return nil, err
	}
	ids := make([]chunkid.ID, 0, len(counts))
	for id := range counts {
		ids = append(ids, id)
	}
	var stored int64
	for start := 0; start < len(ids); start += x.maxTxnChunks() {
		batch := ids[start:min(start+x.maxTxnChunks(), len(ids))]
		var n int64
		var healed []chunkid.ID
		err := x.update(op, func(txn *badger.Txn) (err error) {
			healed = nil
			n, err = x.addRefs(txn, counts, known, batch, &healed)
			return err
		})
		x.syncQuarantine(healed...)
		if err != nil {
			x.undoRefs(ids[:start], counts)
			return nil, err
		}
		stored += n
	}
	lr.Stored = stored
	var result *LayerRecord
	err = x.update(op, func(txn *badger.Txn) error {
		if old, err := getLayer(txn, lr.Digest); err == nil {
			result = old // committed meanwhile, from another recipe
			return nil
		} else if !errors.Is(err, cerr.ErrNotFound) {
			return err
		}
		result = lr
		return putLayer(txn, lr)
	})
	if err != nil || result != lr {
		x.undoRefs(ids, counts)
	}
	return result, err
}

// undoRefs takes back references that a failed big commit added. If it
// fails too, the counts stay too high, which is safe.
func (x *DB) undoRefs(ids []chunkid.ID, counts map[chunkid.ID]int64) {
	if err := x.dropRefs(ids, counts); err != nil {
		x.log.Warn("cache: reference counts too high until the next reindex", "err", err)
	}
}

// dropRefs removes counts[id] references from each chunk of ids,
// MaxTxnChunks per transaction.
func (x *DB) dropRefs(ids []chunkid.ID, counts map[chunkid.ID]int64) error {
	for start := 0; start < len(ids); start += x.maxTxnChunks() {
		batch := ids[start:min(start+x.maxTxnChunks(), len(ids))]
		err := x.update("drop references", func(txn *badger.Txn) error {
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

func dropRef(txn *badger.Txn, id chunkid.ID, n int64) error {
	ci, ok, err := getChunk(txn, id)
	if err != nil {
		return err
	}
	if !ok || ci.Refs < n {
		return fmt.Errorf("%w: chunk %s has %d references, want to drop %d", cerr.ErrDataLoss, id, ci.Refs, n)
	}
	ci.Refs -= n
	return txn.Set(chunkKey(id), ci.Encode())
}

// DeleteLayer removes layer d's record and its chunk references: in one
// transaction, or for a layer of more than MaxTxnChunks distinct chunks,
// the record first and the references after it, so that a crash in between
// leaves counts too high (chunks kept longer), never too low.
//
// The step records that name d are deleted with it (in the same
// transaction, or the first of them in batches before it); their keys are
// returned, for the caller to delete their backend objects.
func (x *DB) DeleteLayer(d digest.Digest) (steps []digest.Digest, err error) {
	steps, _, err = x.deleteLayer(d, nil)
	return steps, err
}

// deleteLayer is DeleteLayer; guard, if not nil, is called in the deleting
// transaction with the record and may keep the layer (false) or add to
// the transaction. With a guard, step records are not deleted in batches
// first (a collection's guard keeps layers that steps name).
func (x *DB) deleteLayer(d digest.Digest, guard func(txn *badger.Txn, lr *LayerRecord) (bool, error)) (steps []digest.Digest, deleted bool, err error) {
	op := "delete " + string(d)
	// A layer that many records name loses them in batches first, so that
	// the last transaction stays small; a crash in between leaves the
	// layer with fewer records, which is harmless.
	for more := guard == nil; more; {
		var batch []digest.Digest
		err = x.update(op, func(txn *badger.Txn) (err error) {
			batch, more = nil, false
			keys := stepsOf(txn, d)
			if len(keys) < x.stepBatch() {
				return nil
			}
			if has, err := has(txn, layerKey(d)); err != nil || !has {
				return err
			}
			more = true
			batch, err = x.deleteSteps(txn, d, keys[:x.stepBatch()])
			return err
		})
		if err != nil {
			return steps, false, err
		}
		steps = append(steps, batch...)
	}
	nBatched := len(steps)
	var big map[chunkid.ID]int64
	err = x.update(op, func(txn *badger.Txn) error {
		big, deleted = nil, false
		lr, err := getLayer(txn, d)
		if err != nil {
			return err
		}
		if guard != nil {
			if ok, err := guard(txn, lr); err != nil || !ok {
				return err
			}
		}
		deleted = true
		counts := make(map[chunkid.ID]int64, len(lr.Recipe))
		lr.ChunkRefs(func(e RecipeEntry) { counts[e.ID]++ })
		if len(counts) > x.maxTxnChunks() {
			big = counts
		} else {
			for id, n := range counts {
				if err := dropRef(txn, id, n); err != nil {
					return fmt.Errorf("layer %s: %w", d, err)
				}
			}
		}
		if err := txn.Delete(accessKey(d)); err != nil {
			return err
		}
		// The step records that name the layer go with it: a record
		// that outlived its layer would hit again as soon as anyone
		// pushed the same bytes, vouching for content no one recorded.
		last, err := x.deleteSteps(txn, d, stepsOf(txn, d))
		if err != nil {
			return err
		}
		steps = append(steps[:nBatched:nBatched], last...)
		return txn.Delete(layerKey(d))
	})
	if err != nil {
		return steps[:nBatched], false, err
	}
	if !deleted {
		return steps, false, nil
	}
	x.pendMu.Lock()
	delete(x.pendAccess, d)
	for _, k := range steps {
		delete(x.pendHits, k)
	}
	x.pendMu.Unlock()
	if big != nil {
		x.bigCommit.Lock()
		defer x.bigCommit.Unlock()
		ids := make([]chunkid.ID, 0, len(big))
		for id := range big {
			ids = append(ids, id)
		}
		if err := x.dropRefs(ids, big); err != nil {
			return steps, true, fmt.Errorf("%s: drop references: %w", op, err)
		}
	}
	return steps, true, nil
}

// LayerEntry is one layer of a listing: its record and last access.
type LayerEntry struct {
	Record   *LayerRecord
	Accessed time.Time
}

// ListLayers returns up to n layers in digest order, starting after
// digest after ("" for the first page), and whether more follow.
func (x *DB) ListLayers(after digest.Digest, n int) ([]LayerEntry, bool, error) {
	start := idxLayer
	if after != "" {
		start = append(layerKey(after), 0) // just after it
	}
	var (
		out  []LayerEntry
		more bool
	)
	err := x.View("list layers", func(tx *Tx) error {
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxLayer})
		defer it.Close()
		for it.Seek(start); it.ValidForPrefix(idxLayer); it.Next() {
			if len(out) == n {
				more = true
				return nil
			}
			d := digest.Digest(bytes.TrimPrefix(it.Item().Key(), idxLayer))
			var lr *LayerRecord
			if err := it.Item().Value(func(v []byte) (err error) {
				lr, err = DecodeLayerRecord(d, v)
				return err
			}); err != nil {
				return err
			}
			acc, err := tx.access(d)
			if err != nil {
				return err
			}
			out = append(out, LayerEntry{lr, acc})
		}
		return nil
	})
	return out, more, err
}

// Stats counts what the index holds.
type Stats struct {
	Layers, Chunks, Steps int64
	LogicalBytes          int64 // sum of the sizes of all layers
	StoredBytes           int64 // bytes of all chunk records the index knows (a frame's once)
	UniqueBytes           int64 // uncompressed bytes of all chunks the index knows
	ReferencedBytes       int64 // stored bytes of chunks that a layer references
	// The registry's: repositories, tags and manifest links (a manifest
	// linked in two repositories counts twice).
	Repositories, Tags, Manifests int64
	// StoredBytes by tier: records of one chunk, written by pushes, and
	// frames of several, written by compaction; and the chunks in each.
	IngestBytes, CompactedBytes   int64
	IngestChunks, CompactedChunks int64
	Quarantined                   int64 // chunks with no good copy (see Quarantine)
}

// Stats walks the whole index: call it every so often, not per request.
func (x *DB) Stats(ctx context.Context) (Stats, error) {
	var s Stats
	err := x.View("stats", func(tx *Tx) error {
		it := tx.txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		for it.Rewind(); it.Valid(); it.Next() {
			if err := ctx.Err(); err != nil {
				return err
			}
			k := it.Item().Key()
			switch {
			case bytes.HasPrefix(k, idxChunk):
				s.Chunks++
				if err := it.Item().Value(func(v []byte) error {
					ci, err := DecodeChunkInfo(v)
					s.StoredBytes += ci.Bytes()
					s.UniqueBytes += ci.Size
					if ci.Frame == 0 {
						s.IngestBytes += ci.Bytes()
						s.IngestChunks++
					} else {
						s.CompactedBytes += ci.Bytes()
						s.CompactedChunks++
					}
					if ci.Refs > 0 {
						s.ReferencedBytes += ci.Bytes()
					}
					return err
				}); err != nil {
					return err
				}
			case bytes.HasPrefix(k, idxLayer):
				s.Layers++
				d := digest.Digest(bytes.TrimPrefix(k, idxLayer))
				if err := it.Item().Value(func(v []byte) error {
					lr, err := DecodeLayerRecord(d, v)
					if err == nil {
						s.LogicalBytes += lr.Size
					}
					return err
				}); err != nil {
					return err
				}
			case bytes.HasPrefix(k, idxStep):
				s.Steps++
			case bytes.HasPrefix(k, idxQuarantine):
				s.Quarantined++
			case bytes.HasPrefix(k, idxRepo):
				s.Repositories++
			case bytes.HasPrefix(k, idxTag):
				s.Tags++
			case bytes.HasPrefix(k, idxManLink):
				s.Manifests++
			}
		}
		return nil
	})
	return s, err
}

// ForEachLayer calls fn for every layer record, in digest order, in one
// read-only transaction; fn must not call back into the index.
func (x *DB) ForEachLayer(fn func(lr *LayerRecord) error) error {
	return x.View("walk layers", func(tx *Tx) error {
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxLayer})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix(idxLayer); it.Next() {
			d := digest.Digest(bytes.TrimPrefix(it.Item().Key(), idxLayer))
			var lr *LayerRecord
			if err := it.Item().Value(func(v []byte) (err error) {
				lr, err = DecodeLayerRecord(d, v)
				return err
			}); err != nil {
				return err
			}
			if err := fn(lr); err != nil {
				return err
			}
		}
		return nil
	})
}

// ReplaceLayer swaps the record of a committed layer, old, for lr: the same
// digest, another recipe (a compressed blob materialized from its rebuild
// recipe into its own chunks). The new references come first, then the
// record, then the old references go, each step its own transactions: a
// crash in between leaves counts too high (chunks kept longer), never too
// low. If the record is no longer old (deleted or replaced meanwhile),
// nothing changes and the error is ErrFailedPrecondition. Replacements
// run one at a time with big commits.
func (x *DB) ReplaceLayer(old, lr *LayerRecord, known map[chunkid.ID]ChunkInfo) error {
	if old.Digest != lr.Digest {
		return fmt.Errorf("%w: replace %s with a record of %s", cerr.ErrInvalidArgument, old.Digest, lr.Digest)
	}
	x.bigCommit.Lock()
	defer x.bigCommit.Unlock()
	op := "replace layer " + string(lr.Digest)
	count := func(r *LayerRecord) (map[chunkid.ID]int64, []chunkid.ID) {
		counts := make(map[chunkid.ID]int64, len(r.Recipe))
		var ids []chunkid.ID
		r.ChunkRefs(func(e RecipeEntry) {
			if counts[e.ID] == 0 {
				ids = append(ids, e.ID)
			}
			counts[e.ID]++
		})
		return counts, ids
	}
	newCounts, newIDs := count(lr)
	var stored int64
	for start := 0; start < len(newIDs); start += x.maxTxnChunks() {
		batch := newIDs[start:min(start+x.maxTxnChunks(), len(newIDs))]
		var n int64
		var healed []chunkid.ID
		err := x.update(op, func(txn *badger.Txn) (err error) {
			healed = nil
			n, err = x.addRefs(txn, newCounts, known, batch, &healed)
			return err
		})
		x.syncQuarantine(healed...)
		if err != nil {
			x.undoRefs(newIDs[:start], newCounts)
			return err
		}
		stored += n
	}
	lr.Stored = stored
	oldBytes := old.Encode()
	err := x.update(op, func(txn *badger.Txn) error {
		cur, err := getLayer(txn, lr.Digest)
		if err != nil {
			return err
		}
		if !bytes.Equal(cur.Encode(), oldBytes) {
			return fmt.Errorf("%w: layer %s changed while it was replaced", cerr.ErrFailedPrecondition, lr.Digest)
		}
		return putLayer(txn, lr)
	})
	if err != nil {
		x.undoRefs(newIDs, newCounts)
		if errors.Is(err, cerr.ErrNotFound) {
			err = fmt.Errorf("%w: layer %s was deleted while it was replaced", cerr.ErrFailedPrecondition, lr.Digest)
		}
		return err
	}
	oldCounts, oldIDs := count(old)
	if err := x.dropRefs(oldIDs, oldCounts); err != nil {
		x.log.Warn("cache: reference counts too high until the next reindex", "op", op, "err", err)
	}
	return nil
}
