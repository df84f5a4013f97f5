package index

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/cairnbuild/cairn/chunkid"
	"github.com/opencontainers/go-digest"
)

// Rebuild replaces the whole index with the given contents: every chunk
// (with its reference count), every layer and every step record, written
// with one batch. Pending hits and access times are dropped. The caller
// keeps other users of the index away meanwhile.
//
// It is not atomic: a crash between the drop and the end of the batch
// leaves an index that is empty or partly written, never one that names
// missing data. A marker file in the index directory, written before the
// drop and removed once the rebuild is synced, tells the next Open
// (Interrupted), so that the rebuild is run again before anything is
// served from a partial index.
func (x *DB) Rebuild(chunks map[chunkid.ID]*ChunkInfo, layers []*LayerRecord, steps []StepEntry) error {
	x.lock.Lock()
	defer x.lock.Unlock()
	x.pendMu.Lock()
	x.pendHits, x.pendAccess = make(map[digest.Digest]Hits), make(map[digest.Digest]time.Time)
	x.pendMu.Unlock()
	if err := x.fault(); err != nil {
		return err
	}
	if err := writeMarker(x.dir); err != nil {
		return err
	}
	if err := x.db.DropAll(); err != nil {
		return translate("drop index", err)
	}
	if err := x.fault(); err != nil {
		return err
	}
	wb := x.db.NewWriteBatch()
	defer wb.Cancel()
	set := func(k, v []byte) error { return translate("write index", wb.Set(k, v)) }
	if err := set(idxFormat, []byte(Format)); err != nil {
		return err
	}
	now := time.Now().Unix() // the objects' ages are unknown: a full grace period
	for id, ci := range chunks {
		ci.Added = now
		if err := set(chunkKey(id), ci.Encode()); err != nil {
			return err
		}
	}
	for _, lr := range layers {
		if err := set(layerKey(lr.Digest), lr.Encode()); err != nil {
			return err
		}
		if err := set(accessKey(lr.Digest), encodeTime(lr.Created)); err != nil {
			return err
		}
	}
	for _, s := range steps {
		if err := set(stepKey(s.Key), s.Body); err != nil {
			return err
		}
	}
	if err := translate("write index", wb.Flush()); err != nil {
		return err
	}
	if err := translate("sync index", x.db.Sync()); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(x.dir, rebuildMarker)); err != nil {
		return fmt.Errorf("index: %w: %w", cerr.ErrUnavailable, err)
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
	return nil
}

// Interrupted reports whether a Rebuild of this index was interrupted (by
// a crash or a failure) after it dropped the index: the index may be empty
// or partial until a Rebuild completes.
func (x *DB) Interrupted() bool {
	_, err := os.Stat(filepath.Join(x.dir, rebuildMarker))
	return !errors.Is(err, os.ErrNotExist)
}
