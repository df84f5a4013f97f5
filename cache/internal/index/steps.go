package index

import (
	"fmt"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// StepValue calls fn with the stored step record under key, valid only
// during the call; found is false if there is none.
func (tx *Tx) StepValue(key digest.Digest, fn func(v []byte) error) (found bool, err error) {
	return get(tx.txn, stepKey(key), fn)
}

// Hits returns step key's hit count as stored (without pending hits).
func (tx *Tx) Hits(key digest.Digest) (Hits, error) { return getHits(tx.txn, key) }

func getHits(txn *badger.Txn, key digest.Digest) (Hits, error) {
	var h Hits
	_, err := get(txn, hitsKey(key), func(v []byte) (err error) {
		h, err = DecodeHits(v)
		return err
	})
	return h, err
}

// PutStep stores step record body under key, if layer is "" or still
// committed (else ErrFailedPrecondition), and returns the key's hits so
// far.
func (x *DB) PutStep(key digest.Digest, body []byte, layer digest.Digest) (Hits, error) {
	var h Hits
	err := x.update("index step "+string(key), func(txn *badger.Txn) (err error) {
		if layer != "" {
			if ok, err := has(txn, layerKey(layer)); err != nil {
				return err
			} else if !ok {
				return fmt.Errorf("%w: layer %s was deleted meanwhile", cerr.ErrFailedPrecondition, layer)
			}
			// A step makes its layer a root: the touch is what a
			// collection deleting the layer reads (DeleteUnreached's
			// check of step records is an iterator, which Badger's
			// conflict detection does not see).
			if err := x.touchLayer(txn, layer, time.Now()); err != nil {
				return err
			}
		}
		if h, err = getHits(txn, key); err != nil {
			return err
		}
		// A record replaced by one naming another layer leaves the old
		// layer's list.
		if _, err := get(txn, stepKey(key), func(v []byte) error {
			if old := x.stepLayer(v); old != "" && old != layer {
				return txn.Delete(stepLayerKey(old, key))
			}
			return nil
		}); err != nil {
			return err
		}
		if err := txn.Set(stepKey(key), body); err != nil {
			return err
		}
		if layer == "" {
			return nil
		}
		return txn.Set(stepLayerKey(layer, key), nil)
	})
	return h, err
}

// stepLayerKey is s/<layer digest>/<step key>: the index of step records
// by the layer they name, so that deleting a layer deletes its steps.
func stepLayerKey(layer, key digest.Digest) []byte {
	b := make([]byte, 0, len(idxStepLayer)+len(layer)+1+len(key))
	return append(append(append(append(b, idxStepLayer...), layer...), '/'), key...)
}

func stepLayerPrefix(layer digest.Digest) []byte {
	return append(append(append([]byte(nil), idxStepLayer...), layer...), '/')
}

// SetStepLayer tells the index how to find the layer a stored step record
// names ("" for none): the records are opaque to it otherwise. Call it
// before any step is written.
func (x *DB) SetStepLayer(fn func(v []byte) digest.Digest) { x.stepLayerFn = fn }

func (x *DB) stepLayer(v []byte) digest.Digest {
	if x.stepLayerFn == nil {
		return ""
	}
	return x.stepLayerFn(v)
}

// stepBatch is how many step records one transaction of DeleteLayer
// deletes (four keys each, read and written): 1000 at MaxTxnChunks.
func (x *DB) stepBatch() int { return max(x.maxTxnChunks()/16, 1) }

// deleteSteps deletes, inside txn, the step records keys that name layer
// (from stepsOf) and returns their keys. A link whose record names another
// layer (or is gone) is dropped alone.
func (x *DB) deleteSteps(txn *badger.Txn, layer digest.Digest, keys []digest.Digest) ([]digest.Digest, error) {
	var deleted []digest.Digest
	for _, key := range keys {
		var names bool
		if _, err := get(txn, stepKey(key), func(v []byte) error { names = x.stepLayer(v) == layer; return nil }); err != nil {
			return nil, err
		}
		if !names {
			if err := txn.Delete(stepLayerKey(layer, key)); err != nil {
				return nil, err
			}
			continue
		}
		if err := deleteStep(txn, key, layer); err != nil {
			return nil, err
		}
		deleted = append(deleted, key)
	}
	return deleted, nil
}

// stepsOf returns the keys of the step records that name layer.
func stepsOf(txn *badger.Txn, layer digest.Digest) []digest.Digest {
	prefix := stepLayerPrefix(layer)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	defer it.Close()
	var keys []digest.Digest
	for it.Rewind(); it.ValidForPrefix(prefix); it.Next() {
		keys = append(keys, digest.Digest(it.Item().Key()[len(prefix):]))
	}
	return keys
}

// deleteStep removes step key's record, hits and layer link.
func deleteStep(txn *badger.Txn, key, layer digest.Digest) error {
	for _, k := range [][]byte{stepKey(key), hitsKey(key), divergeKey(key)} {
		if err := txn.Delete(k); err != nil {
			return err
		}
	}
	if layer == "" {
		return nil
	}
	return txn.Delete(stepLayerKey(layer, key))
}

// DeleteStep removes step key's record, whose layer is layer ("" for
// none). found is false if there was no record.
func (x *DB) DeleteStep(key, layer digest.Digest) (found bool, err error) {
	err = x.update("delete step "+string(key), func(txn *badger.Txn) (err error) {
		if found, err = has(txn, stepKey(key)); err != nil || !found {
			return err
		}
		return deleteStep(txn, key, layer)
	})
	x.pendMu.Lock()
	delete(x.pendHits, key)
	x.pendMu.Unlock()
	return found, err
}

// StepsOf returns the keys of the step records that name layer.
func (x *DB) StepsOf(layer digest.Digest) (keys []digest.Digest, err error) {
	err = x.View("steps of layer", func(tx *Tx) error {
		keys = stepsOf(tx.txn, layer)
		return nil
	})
	return keys, err
}

// LinkStepLayers writes the s/ entries of step records stored before they
// existed (see SetStepLayer). It runs once per index, at open (marked
// under v/steps-by-layer).
func (x *DB) LinkStepLayers() error {
	var done bool
	if err := x.View("read marker", func(tx *Tx) (err error) {
		done, err = has(tx.txn, idxStepLayerMarker)
		return err
	}); err != nil || done {
		return err
	}
	type link struct{ key, layer digest.Digest }
	var links []link
	err := x.View("walk steps", func(tx *Tx) error {
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxStep})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix(idxStep); it.Next() {
			key := digest.Digest(it.Item().Key()[len(idxStep):])
			if err := it.Item().Value(func(v []byte) error {
				if l := x.stepLayer(v); l != "" {
					links = append(links, link{key, l})
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	for start := 0; start < len(links); start += x.maxTxnChunks() {
		batch := links[start:min(start+x.maxTxnChunks(), len(links))]
		if err := x.update("link steps to layers", func(txn *badger.Txn) error {
			for _, l := range batch {
				if err := txn.Set(stepLayerKey(l.layer, l.key), nil); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return x.update("write marker", func(txn *badger.Txn) error { return txn.Set(idxStepLayerMarker, nil) })
}

// StepPage returns up to n step records with keys after after (in key
// order), with layer != "" only those naming layer, each as fn sees its
// stored value, and whether more follow.
func (x *DB) StepPage(after, layer digest.Digest, n int, fn func(key digest.Digest, v []byte, h Hits) error) (more bool, err error) {
	err = x.View("list steps", func(tx *Tx) error {
		more = false
		visit := func(key digest.Digest) (bool, error) {
			if n == 0 {
				more = true
				return false, nil
			}
			h, err := getHits(tx.txn, key)
			if err != nil {
				return false, err
			}
			found, err := get(tx.txn, stepKey(key), func(v []byte) error { return fn(key, v, h) })
			if err != nil {
				return false, err
			}
			if found {
				n--
			}
			return true, nil
		}
		if layer != "" {
			for _, key := range stepsOf(tx.txn, layer) {
				if key <= after {
					continue
				}
				if goOn, err := visit(key); err != nil || !goOn {
					return err
				}
			}
			return nil
		}
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxStep, PrefetchValues: false})
		defer it.Close()
		for it.Seek(stepKey(after)); it.ValidForPrefix(idxStep); it.Next() {
			key := digest.Digest(it.Item().Key()[len(idxStep):])
			if key <= after {
				continue
			}
			if goOn, err := visit(key); err != nil || !goOn {
				return err
			}
		}
		return nil
	})
	return more, err
}

// Hit counts a hit on step key now, to be written with the next flush, and
// returns the hits pending for it.
func (x *DB) Hit(key digest.Digest, now time.Time) Hits {
	x.pendMu.Lock()
	p := x.pendHits[key]
	p.N++
	p.Last = now
	x.pendHits[key] = p
	x.pendMu.Unlock()
	return p
}

// RecordAccess notes that layer d was read at t; the flusher writes it.
func (x *DB) RecordAccess(d digest.Digest, t time.Time) {
	x.pendMu.Lock()
	x.pendAccess[d] = t
	x.pendMu.Unlock()
}

// Flush writes pending hit counts and access times in one transaction.
// Entries for layers or steps deleted meanwhile are dropped.
func (x *DB) Flush() error {
	x.pendMu.Lock()
	hits, access := x.pendHits, x.pendAccess
	if len(hits) == 0 && len(access) == 0 {
		x.pendMu.Unlock()
		return nil
	}
	x.pendHits, x.pendAccess = make(map[digest.Digest]Hits), make(map[digest.Digest]time.Time)
	x.pendMu.Unlock()

	x.lock.RLock()
	defer x.lock.RUnlock()
	if x.closed.Load() {
		return cerr.ErrClosed
	}
	return x.update("flush hits", func(txn *badger.Txn) error {
		for d, t := range access {
			if ok, err := has(txn, layerKey(d)); err != nil {
				return err
			} else if !ok {
				continue
			}
			if err := txn.Set(accessKey(d), encodeTime(t)); err != nil {
				return err
			}
		}
		for key, h := range hits {
			if ok, err := has(txn, stepKey(key)); err != nil {
				return err
			} else if !ok {
				continue
			}
			old, err := getHits(txn, key)
			if err != nil {
				return err
			}
			old.N += h.N
			if h.Last.After(old.Last) {
				old.Last = h.Last
			}
			if err := txn.Set(hitsKey(key), old.Encode()); err != nil {
				return err
			}
		}
		return nil
	})
}

// ForEachStep calls fn with the key of every step record, in key order, in
// one read-only transaction; fn must not call back into the index.
func (x *DB) ForEachStep(fn func(key digest.Digest) error) error {
	return x.View("walk steps", func(tx *Tx) error {
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxStep, PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix(idxStep); it.Next() {
			if err := fn(digest.Digest(it.Item().Key()[len(idxStep):])); err != nil {
				return err
			}
		}
		return nil
	})
}
