package cache

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/cache/internal/blobcache"
	"github.com/cairnbuild/cairn/cache/internal/chunks"
	"github.com/cairnbuild/cairn/cache/internal/index"
	"github.com/cairnbuild/cairn/cache/internal/pack"
	"github.com/cairnbuild/cairn/chunker"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/semaphore"
)

// Options configure a Cache. Dir and Backend are required.
type Options struct {
	// Dir is the Badger index directory. It is created if missing.
	Dir string
	// Backend holds chunk packs, layer manifests and step records: the
	// source of truth the index can be rebuilt from.
	Backend backend.Store
	// Chunking is the chunker's size parameters; zero means chunker.V1. It
	// only affects server-side pushes; stored layers are readable whatever
	// it is.
	Chunking chunker.Params
	// Concurrency bounds the chunks one push compresses at the same time,
	// and the chunks one pull reads ahead. Zero means DefaultConcurrency. A
	// push holds at most about 3 × Concurrency × Chunking.Max bytes of
	// buffers and 3 packs of about 5 MiB (up to 8 MiB when a client uploads
	// chunks larger than Chunking.Max); a pull about 2 × (Concurrency +
	// 8) × the largest chunk and a few ranged reads of up to 4 MiB of
	// compressed records, and, reading the compacted tier, up to 8
	// decoded frames of 4 MiB. The index adds about 60 MiB (two 16 MiB memtables
	// with their arenas, block and index caches), whatever the layer size.
	Concurrency int
	// Logger receives the index's warnings and errors; nil discards them.
	Logger *slog.Logger

	// MaxUploads bounds the upload sessions open at once (zero:
	// DefaultMaxUploads); MaxActiveUploads those pushing at once, each
	// holding one push's buffers (zero: DefaultMaxActiveUploads); a session
	// idle for UploadIdleTimeout is aborted (zero:
	// DefaultUploadIdleTimeout). See StartUpload.
	MaxUploads        int
	MaxActiveUploads  int
	UploadIdleTimeout time.Duration
	// GCInterval, if positive, runs a collection (GC with GCOptions) in
	// the background that long after Open and after each run ends.
	GCInterval time.Duration
	GCOptions  GCOptions
	// ScrubInterval, if positive, runs Verify in the background that long
	// after Open and then again that long after each run ends, reading at
	// most ScrubRate bytes a second (0: DefaultScrubRate).
	ScrubInterval time.Duration
	ScrubRate     int64
	// PushSlotWait is how long a registry push waits for one of the
	// MaxActiveUploads slots before it is refused; zero means
	// DefaultPushSlotWait.
	PushSlotWait time.Duration

	// PlainTars stores tars as they come, instead of as their files'
	// contents and their metadata apart (see tarlayers.go).
	PlainTars bool
	// KeepCompressed stores gzip and zstd blobs as they come, instead of as
	// their uncompressed content plus the encoder that rebuilds them (see
	// compressed.go).
	KeepCompressed bool
	// MaxExpandedSize bounds the uncompressed size of a compressed blob:
	// one that expands past it is refused and nothing is committed (a
	// decompression bomb). Zero means DefaultMaxExpandedSize.
	MaxExpandedSize int64
	// SpoolDir holds, while a compressed blob is stored, a copy of its
	// compressed bytes: kept in case no encoder turns out to reproduce it.
	// The files are unlinked as soon as they are created. "" means the
	// system's temporary directory (with RebuiltCacheDir: its tmp/).
	SpoolDir string
	// RebuiltCacheDir, if set, keeps whole copies of compressed blobs
	// stored as their content, up to RebuiltCacheSize bytes, most recently
	// used first: a hot layer is then served at disk speed instead of at
	// its encoder's (package blobcache).
	RebuiltCacheDir  string
	RebuiltCacheSize int64
}

// DefaultMaxExpandedSize is the default Options.MaxExpandedSize.
const DefaultMaxExpandedSize = 64 << 30

// manifestBudgetBytes is how many bytes of manifests PUTs may hold at
// once: four at the largest size a server accepts; more wait.
const manifestBudgetBytes = 4 * MaxManifestSize

// DefaultConcurrency is the default Options.Concurrency: enough requests in
// flight to hide an object store's latency, while 2 cores do the compression.
const DefaultConcurrency = 8

// MaxChunkSize is the largest chunk PutChunk accepts, and the largest
// Chunking.Max a Cache accepts.
const MaxChunkSize = pack.MaxChunkSize

// DefaultMediaType is the media type of a layer pushed without one.
const DefaultMediaType = "application/vnd.oci.image.layer.v1.tar"

