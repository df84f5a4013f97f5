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
		}
		if h, err = getHits(txn, key); err != nil {
			return err
		}
		return txn.Set(stepKey(key), body)
	})
	return h, err
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
