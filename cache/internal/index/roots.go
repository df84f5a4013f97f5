package index

import (
	"bytes"
	"errors"
	"slices"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// Roots of the layer-level collection. A layer pushed through the gRPC
// API is a root until it is deleted or evicted; a layer only the registry
// front stored (a blob, a manifest's bytes) is "unrooted": it lives while
// a tag, a young untagged manifest or a step record reaches it, or while
// it was touched within the grace period. The index marks those:
//
//	u/<layer digest>   empty: the layer is held by the registry only
//
// The mark is set in the transaction that commits the layer, and cleared
// when the gRPC API pushes the same bytes (the caller has written the
// layer's manifest without its mark first, so Reindex agrees).

var idxUnrooted = []byte("u/")

func unrootedKey(d digest.Digest) []byte {
	return append(append(make([]byte, 0, 2+len(d)), idxUnrooted...), d...)
}

// DefaultLayerTouchAge is how stale a layer's access time must be before
// an existence answer writes it again: a minute, as for chunks (see
// Touch), so that a busy blob costs one write a minute.
const DefaultLayerTouchAge = time.Minute

// SetCollecting tells existence answers that a collection runs that
// deletes layers last used at or before cutoff (zero time: none runs). A
// touch then writes whenever the last one is that old, whatever
// DefaultLayerTouchAge says, so the collection keeps what it answers for
// even with a grace period under a minute.
func (x *DB) SetCollecting(cutoff time.Time) {
	if cutoff.IsZero() {
		x.collectCutoff.Store(0)
		return
	}
	x.collectCutoff.Store(cutoff.UnixNano())
}

// Unrooted reports whether layer d is marked as held by the registry only.
func (x *DB) Unrooted(d digest.Digest) (bool, error) {
	var ok bool
	err := x.View("unrooted "+string(d), func(tx *Tx) (err error) {
		ok, err = has(tx.txn, unrootedKey(d))
		return err
	})
	return ok, err
}

// HoldLayer is an existence answer about layer d: in one transaction it
// sees the record and touches it (its access time, when a minute old), so
// that a collection deleting d either ran before (found is false: the
// caller stores the layer anew) or sees the touch and keeps it. root also
// roots the layer (a push through the gRPC API).
func (x *DB) HoldLayer(d digest.Digest, root bool, now time.Time) (found bool, err error) {
	err = x.update("hold "+string(d), func(txn *badger.Txn) error {
		found = false
		if ok, err := has(txn, layerKey(d)); err != nil || !ok {
			return err
		}
		found = true
		if root {
			if err := txn.Delete(unrootedKey(d)); err != nil {
				return err
			}
		}
		return x.touchLayer(txn, d, now)
	})
	return found, err
}

// touchLayer writes layer d's access time if it is older than
// DefaultLayerTouchAge.
func (x *DB) touchLayer(txn *badger.Txn, d digest.Digest, now time.Time) error {
	var last time.Time
	if _, err := get(txn, accessKey(d), func(v []byte) (err error) {
		last, err = decodeTime(v)
		return err
	}); err != nil {
		return err
	}
	if now.Sub(last) < DefaultLayerTouchAge && last.UnixNano() > x.collectCutoff.Load() {
		return nil
	}
	return txn.Set(accessKey(d), encodeTime(now))
}

// UnrootedPage calls fn with up to n unrooted layers after after ("" from
// the first), in digest order, and whether a step record names each, and
// returns the last one and whether more follow: one read transaction a
// page.
func (x *DB) UnrootedPage(after digest.Digest, n int, fn func(d digest.Digest, stepNamed bool) error) (last digest.Digest, more bool, err error) {
	err = x.View("unrooted layers", func(tx *Tx) error {
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxUnrooted})
		defer it.Close()
		start := idxUnrooted
		if after != "" {
			start = append(unrootedKey(after), 0)
		}
		k := 0
		for it.Seek(start); it.ValidForPrefix(idxUnrooted); it.Next() {
			if k == n {
				more = true
				return nil
			}
			last = digest.Digest(it.Item().Key()[len(idxUnrooted):])
			if err := fn(last, hasPrefix(tx.txn, stepLayerPrefix(last))); err != nil {
				return err
			}
			k++
		}
		return nil
	})
	return last, more, err
}