// Cache is the layer store and step cache: a facade that wires the index
// (package index), the chunk store (package chunks) and the backend. It is
// safe for concurrent use by multiple goroutines.
type Cache struct {
	idx    *index.DB
	chunks *chunks.Store
	store  backend.Store
	params chunker.Params
	conc   int
	log    *slog.Logger

	cutPool sync.Pool // *[]byte of 2 × params.Max: chunker buffers
	steps   stepMemo
	// stepLocks serialise the writes of one step record; divergences
	// counts the records refused since Open (see RecordStepIn).
	stepLocks   stepLocks
	divergences atomic.Int64
	// stepWrite, if set, is called between a step record's check and its
	// writes (tests of the lock around them).
	stepWrite func()
	uploads   uploads
	// repoLocks serialize the registry's metadata writes per repository
	// (striped): each writes a backend object and then the index, and two
	// of them on one key interleaved would leave the two disagreeing.
	repoLocks [64]sync.Mutex
	// pinned counts the registry's pushes in flight per digest, from the
	// push of the bytes to the link that makes them reachable: the
	// collection keeps a pinned layer (see pinLayer).
	pinMu  sync.Mutex
	pinned map[digest.Digest]int
	// manifestBudget bounds the bytes of manifests being read at once
	// (each PUT reserves its size limit): see manifestBudgetBytes.
	manifestBudget *semaphore.Weighted
	stopJan        chan struct{} // stops the upload janitor
	// layerSeq counts the starts and ends of layer deletes, and deleting
	// the deletes under way: the step memo trusts a record's layer only
	// while no delete runs and layerSeq is what it was when the layer was
	// last seen in the index.
	layerSeq atomic.Uint64
	// rebuilds counts Reindex runs: a Verify or GC that one overtakes
	// stops.
	rebuilds atomic.Uint64
	gcToken  chan struct{} // one collection at a time
	gcHooks  gcHookSet
	gcMu     sync.Mutex
	gcStats  GCStats
	deleting atomic.Int64

	// beforeCommit, if set, runs just before a layer's index commit, when
	// every chunk is stored or found: tests run a collector there.
	beforeCommit func()

	keepCompressed bool
	plainTars      bool
	maxExpanded    int64
	spoolDir       string
	blobs          *blobcache.Cache // nil: no rebuilt-blob cache
	rebuilt        rebuildCounters
	checkpoints    checkpointCache // where range reads of split tars start

	// mu is held shared by every operation and exclusively by Reindex.
	mu      sync.RWMutex
	closed  bool
	partial bool // a Reindex failed after it dropped the index

	closeErr error
	once     sync.Once
}

