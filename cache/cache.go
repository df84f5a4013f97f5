package cache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/cairnbuild/cairn/backend"
	"github.com/cairnbuild/cairn/chunker"
	"github.com/dgraph-io/badger/v4"
	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
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
	// maxRunChunks) × the largest chunk and a few ranged reads of up to 4
	// MiB of compressed records. The index adds about 60 MiB (two 16 MiB
	// memtables with their arenas, block and index caches), whatever the
	// layer size.
	Concurrency int
	// Logger receives the index's warnings and errors; nil discards them.
	Logger *slog.Logger
}

// DefaultConcurrency is the default Options.Concurrency: enough requests in
// flight to hide an object store's latency, while 2 cores do the compression.
const DefaultConcurrency = 8

// MaxChunkSize is the largest chunk PutChunk accepts, and the largest
// Chunking.Max a Cache accepts.
const MaxChunkSize = 4 << 20

// DefaultMediaType is the media type of a layer pushed without one.
const DefaultMediaType = "application/vnd.oci.image.layer.v1.tar"

// flushInterval is how often hit counts and access times reach the index: a
// lookup does not pay for a synced write.
const flushInterval = 2 * time.Second

// zstdLevel is the compression level of new chunks. SpeedFastest: on a
// tar of Go sources in 256 KiB chunks (BenchmarkZstdLevel) it stores 6 %
// more bytes than SpeedDefault (ratio 5.93 against 6.28) and compresses
// 16–18 % faster (MEASUREMENTS.md: 23 %), and zstd is most of the CPU of a
// push. The level is not part of the stored format.
const zstdLevel = zstd.SpeedFastest

// Cache is the layer store and step cache. It is safe for concurrent use by
// multiple goroutines.
type Cache struct {
	db     *badger.DB
	store  backend.Store
	params chunker.Params
	conc   int
	log    *slog.Logger

	enc *zstd.Encoder
	dec *zstd.Decoder

	dataPool sync.Pool // *[]byte of cap params.Max+decodeSlack (or more): chunk data
	compPool sync.Pool // *[]byte: compressed chunk records
	cutPool  sync.Pool // *[]byte of 2 × params.Max: chunker buffers
	packPool sync.Pool // *[]byte: packs being filled (see getPackBuf)
	runPool  sync.Pool // *[]byte of maxRunBytes (or one larger record): runs being read

	packTarget int // packTarget; benchmarks vary it

	flights   flights
	bigCommit sync.Mutex // serialises commits and deletes of layers over maxTxnChunks

	// mu is held shared by every operation and exclusively by Reindex.
	mu     sync.RWMutex
	closed bool

	pendMu     sync.Mutex
	pendHits   map[digest.Digest]hitDelta // step key → hits not yet in the index
	pendAccess map[digest.Digest]time.Time

	// readers counts the read-ahead goroutines of open layer readers;
	// stopReaders (on Close) cancels them.
	readers     sync.WaitGroup
	readersCtx  context.Context
	stopReaders context.CancelFunc

	stop     chan struct{}
	flushed  chan struct{}
	closeErr error
	once     sync.Once
}

type hitDelta struct {
	n    uint64
	last time.Time
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
	db, err := badger.Open(badgerOptions(opts.Dir, log))
	if err != nil {
		return nil, fmt.Errorf("cache: open index %s: %w: %w", opts.Dir, ErrUnavailable, err)
	}
	if err := checkFormat(db); err != nil {
		db.Close()
		return nil, fmt.Errorf("cache: open index %s: %w", opts.Dir, err)
	}
	procs := runtime.GOMAXPROCS(0)
	enc, err := newEncoder(procs)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("cache: open: zstd: %w", err)
	}
	// Frames carry no checksum (see newEncoder); IgnoreChecksum also skips
	// it in frames that have one. Every chunk is verified by its hash.
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(procs), zstd.WithDecodeAllCapLimit(true),
		zstd.WithDecoderMaxMemory(MaxChunkSize), zstd.IgnoreChecksum(true))
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("cache: open: zstd: %w", err)
	}
	c := &Cache{
		db: db, store: opts.Backend, params: opts.Chunking, conc: opts.Concurrency, log: log,
		enc: enc, dec: dec,
		flights:    flights{m: make(map[chunkID]*flight)},
		packTarget: packTarget,
		pendHits:   make(map[digest.Digest]hitDelta),
		pendAccess: make(map[digest.Digest]time.Time),
		stop:       make(chan struct{}),
		flushed:    make(chan struct{}),
	}
	c.readersCtx, c.stopReaders = context.WithCancel(context.Background())
	go c.flushLoop()
	return c, nil
}

