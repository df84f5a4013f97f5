package index

import (
	"fmt"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/dgraph-io/badger/v4"
)

// The collector's state in the index: g/<16 bytes of a pack ID> marks a
// pack that no entry should name any more (rewritten, or an orphan of a
// failed push), with the time it was marked; the collector deletes it once
// the second grace period has passed since, so that a reader that looked a
// chunk up in it before the mark can still read it.

func pendingKey(p pack.ID) []byte {
	return append(append(make([]byte, 0, len(idxPending)+len(p)), idxPending...), p[:]...)
}

// MarkPending marks packs for deletion at now, keeping an older mark.
func (x *DB) MarkPending(packs []pack.ID, now time.Time) error {
	return x.update("mark packs", func(txn *badger.Txn) error {
		for _, p := range packs {
			if ok, err := has(txn, pendingKey(p)); err != nil || ok {
				if err != nil {
					return err
				}
				continue
			}
			if err := txn.Set(pendingKey(p), encodeTime(now)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Unmark removes the marks of packs (deleted, or named again).
func (x *DB) Unmark(packs []pack.ID) error {
	return x.update("unmark packs", func(txn *badger.Txn) error {
		for _, p := range packs {
			if err := txn.Delete(pendingKey(p)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Pending returns the marked packs and when each was marked.
func (x *DB) Pending() (map[pack.ID]time.Time, error) {
	out := map[pack.ID]time.Time{}
	err := x.View("read marked packs", func(tx *Tx) error {
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxPending})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix(idxPending); it.Next() {
			k := it.Item().Key()
			var p pack.ID
			if len(k) != len(idxPending)+len(p) {
				return fmt.Errorf("%w: bad pending-pack key %x", cerr.ErrDataLoss, k)
			}
			copy(p[:], k[len(idxPending):])
			var t time.Time
			if err := it.Item().Value(func(v []byte) (err error) { t, err = decodeTime(v); return err }); err != nil {
				return fmt.Errorf("pending pack %s: %w", p, err)
			}
			out[p] = t
		}
		return nil
	})
	return out, err
}

// Move is one chunk copied from one pack to another.
type Move struct {
	ID          chunkid.ID
	From        pack.ID // the old pack
	FromOff     int64   // the record's offset in it
	FromInFrame int64   // and the chunk's in its frame
	To          pack.Entry
}

// MoveChunks points the entries of moves at their new copies in pack to,
// each only if it still names the copy it was read from (anything else
// changed it meanwhile and wins) and is not quarantined, keeping
// reference counts and touch times. It returns how many moved.
func (x *DB) MoveChunks(to pack.ID, moves []Move) (int, error) {
	var n int
	for start := 0; start < len(moves); start += x.maxTxnChunks() {
		batch := moves[start:min(start+x.maxTxnChunks(), len(moves))]
		var k int
		err := x.update("move chunks", func(txn *badger.Txn) error {
			k = 0
			for _, m := range batch {
				ci, ok, err := getChunk(txn, m.ID)
				if err != nil {
					return err
				}
				if !ok || ci.Pack != m.From || ci.Off != m.FromOff || ci.InFrame != m.FromInFrame || ci.Size != m.To.Size {
					continue
				}
				if q, err := x.quarantinedIn(txn, m.ID); err != nil {
					return err
				} else if q {
					continue // its old copy was found bad: the copy may be too
				}
				ci.Pack, ci.Off, ci.Stored, ci.InFrame, ci.Frame = to, m.To.Off, m.To.Stored, m.To.InFrame, m.To.Frame
				if err := txn.Set(chunkKey(m.ID), ci.Encode()); err != nil {
					return err
				}
				k++
			}
			return nil
		})
		if err != nil {
			return n, err
		}
		n += k
	}
	return n, nil
}

// Names reports, for the chunks of pack p's table, whether any index
// entry names p: a pack that an entry names must not be deleted.
func (x *DB) Names(p pack.ID, table []pack.Entry) (bool, error) {
	var named bool
	err := x.View("check pack", func(tx *Tx) error {
		for _, e := range table {
			ci, ok, err := getChunk(tx.txn, e.ID)
			if err != nil {
				return err
			}
			if ok && ci.Pack == p {
				named = true
				return nil
			}
		}
		return nil
	})
	return named, err
}
