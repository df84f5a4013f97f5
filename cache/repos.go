package cache

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/ocimanifest"
	"github.com/opencontainers/go-digest"
)

// Repositories: what the registry front needs of the core. A blob is a
// layer, stored once whatever repositories and fronts it came through; a
// repository sees it only once it was pushed or mounted there (a link).
// Manifests are layers too (their bytes, under their digest), with a
// parsed record of what they reference; tags point at manifests.
//
// Every link and tag is written to the backend first (an empty object
// repos/<repo>/_blobs/<alg>/<hex> or _manifests/..., and
// repos/<repo>/_tags/<tag> holding the digest), then to the index, so that
// Reindex rebuilds repositories, manifests and tags; removals go the other
// way.

// Registry errors, beyond the core's sentinels. Each wraps the sentinel it
// is a case of, so callers that only know those still branch right.
var (
	// ErrNameInvalid reports a repository name or tag the registry's
	// grammar refuses. It is also ErrInvalidArgument.
	ErrNameInvalid = fmt.Errorf("%w: invalid name", ErrInvalidArgument)
	// ErrTagInvalid reports a tag the registry's grammar refuses. It is
	// also ErrNameInvalid.
	ErrTagInvalid = fmt.Errorf("%w: invalid tag", ErrNameInvalid)
	// ErrUploadOffset reports a write to an upload session that does not
	// start where the session stands. It is also ErrFailedPrecondition.
	ErrUploadOffset = fmt.Errorf("%w: upload offset", ErrFailedPrecondition)
	// ErrManifestInvalid reports a manifest that does not parse or check.
	// It is also ErrInvalidArgument.
	ErrManifestInvalid = fmt.Errorf("%w: %w", ErrInvalidArgument, ocimanifest.ErrInvalid)
	// ErrUnsupported reports a manifest of a kind cairn does not store
	// (Docker schema 1). It is also ErrInvalidArgument.
	ErrUnsupported = fmt.Errorf("%w: %w", ErrInvalidArgument, ocimanifest.ErrUnsupported)
	// ErrManifestBlobUnknown reports a manifest that references a blob or
	// child manifest the repository lacks. It is also
	// ErrFailedPrecondition.
	ErrManifestBlobUnknown = fmt.Errorf("%w: manifest references unknown content", ErrFailedPrecondition)
)

// DefaultMaxManifestSize is the largest manifest accepted by default:
// BuildKit's cache manifests of big mode=max builds run to megabytes
// (BuildKit itself refuses more than 1 MiB on import, we keep more).
// MaxManifestSize is the most a server may be configured to accept (and
// what Reindex restores).
const (
	DefaultMaxManifestSize = 16 << 20
	MaxManifestSize        = 64 << 20
)

var (
	repoComponent = regexp.MustCompile(`^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*$`)
	tagPattern    = regexp.MustCompile(`^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$`)
)

// MaxRepoNameLen bounds repository names (distribution's limit).
const MaxRepoNameLen = 255

// ValidRepoName checks a repository name against the distribution spec's
// grammar (lower-case components separated by '/'), at most 255 bytes, and
// components of at most 200 bytes (what every backend allows in a key
// segment).
func ValidRepoName(name string) error {
	if name == "" || len(name) > MaxRepoNameLen {
		return fmt.Errorf("%w: repository name of %d bytes (1 to %d)", ErrNameInvalid, len(name), MaxRepoNameLen)
	}
	for _, c := range strings.Split(name, "/") {
		if len(c) > 200 || !repoComponent.MatchString(c) {
			return fmt.Errorf("%w: repository name %q", ErrNameInvalid, clip(name))
		}
	}
	return nil
}

// ValidTag checks a tag against the spec's grammar.
func ValidTag(tag string) error {
	if !tagPattern.MatchString(tag) {
		return fmt.Errorf("%w: %q", ErrTagInvalid, clip(tag))
	}
	return nil
}

// Backend keys of the registry's objects.
const repoPrefix = "repos/"

func blobLinkKey(repo string, d digest.Digest) string {
	return repoPrefix + repo + "/_blobs/" + string(d.Algorithm()) + "/" + d.Encoded()
}
func manifestLinkKey(repo string, d digest.Digest) string {
	return repoPrefix + repo + "/_manifests/" + string(d.Algorithm()) + "/" + d.Encoded()
}
func tagKey(repo, tag string) string { return repoPrefix + repo + "/_tags/" + tag }