// checkFormat refuses an index written in another format and marks a new
// one with indexFormat.
func checkFormat(db *badger.DB) error {
	var found string
	empty := true
	err := db.View(func(txn *badger.Txn) error {
		item, err := txn.Get(idxFormat)
		if err == nil {
			return item.Value(func(v []byte) error { found = string(v); return nil })
		}
		if !errors.Is(err, badger.ErrKeyNotFound) {
			return err
		}
		it := txn.NewIterator(badger.IteratorOptions{})
		defer it.Close()
		it.Rewind()
		empty = !it.Valid()
		return nil
	})
	switch {
	case err != nil:
		return indexErr("read format", err)
	case found == indexFormat:
		return nil
	case found != "":
		return fmt.Errorf("%w: index format %q, this cairn reads %q", ErrFailedPrecondition, found, indexFormat)
	case !empty:
		return fmt.Errorf("%w: index written by an older cairn (one backend object per chunk), this one stores chunks in packs: start from an empty data directory", ErrFailedPrecondition)
	}
	return indexErr("write format", db.Update(func(txn *badger.Txn) error {
		return txn.Set(idxFormat, []byte(indexFormat))
	}))
}

// newEncoder returns the chunk encoder, for n concurrent EncodeAll calls.
// No window beyond the largest chunk: each chunk is its own frame, and a
// larger window only costs history buffers. No frame checksum: every chunk
// is verified against its SHA-256 when read, and zstd's xxhash over the
// same bytes cost 4 % of a pull.
func newEncoder(n int) (*zstd.Encoder, error) {
	return zstd.NewWriter(nil, zstd.WithEncoderLevel(zstdLevel), zstd.WithEncoderConcurrency(n),
		zstd.WithWindowSize(MaxChunkSize), zstd.WithLowerEncoderMem(true), zstd.WithEncoderCRC(false))
}

// badgerOptions tunes Badger for an index of small values that must not
// take hundreds of MiB: Badger's defaults (five 64 MiB memtables, a 256 MiB
// block cache, 1 GiB value log files) are sized for a database server.
func badgerOptions(dir string, log *slog.Logger) badger.Options {
	return badger.DefaultOptions(dir).
		WithSyncWrites(true). // a commit the caller saw survives a crash
		WithLogger(badgerLogger{log}).
		// 16 MiB memtables allow 2.4 MiB transactions: a layer commit of
		// maxTxnChunks (16 000) chunks, 4 GiB at 256 KiB average, fits in one.
		WithMemTableSize(16 << 20).
		WithNumMemtables(2).
		WithNumLevelZeroTables(2).
		WithNumLevelZeroTablesStall(8).
		WithBaseTableSize(4 << 20).
		WithBlockCacheSize(8 << 20).
		WithIndexCacheSize(4 << 20).
		WithValueLogFileSize(64 << 20).
		WithValueThreshold(4 << 10). // recipes go to the value log, keys stay small
		WithNumCompactors(2)
}

// badgerLogger sends Badger's warnings and errors to slog; its info and
// debug chatter is dropped.
type badgerLogger struct{ log *slog.Logger }

func (l badgerLogger) Errorf(f string, a ...any) {
	l.log.Error("badger", "msg", fmt.Sprintf(f, a...))
}
func (l badgerLogger) Warningf(f string, a ...any) {
	l.log.Warn("badger", "msg", fmt.Sprintf(f, a...))
}
func (badgerLogger) Infof(string, ...any)  {}
func (badgerLogger) Debugf(string, ...any) {}

