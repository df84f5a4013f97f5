package cache

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/opencontainers/go-digest"
)

// Uploads: a blob that arrives in pieces (the registry's PATCH requests)
// and whose digest is declared only at the end. An Upload feeds each
// request body straight into a Push running on its own goroutine (see
// feed), so it holds no more than one push's buffers whatever the blob's
// size, and a client that stops sending holds nothing once the session
// expires.
//
// Sessions live in memory: after a restart the client starts over (the
// registry answers BLOB_UPLOAD_UNKNOWN). They are bounded in number
// (Options.MaxUploads); at most Options.MaxActiveUploads of them push at
// the same time (others wait for a slot, so memory stays bounded); and one
// whose client sent nothing for Options.UploadIdleTimeout is aborted by
// ExpireUploads, which a janitor goroutine calls.

// Upload defaults.
const (
	DefaultMaxUploads        = 4096
	DefaultMaxActiveUploads  = 64
	DefaultUploadIdleTimeout = 15 * time.Minute
	// UploadMediaType is the media type recorded for blobs that arrive
	// through an Upload: the registry does not learn what a blob is.
	UploadMediaType = "application/octet-stream"
)

// errUploadAborted ends the push of an aborted or expired upload.
var errUploadAborted = fmt.Errorf("%w: upload aborted", ErrNotFound)

// Upload is one blob upload in progress. Its methods are safe for
// concurrent use; Write and Commit calls are serialized.
type Upload struct {
	c     *Cache
	id    string
	owner string

	slot    chan struct{} // held by the Write or Commit in progress
	abortCh chan struct{} // closed by Abort

	mu      sync.Mutex // guards the fields below
	ending  bool       // Commit or Abort began: no more writes
	aborted bool
	feed    *feed
	cancel  context.CancelFunc
	done    chan struct{} // closed when the push returned (nil before the first byte)
	info    LayerInfo
	err     error

	size     atomic.Int64
	lastUsed atomic.Int64 // Unix nanoseconds
	want     chan digest.Digest
}

type uploads struct {
	mu       sync.Mutex
	m        map[string]*Upload
	max      int
	idle     time.Duration
	active   chan struct{} // a slot per pushing upload
	slotWait time.Duration
	closed   bool
}

func (u *uploads) init(max, active int, idle time.Duration) {
	if max <= 0 {
		max = DefaultMaxUploads
	}
	if active <= 0 {
		active = DefaultMaxActiveUploads
	}
	if idle <= 0 {
		idle = DefaultUploadIdleTimeout
	}
	u.m = make(map[string]*Upload)
	u.max, u.idle, u.active, u.slotWait = max, idle, make(chan struct{}, active), DefaultPushSlotWait
}

// StartUpload opens an upload session for owner (the registry passes the
// repository: a session is found only by the owner that started it). It
// fails with ErrResourceExhausted when Options.MaxUploads sessions are open.
func (c *Cache) StartUpload(ctx context.Context, owner string) (*Upload, error) {
	if err := c.begin(ctx); err != nil {
		return nil, fmt.Errorf("cache: start upload: %w", err)
	}
	defer c.end()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("cache: start upload: %w", err)
	}
	u := &Upload{c: c, id: hex.EncodeToString(b[:]), owner: owner, want: make(chan digest.Digest, 1),
		slot: make(chan struct{}, 1), abortCh: make(chan struct{})}
	u.lastUsed.Store(time.Now().UnixNano())
	c.uploads.mu.Lock()
	defer c.uploads.mu.Unlock()
	if c.uploads.closed {
		return nil, fmt.Errorf("cache: start upload: %w", ErrClosed)
	}
	if len(c.uploads.m) >= c.uploads.max {
		return nil, fmt.Errorf("cache: start upload: %w: %d upload sessions open", ErrResourceExhausted, len(c.uploads.m))
	}
	c.uploads.m[u.id] = u
	return u, nil
}

// GetUpload returns owner's open upload session id, or ErrNotFound.
func (c *Cache) GetUpload(owner, id string) (*Upload, error) {
	c.uploads.mu.Lock()
	u, ok := c.uploads.m[id]
	c.uploads.mu.Unlock()
	if !ok || u.owner != owner {
		return nil, fmt.Errorf("cache: upload %q: %w", clip(id), ErrNotFound)
	}
	return u, nil
}