// parseRepoKey splits a key under repos/ into its repository, kind
// ("_blobs", "_manifests", "_tags") and what follows.
func parseRepoKey(key string) (repo, kind, rest string, ok bool) {
	s, ok := strings.CutPrefix(key, repoPrefix)
	if !ok {
		return "", "", "", false
	}
	for _, k := range []string{"/_blobs/", "/_manifests/", "/_tags/"} {
		if i := strings.LastIndex(s, k); i > 0 {
			return s[:i], k[1 : len(k)-1], s[i+len(k):], true
		}
	}
	return "", "", "", false
}

// lockRepo takes repo's metadata lock; the caller unlocks it.
func (c *Cache) lockRepo(repo string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(repo))
	mu := &c.repoLocks[h.Sum32()%uint32(len(c.repoLocks))]
	mu.Lock()
	return mu
}

func (c *Cache) putEmpty(ctx context.Context, key string) error {
	return backendErr("write "+key, c.store.Put(ctx, key, bytes.NewReader(nil), 0))
}

// BlobInfo is a blob as a repository sees it: the layer under its digest.
type BlobInfo = LayerInfo

// StatBlob returns blob d of repo; ErrNotFound unless repo links it.
func (c *Cache) StatBlob(ctx context.Context, repo string, d digest.Digest) (BlobInfo, error) {
	if err := c.begin(ctx); err != nil {
		return BlobInfo{}, fmt.Errorf("cache: stat blob: %w", err)
	}
	defer c.end()
	info, err := c.statBlob(repo, d)
	if err != nil {
		return BlobInfo{}, fmt.Errorf("cache: stat blob %s in %s: %w", d, repo, err)
	}
	return info, nil
}

func (c *Cache) statBlob(repo string, d digest.Digest) (BlobInfo, error) {
	if err := ValidRepoName(repo); err != nil {
		return BlobInfo{}, err
	}
	if err := ParseLayerDigest(d); err != nil {
		return BlobInfo{}, err
	}
	ok, err := c.idx.BlobLinked(repo, d)
	if err == nil && !ok {
		// A manifest is also readable as a blob of the repository that
		// holds it, as in distribution.
		if _, merr := c.idx.Manifest(repo, d); merr == nil {
			ok = true
		}
	}
	if err != nil {
		return BlobInfo{}, err
	}
	if !ok {
		return BlobInfo{}, fmt.Errorf("%w: blob %s", ErrNotFound, d)
	}
	info, err := c.stat(d)
	if err == nil && info.Damaged() {
		// Never answer "present" for what cannot be read: the client
		// uploads the blob again, and that heals it.
		return BlobInfo{}, fmt.Errorf("%w: blob %s is damaged (%d chunks quarantined) until it is pushed again", ErrNotFound, d, info.DamagedChunks)
	}
	if err == nil {
		// An existence answer (a HEAD, a mount's source, a GET): touched
		// in a transaction that sees the layer, so that a collection
		// never deletes what it has just reported present.
		var found bool
		if found, err = c.idx.HoldLayer(d, false, time.Now()); err == nil && !found {
			err = fmt.Errorf("%w: blob %s", ErrNotFound, d)
		}
	}
	return info, err
}

// OpenBlob reads length bytes (length < 0: to the end) of repo's blob d
// from offset; see Open.
func (c *Cache) OpenBlob(ctx context.Context, repo string, d digest.Digest, offset, length int64) (io.ReadCloser, BlobInfo, error) {
	if err := c.begin(ctx); err != nil {
		return nil, BlobInfo{}, fmt.Errorf("cache: open blob: %w", err)
	}
	defer c.end()
	if _, err := c.statBlob(repo, d); err != nil {
		return nil, BlobInfo{}, fmt.Errorf("cache: open blob %s in %s: %w", d, repo, err)
	}
	return c.openLocked(ctx, d, offset, length)
}

// link writes repo's link to blob d: backend object first, then the index
// (which checks, in the same transaction, that the layer is committed).
func (c *Cache) link(ctx context.Context, repo string, d digest.Digest) error {
	defer c.lockRepo(repo).Unlock()
	if ok, err := c.idx.BlobLinked(repo, d); err != nil {
		return err
	} else if ok {
		return nil
	}
	if err := c.putEmpty(ctx, blobLinkKey(repo, d)); err != nil {
		return err
	}
	return c.idx.LinkBlob(repo, d, time.Now())
}