// Open opens (or creates) the index in opts.Dir over opts.Backend. An index
// left behind by a crash is recovered by Badger on open; nothing else is
// needed, since the index never names data the backend lacks.
func Open(ctx context.Context, opts Options) (*Cache, error) {
	if opts.Dir == "" {
		return nil, fmt.Errorf("cache: open: %w: no index directory", ErrInvalidArgument)
	}
	if opts.Backend == nil {
		return nil, fmt.Errorf("cache: open: %w: no backend", ErrInvalidArgument)
	}
	if opts.Chunking == (chunker.Params{}) {
		opts.Chunking = chunker.V1
	}
	if err := opts.Chunking.Validate(); err != nil {
		return nil, fmt.Errorf("cache: open: %w: %w", ErrInvalidArgument, err)
	}
	if opts.Chunking.Max > MaxChunkSize {
		return nil, fmt.Errorf("cache: open: %w: chunk max %d above %d", ErrInvalidArgument, opts.Chunking.Max, MaxChunkSize)
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultConcurrency
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	idx, err := index.Open(opts.Dir, log)
	if err != nil {
		return nil, fmt.Errorf("cache: %w", err)
	}
	idx.SetStepLayer(stepLayer)
	if err := idx.LinkStepLayers(); err != nil {
		idx.Close()
		return nil, fmt.Errorf("cache: open: %w", err)
	}
	cs, err := chunks.New(chunks.Options{Index: idx, Backend: opts.Backend, MaxChunk: opts.Chunking.Max,
		Concurrency: opts.Concurrency, Logger: log})
	if err != nil {
		idx.Close()
		return nil, fmt.Errorf("cache: open: %w", err)
	}
	c := &Cache{idx: idx, chunks: cs, store: opts.Backend, params: opts.Chunking, conc: opts.Concurrency,
		log: log, steps: newStepMemo(), stopJan: make(chan struct{}),
		manifestBudget: semaphore.NewWeighted(manifestBudgetBytes), gcToken: make(chan struct{}, 1)}
	c.keepCompressed, c.maxExpanded, c.spoolDir = opts.KeepCompressed, opts.MaxExpandedSize, opts.SpoolDir
	c.plainTars = opts.PlainTars
	if c.maxExpanded <= 0 {
		c.maxExpanded = DefaultMaxExpandedSize
	}
	if opts.RebuiltCacheDir != "" && opts.RebuiltCacheSize > 0 {
		if c.blobs, err = blobcache.Open(opts.RebuiltCacheDir, opts.RebuiltCacheSize); err != nil {
			cs.Close()
			idx.Close()
			return nil, fmt.Errorf("cache: open: %w", err)
		}
		if c.spoolDir == "" {
			c.spoolDir = c.blobs.TempDir()
		}
	}
	c.uploads.init(opts.MaxUploads, opts.MaxActiveUploads, opts.UploadIdleTimeout)
	if opts.PushSlotWait > 0 {
		c.uploads.slotWait = opts.PushSlotWait
	}
	if idx.Interrupted() {
		// A Reindex stopped after it dropped the index: finish it before
		// serving anything from a partial index.
		log.Warn("cache: an interrupted reindex left the index partial; reindexing now", "dir", opts.Dir)
		if err := c.reindex(ctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("cache: open: finish an interrupted reindex: %w", err)
		}
	}
	go c.janitor(c.stopJan)
	if opts.GCInterval > 0 {
		go c.every(opts.GCInterval, func(ctx context.Context) { c.collect(ctx, opts.GCOptions) })
	}
	if opts.ScrubInterval > 0 {
		rate := opts.ScrubRate
		if rate <= 0 {
			rate = DefaultScrubRate
		}
		go c.every(opts.ScrubInterval, func(ctx context.Context) { c.scrub(ctx, rate) })
	}
	return c, nil
}

// DefaultScrubRate is the background scrub's read rate: 16 MiB/s reads a
// terabyte in under a day, and leaves a disk or an S3 link almost all of
// its bandwidth.
const DefaultScrubRate = 16 << 20

// every runs fn interval after Open and interval after each run ends,
// with a context that Close cancels, until Close.
func (c *Cache) every(interval time.Duration, fn func(ctx context.Context)) {
	ctx, cancel := c.untilClose(context.Background())
	defer cancel()
	t := time.NewTimer(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn(ctx)
		t.Reset(interval)
	}
}

// scrub is one background Verify, at rate.
func (c *Cache) scrub(ctx context.Context, rate int64) {
	rep, err := c.Verify(ctx, VerifyOptions{Rate: rate})
	switch {
	case err != nil && ctx.Err() == nil:
		c.log.Warn("cache: background scrub failed", "err", err)
	case len(rep.Quarantine) > 0 || len(rep.Problems) > 0:
		c.log.Warn("cache: background scrub found damage", "newly quarantined", rep.Newly,
			"quarantined", len(rep.Quarantine), "damaged layers", len(rep.Damaged), "problems", rep.Problems)
	}
}

// collect is one background collection.
func (c *Cache) collect(ctx context.Context, opts GCOptions) {
	if _, err := c.GC(ctx, opts); err != nil && ctx.Err() == nil {
		c.log.Warn("cache: background collection failed", "err", err)
	}
}

// gcHookSet lets tests order a collection against other work.
type gcHookSet struct {
	// Planned: the plan is made, nothing is executed yet.
	Planned func(*GCReport)
	// BeforeDelete: pack p is about to be deleted (no session holds it,
	// no entry names it).
	BeforeDelete func(p pack.ID)
	// LayerDeleted: the layer-level collection deleted layer d from the
	// index; its backend objects go next.
	LayerDeleted func(d digest.Digest)
	// LayersPlanned: the layer-level collection chose its candidates;
	// none is deleted yet.
	LayersPlanned func(candidates []digest.Digest)
}

// untilClose returns ctx, also cancelled when Close begins, so that a long
// walk (Verify) does not hold Close up.
func (c *Cache) untilClose(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-c.stopJan:
			cancel()
		case <-ctx.Done():
		}
	}()
	return ctx, cancel
}

// Close flushes pending hit counts and access times and closes the index.
// It waits for operations in progress; layer readers still open fail with
// ErrClosed. The backend is not closed.
func (c *Cache) Close() error {
	c.once.Do(func() {
		c.abortUploads(true)
		close(c.stopJan)
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.chunks.Close()
		if err := c.idx.Close(); err != nil {
			c.closeErr = fmt.Errorf("cache: %w", err)
		}
	})
	return c.closeErr
}

// begin takes the shared lock every operation holds; end releases it.
func (c *Cache) begin(ctx context.Context) error {
	c.mu.RLock()
	if c.closed {
		c.mu.RUnlock()
		return ErrClosed
	}
	if c.partial {
		c.mu.RUnlock()
		return errPartialIndex
	}
	if err := ctx.Err(); err != nil {
		c.mu.RUnlock()
		return err
	}
	return nil
}

func (c *Cache) end() { c.mu.RUnlock() }

// getBuf returns a pooled buffer of at least n bytes' capacity.
func getBuf(p *sync.Pool, n int) *[]byte {
	if b, ok := p.Get().(*[]byte); ok {
		if cap(*b) >= n {
			return b
		}
	}
	b := make([]byte, 0, n)
	return &b
}