// OpenUploads reports how many upload sessions are open.
func (c *Cache) OpenUploads() int {
	c.uploads.mu.Lock()
	defer c.uploads.mu.Unlock()
	return len(c.uploads.m)
}

// ExpireUploads aborts every session whose client has sent nothing since
// before now minus Options.UploadIdleTimeout, and returns how many. A
// session stuck in a Write (its push makes no progress) counts as idle too.
func (c *Cache) ExpireUploads(now time.Time) int {
	cut := now.Add(-c.uploads.idle).UnixNano()
	var old []*Upload
	c.uploads.mu.Lock()
	for _, u := range c.uploads.m {
		if u.lastUsed.Load() < cut {
			old = append(old, u)
		}
	}
	c.uploads.mu.Unlock()
	for _, u := range old {
		u.Abort()
	}
	return len(old)
}

// abortUploads aborts every session and waits for their pushes to end:
// Close and Reindex call it before they take the exclusive lock, which a
// push holds shared.
func (c *Cache) abortUploads(closing bool) {
	c.uploads.mu.Lock()
	if closing {
		c.uploads.closed = true
	}
	all := make([]*Upload, 0, len(c.uploads.m))
	for _, u := range c.uploads.m {
		all = append(all, u)
	}
	c.uploads.mu.Unlock()
	for _, u := range all {
		u.Abort()
		u.wait()
	}
}

// DefaultPushSlotWait is how long an upload waits for one of the
// MaxActiveUploads push slots before it is refused (ErrResourceExhausted:
// the registry answers 429, and clients retry).
const DefaultPushSlotWait = 10 * time.Second

// acquirePush takes one of the push slots that bound the registry's
// concurrent pushes (and their buffers), waiting at most
// DefaultPushSlotWait; releasePush gives it back.
func (c *Cache) acquirePush(ctx context.Context, abort <-chan struct{}) error {
	t := time.NewTimer(c.uploads.slotWait)
	defer t.Stop()
	select {
	case c.uploads.active <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-abort:
		return errUploadAborted
	case <-t.C:
		return fmt.Errorf("%w: %d uploads are pushing; retry later", ErrResourceExhausted, cap(c.uploads.active))
	}
}

func (c *Cache) releasePush() { <-c.uploads.active }

func (c *Cache) janitor(stop <-chan struct{}) {
	t := time.NewTicker(max(c.uploads.idle/4, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case now := <-t.C:
			if n := c.ExpireUploads(now); n > 0 {
				c.log.Info("cache: expired idle upload sessions", "count", n)
			}
		}
	}
}

// ID names the session (32 hex digits, random).
func (u *Upload) ID() string { return u.id }

// Size is the number of bytes the session has accepted so far: the offset
// the next Write continues at.
func (u *Upload) Size() int64 { return u.size.Load() }

// Write appends what r yields, to its end, to the blob. If at >= 0 the
// session must stand at offset at when the write begins (else
// ErrUploadOffset). Writes are serialized: one waits (within ctx) for the
// one in progress, for example that of a client whose connection broke and
// whose body has not failed yet. It blocks while the push is behind
// (backpressure), and fails if the push failed or the session ended. A
// read error from r ends the write; the session keeps what arrived.
func (u *Upload) Write(ctx context.Context, r io.Reader, at int64) (int64, error) {
	select {
	case u.slot <- struct{}{}:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-u.abortCh:
		return 0, fmt.Errorf("cache: upload %s: %w: session ended", u.id, ErrNotFound)
	}
	defer func() { <-u.slot }()
	u.mu.Lock()
	ending := u.ending
	u.mu.Unlock()
	if ending {
		return 0, fmt.Errorf("cache: upload %s: %w: session ended", u.id, ErrNotFound)
	}
	if at >= 0 && at != u.Size() {
		return 0, fmt.Errorf("cache: upload %s: %w: the write starts at %d, the upload stands at %d", u.id, ErrUploadOffset, at, u.Size())
	}
	if err := u.start(ctx); err != nil {
		return 0, err
	}
	select {
	case u.feed.in <- r:
	case <-u.done:
		return 0, u.ended()
	}
	select {
	case res := <-u.feed.done:
		return res.n, res.err
	case <-u.done:
		return 0, u.ended()
	}
}