// PushBlob stores the blob read from r, which must be size bytes (-1:
// unknown) hashing to d, and links it into repo: the registry's
// monolithic upload.
func (c *Cache) PushBlob(ctx context.Context, repo string, r io.Reader, d digest.Digest, size int64) (BlobInfo, error) {
	if err := ValidRepoName(repo); err != nil {
		return BlobInfo{}, fmt.Errorf("cache: push blob: %w", err)
	}
	// A push holds buffers: it takes one of the slots that upload
	// sessions share.
	if err := c.acquirePush(ctx, nil); err != nil {
		return BlobInfo{}, fmt.Errorf("cache: push blob: %w", err)
	}
	defer c.pinLayer(d)()
	info, err := c.Push(ctx, r, PushOptions{Expected: d, Size: size, MediaType: UploadMediaType, unrooted: true})
	c.releasePush()
	if err != nil {
		return BlobInfo{}, err
	}
	if err := c.linkBlob(ctx, repo, d); err != nil {
		return BlobInfo{}, err
	}
	return info, nil
}

func (c *Cache) linkBlob(ctx context.Context, repo string, d digest.Digest) error {
	if err := c.begin(ctx); err != nil {
		return fmt.Errorf("cache: link blob: %w", err)
	}
	defer c.end()
	if err := c.link(ctx, repo, d); err != nil {
		return fmt.Errorf("cache: link blob %s into %s: %w", d, repo, err)
	}
	return nil
}

// CommitUpload ends upload u (see Upload.Commit) and links the blob into
// repo.
func (c *Cache) CommitUpload(ctx context.Context, repo string, u *Upload, d digest.Digest) (BlobInfo, error) {
	defer c.pinLayer(d)()
	info, err := u.Commit(ctx, d)
	if err != nil {
		return BlobInfo{}, err
	}
	if err := c.linkBlob(ctx, repo, d); err != nil {
		return BlobInfo{}, err
	}
	return info, nil
}

// MountBlob links blob d, which repository from holds, into repo. It is
// ErrNotFound if from does not hold it; the caller then starts an upload.
func (c *Cache) MountBlob(ctx context.Context, repo, from string, d digest.Digest) (BlobInfo, error) {
	if err := c.begin(ctx); err != nil {
		return BlobInfo{}, fmt.Errorf("cache: mount blob: %w", err)
	}
	defer c.end()
	if err := ValidRepoName(repo); err != nil {
		return BlobInfo{}, fmt.Errorf("cache: mount blob: %w", err)
	}
	info, err := c.statBlob(from, d)
	if err == nil {
		err = c.link(ctx, repo, d)
	}
	if err != nil {
		return BlobInfo{}, fmt.Errorf("cache: mount blob %s from %s into %s: %w", d, from, repo, err)
	}
	return info, nil
}

// DeleteBlob removes repo's link to blob d (ErrNotFound if there is none).
// The stored bytes stay while anything else references them: reclaiming
// them is the garbage collector's job.
func (c *Cache) DeleteBlob(ctx context.Context, repo string, d digest.Digest) error {
	if err := c.begin(ctx); err != nil {
		return fmt.Errorf("cache: delete blob: %w", err)
	}
	defer c.end()
	if err := ValidRepoName(repo); err != nil {
		return fmt.Errorf("cache: delete blob: %w", err)
	}
	if err := ParseLayerDigest(d); err != nil {
		return fmt.Errorf("cache: delete blob: %w", err)
	}
	defer c.lockRepo(repo).Unlock()
	found, err := c.idx.UnlinkBlob(repo, d)
	if err == nil && !found {
		err = fmt.Errorf("%w: blob %s", ErrNotFound, d)
	}
	if err == nil {
		err = backendErr("delete blob link", c.store.Delete(ctx, blobLinkKey(repo, d)))
	}
	if err != nil {
		return fmt.Errorf("cache: delete blob %s in %s: %w", d, repo, err)
	}
	return nil
}

// ManifestInfo describes a stored manifest.
type ManifestInfo struct {
	Digest       digest.Digest
	MediaType    string
	ArtifactType string
	Size         int64
	Subject      digest.Digest // "" if none
	Annotations  map[string]string
	Refs         []index.Ref
}

func manifestInfo(d digest.Digest, mr index.ManifestRecord) ManifestInfo {
	return ManifestInfo{Digest: d, MediaType: mr.MediaType, ArtifactType: mr.ArtifactType, Size: mr.Size,
		Subject: mr.Subject, Annotations: mr.Annotations, Refs: mr.Refs}
}

// parseReference splits a manifest reference into a tag or a digest.
func parseReference(ref string) (tag string, d digest.Digest, err error) {
	if strings.Contains(ref, ":") {
		d = digest.Digest(ref)
		if err := ParseLayerDigest(d); err != nil {
			return "", "", err
		}
		return "", d, nil
	}
	if err := ValidTag(ref); err != nil {
		return "", "", err
	}
	return ref, "", nil
}