// RepoLinks calls blob with every blob repo links and manifest with every
// manifest it links and its record, in one read transaction.
func (x *DB) RepoLinks(repo string, blob func(d digest.Digest) error, manifest func(d digest.Digest, mr ManifestRecord) error) error {
	return x.View("links of "+repo, func(tx *Tx) error {
		prefix := linkKey(idxBlobLink, repo)
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
		for it.Rewind(); it.ValidForPrefix(prefix); it.Next() {
			if err := blob(digest.Digest(it.Item().Key()[len(prefix):])); err != nil {
				it.Close()
				return err
			}
		}
		it.Close()
		prefix = linkKey(idxManLink, repo)
		it = tx.txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix(prefix); it.Next() {
			var mr ManifestRecord
			if err := it.Item().Value(func(v []byte) (err error) {
				mr, err = DecodeManifestRecord(v)
				return err
			}); err != nil {
				return err
			}
			if err := manifest(digest.Digest(it.Item().Key()[len(prefix):]), mr); err != nil {
				return err
			}
		}
		return nil
	})
}

// LastUse returns when layer d was created or last touched or read,
// whichever is latest (including reads not yet flushed).
func (x *DB) LastUse(d digest.Digest) (time.Time, error) {
	var t time.Time
	err := x.View("last use "+string(d), func(tx *Tx) error {
		lr, err := tx.Layer(d)
		if err != nil {
			return err
		}
		t, err = tx.lastUse(d, lr)
		return err
	})
	return t, err
}

func (tx *Tx) lastUse(d digest.Digest, lr *LayerRecord) (time.Time, error) {
	t, err := tx.access(d)
	if err != nil {
		return t, err
	}
	if lr.Created.After(t) {
		t = lr.Created
	}
	tx.x.pendMu.Lock()
	if p, ok := tx.x.pendAccess[d]; ok && p.After(t) {
		t = p
	}
	tx.x.pendMu.Unlock()
	return t, nil
}

// DeleteUnreached deletes unrooted layer d if, inside the deleting
// transaction, it is still unrooted, no step record names it, and it was
// neither created, touched nor read after cutoff, and pinned (a push in
// flight) says no; with it go its links in
// repos (blob and manifest links, the manifest's referrer link and tags
// naming it). It reports whether it deleted d.
//
// Every existence answer that could hand d to a client writes d's access
// time in the transaction that sees d (HoldLayer, PutManifest, LinkBlob):
// so either that transaction conflicts with this one and sees d gone, or
// this one sees the touch and keeps d.
func (x *DB) DeleteUnreached(d digest.Digest, cutoff time.Time, repos []string, pinned func(digest.Digest) bool) (deleted bool, tags map[string][]string, err error) {
	guard := func(txn *badger.Txn, lr *LayerRecord) (bool, error) {
		tags = nil
		if ok, err := has(txn, unrootedKey(d)); err != nil || !ok || pinned(d) {
			return false, err
		}
		if hasPrefix(txn, stepLayerPrefix(d)) {
			return false, nil
		}
		t, err := (&Tx{txn, x}).lastUse(d, lr)
		if err != nil || t.After(cutoff) {
			return false, err
		}
		for _, repo := range repos {
			ts, err := unlinkAll(txn, repo, d)
			if err != nil {
				return false, err
			}
			if len(ts) > 0 {
				if tags == nil {
					tags = map[string][]string{}
				}
				tags[repo] = ts
			}
		}
		return true, txn.Delete(unrootedKey(d))
	}
	_, deleted, err = x.deleteLayer(d, guard)
	return deleted, tags, err
}

// DeleteUnused deletes layer d, with the step records naming it, if inside
// the deleting transaction it was neither created, touched nor read after
// cutoff and pinned says no: the quota's eviction, which must not take what
// an existence answer has just handed out.
func (x *DB) DeleteUnused(d digest.Digest, cutoff time.Time, pinned func(digest.Digest) bool) (steps []digest.Digest, deleted bool, err error) {
	return x.deleteLayer(d, func(txn *badger.Txn, lr *LayerRecord) (bool, error) {
		if pinned(d) {
			return false, nil
		}
		t, err := (&Tx{txn, x}).lastUse(d, lr)
		return err == nil && !t.After(cutoff), err
	})
}

