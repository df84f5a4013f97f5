package index

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"

	"github.com/cairnbuild/cairn/cache/internal/cerr"
	"github.com/dgraph-io/badger/v4"
	"github.com/opencontainers/go-digest"
)

// The registry's part of the index. A repository holds links: to blobs
// pushed or mounted into it, to manifests pushed into it, tags naming
// those manifests, and the referrers of a subject (manifests whose subject
// field names it). Blobs and manifests themselves are layers (l/); a
// manifest link holds the manifest's parsed record, per repository (the
// media type may come from a request's Content-Type, so two repositories
// may hold the same bytes as different types).
//
//	R/<repo>                                 repository: varint Unix seconds created
//	B/<repo> 0x00 <blob digest>              blob link: varint Unix seconds linked
//	M/<repo> 0x00 <manifest digest>          manifest link: ManifestRecord (JSON)
//	T/<repo> 0x00 <tag>                      tag: the manifest digest string
//	F/<repo> 0x00 <subject> 0x00 <referrer>  referrer link: empty
//
// Repository names and tags never hold 0x00 (the registry validates them),
// so "<repo> 0x00" prefixes exactly one repository's entries.
var (
	idxRepo     = []byte("R/")
	idxBlobLink = []byte("B/")
	idxManLink  = []byte("M/")
	idxTag      = []byte("T/")
	idxReferrer = []byte("F/")
)

func repoKey(repo string) []byte { return append(append([]byte(nil), idxRepo...), repo...) }

func linkKey(prefix []byte, repo string, rest ...string) []byte {
	k := append(append(append([]byte(nil), prefix...), repo...), 0)
	for i, r := range rest {
		if i > 0 {
			k = append(k, 0)
		}
		k = append(k, r...)
	}
	return k
}

// Ref is one reference a manifest makes.
type Ref struct {
	Digest digest.Digest `json:"d"`
	// Manifest is true for a child manifest of an index, false for a blob
	// (a config, a layer, or a blob child of an index, as BuildKit's
	// legacy cache format has).
	Manifest bool  `json:"m,omitempty"`
	Size     int64 `json:"s"`
}