// PutManifest stores the manifest read from body (at most maxSize bytes;
// larger is ErrResourceExhausted) in repo under ref, a tag or the
// manifest's digest. contentType is the request's Content-Type. The
// manifest must parse (ErrManifestInvalid, ErrUnsupported), hash to ref if
// ref is a digest (ErrDigestMismatch), and every blob and child manifest
// it references must be in repo (ErrManifestBlobUnknown), except blob
// children of an index. Nothing is stored when a check fails.
func (c *Cache) PutManifest(ctx context.Context, repo, ref, contentType string, body io.Reader, maxSize int64) (ManifestInfo, error) {
	return c.PutManifestTags(ctx, repo, ref, contentType, body, maxSize, nil)
}

// PutManifestTags is PutManifest that also points tags at the manifest
// (the draft spec's PUT /manifests/<digest>?tag=...), all in one index
// transaction.
func (c *Cache) PutManifestTags(ctx context.Context, repo, ref, contentType string, body io.Reader, maxSize int64, tags []string) (ManifestInfo, error) {
	info, err := c.putManifest(ctx, repo, ref, contentType, body, maxSize, tags)
	if err != nil {
		return ManifestInfo{}, fmt.Errorf("cache: put manifest %s:%s: %w", repo, clip(ref), err)
	}
	return info, nil
}

func (c *Cache) putManifest(ctx context.Context, repo, ref, contentType string, body io.Reader, maxSize int64, extra []string) (ManifestInfo, error) {
	if err := ValidRepoName(repo); err != nil {
		return ManifestInfo{}, err
	}
	tag, want, err := parseReference(ref)
	if err != nil {
		return ManifestInfo{}, err
	}
	var tags []string
	if tag != "" {
		tags = append(tags, tag)
	}
	for _, t := range extra {
		if err := ValidTag(t); err != nil {
			return ManifestInfo{}, err
		}
		if !slices.Contains(tags, t) {
			tags = append(tags, t)
		}
	}
	if maxSize <= 0 {
		maxSize = DefaultMaxManifestSize
	}
	maxSize = min(maxSize, MaxManifestSize)
	// A manifest is small and bounded: read it whole, to parse it, within
	// a budget shared by the manifest PUTs in flight.
	if err := c.manifestBudget.Acquire(ctx, maxSize); err != nil {
		return ManifestInfo{}, err
	}
	defer c.manifestBudget.Release(maxSize)
	b, err := io.ReadAll(io.LimitReader(body, maxSize+1))
	if err != nil {
		return ManifestInfo{}, fmt.Errorf("read manifest: %w", err)
	}
	if int64(len(b)) > maxSize {
		return ManifestInfo{}, fmt.Errorf("%w: manifest larger than %d bytes", ErrResourceExhausted, maxSize)
	}
	alg := digest.SHA256
	if want != "" {
		alg = want.Algorithm()
	}
	d := alg.FromBytes(b)
	if want != "" && d != want {
		return ManifestInfo{}, fmt.Errorf("%w: manifest hashes to %s", ErrDigestMismatch, d)
	}
	m, err := ocimanifest.Parse(contentType, b)
	if errors.Is(err, ocimanifest.ErrUnsupported) {
		return ManifestInfo{}, fmt.Errorf("%w: %s", ErrUnsupported, strings.TrimPrefix(err.Error(), ocimanifest.ErrUnsupported.Error()+": "))
	}
	if err != nil {
		return ManifestInfo{}, fmt.Errorf("%w: %s", ErrManifestInvalid, strings.TrimPrefix(err.Error(), ocimanifest.ErrInvalid.Error()+": "))
	}
	mr := manifestRecord(m, len(b))
	checked := make(map[digest.Digest]bool, len(m.Refs))
	for _, r := range m.Refs {
		if r.Checked {
			checked[r.Digest] = true
		}
	}
	check := func(r index.Ref) bool { return checked[r.Digest] }

	if err := c.begin(ctx); err != nil {
		return ManifestInfo{}, err
	}
	defer c.end()
	// Check the references before anything is stored; PutManifest checks
	// them again in its transaction.
	for _, r := range mr.Refs {
		if !check(r) {
			continue
		}
		var ok bool
		var err error
		if r.Manifest {
			_, err = c.idx.Manifest(repo, r.Digest)
			ok = err == nil
			if errors.Is(err, ErrNotFound) {
				err = nil
			}
		} else {
			ok, err = c.idx.BlobLinked(repo, r.Digest)
		}
		if err != nil {
			return ManifestInfo{}, err
		}
		if !ok {
			what := "blob"
			if r.Manifest {
				what = "manifest"
			}
			return ManifestInfo{}, fmt.Errorf("%w: %s %s is not in repository %s", ErrManifestBlobUnknown, what, r.Digest, repo)
		}
	}
	defer c.pinLayer(d)()
	if info, err := c.stat(d); errors.Is(err, ErrNotFound) || (err == nil && info.Damaged()) {
		if _, err := c.push(ctx, bytes.NewReader(b), PushOptions{Expected: d, Size: int64(len(b)), MediaType: m.MediaType, unrooted: true}); err != nil {
			return ManifestInfo{}, err
		}
	} else if err != nil {
		return ManifestInfo{}, err
	}
	defer c.lockRepo(repo).Unlock()
	// The link object holds the media type, for Reindex: the layer's own
	// media type is that of whoever first pushed these bytes.
	if err := c.store.Put(ctx, manifestLinkKey(repo, d), strings.NewReader(m.MediaType), int64(len(m.MediaType))); err != nil {
		return ManifestInfo{}, backendErr("write manifest link", err)
	}
	for _, tag := range tags {
		if err := c.store.Put(ctx, tagKey(repo, tag), strings.NewReader(string(d)), int64(len(d))); err != nil {
			return ManifestInfo{}, backendErr("write tag", err)
		}
	}
	if err := c.idx.PutManifest(repo, d, mr, tags, check, time.Now()); err != nil {
		// The tag objects were rewritten for nothing: put back what the
		// index says, so that a Reindex does not revive this request.
		c.restoreTags(context.WithoutCancel(ctx), repo, tags)
		if errors.Is(err, ErrFailedPrecondition) {
			err = fmt.Errorf("%w: %w", ErrManifestBlobUnknown, err)
		}
		return ManifestInfo{}, err
	}
	return manifestInfo(d, mr), nil
}

