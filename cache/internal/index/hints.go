package index

import (
	"encoding/binary"

	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/dgraph-io/badger/v4"
)

// Hints: for a resemblance feature (package resemble) of a compacted
// chunk, the compacted pack that last took a chunk with that feature.
// Compaction looks the features of new cold chunks up, and compacts the
// packs they name again with them, so that a new version of a file joins
// the frame of its older versions although those were compacted in an
// earlier run.
//
//	z/<8 bytes of the feature, big-endian>  16 bytes of a pack ID
//
// They are hints: a hint naming a pack that is gone, or that no longer
// holds such a chunk, costs a needless read at most, and a reindex drops
// them (density falls back to what each run alone finds).
var idxHint = []byte("z/")

func hintKey(f uint64) []byte {
	return binary.BigEndian.AppendUint64(append(make([]byte, 0, len(idxHint)+8), idxHint...), f)
}

// SetHints records that pack p holds chunks with each of features.
func (x *DB) SetHints(p pack.ID, features []uint64) error {
	for start := 0; start < len(features); start += x.maxTxnChunks() {
		batch := features[start:min(start+x.maxTxnChunks(), len(features))]
		err := x.update("set hints", func(txn *badger.Txn) error {
			for _, f := range batch {
				if err := txn.Set(hintKey(f), p[:]); err != nil {
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

// Hints returns the packs the hints of features name, with how many of
// features name each.
func (x *DB) Hints(features []uint64) (map[pack.ID]int, error) {
	out := map[pack.ID]int{}
	err := x.View("read hints", func(tx *Tx) error {
		for _, f := range features {
			item, err := tx.txn.Get(hintKey(f))
			if err == badger.ErrKeyNotFound {
				continue
			} else if err != nil {
				return err
			}
			if err := item.Value(func(v []byte) error {
				if len(v) == pack.IDSize { // anything else is no hint
					out[pack.ID(v)]++
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// PruneHints deletes, a page of n keys at a time, the hints that name a
// pack keep refuses (the plan passes the packs the backend lists): hints
// would otherwise grow with every feature ever compacted. It returns how
// many went.
func (x *DB) PruneHints(n int, keep func(pack.ID) bool) (int, error) {
	var pruned int
	after := []byte(nil)
	for {
		var stale [][]byte
		more := false
		err := x.View("walk hints", func(tx *Tx) error {
			it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxHint})
			defer it.Close()
			if after == nil {
				it.Rewind()
			} else {
				it.Seek(after)
				if it.ValidForPrefix(idxHint) && string(it.Item().Key()) == string(after) {
					it.Next()
				}
			}
			for k := 0; it.ValidForPrefix(idxHint); it.Next() {
				if k == n {
					more = true
					return nil
				}
				k++
				item := it.Item()
				after = item.KeyCopy(nil)
				if err := item.Value(func(v []byte) error {
					if len(v) != pack.IDSize || !keep(pack.ID(v)) {
						stale = append(stale, after)
					}
					return nil
				}); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return pruned, err
		}
		if len(stale) > 0 {
			if err := x.update("prune hints", func(txn *badger.Txn) error {
				for _, k := range stale {
					if err := txn.Delete(k); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				return pruned, err
			}
			pruned += len(stale)
		}
		if !more {
			return pruned, nil
		}
	}
}
