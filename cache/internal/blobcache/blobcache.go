// Package blobcache keeps whole copies of recently served blobs in a local
// directory, bounded in bytes, least recently used out first.
//
// A compressed blob stored as its content plus an encoder costs an encoder
// run to read (package recompress): gzip at level 6 rebuilds at the
// encoder's speed, tens of MB/s. A layer a CI fleet pulls again and again
// should come at disk speed instead, so the cache keeps the bytes of the
// blobs it rebuilt until the size bound
// pushes them out. It is a cache: the store never depends on it, and a
// file that went missing or bad is simply rebuilt again.
//
// Files are named by digest (<alg>-<hex>) and written under tmp/ first,
// then renamed into place only once their bytes were checked against the
// digest, so a crash leaves no half-written entry; Open clears tmp/.
package blobcache

import (
	"container/list"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
)

// Cache is a size-bounded directory of blobs. It is safe for concurrent
// use.
type Cache struct {
	dir string
	max int64

	mu      sync.Mutex
	entries map[digest.Digest]*list.Element // of *entry; front is most recent
	lru     list.List
	total   int64
	evicted int64
}

type entry struct {
	d    digest.Digest
	size int64
}

// Open opens (creating it if needed) the cache in dir, holding at most
// max bytes. Files already there are kept, oldest first out.
func Open(dir string, max int64) (*Cache, error) {
	if max <= 0 {
		return nil, fmt.Errorf("blobcache: size bound %d", max)
	}
	if err := os.RemoveAll(filepath.Join(dir, "tmp")); err != nil {
		return nil, fmt.Errorf("blobcache: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		return nil, fmt.Errorf("blobcache: %w", err)
	}
	c := &Cache{dir: dir, max: max, entries: map[digest.Digest]*list.Element{}}
	des, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("blobcache: %w", err)
	}
	type found struct {
		d    digest.Digest
		info fs.FileInfo
	}
	var fl []found
	for _, de := range des {
		if !de.Type().IsRegular() {
			continue
		}
		d, ok := parseName(de.Name())
		info, err := de.Info()
		if !ok || err != nil {
			os.Remove(filepath.Join(dir, de.Name())) // not ours, or gone
			continue
		}
		fl = append(fl, found{d, info})
	}
	sort.Slice(fl, func(i, j int) bool { return fl[i].info.ModTime().Before(fl[j].info.ModTime()) })
	for _, f := range fl {
		c.entries[f.d] = c.lru.PushFront(&entry{d: f.d, size: f.info.Size()})
		c.total += f.info.Size()
	}
	c.mu.Lock()
	c.evict()
	c.mu.Unlock()
	return c, nil
}

func name(d digest.Digest) string { return string(d.Algorithm()) + "-" + d.Encoded() }

func parseName(s string) (digest.Digest, bool) {
	alg, hex, ok := strings.Cut(s, "-")
	if !ok {
		return "", false
	}
	d := digest.NewDigestFromEncoded(digest.Algorithm(alg), hex)
	return d, d.Validate() == nil
}

func (c *Cache) path(d digest.Digest) string { return filepath.Join(c.dir, name(d)) }

// Open returns the cached copy of blob d, which must be size bytes, and
// makes it the most recently used. ok is false on a miss; a file of the
// wrong size is dropped. The file stays readable after an eviction.
func (c *Cache) Open(d digest.Digest, size int64) (f *os.File, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[d]
	if !ok {
		return nil, false
	}
	f, err := os.Open(c.path(d))
	if err != nil {
		c.drop(el)
		return nil, false
	}
	if st, err := f.Stat(); err != nil || st.Size() != size || el.Value.(*entry).size != size {
		f.Close()
		c.drop(el)
		return nil, false
	}
	c.lru.MoveToFront(el)
	return f, true
}

// Temp returns a new file to write a blob into before Add. The caller
// removes it (Discard) unless Add took it.
func (c *Cache) Temp() (*os.File, error) {
	return os.CreateTemp(filepath.Join(c.dir, "tmp"), "blob-")
}

// TempDir is the directory of Temp's files: on the cache's file system,
// cleared at Open.
func (c *Cache) TempDir() string { return filepath.Join(c.dir, "tmp") }

// Discard removes a temporary file that Add did not take.
func Discard(f *os.File) {
	f.Close()
	os.Remove(f.Name())
}

// Add makes f, a temporary file from Temp holding the size bytes of blob d,
// checked against d, the cached copy of d, then evicts the least recently
// used blobs beyond the bound. A blob larger than a quarter of the bound is
// not kept. f is closed either way.
func (c *Cache) Add(f *os.File, d digest.Digest, size int64) {
	if !c.Fits(size) {
		Discard(f)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[d]; ok { // another copy made it first
		c.lru.MoveToFront(el)
		Discard(f)
		return
	}
	if err := f.Close(); err != nil {
		os.Remove(f.Name())
		return
	}
	if err := os.Rename(f.Name(), c.path(d)); err != nil {
		os.Remove(f.Name())
		return
	}
	c.entries[d] = c.lru.PushFront(&entry{d: d, size: size})
	c.total += size
	c.evict()
}

// Fits says whether Add would keep a blob of size bytes: at most a quarter
// of the bound, so that one blob never flushes the whole cache.
func (c *Cache) Fits(size int64) bool { return size <= c.max/4 }

// Remove drops blob d (a copy found bad).
func (c *Cache) Remove(d digest.Digest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[d]; ok {
		c.drop(el)
	}
}

func (c *Cache) evict() {
	for c.total > c.max {
		el := c.lru.Back()
		if el == nil {
			return
		}
		c.drop(el)
		c.evicted++
	}
}

func (c *Cache) drop(el *list.Element) {
	e := el.Value.(*entry)
	c.lru.Remove(el)
	delete(c.entries, e.d)
	c.total -= e.size
	os.Remove(c.path(e.d))
}

// Size is the bytes the cache holds, the number of blobs and how many were
// evicted since Open.
func (c *Cache) Size() (bytes int64, blobs int, evicted int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total, len(c.entries), c.evicted
}
