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

// Hints returns the packs the hints of features name.
func (x *DB) Hints(features []uint64) (map[pack.ID]struct{}, error) {
	out := map[pack.ID]struct{}{}
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
					var p pack.ID
					copy(p[:], v)
					out[p] = struct{}{}
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