// maxAnnotations bounds the annotations a manifest record keeps (for the
// referrers API): larger ones are left out of the record, so that a
// referrers answer stays small whatever the manifests hold.
const maxAnnotations = 16 << 10

// manifestRecord is the index record of parsed manifest m of size bytes.
func manifestRecord(m ocimanifest.Manifest, size int) index.ManifestRecord {
	mr := index.ManifestRecord{MediaType: m.MediaType, ArtifactType: m.ArtifactType, Size: int64(size), Annotations: m.Annotations}
	if m.Subject != nil {
		mr.Subject = m.Subject.Digest
	}
	n := 0
	for k, v := range m.Annotations {
		n += len(k) + len(v)
	}
	if n > maxAnnotations {
		mr.Annotations = nil
	}
	for _, r := range m.Refs {
		mr.Refs = append(mr.Refs, index.Ref{Digest: r.Digest, Manifest: r.Manifest, Size: r.Size})
	}
	return mr
}

// restoreTags rewrites the backend objects of repo's tags from the index
// (deleting those the index lacks), after a failed manifest PUT. Errors
// are logged: the index stays right, and Reindex is what could be wrong.
func (c *Cache) restoreTags(ctx context.Context, repo string, tags []string) {
	for _, t := range tags {
		d, err := c.idx.Resolve(repo, t)
		switch {
		case errors.Is(err, ErrNotFound):
			err = c.store.Delete(ctx, tagKey(repo, t))
		case err == nil:
			err = c.store.Put(ctx, tagKey(repo, t), strings.NewReader(string(d)), int64(len(d)))
		}
		if err != nil {
			c.log.Warn("cache: restoring a tag object after a failed manifest put", "repo", repo, "tag", t, "err", err)
		}
	}
}

// resolve returns the digest ref names in repo (a tag's target, or ref
// itself) and the manifest's record.
func (c *Cache) resolve(repo, ref string) (ManifestInfo, error) {
	if err := ValidRepoName(repo); err != nil {
		return ManifestInfo{}, err
	}
	tag, d, err := parseReference(ref)
	if err != nil {
		return ManifestInfo{}, err
	}
	if tag != "" {
		if d, err = c.idx.Resolve(repo, tag); err != nil {
			return ManifestInfo{}, err
		}
	}
	mr, err := c.idx.Manifest(repo, d)
	if err != nil {
		return ManifestInfo{}, err
	}
	// An existence answer: touched where it is seen (DeleteUnreached).
	if found, err := c.idx.HoldLayer(d, false, time.Now()); err != nil {
		return ManifestInfo{}, err
	} else if !found {
		return ManifestInfo{}, fmt.Errorf("%w: manifest %s", ErrNotFound, d)
	}
	return manifestInfo(d, mr), nil
}