// ended is the error of a Write to a session whose push has returned.
func (u *Upload) ended() error {
	u.mu.Lock()
	err := u.err
	u.mu.Unlock()
	if err == nil || errors.Is(err, errUploadAborted) {
		return fmt.Errorf("cache: upload %s: %w: session ended", u.id, ErrNotFound)
	}
	return fmt.Errorf("cache: upload %s: %w", u.id, err)
}

// feed is the push's reader: it reads each request body the session is
// handed, in turn, straight into the chunker's buffer (no pipe and no copy
// in between), and tells the handing Write when that body is used up or
// failed. Between bodies it waits; Commit closes in for the end of the
// blob; a cancelled push stops the wait.
type feed struct {
	u    *Upload
	ctx  context.Context
	in   chan io.Reader
	done chan feedResult
	cur  io.Reader
	n    int64
	intr atomic.Value // *Interrupter of cur, for Abort
}

// forget drops the current body's Interrupter: Abort must not touch a
// body its request is done with.
func (f *feed) forget() {
	var none Interrupter
	f.intr.Store(&none)
}

// Interrupter is implemented by a body whose blocked Read can be cut short
// (the registry's, by moving its connection's read deadline): Abort calls
// Interrupt on the body being read, so that an aborted session does not
// wait for its client's next bytes.
type Interrupter interface{ Interrupt() }

type feedResult struct {
	n   int64
	err error // the body's read error, not io.EOF
}

func (f *feed) Read(p []byte) (int, error) {
	for {
		if f.cur == nil {
			select {
			case r, ok := <-f.in:
				if !ok {
					return 0, io.EOF
				}
				f.cur, f.n = r, 0
				var i Interrupter
				if ri, ok := r.(Interrupter); ok {
					i = ri
				}
				f.intr.Store(&i)
			case <-f.ctx.Done():
				return 0, errUploadAborted
			}
		}
		if f.ctx.Err() != nil { // aborted: read no more of the body
			f.forget()
			f.done <- feedResult{f.n, errUploadAborted}
			f.cur = nil
			return 0, errUploadAborted
		}
		k, err := f.cur.Read(p)
		if k > 0 {
			f.n += int64(k)
			f.u.size.Add(int64(k))
			f.u.lastUsed.Store(time.Now().UnixNano())
		}
		if err == nil {
			return k, nil
		}
		if err == io.EOF {
			err = nil
		}
		// The body is used up, or its client went away: the session keeps
		// what arrived and waits for the next body.
		f.forget()
		f.done <- feedResult{f.n, err}
		f.cur = nil
		if k > 0 {
			return k, nil
		}
	}
}

