package index

import (
	"time"

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
// missing data, and running Rebuild again restores it.
func (x *DB) Rebuild(chunks map[chunkid.ID]*ChunkInfo, layers []*LayerRecord, steps []StepEntry) error {
	x.lock.Lock()
	defer x.lock.Unlock()
	x.pendMu.Lock()
	x.pendHits, x.pendAccess = make(map[digest.Digest]Hits), make(map[digest.Digest]time.Time)
	x.pendMu.Unlock()
	if err := x.fault(); err != nil {
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
	return translate("sync index", x.db.Sync())
}