// StatManifest returns the manifest ref (a tag or a digest) of repo, or
// ErrNotFound.
func (c *Cache) StatManifest(ctx context.Context, repo, ref string) (ManifestInfo, error) {
	if err := c.begin(ctx); err != nil {
		return ManifestInfo{}, fmt.Errorf("cache: stat manifest: %w", err)
	}
	defer c.end()
	info, err := c.resolve(repo, ref)
	if err != nil {
		return ManifestInfo{}, fmt.Errorf("cache: manifest %s:%s: %w", repo, clip(ref), err)
	}
	return info, nil
}

// OpenManifest returns a reader over the manifest ref of repo and its
// record.
func (c *Cache) OpenManifest(ctx context.Context, repo, ref string) (io.ReadCloser, ManifestInfo, error) {
	if err := c.begin(ctx); err != nil {
		return nil, ManifestInfo{}, fmt.Errorf("cache: get manifest: %w", err)
	}
	defer c.end()
	info, err := c.resolve(repo, ref)
	if err != nil {
		return nil, ManifestInfo{}, fmt.Errorf("cache: manifest %s:%s: %w", repo, clip(ref), err)
	}
	rc, _, err := c.openLocked(ctx, info.Digest, 0, -1)
	if err != nil {
		return nil, ManifestInfo{}, err
	}
	return rc, info, nil
}

// DeleteManifest deletes ref from repo: a tag only the tag; a digest the
// manifest's link and every tag that names it. ErrNotFound if there is no
// such tag or manifest. The manifest's bytes stay while anything else
// references them.
func (c *Cache) DeleteManifest(ctx context.Context, repo, ref string) error {
	if err := c.begin(ctx); err != nil {
		return fmt.Errorf("cache: delete manifest: %w", err)
	}
	defer c.end()
	if err := c.deleteManifest(ctx, repo, ref); err != nil {
		return fmt.Errorf("cache: delete manifest %s:%s: %w", repo, clip(ref), err)
	}
	return nil
}

func (c *Cache) deleteManifest(ctx context.Context, repo, ref string) error {
	if err := ValidRepoName(repo); err != nil {
		return err
	}
	tag, d, err := parseReference(ref)
	if err != nil {
		return err
	}
	defer c.lockRepo(repo).Unlock()
	if tag != "" {
		found, err := c.idx.DeleteTag(repo, tag)
		if err == nil && !found {
			err = fmt.Errorf("%w: tag %s", ErrNotFound, tag)
		}
		if err != nil {
			return err
		}
		return backendErr("delete tag", c.store.Delete(ctx, tagKey(repo, tag)))
	}
	tags, found, err := c.idx.DeleteManifest(repo, d)
	if err == nil && !found {
		err = fmt.Errorf("%w: manifest %s", ErrNotFound, d)
	}
	if err != nil {
		return err
	}
	for _, t := range tags {
		if err := c.store.Delete(ctx, tagKey(repo, t)); err != nil {
			return backendErr("delete tag", err)
		}
	}
	return backendErr("delete manifest link", c.store.Delete(ctx, manifestLinkKey(repo, d)))
}

// Tags returns up to n tags of repo after last, in lexical order (n <= 0:
// all), and whether more follow. ErrNotFound if the repository is unknown.
func (c *Cache) Tags(ctx context.Context, repo, last string, n int) ([]string, bool, error) {
	if err := c.begin(ctx); err != nil {
		return nil, false, fmt.Errorf("cache: tags: %w", err)
	}
	defer c.end()
	if err := ValidRepoName(repo); err != nil {
		return nil, false, fmt.Errorf("cache: tags: %w", err)
	}
	if ok, err := c.idx.RepoExists(repo); err != nil {
		return nil, false, fmt.Errorf("cache: tags: %w", err)
	} else if !ok {
		return nil, false, fmt.Errorf("cache: tags: %w: repository %s", ErrNotFound, repo)
	}
	es, more, err := c.idx.Tags(repo, last, n)
	if err != nil {
		return nil, false, fmt.Errorf("cache: tags: %w", err)
	}
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Tag
	}
	return out, more, nil
}

// Repositories returns up to n repository names after last, in lexical
// order (n <= 0: all), and whether more follow.
func (c *Cache) Repositories(ctx context.Context, last string, n int) ([]string, bool, error) {
	if err := c.begin(ctx); err != nil {
		return nil, false, fmt.Errorf("cache: repositories: %w", err)
	}
	defer c.end()
	names, more, err := c.idx.Repos(last, n)
	if err != nil {
		return nil, false, fmt.Errorf("cache: repositories: %w", err)
	}
	return names, more, nil
}