// Close flushes pending hit counts and access times and closes the index.
// It waits for operations in progress; layer readers still open fail with
// ErrClosed. The backend is not closed.
func (c *Cache) Close() error {
	c.once.Do(func() {
		close(c.stop)
		<-c.flushed
		c.mu.Lock()
		c.closed = true
		c.mu.Unlock()
		c.stopReaders()
		c.readers.Wait()
		if err := c.db.Close(); err != nil {
			c.closeErr = fmt.Errorf("cache: close index: %w", err)
		}
		c.enc.Close()
		c.dec.Close()
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
	if err := ctx.Err(); err != nil {
		c.mu.RUnlock()
		return err
	}
	return nil
}

func (c *Cache) end() { c.mu.RUnlock() }

// flushLoop writes pending hits and access times every flushInterval and
// once more when the Cache closes, and garbage-collects Badger's value log
// every vlogGCInterval.
func (c *Cache) flushLoop() {
	defer close(c.flushed)
	t := time.NewTicker(flushInterval)
	defer t.Stop()
	lastGC := time.Now()
	for {
		select {
		case <-t.C:
			if err := c.flushPending(); err != nil {
				c.log.Warn("cache: flush hit counts", "err", err)
			}
			if time.Since(lastGC) >= vlogGCInterval {
				c.vlogGC()
				lastGC = time.Now()
			}
		case <-c.stop:
			if err := c.flushPending(); err != nil {
				c.log.Warn("cache: flush hit counts", "err", err)
			}
			return
		}
	}
}

// vlogGCInterval is how often the value log is garbage-collected. Recipes
// of deleted layers live in the value log (see badgerOptions) and only its
// GC returns their space.
const vlogGCInterval = 10 * time.Minute

// vlogGC rewrites value log files that are at least half garbage, until
// none is left.
func (c *Cache) vlogGC() {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return
	}
	for range 100 {
		err := c.db.RunValueLogGC(0.5)
		if err != nil {
			if !errors.Is(err, badger.ErrNoRewrite) && !errors.Is(err, badger.ErrRejected) {
				c.log.Warn("cache: value log gc", "err", err)
			}
			return
		}
	}
}

// update runs fn in a read-write transaction, retrying on conflicts with
// concurrent transactions (pushes sharing chunks), and translates errors.
func (c *Cache) update(op string, fn func(txn *badger.Txn) error) error {
	for attempt := 0; ; attempt++ {
		err := c.db.Update(fn)
		if errors.Is(err, badger.ErrConflict) && attempt < 100 {
			time.Sleep(time.Duration(attempt) * time.Millisecond)
			continue
		}
		return indexErr(op, err)
	}
}

func isContextErr(err error) bool {
	return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
}

// getBuf returns a pooled buffer of at least n bytes' capacity; class is
// the capacity new buffers get (at least n), so that one pool holds buffers
// of one size and none is dropped for being too small.
func getBuf(p *sync.Pool, n, class int) *[]byte {
	if b, ok := p.Get().(*[]byte); ok {
		if cap(*b) >= n {
			return b
		}
		p.Put(b)
	}
	b := make([]byte, 0, max(n, class))
	return &b
}

// getData returns a buffer for n bytes of chunk data, and decodeSlack more.
func (c *Cache) getData(n int) *[]byte {
	return getBuf(&c.dataPool, n+decodeSlack, c.params.Max+decodeSlack)
}

// decodeSlack is the room zstd's decoder wants past the end of its output
// to use its fast copies (16 bytes; compressedBlockOverAlloc in
// klauspost/compress): without it, the last blocks of every chunk decoded
// with the bounds-exact copies, a third of pull's decoding time.
const decodeSlack = 16

// getComp returns a buffer for a chunk record of n uncompressed bytes.
func (c *Cache) getComp(n int) *[]byte {
	return getBuf(&c.compPool, chunkHeaderSize+c.enc.MaxEncodedSize(n), chunkHeaderSize+c.enc.MaxEncodedSize(c.params.Max))
}