// ManifestRecord is the value of a manifest link: what the registry needs of
// a manifest without reading it (its bytes are the layer under the same
// digest), and every reference it makes, which the garbage collector
// follows.
type ManifestRecord struct {
	Version      int               `json:"v"`
	MediaType    string            `json:"mediaType"`
	ArtifactType string            `json:"artifactType,omitempty"`
	Size         int64             `json:"size"`
	Subject      digest.Digest     `json:"subject,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	Refs         []Ref             `json:"refs,omitempty"`
}

// manifestRecordVersion is ManifestRecord's encoding version.
const manifestRecordVersion = 1

// Encode returns the stored form (JSON).
func (mr ManifestRecord) Encode() ([]byte, error) {
	mr.Version = manifestRecordVersion
	return json.Marshal(mr)
}

// DecodeManifestRecord parses a stored ManifestRecord.
func DecodeManifestRecord(b []byte) (ManifestRecord, error) {
	var mr ManifestRecord
	if err := json.Unmarshal(b, &mr); err != nil {
		return mr, fmt.Errorf("%w: manifest record: %w", cerr.ErrDataLoss, err)
	}
	if mr.Version != manifestRecordVersion {
		return mr, fmt.Errorf("%w: manifest record version %d", cerr.ErrDataLoss, mr.Version)
	}
	return mr, nil
}

func putUnix(t time.Time) []byte { return binary.AppendUvarint(nil, uint64(t.Unix())) }

func ensureRepo(txn *badger.Txn, repo string, now time.Time) error {
	if ok, err := has(txn, repoKey(repo)); err != nil || ok {
		return err
	}
	return txn.Set(repoKey(repo), putUnix(now))
}

// LinkBlob links blob d into repo, if the layer d is committed (else
// ErrNotFound). The layer check and the link are one transaction, so a
// delete of the layer cannot slip between them.
func (x *DB) LinkBlob(repo string, d digest.Digest, now time.Time) error {
	return x.update("link blob "+string(d), func(txn *badger.Txn) error {
		if ok, err := has(txn, layerKey(d)); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("%w: blob %s", cerr.ErrNotFound, d)
		}
		if err := ensureRepo(txn, repo, now); err != nil {
			return err
		}
		if err := x.touchLayer(txn, d, now); err != nil { // see DeleteUnreached
			return err
		}
		return txn.Set(linkKey(idxBlobLink, repo, string(d)), putUnix(now))
	})
}

// BlobLinked reports whether repo links blob d and the layer is committed.
func (x *DB) BlobLinked(repo string, d digest.Digest) (bool, error) {
	var ok bool
	err := x.View("blob "+string(d), func(tx *Tx) (err error) {
		ok, err = tx.BlobLinked(repo, d)
		return err
	})
	return ok, err
}

// BlobLinked reports whether repo links blob d and the layer is committed.
func (tx *Tx) BlobLinked(repo string, d digest.Digest) (bool, error) {
	if ok, err := has(tx.txn, linkKey(idxBlobLink, repo, string(d))); err != nil || !ok {
		return false, err
	}
	return has(tx.txn, layerKey(d))
}

// UnlinkBlob removes repo's link to blob d; found reports whether there
// was one.
func (x *DB) UnlinkBlob(repo string, d digest.Digest) (found bool, err error) {
	err = x.update("unlink blob "+string(d), func(txn *badger.Txn) error {
		k := linkKey(idxBlobLink, repo, string(d))
		if found, err = has(txn, k); err != nil || !found {
			return err
		}
		return txn.Delete(k)
	})
	return found, err
}

// PutManifest records manifest d in repo: its record, the repository's
// link, tags (if any) and, if it has a subject, the referrer link. In the
// same transaction it checks that the layer holding the manifest's bytes is
// committed and that every reference is there: child manifests linked in
// repo, blobs linked in repo, except blob children of an index (check
// tells which must be; refs with check false are recorded unchecked).
// A missing one is ErrFailedPrecondition naming it.
func (x *DB) PutManifest(repo string, d digest.Digest, mr ManifestRecord, tags []string, check func(Ref) bool, now time.Time) error {
	val, err := mr.Encode()
	if err != nil {
		return err
	}
	return x.update("put manifest "+string(d), func(txn *badger.Txn) error {
		if ok, err := has(txn, layerKey(d)); err != nil {
			return err
		} else if !ok {
			return fmt.Errorf("%w: manifest %s was deleted meanwhile", cerr.ErrFailedPrecondition, d)
		}
		// The manifest and what it references are touched here, in the
		// transaction that sees them: a collection that planned to take
		// one of them keeps it (DeleteUnreached).
		if err := x.touchLayer(txn, d, now); err != nil {
			return err
		}
		for _, r := range mr.Refs {
			if !check(r) {
				if ok, err := has(txn, layerKey(r.Digest)); err != nil {
					return err
				} else if ok {
					if err := x.touchLayer(txn, r.Digest, now); err != nil {
						return err
					}
				}
				continue
			}
			prefix := idxBlobLink
			if r.Manifest {
				prefix = idxManLink
			}
			ok, err := has(txn, linkKey(prefix, repo, string(r.Digest)))
			if err == nil && ok {
				ok, err = has(txn, layerKey(r.Digest))
			}
			if err != nil {
				return err
			}
			if !ok {
				what := "blob"
				if r.Manifest {
					what = "manifest"
				}
				return fmt.Errorf("%w: %s %s is not in repository %s", cerr.ErrFailedPrecondition, what, r.Digest, repo)
			}
			if err := x.touchLayer(txn, r.Digest, now); err != nil {
				return err
			}
		}
		if err := ensureRepo(txn, repo, now); err != nil {
			return err
		}
		if err := txn.Set(linkKey(idxManLink, repo, string(d)), val); err != nil {
			return err
		}
		if mr.Subject != "" {
			if err := txn.Set(linkKey(idxReferrer, repo, string(mr.Subject), string(d)), nil); err != nil {
				return err
			}
		}
		for _, tag := range tags {
			if err := txn.Set(linkKey(idxTag, repo, tag), []byte(d)); err != nil {
				return err
			}
		}
		return nil
	})
}

// Resolve returns the manifest digest repo's tag names, or ErrNotFound.
func (x *DB) Resolve(repo, tag string) (digest.Digest, error) {
	var d digest.Digest
	err := x.View("resolve tag "+tag, func(tx *Tx) error {
		found, err := get(tx.txn, linkKey(idxTag, repo, tag), func(v []byte) error { d = digest.Digest(v); return nil })
		if err == nil && !found {
			err = fmt.Errorf("%w: tag %s", cerr.ErrNotFound, tag)
		}
		return err
	})
	return d, err
}

// Manifest returns the record of manifest d if repo links it (else
// ErrNotFound).
func (x *DB) Manifest(repo string, d digest.Digest) (ManifestRecord, error) {
	var mr ManifestRecord
	err := x.View("manifest "+string(d), func(tx *Tx) error {
		found, err := get(tx.txn, linkKey(idxManLink, repo, string(d)), func(v []byte) (err error) {
			mr, err = DecodeManifestRecord(v)
			return err
		})
		if err != nil {
			return err
		}
		if found {
			found, err = has(tx.txn, layerKey(d))
		}
		if err != nil {
			return err
		}
		if !found {
			return fmt.Errorf("%w: manifest %s", cerr.ErrNotFound, d)
		}
		return nil
	})
	return mr, err
}

// DeleteManifest removes repo's link to manifest d, every tag of repo that
// names it, and its referrer link. It returns the tags removed; found
// reports whether repo linked d.
func (x *DB) DeleteManifest(repo string, d digest.Digest) (tags []string, found bool, err error) {
	err = x.update("delete manifest "+string(d), func(txn *badger.Txn) error {
		tags, found = nil, false
		lk := linkKey(idxManLink, repo, string(d))
		var mr ManifestRecord
		ok, err := get(txn, lk, func(v []byte) (err error) {
			mr, err = DecodeManifestRecord(v)
			return err
		})
		if err != nil || !ok {
			return err
		}
		found = true
		prefix := linkKey(idxTag, repo)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		for it.Rewind(); it.ValidForPrefix(prefix); it.Next() {
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				it.Close()
				return err
			}
			if digest.Digest(v) == d {
				tags = append(tags, string(it.Item().Key()[len(prefix):]))
			}
		}
		it.Close()
		for _, t := range tags {
			if err := txn.Delete(linkKey(idxTag, repo, t)); err != nil {
				return err
			}
		}
		if mr.Subject != "" {
			if err := txn.Delete(linkKey(idxReferrer, repo, string(mr.Subject), string(d))); err != nil {
				return err
			}
		}
		return txn.Delete(lk)
	})
	return tags, found, err
}

// DeleteTag removes repo's tag; found reports whether it existed.
func (x *DB) DeleteTag(repo, tag string) (found bool, err error) {
	err = x.update("delete tag "+tag, func(txn *badger.Txn) error {
		k := linkKey(idxTag, repo, tag)
		if found, err = has(txn, k); err != nil || !found {
			return err
		}
		return txn.Delete(k)
	})
	return found, err
}

// RepoExists reports whether repo has ever had anything linked.
func (x *DB) RepoExists(repo string) (bool, error) {
	var ok bool
	err := x.View("repository "+repo, func(tx *Tx) (err error) {
		ok, err = has(tx.txn, repoKey(repo))
		return err
	})
	return ok, err
}

// TagEntry is one tag of a repository.
type TagEntry struct {
	Tag    string
	Digest digest.Digest
}

// Tags returns up to n of repo's tags after last (all if n <= 0), in
// lexical order, and whether more follow.
func (x *DB) Tags(repo, last string, n int) ([]TagEntry, bool, error) {
	var out []TagEntry
	more := false
	err := x.View("tags", func(tx *Tx) error {
		prefix := linkKey(idxTag, repo)
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		start := prefix
		if last != "" {
			start = append(linkKey(idxTag, repo, last), 0)
		}
		for it.Seek(start); it.ValidForPrefix(prefix); it.Next() {
			if n > 0 && len(out) == n {
				more = true
				return nil
			}
			v, err := it.Item().ValueCopy(nil)
			if err != nil {
				return err
			}
			out = append(out, TagEntry{Tag: string(it.Item().Key()[len(prefix):]), Digest: digest.Digest(v)})
		}
		return nil
	})
	return out, more, err
}

// Repos returns up to n repository names after last (all if n <= 0), in
// lexical order, and whether more follow.
func (x *DB) Repos(last string, n int) ([]string, bool, error) {
	var out []string
	more := false
	err := x.View("repositories", func(tx *Tx) error {
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: idxRepo, PrefetchValues: false})
		defer it.Close()
		start := idxRepo
		if last != "" {
			start = append(repoKey(last), 0)
		}
		for it.Seek(start); it.ValidForPrefix(idxRepo); it.Next() {
			if n > 0 && len(out) == n {
				more = true
				return nil
			}
			out = append(out, string(it.Item().Key()[len(idxRepo):]))
		}
		return nil
	})
	return out, more, err
}

// Referrer is one manifest whose subject is the asked-for digest.
type Referrer struct {
	Digest digest.Digest
	Record ManifestRecord
}

// Referrers returns the manifests linked in repo whose subject is d, in
// digest order.
func (x *DB) Referrers(repo string, d digest.Digest) ([]Referrer, error) {
	var out []Referrer
	err := x.View("referrers "+string(d), func(tx *Tx) error {
		prefix := append(linkKey(idxReferrer, repo, string(d)), 0)
		it := tx.txn.NewIterator(badger.IteratorOptions{Prefix: prefix, PrefetchValues: false})
		defer it.Close()
		for it.Rewind(); it.ValidForPrefix(prefix); it.Next() {
			r := digest.Digest(it.Item().Key()[len(prefix):])
			_, err := get(tx.txn, linkKey(idxManLink, repo, string(r)), func(v []byte) (err error) {
				mr, err := DecodeManifestRecord(v)
				out = append(out, Referrer{Digest: r, Record: mr})
				return err
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
}

// SetTag points repo's tag at manifest d (Reindex restores tags with it).
func (x *DB) SetTag(repo, tag string, d digest.Digest) error {
	return x.update("tag "+tag, func(txn *badger.Txn) error {
		return txn.Set(linkKey(idxTag, repo, tag), []byte(d))
	})
}