// Referrers returns the manifests in repo whose subject is d, those of
// artifactType only if it is not "".
func (c *Cache) Referrers(ctx context.Context, repo string, d digest.Digest, artifactType string) ([]ManifestInfo, error) {
	if err := c.begin(ctx); err != nil {
		return nil, fmt.Errorf("cache: referrers: %w", err)
	}
	defer c.end()
	if err := ValidRepoName(repo); err != nil {
		return nil, fmt.Errorf("cache: referrers: %w", err)
	}
	if err := ParseLayerDigest(d); err != nil {
		return nil, fmt.Errorf("cache: referrers: %w", err)
	}
	rs, err := c.idx.Referrers(repo, d)
	if err != nil {
		return nil, fmt.Errorf("cache: referrers of %s: %w", d, err)
	}
	out := make([]ManifestInfo, 0, len(rs))
	for _, r := range rs {
		if artifactType == "" || r.Record.ArtifactType == artifactType {
			out = append(out, manifestInfo(r.Digest, r.Record))
		}
	}
	return out, nil
}

// reindexRepos restores repositories from their backend objects: blob
// links as they are listed (a link to a layer that was not restored is
// dropped), then manifests, in passes until none more can be restored (a
// child manifest must be linked before the index naming it), then tags
// naming restored manifests. It holds the manifest and tag keys in memory,
// not the blob links. It returns how many objects it restored.
func (c *Cache) reindexRepos(ctx context.Context) (int, error) {
	type pending struct {
		repo string
		d    digest.Digest
		info backend.Info
	}
	var mans []pending
	var tags []struct {
		repo, tag string
		info      backend.Info
	}
	n := 0
	now := time.Now()
	err := c.store.List(ctx, repoPrefix, func(info backend.Info) error {
		repo, kind, rest, ok := parseRepoKey(info.Key)
		if !ok || ValidRepoName(repo) != nil {
			c.log.Warn("cache: reindex: skipping stray object", "key", info.Key)
			return nil
		}
		switch kind {
		case "_blobs", "_manifests":
			alg, hex, _ := strings.Cut(rest, "/")
			d := digest.Digest(alg + ":" + hex)
			if ParseLayerDigest(d) != nil {
				c.log.Warn("cache: reindex: skipping stray object", "key", info.Key)
				return nil
			}
			if kind == "_manifests" {
				mans = append(mans, pending{repo, d, info})
				return nil
			}
			if err := c.idx.LinkBlob(repo, d, now); errors.Is(err, ErrNotFound) {
				c.log.Warn("cache: reindex: blob link to a layer not restored; dropped", "repo", repo, "blob", d)
				return nil
			} else if err != nil {
				return err
			}
			n++
		case "_tags":
			if ValidTag(rest) != nil {
				c.log.Warn("cache: reindex: skipping stray object", "key", info.Key)
				return nil
			}
			tags = append(tags, struct {
				repo, tag string
				info      backend.Info
			}{repo, rest, info})
		}
		return nil
	})
	if err != nil {
		return n, backendErr("index repositories", err)
	}
	// Manifests are restored as they were accepted: their references were
	// checked then, and a blob deleted since does not take the manifest
	// (or its tags) with it.
	for _, p := range mans {
		mt, err := c.readMeta(ctx, p.info)
		if err != nil {
			return n, err
		}
		err = c.reindexManifest(ctx, p.repo, p.d, string(mt), now)
		switch {
		case err == nil:
			n++
		case errors.Is(err, ErrNotFound), errors.Is(err, ErrInvalidArgument), errors.Is(err, ErrDataLoss), errors.Is(err, ErrFailedPrecondition):
			c.log.Warn("cache: reindex: manifest not restored", "repo", p.repo, "manifest", p.d, "err", err)
		default:
			return n, err
		}
	}
	for _, t := range tags {
		b, err := c.readMeta(ctx, t.info)
		if err != nil {
			return n, err
		}
		d := digest.Digest(b)
		if _, err := c.idx.Manifest(t.repo, d); err != nil {
			c.log.Warn("cache: reindex: tag names a manifest not restored; dropped", "repo", t.repo, "tag", t.tag, "err", err)
			continue
		}
		if err := c.idx.SetTag(t.repo, t.tag, d); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// reindexManifest restores manifest d of repo from its layer, parsed as
// mediaType (what its link object recorded; "" for the manifest's own
// word), without checking its references again.
func (c *Cache) reindexManifest(ctx context.Context, repo string, d digest.Digest, mediaType string, now time.Time) error {
	lr, _, err := c.idx.Layer(d)
	if err != nil {
		return err
	}
	if lr.Size > MaxManifestSize {
		return fmt.Errorf("%w: manifest of %d bytes", ErrInvalidArgument, lr.Size)
	}
	rc, err := c.blobReader(ctx, lr, 0, lr.Size) // a manifest can look like a tar and be stored split
	if err != nil {
		return err
	}
	b, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		return err
	}
	m, err := ocimanifest.Parse(mediaType, b)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	return c.idx.PutManifest(repo, d, manifestRecord(m, len(b)), nil, func(index.Ref) bool { return false }, now)
}

// ImageInfo is one tag of a repository and what its image costs.
type ImageInfo struct {
	Repository string
	Tag        string
	Digest     digest.Digest
	MediaType  string
	// Size is the bytes of the manifest and of everything it references,
	// child manifests followed, each distinct blob once, as pushed.
	Size int64
	// StoredSize is what those blobs take in the store (compressed
	// chunks; a chunk shared with other images counted in full).
	StoredSize int64
	// Missing counts references the store does not hold (blob children of
	// an index that were never pushed, foreign layers).
	Missing int
}

// Images returns the tagged images of up to pageSize repositories' worth
// (whole repositories: at least one, more while fewer than pageSize images
// are listed) in name and tag order, from the position pageToken names (""
// for the first page), and the next page's token ("" after the last).
func (c *Cache) Images(ctx context.Context, pageToken string, pageSize int) ([]ImageInfo, string, error) {
	if err := c.begin(ctx); err != nil {
		return nil, "", fmt.Errorf("cache: images: %w", err)
	}
	defer c.end()
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	pageSize = min(pageSize, MaxPageSize)
	var last string
	if pageToken != "" {
		b, err := base64.RawURLEncoding.DecodeString(pageToken)
		if err != nil || ValidRepoName(string(b)) != nil {
			return nil, "", fmt.Errorf("cache: images: %w: bad page token", ErrInvalidArgument)
		}
		last = string(b)
	}
	var out []ImageInfo
	for len(out) < pageSize {
		repos, more, err := c.idx.Repos(last, 1)
		if err != nil {
			return nil, "", fmt.Errorf("cache: images: %w", err)
		}
		if len(repos) == 0 {
			return out, "", nil
		}
		last = repos[0]
		tags, _, err := c.idx.Tags(last, "", 0)
		if err != nil {
			return nil, "", fmt.Errorf("cache: images: %w", err)
		}
		for _, t := range tags {
			img, err := c.imageCost(ctx, last, t.Digest)
			if err != nil {
				return nil, "", fmt.Errorf("cache: images: %s:%s: %w", last, t.Tag, err)
			}
			img.Repository, img.Tag = last, t.Tag
			out = append(out, img)
		}
		if !more {
			return out, "", nil
		}
	}
	return out, base64.RawURLEncoding.EncodeToString([]byte(last)), nil
}

// imageCost sums what manifest d of repo and everything it references
// take, each distinct blob once.
func (c *Cache) imageCost(ctx context.Context, repo string, d digest.Digest) (ImageInfo, error) {
	img := ImageInfo{Digest: d}
	seen := map[digest.Digest]bool{}
	var walk func(d digest.Digest, top bool) error
	walk = func(d digest.Digest, top bool) error {
		if seen[d] {
			return nil
		}
		seen[d] = true
		if err := ctx.Err(); err != nil {
			return err
		}
		info, err := c.stat(d)
		if errors.Is(err, ErrNotFound) {
			img.Missing++
			return nil
		} else if err != nil {
			return err
		}
		img.Size += info.Size
		img.StoredSize += info.StoredSize
		mr, err := c.idx.Manifest(repo, d)
		if errors.Is(err, ErrNotFound) {
			return nil // a blob
		} else if err != nil {
			return err
		}
		if top {
			img.MediaType = mr.MediaType
		}
		for _, r := range mr.Refs {
			if err := walk(r.Digest, false); err != nil {
				return err
			}
		}
		return nil
	}
	return img, walk(d, true)
}

// pinLayer keeps layer d from the collection until the returned function
// is called: a registry push stores a layer unrooted and only then links
// it, and a collection between the two would find it unreached. With a
// grace period the layer's age keeps it too; without one, only this does.
func (c *Cache) pinLayer(d digest.Digest) (unpin func()) {
	c.pinMu.Lock()
	if c.pinned == nil {
		c.pinned = map[digest.Digest]int{}
	}
	c.pinned[d]++
	c.pinMu.Unlock()
	return func() {
		c.pinMu.Lock()
		if c.pinned[d]--; c.pinned[d] == 0 {
			delete(c.pinned, d)
		}
		c.pinMu.Unlock()
	}
}

func (c *Cache) isPinned(d digest.Digest) bool {
	c.pinMu.Lock()
	defer c.pinMu.Unlock()
	return c.pinned[d] > 0
}
