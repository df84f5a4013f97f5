package index

import (
	"time"

	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Divergences: a step record is immutable once written; a second record
// for the same key naming another layer is refused, and counted here, so
// that an operator sees a step that is not reproducible (or someone trying
// to replace a record) in lookups and metrics:
//
//	d/<step storage key>   Hits encoding: refused records, and the last one's time

var idxDiverge = []byte("d/")

func divergeKey(key digest.Digest) []byte { return append(append([]byte(nil), idxDiverge...), key...) }

// Diverged counts a refused record for step key at now and returns the
// count, if the step still has a record (else nothing is counted).
func (x *DB) Diverged(key digest.Digest, now time.Time) (Hits, error) {
	var d Hits
	err := x.update("count a divergence of "+string(key), func(txn *badger.Txn) error {
		d = Hits{}
		if ok, err := has(txn, stepKey(key)); err != nil || !ok {
			return err
		}
		if _, err := get(txn, divergeKey(key), func(v []byte) (err error) {
			d, err = DecodeHits(v)
			return err
		}); err != nil {
			return err
		}
		d.N++
		d.Last = now
		return txn.Set(divergeKey(key), d.Encode())
	})
	return d, err
}

// Divergences returns the refused records counted for step key.
func (tx *Tx) Divergences(key digest.Digest) (Hits, error) {
	var d Hits
	_, err := get(tx.txn, divergeKey(key), func(v []byte) (err error) {
		d, err = DecodeHits(v)
		return err
	})
	return d, err
}