// unlinkAll removes repo's blob and manifest links to d, the manifest's
// referrer link and the tags naming it, and returns those tags.
func unlinkAll(txn *badger.Txn, repo string, d digest.Digest) ([]string, error) {
	if err := txn.Delete(linkKey(idxBlobLink, repo, string(d))); err != nil {
		return nil, err
	}
	lk := linkKey(idxManLink, repo, string(d))
	var mr ManifestRecord
	ok, err := get(txn, lk, func(v []byte) (err error) {
		mr, err = DecodeManifestRecord(v)
		return err
	})
	if err != nil || !ok {
		return nil, err
	}
	if mr.Subject != "" {
		if err := txn.Delete(linkKey(idxReferrer, repo, string(mr.Subject), string(d))); err != nil {
			return nil, err
		}
	}
	prefix := linkKey(idxTag, repo)
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
	var tags []string
	for it.Rewind(); it.ValidForPrefix(prefix); it.Next() {
		v, err := it.Item().ValueCopy(nil)
		if err != nil {
			it.Close()
			return nil, err
		}
		if bytes.Equal(v, []byte(d)) {
			tags = append(tags, string(it.Item().Key()[len(prefix):]))
		}
	}
	it.Close()
	for _, t := range tags {
		if err := txn.Delete(linkKey(idxTag, repo, t)); err != nil {
			return nil, err
		}
	}
	return tags, txn.Delete(lk)
}

// hasPrefix reports whether any key starts with prefix.
func hasPrefix(txn *badger.Txn, prefix []byte) bool {
	it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
	defer it.Close()
	it.Rewind()
	return it.ValidForPrefix(prefix)
}

// EvictManifest is the quota's eviction of manifest d of repo: inside one
// transaction it deletes those of tags that still name d, then, if no
// other tag names d, d's link (and its referrer link), and returns the
// tags it deleted and whether the link went. A manifest used after cutoff
// (pulled, or tagged: a PUT touches it) loses nothing; a tag pointed at d
// since the plan keeps the link.
func (x *DB) EvictManifest(repo string, d digest.Digest, tags []string, cutoff time.Time) (deleted []string, unlinked bool, err error) {
	err = x.update("evict manifest "+string(d), func(txn *badger.Txn) error {
		deleted, unlinked = nil, false
		lr, err := getLayer(txn, d)
		if err != nil && !errors.Is(err, cerr.ErrNotFound) {
			return err
		}
		if lr != nil {
			if t, err := (&Tx{txn, x}).lastUse(d, lr); err != nil || t.After(cutoff) {
				return err // used since the plan: tags and all stay
			}
		}
		for _, tag := range tags {
			k := linkKey(idxTag, repo, tag)
			var names bool
			if _, err := get(txn, k, func(v []byte) error {
				names = bytes.Equal(v, []byte(d))
				return nil
			}); err != nil {
				return err
			}
			if names {
				if err := txn.Delete(k); err != nil {
					return err
				}
				deleted = append(deleted, tag)
			}
		}
		prefix := linkKey(idxTag, repo)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		for it.Rewind(); it.ValidForPrefix(prefix); it.Next() {
			var other bool
			if err := it.Item().Value(func(v []byte) error {
				other = bytes.Equal(v, []byte(d))
				return nil
			}); err != nil {
				it.Close()
				return err
			}
			if other && !slices.Contains(deleted, string(it.Item().Key()[len(prefix):])) {
				it.Close()
				return nil // another tag names it: the manifest stays
			}
		}
		it.Close()
		lk := linkKey(idxManLink, repo, string(d))
		var mr ManifestRecord
		ok, err := get(txn, lk, func(v []byte) (err error) {
			mr, err = DecodeManifestRecord(v)
			return err
		})
		if err != nil || !ok {
			return err
		}
		if mr.Subject != "" {
			if err := txn.Delete(linkKey(idxReferrer, repo, string(mr.Subject), string(d))); err != nil {
				return err
			}
		}
		unlinked = true
		return txn.Delete(lk)
	})
	return deleted, unlinked, err
}
