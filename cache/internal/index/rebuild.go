package index

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// BeginRebuild starts a rebuild of the index from the backend: it marks
// the rebuild (see Interrupted), drops every entry and pending hit, and
// leaves an empty index of this format, which the caller fills with the
// ordinary writes (AddChunks, CommitLayer, PutStep) and ends with
// EndRebuild. The caller keeps other users of the index away meanwhile.
//
// A crash or failure between the two leaves an index that is empty or
// partly written, never one that names missing data; the marker tells the
// next Open, so that the rebuild is run again before anything is served
// from a partial index.
func (x *DB) BeginRebuild() error {
	x.pendMu.Lock()
	x.pendHits, x.pendAccess = make(map[digest.Digest]Hits), make(map[digest.Digest]time.Time)
	x.pendMu.Unlock()
	if err := x.fault(); err != nil {
		return err
	}
	if err := writeMarker(x.dir); err != nil {
		return err
	}
	// No flush or value-log GC may run during the drop (Badger: DropAll
	// is not safe against concurrent reads and writes).
	x.lock.Lock()
	err := x.db.DropAll()
	x.lock.Unlock()
	if err != nil {
		return translate("drop index", err)
	}
	if err := x.loadQuarantine(); err != nil { // empty now
		return err
	}
	return x.update("write format", func(txn *badger.Txn) error {
		if err := txn.Set(idxStepLayerMarker, nil); err != nil { // PutStep links what the rebuild writes
			return err
		}
		return txn.Set(idxFormat, []byte(Format))
	})
}

// EndRebuild makes the rebuild durable and removes its marker.
func (x *DB) EndRebuild() error {
	if err := translate("sync index", x.db.Sync()); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(x.dir, rebuildMarker)); err != nil {
		return fmt.Errorf("index: %w: %w", cerr.ErrUnavailable, err)
	}
	return syncDir(x.dir)
}

// syncDir makes the creation or removal of a file in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err == nil {
		err = d.Sync()
		if cerr := d.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("index: sync %s: %w: %w", dir, cerr.ErrUnavailable, err)
	}
	return nil
}

// rebuildMarker is the file that says a Rebuild has dropped the index and
// not finished writing it again.
const rebuildMarker = "REBUILDING"

func writeMarker(dir string) error {
	f, err := os.Create(filepath.Join(dir, rebuildMarker))
	if err == nil {
		err = f.Sync()
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		return fmt.Errorf("index: mark rebuild: %w: %w", cerr.ErrUnavailable, err)
	}
	return syncDir(dir) // the marker must be durable before the drop is
}

// Interrupted reports whether a Rebuild of this index was interrupted (by
// a crash or a failure) after it dropped the index: the index may be empty
// or partial until a Rebuild completes.
func (x *DB) Interrupted() bool {
	_, err := os.Stat(filepath.Join(x.dir, rebuildMarker))
	return !errors.Is(err, os.ErrNotExist)
}