// start begins the push on the first write (or at Commit): a session
// that never sends a byte costs no buffers. It waits for an active slot.
func (u *Upload) start(ctx context.Context) error {
	u.mu.Lock()
	started := u.done != nil
	u.mu.Unlock()
	if started {
		return nil
	}
	if err := u.c.acquirePush(ctx, u.abortCh); err != nil {
		return fmt.Errorf("cache: upload %s: %w", u.id, err)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.cancel == nil && u.aborted { // aborted while it waited for a slot
		<-u.c.uploads.active
		return fmt.Errorf("cache: upload %s: %w", u.id, errUploadAborted)
	}
	pctx, cancel := context.WithCancel(context.Background())
	u.feed = &feed{u: u, ctx: pctx, in: make(chan io.Reader), done: make(chan feedResult, 1)}
	u.cancel, u.done = cancel, make(chan struct{})
	go func() {
		defer u.c.releasePush()
		info, err := u.c.Push(pctx, u.feed, PushOptions{Size: -1, MediaType: UploadMediaType, unrooted: true,
			finish: func(got digest.Digest, size int64) error {
				select {
				case want := <-u.want:
					if want.Algorithm() == digest.SHA256 && want != got {
						return fmt.Errorf("%w: upload hashes to %s, declared %s", ErrDigestMismatch, got, want)
					}
					return nil // another algorithm is checked after the commit (see Commit)
				case <-pctx.Done():
					return errUploadAborted
				}
			}})
		if err != nil && pctx.Err() != nil {
			err = errUploadAborted
		}
		u.mu.Lock()
		u.info, u.err = info, err
		u.mu.Unlock()
		cancel()
		close(u.done)
	}()
	return nil
}

// Commit ends the upload: the blob must hash to d and then becomes a
// committed layer; on a mismatch nothing is committed (ErrDigestMismatch).
// The push hashes with SHA-256 as the bytes arrive, since a client names
// the digest only now; for a sha512 digest the blob is committed under its
// SHA-256 first, read back to check its SHA-512, then committed under d with
// the same chunks, as distribution does for digests of another algorithm.
// The session is closed whatever the outcome.
func (u *Upload) Commit(ctx context.Context, d digest.Digest) (LayerInfo, error) {
	if err := ParseLayerDigest(d); err != nil {
		u.Abort()
		return LayerInfo{}, fmt.Errorf("cache: upload %s: %w", u.id, err)
	}
	select {
	case u.slot <- struct{}{}:
	case <-ctx.Done():
		return LayerInfo{}, ctx.Err()
	case <-u.abortCh:
		return LayerInfo{}, fmt.Errorf("cache: upload %s: %w: session ended", u.id, ErrNotFound)
	}
	u.mu.Lock()
	ending := u.ending
	u.ending = true
	u.mu.Unlock()
	if ending {
		<-u.slot
		return LayerInfo{}, fmt.Errorf("cache: upload %s: %w: session ended", u.id, ErrNotFound)
	}
	if err := u.start(ctx); err != nil {
		<-u.slot
		u.Abort()
		return LayerInfo{}, err
	}
	<-u.slot
	u.want <- d
	close(u.feed.in) // the end of the blob
	u.wait()
	u.c.dropUpload(u)
	u.mu.Lock()
	info, err := u.info, u.err
	u.mu.Unlock()
	if err != nil {
		return LayerInfo{}, fmt.Errorf("cache: upload %s: %w", u.id, err)
	}
	if d.Algorithm() != digest.SHA256 {
		if info, err = u.c.rehash(ctx, info, d); err != nil {
			return LayerInfo{}, fmt.Errorf("cache: upload %s: %w", u.id, err)
		}
	}
	return info, nil
}

// rehash commits the layer info (named by SHA-256) under d as well, after
// reading it back and checking that it hashes to d. On a mismatch the
// SHA-256 record stays: another upload of the same bytes may have
// committed it meanwhile, and deleting it could lose what that one
// committed. No repository links it; it is the garbage collector's.
func (c *Cache) rehash(ctx context.Context, info LayerInfo, d digest.Digest) (LayerInfo, error) {
	if err := c.begin(ctx); err != nil {
		return LayerInfo{}, err
	}
	defer c.end()
	lr, _, err := c.idx.Layer(info.Digest)
	if err != nil {
		return LayerInfo{}, err
	}
	if err := c.verifyRecipe(ctx, lr, d); err != nil {
		return LayerInfo{}, err
	}
	alias := *lr
	alias.Digest, alias.Created, alias.Unrooted = d, time.Now().UTC(), true
	return c.commit(ctx, &alias, nil)
}

// Abort ends the session without committing anything. Chunks the push
// already stored stay, unreferenced, for the garbage collector.
func (u *Upload) Abort() {
	u.mu.Lock()
	if !u.aborted {
		close(u.abortCh)
	}
	u.ending, u.aborted = true, true
	cancel, f := u.cancel, u.feed
	u.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if f != nil {
		// A body being read would hold the push until its client sends the
		// next bytes: cut it short.
		if p, ok := f.intr.Load().(*Interrupter); ok && *p != nil {
			(*p).Interrupt()
		}
	}
	u.c.dropUpload(u)
}

func (u *Upload) wait() {
	u.mu.Lock()
	done := u.done
	u.mu.Unlock()
	if done != nil {
		<-done
	}
}

func (c *Cache) dropUpload(u *Upload) {
	c.uploads.mu.Lock()
	if c.uploads.m[u.id] == u {
		delete(c.uploads.m, u.id)
	}
	c.uploads.mu.Unlock()
}
